"""The one place where motif-video reads environment variables."""

from __future__ import annotations

import os


def attention_backend_from_env() -> str | None:
    """`MOTIF_VIDEO_ATTENTION_BACKEND`: default attention backend (`sdpa`, `flash`, `sage`)."""
    value = os.environ.get("MOTIF_VIDEO_ATTENTION_BACKEND", "").strip().lower()
    return value or None
