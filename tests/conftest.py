"""Fixtures for the product tests (the helpers themselves live in model_helpers.py)."""

from model_helpers import tiny_config

__all__ = ["tiny_config"]
