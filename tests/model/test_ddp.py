"""Two gloo processes against one: replicas stay identical, and per-rank batch b over 2 ranks equals one
process with batch 2b when the losses are normalised by global counts."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from model.batch import Batch
from model.train import RunPaths, TrainParams, build_network, parameter_digest, train
from pipeline.io import params_from_json

HERE = Path(__file__).parent


def tiny_params(**changes) -> TrainParams:
    """tests/model/tiny_train.json with `changes`."""
    raw = json.loads((HERE / "tiny_train.json").read_text())
    return params_from_json(TrainParams, json.dumps({**raw, **changes}), "train")


def tiny_model() -> dict:
    """tests/model/tiny_model.json: resnet18, 16-channel FPN, two streams."""
    return json.loads((HERE / "tiny_model.json").read_text())


def global_count(x: float, device: torch.device) -> torch.Tensor:
    """Σ over ranks of a local count (the local count without DDP)."""
    total = torch.tensor(float(x), device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return total


class ProbeNet(nn.Module):
    """A small net over every field of a Batch whose losses are sums divided by global counts (×world, as
    DDP averages gradients), so its gradient does not depend on how the global batch is split. Only the
    trainer's data split, augmentation seeding, gradient averaging and schedule can make 2×b differ from 2b."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.image = nn.Conv2d(3, 4, 3, padding=1)
        self.flow = nn.Conv2d(3, 4, 3, padding=1)
        self.pairs = nn.Conv2d(4, 8, 1)
        self.classify = nn.Linear(4, num_classes)

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """loss_pair: BCE of stride-4 logits against pair_color & pair_flow on the frames' cells;
        loss_cls: CE of the class from the feature at each box centre. Both × min(step / 4, 1) + const."""
        world = dist.get_world_size() if dist.is_initialized() else 1
        x = F.relu(self.image(batch.images / 255) + self.flow(batch.flows / 255))  # (N, 4, H, W)
        f4 = F.avg_pool2d(x, 4)  # (N, 4, H/4, W/4)
        logits = self.pairs(f4)  # (N, 8, H/4, W/4)
        valid = torch.zeros_like(logits)
        for i, (h, w) in enumerate(batch.image_sizes):
            valid[i, :, :math.ceil(h / 4), :math.ceil(w / 4)] = 1
        target = (batch.pair_color & batch.pair_flow).float()
        pair_sum = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid).sum()
        cls_sum, boxes = logits.sum() * 0.0, 0
        for i, (b, c) in enumerate(zip(batch.boxes_xyxy, batch.classes)):
            if len(b):
                centre = ((b[:, :2] + b[:, 2:]) / 2 / 4).long()  # (G, 2) cell x, y
                feats = f4[i, :, centre[:, 1], centre[:, 0]].T  # (G, 4)
                cls_sum = cls_sum + F.cross_entropy(self.classify(feats), c, reduction="sum")
                boxes += len(b)
        warm = min(step / 4, 1.0)
        return {"loss_pair": pair_sum * world / global_count(valid.sum().item(), logits.device),
                "loss_cls": warm * cls_sum * world / global_count(boxes, logits.device).clamp(min=1)}


