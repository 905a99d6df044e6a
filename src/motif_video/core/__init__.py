"""Shared foundations: what pipeline, data and training all build on, one module per concept."""
