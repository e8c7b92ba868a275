"""Rule `affinity` on a tiny synthetic dataset: it runs, and config edits rerun exactly what they should."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TARGET = "results/affinity/shard_0.zarr"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in `workdir`, this interpreter's bin folder first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def planned_rules(run: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a dry run lists."""
    assert run.returncode == 0, run.stdout + run.stderr
    return set(re.findall(r"^(?:local)?rule (\w+):", run.stdout, flags=re.M))


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