def build_probe(model_params: dict, num_classes: int) -> tuple[nn.Module, bool, bool]:
    """BuildModel of the ProbeNet (reads flow images and flow masks)."""
    return ProbeNet(num_classes), True, True


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, paths: RunPaths, model_params: dict, params: TrainParams,
               build) -> None:
    """Entry of one spawned rank: torchrun's environment, then the trainer."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(paths, model_params, params, build)


def run(world: int, out: Path, data: dict, params: TrainParams, model_params: dict, build) -> dict:
    """Train in `world` spawned gloo processes; return final.pt."""
    paths = RunPaths(index=data["index"], frames=data["frames"], flow=data["flow"], affinity=data["affinity"],
                     out=out, workers=0, log_every=1, device="cpu")
    mp.spawn(_rank_main, args=(world, free_port(), paths, model_params, params, build), nprocs=world)
    return torch.load(out / "final.pt", weights_only=True)


def test_two_ranks_with_batch_b_match_one_process_with_batch_2b(tiny_data: dict, tmp_path: Path) -> None:
    """Same global batch (4) split 2×2 or 1×4: final weights agree to float32 rounding."""
    params = tiny_params(iters=4, batch_size=4, base_batch=4, lr=0.5, warmup_iters=1, steps=[3])
    one = run(1, tmp_path / "one", tiny_data, params, {}, build_probe)
    two = run(2, tmp_path / "two", tiny_data, params, {}, build_probe)
    torch.manual_seed(params.seed)
    init = ProbeNet(2).state_dict()
    for name, value in one["model"].items():
        assert not torch.allclose(value, init[name]), f"{name} did not train"
        torch.testing.assert_close(two["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # logged losses are the mean over ranks


def test_gloo_ranks_keep_identical_parameters(tiny_data: dict, tmp_path: Path) -> None:
    """The real network in two processes: every checkpoint's per-rank weight digests agree, and equal the
    digest of the saved weights; training moved them away from the initial weights."""
    params = tiny_params(iters=4, batch_size=2, checkpoint_every=2)
    final = run(2, tmp_path / "out", tiny_data, params, tiny_model(), build_network)
    network, _, _ = build_network(tiny_model(), 2)
    initial = parameter_digest(network)
    for path in sorted((tmp_path / "out" / "checkpoints").glob("*/ckpt_*.pt")):
        state = torch.load(path, weights_only=True)
        digests = state["param_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]
        network.load_state_dict(state["model"])
        assert parameter_digest(network) == digests[0] != initial
    assert final["step"] == 4


class NanAt(ProbeNet):
    """ProbeNet whose loss is NaN at the steps in `bad` (all steps when bad is None)."""

    bad: set[int] | None = {2}

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        losses = super().forward(batch, step)
        if self.bad is None or step in self.bad:
            losses["loss_pair"] = losses["loss_pair"] * float("nan")
        return losses


def build_nan_at_2(model_params: dict, num_classes: int) -> tuple[nn.Module, bool, bool]:
    return NanAt(num_classes), True, True


def build_nan_always(model_params: dict, num_classes: int) -> tuple[nn.Module, bool, bool]:
    model = NanAt(num_classes)
    model.bad = None
    return model, True, True


def test_non_finite_step_is_skipped_and_repeated_ones_stop(tiny_data: dict, tmp_path: Path) -> None:
    """A NaN loss at step 2 leaves the weights as after step 1 and is logged as skipped; NaN at every step
    stops after max_bad_steps with an error naming the count and the fix."""
    paths = RunPaths(index=tiny_data["index"], frames=tiny_data["frames"], flow=tiny_data["flow"],
                     affinity=tiny_data["affinity"], out=tmp_path / "once", workers=0, log_every=1,
                     keep_checkpoints=10, device="cpu")
    train(paths, {}, tiny_params(iters=3, checkpoint_every=1), build_nan_at_2)
    ckpt = next((tmp_path / "once" / "checkpoints").iterdir())
    after = [torch.load(ckpt / f"ckpt_{s:08d}.pt", weights_only=True)["model"] for s in (1, 2, 3)]
    for name in after[0]:
        assert torch.equal(after[0][name], after[1][name]), name  # step 2 skipped
    assert any(not torch.equal(after[1][n], after[2][n]) for n in after[1])  # step 3 trained
    records = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [2]

    paths = dataclasses.replace(paths, out=tmp_path / "always")
    with pytest.raises(RuntimeError, match="3 non-finite training steps in a row.*train.grad_clip"):
        train(paths, {}, tiny_params(iters=6, max_bad_steps=3), build_nan_always)


def _metrics(out: Path) -> list[dict]:
    """The records of out/metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_statistics_every_k_steps_are_the_mean_of_per_step_ones(tiny_data: dict, tmp_path: Path) -> None:
    """log_every 3 records (steps 3, 6) hold the mean of the per-step records of the same trajectory, and a NaN
    at step 2 is skipped (weights, later losses unchanged vs log_every 1) and counted in its window."""
    def paths(name: str, log_every: int) -> RunPaths:
        return RunPaths(index=tiny_data["index"], frames=tiny_data["frames"], flow=tiny_data["flow"],
                        affinity=tiny_data["affinity"], out=tmp_path / name, workers=0, log_every=log_every,
                        device="cpu")
    params = tiny_params(iters=6, checkpoint_every=6)
    train(paths("each", 1), {}, params, build_nan_at_2)
    train(paths("every3", 3), {}, params, build_nan_at_2)
    each, every3 = _metrics(tmp_path / "each"), _metrics(tmp_path / "every3")
    assert [r["step"] for r in every3] == [3, 6] and [r["skipped"] for r in each] == [0, 1, 0, 0, 0, 0]
    assert [(r["steps"], r["skipped"]) for r in every3] == [(3, 1), (3, 0)]
    for record, steps in zip(every3, ([1, 3], [4, 5, 6])):  # the finite steps of each window
        for name in ("loss", "loss_pair", "loss_cls", "grad_norm"):
            want = sum(each[s - 1][name] for s in steps) / len(steps)
            assert record[name] == pytest.approx(want, rel=1e-6), (record["step"], name)


def test_non_finite_steps_stop_the_run_at_the_next_record(tiny_data: dict, tmp_path: Path) -> None:
    """With log_every 4 and max_bad_steps 3, NaN at every step stops the run at step 4 (the first record)."""
    paths = RunPaths(index=tiny_data["index"], frames=tiny_data["frames"], flow=tiny_data["flow"],
                     affinity=tiny_data["affinity"], out=tmp_path / "out", workers=0, log_every=4, device="cpu")
    with pytest.raises(RuntimeError, match="4 non-finite training steps in a row \\(by step 4"):
        train(paths, {}, tiny_params(iters=10, checkpoint_every=10, max_bad_steps=3), build_nan_always)


