"""Fixtures for the product tests (the helpers themselves live in model_helpers.py, serve_helpers.py and
hostile_helpers.py)."""

import pytest

from model_helpers import tiny_config

__all__ = ["small_model_backend", "tiny_config", "tiny_release"]


@pytest.fixture(scope="session")
def small_model_backend():
    """`motif-video serve`'s backend over the shipped small model on the CPU, loaded once for all serve tests."""
    from motif_video.cli.generate import GenerateSettings
    from motif_video.cli.serve import GenerateBackend
    from motif_video.core.release import small_model_dir
    from motif_video.pipeline.settings import GenerationSettings

    base = GenerateSettings(prompts=["-"], model=str(small_model_dir()), generation=GenerationSettings(), device="cpu")
    backend = GenerateBackend(base)
    backend.load()
    return backend


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A tiny random release folder, written once per session: copy it before changing it."""
    from motif_video.pipeline.tiny import save_tiny_release

    return save_tiny_release(tmp_path_factory.mktemp("tiny-release") / "release")
