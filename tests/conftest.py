"""Shared fixtures. `make_ytvis` writes a tiny, valid YouTube-VIS 2019 folder (train.json + real JPEGs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tiny_ytvis import write_tiny_ytvis


@pytest.fixture
def make_ytvis(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_ytvis(name="ytvis", **write_tiny_ytvis kwargs) -> the dataset root under tmp_path."""
    def make(name: str = "ytvis", **kwargs) -> Path:
        root = tmp_path / name
        write_tiny_ytvis(root, **kwargs)
        return root
    return make
