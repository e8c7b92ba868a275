"""What the `slurm` tests share: this folder, the running cluster's description, and smk (tests/workflow) on the path.
A module of its own, not conftest.py: several conftest modules share that name, so tests cannot import from one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workflow"))  # smk: running snakemake from tests


@dataclass(frozen=True)
class Cluster:
    """A running test cluster: its state folder and its one node's CPUs and memory (MB)."""

    state: Path
    cpus: int
    memory_mb: int
