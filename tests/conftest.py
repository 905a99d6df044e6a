"""Fixtures for the product tests (the helpers themselves live in model_helpers.py and hostile_helpers.py)."""

import pytest

from model_helpers import tiny_config

__all__ = ["tiny_config", "tiny_release"]


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A tiny random release folder, written once per session: copy it before changing it."""
    from motif_video.pipeline.tiny import save_tiny_release

    return save_tiny_release(tmp_path_factory.mktemp("tiny-release") / "release")
