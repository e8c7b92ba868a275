"""Rule `affinity` on a tiny synthetic dataset: it runs, and config edits rerun exactly what they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from smk import REPO, planned_rules, snakemake

TARGET = "results/affinity/shard_0.zarr"


def write_config(path: Path, **affinity_and_flow) -> Path:
    """A config override: a tiny synthetic dataset, 2 videos per shard, and the given section edits."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"]["synthetic"] |= {"videos": 3, "frames": 3, "height": 64, "width": 64}
    config["flow"]["shard_size"] = 2
    for section, values in affinity_and_flow.items():
        config[section] |= values
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_rule_runs_and_reruns_on_affinity_edits_only(tmp_path: Path) -> None:
    import zarr

    base = write_config(tmp_path / "base.yaml")
    run = snakemake(tmp_path, TARGET, "--cores", "1", "--configfile", str(base))
    assert run.returncode == 0, run.stdout + run.stderr
    store = zarr.open_group(str(tmp_path / TARGET), mode="r")
    assert len(store.attrs["videos"]) == 2 and store.attrs["params"]["tau_flow"] == 0.6
    for vid in store.attrs["videos"]:
        color = store[str(vid)]["color"][...]
        assert color.shape == (3, 16, 16) and color.dtype == np.uint8
    assert (tmp_path / "logs/affinity/shard_0.json").is_file()

    assert planned_rules(snakemake(tmp_path, TARGET, "-n", "--configfile", str(base))) == set()
    tau = write_config(tmp_path / "tau.yaml", affinity={"tau_flow": 0.7})
    assert planned_rules(snakemake(tmp_path, TARGET, "-n", "--configfile", str(tau))) == {"affinity"}
    flow = write_config(tmp_path / "flow.yaml", flow={"dis": {"preset": "fast"}})
    assert planned_rules(snakemake(tmp_path, TARGET, "-n", "--configfile", str(flow))) == {"flow", "affinity"}
    train = write_config(tmp_path / "train.yaml", train={"iters": 7})
    assert planned_rules(snakemake(tmp_path, TARGET, "-n", "--configfile", str(train))) == set()
