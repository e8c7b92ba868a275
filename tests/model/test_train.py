"""model/train.py pieces: the lr schedule, weight-decay groups, checkpoints and their fallback, the launcher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from model.launch import launch_command
from model.train import (TrainParams, cosine_lr_at, differing_fields, find_resume, load_checkpoint, lr_at,
                         make_optimizer, param_groups, run_key, save_checkpoint, scheduled_lr, trim_metrics)
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


@pytest.mark.parametrize("step, expected", [
    (0, 0.004 * 0.001),                                            # warm-up from warmup_factor · lr, cosine 1
    (50, 0.004 * (0.001 * 0.5 + 0.5) * (2 + 2 ** 0.5 * (1 + 3 ** 0.5) / 2) / 4),  # cos(π/24) = (√6 + √2) / 4
    (200, 0.004 * 0.75),                                           # cos(π/3) = 1/2: (1 + 1/2) / 2
    (300, 0.004 * 0.5),                                            # half-way: cos(π/2) = 0
    (400, 0.004 * 0.25),                                           # cos(2π/3) = −1/2
    (600, 0.0),                                                    # the end: cos(π) = −1
])
def test_cosine_lr_hand_values(step: int, expected: float) -> None:
    """Warm-up 100 iterations from 0.001 · lr, then the half cosine to 0 at iteration 600, by hand."""
    assert cosine_lr_at(step, 0.004, 100, 0.001, 600) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_scheduled_lr_follows_the_configured_schedule() -> None:
    """schedule step gives lr_at's milestones, cosine the half cosine over `iters`, both at scaled_lr."""
    raw = json.loads(Path(__file__).with_name("tiny_train.json").read_text())  # lr 0.01, batch 2, base 2
    step_params = params_from_json(TrainParams, json.dumps({**raw, "iters": 8, "steps": [4]}), "train")
    cosine = params_from_json(TrainParams, json.dumps({**raw, "iters": 8, "schedule": "cosine"}), "train")
    assert [scheduled_lr(s, step_params) for s in (2, 3, 4)] == pytest.approx([0.01, 0.01, 0.001])
    assert [scheduled_lr(s, cosine) for s in (2, 4, 6)] == pytest.approx(
        [0.01 * (2 + 2 ** 0.5) / 4, 0.005, 0.01 * (2 - 2 ** 0.5) / 4])  # cos(π/4) = √2/2
    with pytest.raises(ValueError, match="train.schedule"):
        params_from_json(TrainParams, json.dumps({**raw, "schedule": "poly"}), "train")


def test_make_optimizer_sgd_and_adamw() -> None:
    """sgd: SGD with the momentum; adamw: AdamW with betas (momentum, 0.999); both at scaled_lr over
    param_groups' two groups (decay on everything but norm layers, the bias too). One AdamW step matches the update by hand."""
    raw = json.loads(Path(__file__).with_name("tiny_train.json").read_text())
    model = nn.Linear(3, 1)
    sgd = make_optimizer(model, params_from_json(TrainParams, json.dumps(raw), "train"))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.01
    params = params_from_json(TrainParams, json.dumps({**raw, "optimizer": "adamw", "weight_decay": 0.1}), "train")
    adamw = make_optimizer(model, params)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model(torch.ones(1, 3)).sum().backward()  # gradient 1 for every weight and the bias
    adamw.step()
    # first Adam step: m̂ = g, v̂ = g², so the step is lr · g / (|g| + eps) = lr; decoupled decay lr · wd · w
    lr, eps = 0.01, 1e-8
    assert torch.allclose(model.weight, w0 * (1 - lr * 0.1) - lr / (1 + eps), atol=1e-7)
    assert torch.allclose(model.bias, b0 * (1 - lr * 0.1) - lr / (1 + eps), atol=1e-7)
    with pytest.raises(ValueError, match="train.optimizer"):
        params_from_json(TrainParams, json.dumps({**raw, "optimizer": "adam"}), "train")


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


def test_weight_decay_as_detectron2_applies_it() -> None:
    """detectron2 (SOLVER.WEIGHT_DECAY_NORM 0, WEIGHT_DECAY_BIAS = WEIGHT_DECAY): norm layers' weights and
    biases get no decay; conv/linear weights, their biases and scalars do; frozen and shared ones as stated."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model.scale = nn.Parameter(torch.tensor(1.0))
    model.shared = model[0]  # the same conv twice: its parameters once
    model[3].bias.requires_grad_(False)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model.scale), id(model[0].weight), id(model[0].bias),
                                                id(model[3].weight)]
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].weight),
                                                   id(model[2].bias)}


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
    # memory layout and compilation: same arithmetic (tests/model/test_ddp.py measures the losses); TF32: not
    assert run_key({"backbone": "resnet18"}, params(channels_last=True, compile=True), inputs) == key
    assert run_key({"backbone": "resnet18"}, params(tf32=True), inputs) != key
    assert run_key({"backbone": "resnet18"}, params(seed=1), inputs) != key
    assert run_key({"backbone": "resnet50"}, params(), inputs) != key
    other = {**inputs, "affinity/shard_0.zarr": {"content_sha256": "3" * 64}}
    assert run_key({"backbone": "resnet18"}, params(), other) != key
    assert run_key({"backbone": "resnet18"}, params(iters=600), other) == run_key({"backbone": "resnet18"},
                                                                                 params(), other)
    # cosine: iters sets every iteration's rate (cosine_lr_at differs at step 1), so it is part of the key
    assert cosine_lr_at(1, 0.01, 0, 0.1, 6) != cosine_lr_at(1, 0.01, 0, 0.1, 600)
    cosine = run_key({"backbone": "resnet18"}, params(schedule="cosine"), inputs)
    assert cosine != key and run_key({"backbone": "resnet18"}, params(schedule="cosine", iters=600), inputs) != cosine
    assert run_key({"backbone": "resnet18"}, params(schedule="cosine", checkpoint_every=7), inputs) == cosine


def test_ytvis2019_config_is_the_papers_setting() -> None:
    """config/ytvis2019.yaml over config.yaml (as --configfile merges it) passes the schema, and its training
    is AdelaiDet's: fp32, per-GPU BatchNorm, weight decay 1e-4; its w/o-motion-for-mask row keeps 16 channels."""
    from snakemake.utils import update_config, validate

    from model.network import ModelParams
    from pipeline.config import coerce_numbers, load_schema
    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    update_config(config, yaml.safe_load((repo / "config/ytvis2019.yaml").read_text()))
    schema = repo / "workflow/schemas/config.schema.yaml"
    coerce_numbers(config, load_schema(schema))
    validate(config, str(schema))
    train = params_from_json(TrainParams, json.dumps(config["train"]), "train")
    assert (train.amp, train.sync_bn, train.weight_decay, train.momentum) == ("fp32", False, 1e-4, 0.9)
    assert (train.tf32, train.channels_last) == (False, True)  # true fp32 as the paper; layout is speed only
    assert (train.iters, train.batch_size, train.scaled_lr, train.steps) == (90000, 16, 0.01, (60000, 80000))
    for name, width in (("ours", 16), ("no_motion_mask", 16), ("mask_sum", 8), ("boxinst", 16)):
        model = ModelParams(**{**config["model"], **config["experiments"][name]["model"]})
        assert model.mask_head_channels == width, name
    for flawed in ({"amp": "fp64"}, {"sync_bn": "yes"}):
        with pytest.raises(Exception, match="amp|sync_bn"):
            validate({**config, "train": {**config["train"], **flawed}}, str(schema))
