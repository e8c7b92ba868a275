"""Rule `affinity` on the shared tiny run (conftest.py): its store, and config edits rerun exactly what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from smk import TINY, planned_rules, snakemake, write_tiny

TARGET = "results/affinity/shard_0.zarr"


@pytest.mark.slow
def test_rule_runs_and_reruns_on_affinity_edits_only(tiny_run, tmp_path: Path) -> None:
    """Shard 0 holds its shard_size videos, each a (T, H/4, W/4) uint8 colour mask stack at the default tau_flow;
    on the finished run, dry runs of the shard plan nothing, then affinity for an affinity edit, flow and
    affinity for a flow edit, nothing for a train edit."""
    import zarr

    work, tiny = tiny_run.work, yaml.safe_load(TINY)
    synthetic = tiny["dataset"]["synthetic"]
    store = zarr.open_group(str(work / TARGET), mode="r")
    assert len(store.attrs["videos"]) == tiny["flow"]["shard_size"] and store.attrs["params"]["tau_flow"] == 0.6
    for vid in store.attrs["videos"]:
        color = store[str(vid)]["color"][...]
        assert color.shape == (synthetic["frames"], synthetic["height"] // 4, synthetic["width"] // 4)
        assert color.dtype == np.uint8
    assert (work / "logs/affinity/shard_0.json").is_file()

    def plan(config: Path) -> set[str]:
        return planned_rules(snakemake(work, TARGET, "-n", "--configfile", str(config)))

    assert plan(work / "tiny.yaml") == set()
    assert plan(write_tiny(tmp_path / "tau.yaml", affinity={"tau_flow": 0.7})) == {"affinity"}
    assert plan(write_tiny(tmp_path / "flow.yaml", flow={"dis": {"preset": "fast"}})) == {"flow", "affinity"}
    assert plan(write_tiny(tmp_path / "train.yaml", train={"iters": 7})) == set()


def test_every_job_log_grows_by_lines(tiny_run) -> None:
    """Each job's log file (stderr is not a terminal) holds whole lines: progress bars write no carriage
    returns, so `tail -f` and a SLURM log show one report per line; and no Python warning from our calls."""
    logs = sorted((tiny_run.work / "logs").rglob("*.log"))
    stages = {log.relative_to(tiny_run.work / "logs").parts[0] for log in logs}
    assert {"synthetic", "flow", "affinity", "flow_quality", "train", "evaluate"} <= stages, stages
    for log in logs:
        text = log.read_text()
        assert "\r" not in text, log
        assert "Warning: " not in text, (log, [line for line in text.splitlines() if "Warning: " in line])
