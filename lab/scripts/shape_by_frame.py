"""Does a model carry each object's shape through the clip, or re-draw it? Shape accuracy per frame of an eval.

    python lab/scripts/shape_by_frame.py runs/small/eval            # a `motif-video-lab eval --output` folder
    python lab/scripts/shape_by_frame.py runs/a/eval runs/b/eval    # several, one block each

For every video of the folder's results.json (re-read from its mp4), per frame: each object the prompt asks for is
the largest blob of its colour in that frame (as the evaluator tracks objects), and its shape is the best template
IoU on that frame alone (`segment.shape_ious`; the evaluator decides a track on the median over 5 frames). A table
per split x mode: the fraction of those objects whose frame-level shape is the asked one, for each frame. In I2V
frame 0 is the condition: a model that carries the first frame forward keeps the later frames near it; one that
re-draws objects from its text prior falls to its T2V level after a frame or two.

Below it, per object: shape right (the evaluator's track-level read, as in the table) for objects whose colour and
shape form a held-out pair (`HELDOUT_COLOR_SHAPE`: never seen together in training) against the other objects.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def frame_shapes(frames: np.ndarray, objects: list[dict[str, Any]]) -> list[list[bool | None]]:
    """frames (T, H, W, 3); objects: the spec's [{'color', 'shape', ...}] -> per frame, per object: the frame-level
    shape is the asked one (None: no blob of that colour in the frame)."""
    from motif_video_lab.procedural.evaluate import largest_blobs
    from motif_video_lab.procedural.scene import SHAPES, unit
    from motif_video_lab.procedural.segment import as_float_frames, find_blobs, shape_ious

    video = as_float_frames(frames)
    blobs, _, _ = find_blobs(video)
    u = unit(video.shape[1], video.shape[2])
    largest = largest_blobs(blobs)
    rows = []
    for t in range(video.shape[0]):
        row: list[bool | None] = []
        for obj in objects:
            blob = largest.get((obj["color"], t))
            row.append(None if blob is None else SHAPES[int(np.argmax(shape_ious(blob.window, u)))] == obj["shape"])
        rows.append(row)
    return rows


def summarise(folder: Path) -> dict[str, dict[str, Any]]:
    """{column name: {'per_frame': [(right, seen)] per frame, 'pairs': {'held-out pair'|'other': (right, total)}}}."""
    from motif_video.core.video_io import read_video
    from motif_video_lab.evaluation import column_name
    from motif_video_lab.procedural.scene import HELDOUT_COLOR_SHAPE

    results = json.loads((folder / "results.json").read_text())
    out: dict[str, dict[str, Any]] = {}
    for video in results["videos"]:
        name = column_name(video["split"], video["mode"])
        column = out.setdefault(name, {"per_frame": [], "pairs": defaultdict(list)})
        objects = video["spec"]["objects"]
        frames, _ = read_video(folder / video["path"])
        for t, row in enumerate(frame_shapes(frames, objects)):
            if t == len(column["per_frame"]):
                column["per_frame"].append([0, 0])
            for ok in row:
                if ok is not None:
                    column["per_frame"][t][0] += int(ok)
                    column["per_frame"][t][1] += 1
        tracks, matched = video["details"]["objects"], video["details"]["matched"]
        for obj, index in zip(objects, matched):
            kind = "held-out pair" if (obj["color"], obj["shape"]) in HELDOUT_COLOR_SHAPE else "other"
            column["pairs"][kind].append(index is not None and tracks[index]["shape"] == obj["shape"])
    for column in out.values():
        column["pairs"] = {k: (sum(v), len(v)) for k, v in sorted(column["pairs"].items())}
    return out


def format_summary(folder: Path, summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{folder}:", ""]
    for name, column in summary.items():
        frames = column["per_frame"]
        lines += [
            "| " + name + " | " + " | ".join(str(t) for t in range(len(frames))) + " |",
            "|---|" + "---:|" * len(frames),
            "| shape right | " + " | ".join(f"{r / s:.2f}" if s else "-" for r, s in frames) + " |",
            "| objects seen | " + " | ".join(str(s) for _, s in frames) + " |",
            "",
            "Shape right per object (track level): "
            + ", ".join(f"{kind} {right} of {total}" for kind, (right, total) in column["pairs"].items())
            + ".",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="`motif-video-lab eval --output` folders")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "results.json").is_file()]
    if missing:
        parser.error(f"no results.json in {', '.join(missing)}: pass `motif-video-lab eval --output` folders")
    for folder in args.folders:
        print(format_summary(folder, summarise(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
