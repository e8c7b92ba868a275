"""A flow shard job SIGKILLed while it writes: --keep-going finishes the other shards, nothing half-written is
taken for output, and the rerun redoes exactly the killed shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.shards import videos_of_shard
from smk import REPO, command, environment, module_processes, snakemake

SHARDS = 3
SHARD_SIZE = 3
KILLED = 1

# 3 shards of 3 videos; enough frames that writing a shard takes a noticeable time
CONFIG = f"""
dataset:
  synthetic: {{videos: {SHARDS * SHARD_SIZE}, frames: 16, height: 128, width: 160, seed: 3}}
flow:
  estimator: dis
  shard_size: {SHARD_SIZE}
"""


def flow_args(workdir: Path) -> list[str]:
    """snakemake's arguments: the flow targets through the local profile with --keep-going, `workdir`'s config."""
    targets = [f"results/flow/shard_{k}.zarr" for k in range(SHARDS)]
    return [*targets, "--profile", str(REPO / "workflow/profiles/local"), "--cores", "2", "--keep-going",
            "--configfile", str(workdir / "tiny.yaml")]


def cpu_only() -> dict[str, str]:
    """The tests' environment with the local profile's GPU cap at zero."""
    return environment(MOWIS_GPUS="0")


def flow_process(shard: int) -> int | None:
    """The pid of a running `python -m pipeline.flow ... --shard <shard>` process, if there is one."""
    for pid, (args, _) in module_processes("pipeline.flow").items():
        if any(args[i:i + 2] == ["--shard", str(shard)] for i in range(len(args) - 1)):
            return pid
    return None


def kill_while_writing(shard: int, flow_dir: Path, run: subprocess.Popen, timeout: float = 240.0) -> None:
    """Wait for shard's flow process, let it run in 50 ms steps until its temporary store exists, SIGKILL it."""
    deadline = time.monotonic() + timeout
    pid = None
    while pid is None:
        assert run.poll() is None, "snakemake ended before the shard job started"
        assert time.monotonic() < deadline, f"no pipeline.flow process for shard {shard}"
        pid = flow_process(shard)
        time.sleep(0.01)
    os.kill(pid, signal.SIGSTOP)
    while not list(flow_dir.glob(f".shard_{shard}.zarr.*.tmp")):
        assert time.monotonic() < deadline, "the shard job never started writing"
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
        os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_killed_shard_is_the_only_one_rerun(tmp_path: Path) -> None:
    """Kill shard 1 mid-write; shards 0 and 2 complete, shard 1 is missing, and only it is planned and rerun."""
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    flow_dir = tmp_path / "results/flow"
    run = subprocess.Popen(command(tmp_path, *flow_args(tmp_path)), env=cpu_only(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        kill_while_writing(KILLED, flow_dir, run)
        output, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode != 0, output  # one job failed
    done = {k for k in range(SHARDS) if (flow_dir / f"shard_{k}.zarr").is_dir()}
    assert done == set(range(SHARDS)) - {KILLED}, output  # --keep-going: the independent shards finished
    assert list(flow_dir.glob(f".shard_{KILLED}.zarr.*.tmp")), "the killed job's temporary store is gone?"
    stamps = {k: (flow_dir / f"shard_{k}.zarr/zarr.json").stat().st_mtime_ns for k in done}

    plan = snakemake(tmp_path, *flow_args(tmp_path), "-n", env=cpu_only(), timeout=300)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    planned = [line.split("=")[-1] for line in plan.stdout.splitlines() if line.strip().startswith("wildcards: k=")]
    assert planned == [str(KILLED)], plan.stdout

    rerun = snakemake(tmp_path, *flow_args(tmp_path), env=cpu_only(), timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stderr.count("rule flow:") == 1 and f"k={KILLED}" in rerun.stderr, rerun.stderr
    assert {k: (flow_dir / f"shard_{k}.zarr/zarr.json").stat().st_mtime_ns for k in done} == stamps
    assert not list(flow_dir.glob(f".shard_{KILLED}.zarr.*.tmp"))  # the stale temporary store was cleared
    attrs = json.loads((flow_dir / f"shard_{KILLED}.zarr/zarr.json").read_text())["attributes"]
    ids = sorted(v["id"] for v in json.loads((tmp_path / "results/synthetic/train.json").read_text())["videos"])
    expected = videos_of_shard(ids, KILLED, SHARD_SIZE)
    assert attrs["videos"] == expected and len(expected) == SHARD_SIZE