def test_channels_last_training_gives_the_same_losses(tiny_data: dict, tmp_path: Path) -> None:
    """The real network trained 2 steps in channels_last memory (model and batches) logs the losses of
    contiguous training within float32 rounding (rel 1e-5), and ends with its weights (abs 5e-5)."""
    finals = {}
    for layout in (False, True):
        out = tmp_path / str(layout)
        paths = RunPaths(index=tiny_data["index"], frames=tiny_data["frames"], flow=tiny_data["flow"],
                         affinity=tiny_data["affinity"], out=out, workers=0, log_every=1, device="cpu")
        finals[layout] = torch.load(train(paths, tiny_model(), tiny_params(iters=2, checkpoint_every=2,
                                                                           channels_last=layout)),
                                    weights_only=True)["model"]
    plain, last = _metrics(tmp_path / "False"), _metrics(tmp_path / "True")
    assert len(plain) == len(last) == 2
    for a, b in zip(plain, last):
        for name in (n for n in a if n.startswith("loss")):
            assert b[name] == pytest.approx(a[name], rel=1e-5), (a["step"], name)
        # the global gradient norm: convolution weight gradients summed in another order (measured: 6e-4 at step 3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=2e-3), a["step"]
    for name, value in finals[False].items():  # apart from float rounding (measured after 3 steps: ≤ 2.2e-5)
        torch.testing.assert_close(finals[True][name], value, rtol=1e-3, atol=5e-5, msg=name)


def _network_batch() -> Batch:
    """4 frames of one size (so padding is the same however they are split) with different boxes and pairs."""
    gen = torch.Generator().manual_seed(5)
    boxes = [torch.tensor([[8.0, 6.0, 50.0, 40.0]]), torch.tensor([[40.0, 20.0, 90.0, 60.0], [4.0, 4.0, 30.0, 50.0]]),
             torch.tensor([[10.0, 30.0, 60.0, 62.0]]), torch.tensor([[50.0, 2.0, 94.0, 34.0]])]
    return Batch(images=(torch.rand(4, 3, 64, 96, generator=gen) * 255).to(torch.uint8),
                 flows=(torch.rand(4, 3, 64, 96, generator=gen) * 255).to(torch.uint8), image_sizes=[(64, 96)] * 4,
                 boxes_xyxy=boxes, classes=[torch.arange(len(b)) % 2 for b in boxes],
                 pair_color=torch.rand(4, 8, 16, 24, generator=gen) > 0.3,
                 pair_flow=torch.rand(4, 8, 16, 24, generator=gen) > 0.3)


def _part(batch: Batch, lo: int, hi: int) -> Batch:
    """Frames lo..hi-1 of a batch."""
    return Batch(batch.images[lo:hi], batch.flows[lo:hi], batch.image_sizes[lo:hi], batch.boxes_xyxy[lo:hi],
                 batch.classes[lo:hi], batch.pair_color[lo:hi], batch.pair_flow[lo:hi])


def _network_grads(batch: Batch) -> dict[str, torch.Tensor]:
    """Gradient of the real network's total loss (step past the pairwise warm-up), averaged over ranks as DDP
    does. eval(): the mask branch's BatchNorm uses its running statistics, which no split can change (its
    per-process batch statistics on a CPU can; on GPUs the trainer uses SyncBatchNorm when train.sync_bn)."""
    network, _, _ = build_network(tiny_model(), 2)
    network.eval()
    sum(network(batch, step=100).values()).backward()
    grads = {n: p.grad.clone() for n, p in network.named_parameters() if p.grad is not None}
    if dist.is_initialized():
        for g in grads.values():
            dist.all_reduce(g)
            g /= dist.get_world_size()
    return grads


def _grads_rank(rank: int, world: int, port: int, out: Path) -> None:
    """One gloo rank: the gradient of its half of the batch, averaged over both ranks; rank 0 saves it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    per = 4 // world
    grads = _network_grads(_part(_network_batch(), rank * per, (rank + 1) * per))
    if rank == 0:
        torch.save(grads, out)
    dist.destroy_process_group()


def test_network_losses_are_normalised_over_ranks(tmp_path: Path) -> None:
    """The real network's loss terms divide by counts averaged over ranks (positives, instances, edge weights),
    so 2 ranks × 2 frames give the gradient of 1 process × 4 frames."""
    torch.manual_seed(0)
    one = _network_grads(_network_batch())
    mp.spawn(_grads_rank, args=(2, free_port(), tmp_path / "two.pt"), nprocs=2)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert set(one) == set(two) and len(one) > 50
    for name, g in one.items():
        torch.testing.assert_close(two[name], g, rtol=1e-4, atol=1e-6, msg=name)
