"""The manifest of a test dataset, as rule manifest writes it, for the tests that run the later stages."""

from __future__ import annotations

from pathlib import Path

from pipeline.manifest import write_manifest
from pipeline.ytvis import load_ytvis


def write_test_manifest(root: Path) -> Path:
    """Write root/manifest.json from root/train.json (frame files unchecked: some tests damage them after
    writing the dataset, to see the stage itself fail); returns its path."""
    out = root / "manifest.json"
    write_manifest(out, load_ytvis(root, check_files=False))
    return out
