"""Kill the trainer mid-run and rerun it: it resumes and ends with the weights of an uninterrupted run; a
truncated newest checkpoint makes the rerun fall back to the previous one, with the same end result. A run that
fails on a damaged input leaves no final.pt, only the checkpoints written before the failure."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BAD_ROW, damaged_copy
from model.data import FrameDataset, grouped_batches
from model.train import TrainParams, find_resume, run_key, save_checkpoint
from pipeline.identity import input_identity
from pipeline.io import params_from_json

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def params() -> TrainParams:
    """The tiny schedule, 6 iterations, a checkpoint every 2."""
    train = json.loads((HERE / "tiny_train.json").read_text())
    train.update(iters=6, checkpoint_every=2)
    return params_from_json(TrainParams, json.dumps(train), "train")


def command(data: dict, out: Path, train_params: TrainParams | None = None) -> list[str]:
    """`python -m model.train` (one process, no torchrun) on the tiny data, tiny model and schedule."""
    train = dataclasses.asdict(train_params or params())
    return [sys.executable, "-m", "model.train", "--model-params", (HERE / "tiny_model.json").read_text(),
            "--train-params", json.dumps(train), "--index", str(data["index"]), "--frames", str(data["frames"]),
            "--flow", str(data["flow"]), "--affinity", str(data["affinity"]), "--out", str(out),
            "--workers", "1", "--log-every", "1", "--device", "cpu", "--threads", "1"]


def run(cmd: list[str]) -> str:
    """Run to completion; return stderr (the log)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def assert_same_weights(a: Path, b: Path) -> None:
    """Two final.pt hold bit-identical tensors (parameters and BatchNorm statistics)."""
    sa, sb = torch.load(a, weights_only=True)["model"], torch.load(b, weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_data: dict, tmp_path: Path) -> None:
    """SIGKILL after the step-2 checkpoint, rerun: resumes at step ≥ 2 and matches the straight run bit for
    bit; then truncating the newest checkpoint and rerunning resumes from the one before, same result."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(command(tiny_data, straight))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command(tiny_data, killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    inputs = input_identity(tiny_data["index"], tiny_data["flow"], tiny_data["affinity"])
    ckpt = killed / "checkpoints" / run_key(json.loads((HERE / "tiny_model.json").read_text()), params(), inputs)
    sidecar = ckpt / "ckpt_00000002.pt.sha256"
    deadline = time.monotonic() + 240
    while not sidecar.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.pt").exists(), "the run finished before it could be killed"

    log = run(command(tiny_data, killed))
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert resumed and "at step 6" not in resumed[0], log[-2000:]
    assert_same_weights(straight / "final.pt", killed / "final.pt")
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # lines past the checkpoint were trimmed, none duplicated

    (killed / "final.pt").unlink()
    newest = ckpt / "ckpt_00000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    log = run(command(tiny_data, killed))
    assert "ckpt_00000006.pt" in log and "truncated or corrupt" in log
    assert "ckpt_00000004.pt at step 4" in log
    assert_same_weights(straight / "final.pt", killed / "final.pt")


def test_a_shortened_run_resumes_from_a_checkpoint_within_its_iterations(tmp_path: Path) -> None:
    """After a run to step 6 (checkpoints 2, 4, 6, `last` naming 6), train.iters 5 resumes step 4, 6 step 6,
    and 1 finds nothing (it trains from step 0): a shorter run never ends with the longer run's weights."""
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, {"step": step, "weight": torch.full((2,), float(step))}, step, keep=3)
    assert find_resume(tmp_path, 6)[1]["step"] == 6
    path, state = find_resume(tmp_path, 5)
    assert path.name == "ckpt_00000004.pt" and torch.equal(state["weight"], torch.full((2,), 4.0))
    assert find_resume(tmp_path, 4)[1]["step"] == 4
    assert find_resume(tmp_path, 1) is None


def test_a_run_failing_on_a_damaged_input_leaves_no_final_model(tiny_data: dict, tmp_path: Path) -> None:
    """A flow chunk damaged at BAD_ROW, drawn at iteration k > 0 (checkpoint every step): the run exits non-zero
    with the store, video and frame in its log, writes no final.pt and keeps only checkpoints of steps ≤ k."""
    paths, expected = damaged_copy(tiny_data, tmp_path, "flow_corrupt_chunk")
    base = params()
    groups = FrameDataset(paths["index"], paths["frames"], paths["flow"], paths["affinity"], (64,), 128, 0.0,
                          load_flow=True, load_flow_pairs=True).aspect_groups
    for seed in range(100):  # a seed whose batches first draw the row after iteration 0
        stream = grouped_batches(groups, base.batch_size, seed)
        first_bad = next(i for i in range(1000) if BAD_ROW in next(stream))
        if first_bad > 0:
            break
    train = dataclasses.replace(base, seed=seed, iters=first_bad + 3, checkpoint_every=1, steps=[first_bad + 2])
    out = tmp_path / "run"
    done = subprocess.run(command(paths, out, train), cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert expected in done.stderr, done.stderr[-3000:]
    assert not (out / "final.pt").exists()
    steps = sorted(int(p.stem.removeprefix("ckpt_")) for p in out.glob("checkpoints/*/ckpt_*.pt"))
    assert steps and max(steps) <= first_bad, steps
