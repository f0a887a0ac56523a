"""Shared fixtures. Tiny models are made once per machine into the git-ignored cache
(.samullm/cache/models, or $SAMULLM_CACHE_DIR/models) and reused by every session."""

from __future__ import annotations

from pathlib import Path

import pytest

from samullm.tinymodel import cached_preset


@pytest.fixture(scope="session")
def tiny_model_dir():
    """Factory: tiny_model_dir("tiny-s") -> directory of that preset, made on first use."""
    made: dict[str, Path] = {}

    def get(name: str = "tiny-s") -> Path:
        if name not in made:
            made[name] = cached_preset(name)
        return made[name]

    return get


@pytest.fixture(scope="session")
def tiny_s(tiny_model_dir) -> Path:
    return tiny_model_dir("tiny-s")
