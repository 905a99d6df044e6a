"""Where the shipped small Motif-Video model (trained on procedural clips, issue 5) lives.

Looked for, in order: inside the installed package (`motif_video/_weights/motif-video-small`, for a wheel that
bundles it), then in the repository checkout (`<repo>/models/motif-video-small`, for the editable install from
src/). A folder counts once it holds `model_index.json` (the release layout `save_pretrained` writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from motif_video.models.checkpoint_io import CheckpointError

SMALL_MODEL_NAME = "motif-video-small"
_PACKAGE_DIR = Path(__file__).resolve().parent
SMALL_MODEL_CANDIDATES: tuple[Path, ...] = (
    _PACKAGE_DIR / "_weights" / SMALL_MODEL_NAME,
    _PACKAGE_DIR.parents[1] / "models" / SMALL_MODEL_NAME,  # src/motif_video -> the repository root
)


def small_model_dir(candidates: Sequence[Path] | None = None) -> Path:
    """The first candidate folder holding a release (`model_index.json`); CheckpointError when none does."""
    folders = tuple(SMALL_MODEL_CANDIDATES if candidates is None else candidates)
    for folder in folders:
        if (folder / "model_index.json").is_file():
            return folder
    looked = " or ".join(str(f) for f in folders)
    raise CheckpointError(
        f"the small model is not trained/shipped yet: no release folder (model_index.json) at {looked}; "
        "train and export it there, or pass --model FOLDER"
    )
