"""The one place where motif-video reads environment variables."""

from __future__ import annotations

import os


def attention_backend_from_env() -> str | None:
    """`MOTIF_VIDEO_ATTENTION_BACKEND`: default attention backend (`sdpa`, `flash`, `sage`)."""
    value = os.environ.get("MOTIF_VIDEO_ATTENTION_BACKEND", "").strip().lower()
    return value or None


def serve_api_key_from_env() -> str | None:
    """`MOTIF_VIDEO_API_KEY`: the bearer token `motif-video serve` asks of clients when `--api-key` is not given."""
    value = os.environ.get("MOTIF_VIDEO_API_KEY", "").strip()
    return value or None


def torchrun_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) outside torchrun."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "").strip()
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None

    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)
