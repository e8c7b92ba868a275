"""The local profile's memory cap: MOWIS_MEM_MB bounds the jobs' mem_mb together and each job's own."""

from __future__ import annotations

from pathlib import Path

import smk
from smk import REPO, environment


def test_jobs_memory_is_capped_by_mowis_mem_mb(tmp_path: Path) -> None:
    """With MOWIS_MEM_MB=3000 every shard job asks min(its figure, 3000) = 3000 MB (affinity 4000, flow 8000),
    so none asks more than the cap and would never start."""
    run = smk.snakemake(tmp_path, "-n", "--profile", str(REPO / "workflow/profiles/local"),
                        env=environment(MOWIS_GPUS="0", MOWIS_MEM_MB="3000"), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    asked: dict[str, set[int]] = {}
    for block in run.stdout.split("\nrule ")[1:]:
        resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
        mem = [int(r.split("=")[1]) for r in resources.split(", ") if r.startswith("mem_mb=")]
        asked.setdefault(block.split(":")[0], set()).update(mem)
    assert asked["affinity"] == asked["flow"] == asked["frame_index"] == asked["split"] == {3000}, asked
