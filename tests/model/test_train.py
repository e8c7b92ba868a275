"""model/train.py pieces: the lr schedule, weight-decay groups, checkpoints and their fallback, the launcher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from model.launch import launch_command
from model.train import (TrainParams, differing_fields, find_resume, load_checkpoint, lr_at, param_groups,
                         run_key, save_checkpoint, trim_metrics)
from pipeline.io import params_from_json

PAPER = dict(lr=0.01, warmup_iters=1000, warmup_factor=0.001, steps=(60000, 80000), gamma=0.1)


@pytest.mark.parametrize("step, expected", [
    (0, 0.01 * 0.001),                              # warm-up starts at warmup_factor · lr
    (500, 0.01 * (0.001 * 0.5 + 0.5)),              # half-way: the mean of factor and 1
    (999, 0.01 * (0.001 * 0.001 + 0.999)),          # last warm-up iteration
    (1000, 0.01),                                   # warm-up over
    (59999, 0.01),
    (60000, 0.001),                                 # first milestone
    (79999, 0.001),
    (80000, 0.0001),                                # second milestone
    (89999, 0.0001),
])
def test_lr_at_paper_schedule_boundaries(step: int, expected: float) -> None:
    """Hand-computed values of method §6's schedule (lr 0.01, warm-up 1000 from 0.001, ×0.1 at 60k, 80k)."""
    assert lr_at(step, **PAPER) == pytest.approx(expected, rel=1e-12)


def test_lr_at_without_warmup_and_milestone_inside_warmup() -> None:
    """warmup_iters 0 means full lr at step 0; a milestone during warm-up multiplies the warm-up value."""
    assert lr_at(0, 0.02, 0, 0.5, (), 0.1) == 0.02
    assert lr_at(2, 1.0, 4, 0.2, (1,), 0.5) == pytest.approx((0.2 * 0.5 + 0.5) * 0.5)


def test_linear_scaling_of_lr() -> None:
    """scaled_lr = lr · batch / base_batch: batch 8 at base 0.01/16 gives 0.005 (AdelaiDet#325)."""
    raw = json.loads(Path(__file__).with_name("tiny_train.json").read_text())
    params = params_from_json(TrainParams, json.dumps({**raw, "batch_size": 8, "base_batch": 16,
                                                       "lr": 0.01}), "train")
    assert params.scaled_lr == pytest.approx(0.005)


def test_train_params_reject_bad_values() -> None:
    """Errors name the config field."""
    raw = json.loads(Path(__file__).with_name("tiny_train.json").read_text())
    with pytest.raises(ValueError, match="train.amp"):
        params_from_json(TrainParams, json.dumps({**raw, "amp": "off"}), "train")
    with pytest.raises(ValueError, match="train.steps"):
        params_from_json(TrainParams, json.dumps({**raw, "steps": [5, 3]}), "train")
    with pytest.raises(ValueError, match="unknown keys"):
        params_from_json(TrainParams, json.dumps({**raw, "learning_rate": 1}), "train")


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    """Norm weights/biases, conv biases and scalars get no decay; frozen parameters are left out."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model.scale = nn.Parameter(torch.tensor(1.0))
    model[3].bias.requires_grad_(False)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].weight), id(model[2].bias), id(model.scale)}


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}, "step": int(value)}


def test_corrupt_or_truncated_checkpoint_falls_back_to_the_previous(tmp_path: Path) -> None:
    """A truncated file, a flipped byte and a missing checksum are each detected; the previous one is used."""
    ckpt = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        save_checkpoint(ckpt, _state(step), step, keep=4)
    assert (ckpt / "last").read_text() == "ckpt_00000008.pt"
    path, state = find_resume(ckpt)
    assert path.name == "ckpt_00000008.pt" and state["step"] == 8

    newest = ckpt / "ckpt_00000008.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(newest)
    assert find_resume(ckpt)[1]["step"] == 6

    middle = ckpt / "ckpt_00000006.pt"
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    middle.write_bytes(bytes(data))
    assert find_resume(ckpt)[1]["step"] == 4

    (ckpt / "ckpt_00000004.pt.sha256").unlink()  # killed between the file and its checksum
    assert find_resume(ckpt)[1]["step"] == 2


def test_keep_prunes_old_checkpoints(tmp_path: Path) -> None:
    """Only the newest `keep` checkpoints (and their checksums) stay."""
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, _state(step), step, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_00000002.pt", "ckpt_00000002.pt.sha256", "ckpt_00000003.pt", "ckpt_00000003.pt.sha256", "last"]


def test_no_checkpoint_means_fresh_start(tmp_path: Path) -> None:
    """An empty or absent folder resumes nothing."""
    assert find_resume(tmp_path / "absent") is None
    assert find_resume(tmp_path) is None


def test_trim_metrics_drops_steps_after_the_resume_point(tmp_path: Path) -> None:
    """Lines logged after the checkpoint a run resumes from are removed."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4, 5)))
    trim_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_differing_fields_lists_each_change() -> None:
    """Architecture comparison on resume names the field, old and new value."""
    assert differing_fields({"backbone": "resnet50", "a": 1}, {"backbone": "resnet101", "a": 1}) == [
        "backbone: 'resnet50' -> 'resnet101'"]
    assert differing_fields({"a": 1}, {"a": 1, "b": 2}) == ["b: '<absent>' -> 2"]


@pytest.mark.parametrize("gpus, threads, nproc, device, workers, compute", [
    (0, 2, 1, "cpu", 1, 1),
    (0, 1, 1, "cpu", 0, 1),
    (0, 8, 1, "cpu", 1, 7),
    (1, 8, 1, "cuda", 7, 1),
    (4, 64, 4, "cuda", 15, 1),
])
def test_launch_command(gpus: int, threads: int, nproc: int, device: str, workers: int, compute: int) -> None:
    """One process per GPU (one on the CPU); threads shared out as loader workers and compute threads."""
    cmd = launch_command(gpus, threads, ["--out", "x"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    assert cmd[5:9] == ["-m", "model.train", "--out", "x"]
    assert cmd[9:] == ["--device", device, "--workers", str(workers), "--threads", str(compute)]


def test_run_key_keeps_extended_runs_and_separates_changed_ones() -> None:
    """More iterations (or another checkpoint period) resume the same trajectory; any other change, in the
    train or the model section or in the identity of the inputs, gets its own checkpoint folder."""
    raw = json.loads(Path(__file__).with_name("tiny_train.json").read_text())
    params = lambda **c: params_from_json(TrainParams, json.dumps({**raw, **c}), "train")  # noqa: E731
    inputs = {"index": {"content_sha256": "1" * 64}, "affinity/shard_0.zarr": {"content_sha256": "2" * 64}}
    key = run_key({"backbone": "resnet18"}, params(), inputs)
    assert run_key({"backbone": "resnet18"}, params(iters=600, checkpoint_every=7, max_bad_steps=9), inputs) == key
    assert run_key({"backbone": "resnet18"}, params(lr=0.02), inputs) != key
    assert run_key({"backbone": "resnet18"}, params(seed=1), inputs) != key
    assert run_key({"backbone": "resnet50"}, params(), inputs) != key
    other = {**inputs, "affinity/shard_0.zarr": {"content_sha256": "3" * 64}}
    assert run_key({"backbone": "resnet18"}, params(), other) != key
    assert run_key({"backbone": "resnet18"}, params(iters=600), other) == run_key({"backbone": "resnet18"},
                                                                                 params(), other)
