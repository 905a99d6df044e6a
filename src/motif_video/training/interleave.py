"""Joint image/video training with a fixed interleave pattern (Motif-Video 2B, arXiv 2604.16503, §4: e.g.
image, video, video).

`InterleavedBatches(readers, pattern)` takes one batch from `readers[pattern[i % len(pattern)]]` at step i. Each
source is its own reader (typically a `ShardReader` over images prepared at the image buckets, and one over
videos), so every batch stays bucket-homogeneous and each source keeps its own shuffle and epoch. The state is the
pattern position plus every reader's state, so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class InterleavedBatches(Iterator[Any]):
    """Cycle `pattern` (names of `readers`), one batch per entry."""

    def __init__(self, readers: dict[str, Any], pattern: Sequence[str]) -> None:
        pattern = list(pattern)
        if not pattern:
            raise ValueError("interleave pattern is empty: give at least one source name, e.g. ['image', 'video']")
        unknown = sorted(set(pattern) - set(readers))
        if unknown:
            raise ValueError(f"interleave pattern names {unknown}, but the sources are {sorted(readers)}")
        unused = sorted(set(readers) - set(pattern))
        if unused:
            raise ValueError(f"sources {unused} never appear in the interleave pattern {pattern}")
        self.readers, self.pattern, self.position = readers, pattern, 0

    def __iter__(self) -> InterleavedBatches:
        return self

    def __next__(self) -> Any:
        name = self.pattern[self.position % len(self.pattern)]
        batch = next(self.readers[name])
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "readers": {k: r.state_dict() for k, r in self.readers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["readers"]) != sorted(self.readers):
            raise ValueError(f"saved sources {sorted(state['readers'])} differ from {sorted(self.readers)}")
        self.position = int(state["position"])
        for name, reader in self.readers.items():
            reader.load_state_dict(state["readers"][name])

    def close(self) -> None:
        for reader in self.readers.values():
            if hasattr(reader, "close"):
                reader.close()


__all__ = ["InterleavedBatches"]
