"""Train the two-stream CondInst with plain PyTorch DDP (method §6). Reads top to bottom: params, DDP, data,
model and optimizer, resume, the loop, the final weights.

Launch (the `train` rule does this; `python -m model.launch` picks the process count):
    torchrun --standalone --nproc-per-node N -m model.train --model-params JSON --train-params JSON \
        --index results/index/train_train.h5 --frames <root>/JPEGImages --flow results/flow \
        --affinity results/affinity --out results/train/<exp>
One process without torchrun also works (CPU or one GPU). NCCL on GPUs, gloo on CPUs.

`results/train/<exp>/` holds `checkpoints/<run key>/ckpt_<step>.pt` (+ `.sha256`) and `.../last` (the newest
complete one), `metrics.jsonl`, TensorBoard events under `tb/`, and `final.pt` at the end: a dict with
`model` (state dict of TwoStreamCondInst), `model_params` (the model section with the experiment's overrides),
`train_params`, `inputs` (the input identity, below), `step`, `num_classes`, `category_ids` (class c is
category id category_ids[c]) and `category_names`; load it with torch.load(..., weights_only=True).

Resume: the run key (`run_key`) hashes the model section, the train fields that change what an iteration
computes (not `iters`), and the identity of the inputs: the attributes of the frame index and of every flow
and affinity store it names, each holding the params it was made with and a digest of its content
(pipeline.identity). A run resumes from the newest checkpoint of its key that loads and matches its
checksum, so a rerun after a crash, or with more `iters`, continues; after an edit of the data, the split,
the flow or the affinities (or of any other trajectory field) it trains from step 0 in a new key folder.
The log says which: "training from step 0" or "resumed from <checkpoint> at step N".
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.data import FrameDataset, IterationBatchSampler, collate, worker_init
from pipeline.field_types import check_field_types
from pipeline.identity import DIGEST_ATTR, input_identity
from pipeline.io import params_from_json, setup_logging, write_bytes_atomic
from pipeline.progress import LOG_INTERVAL, progress_bar

log = logging.getLogger("mowis.train")


# -----------------------------------------------------------------------------------------------------------
# Params: the `train` config section. Fields that change results have no defaults (config.yaml holds them).

@dataclass(frozen=True)
class TrainParams:
    """The `train` config section (method §6)."""

    iters: int  # training iterations
    batch_size: int  # global batch: images per iteration over all processes
    optimizer: Literal["sgd", "adamw"]  # SGD with momentum (the paper) or AdamW (decoupled weight decay)
    lr: float  # learning rate at base_batch images (linear scaling: scaled_lr = lr · batch_size / base_batch)
    base_batch: int
    momentum: float  # SGD's momentum; AdamW's beta1 (beta2 0.999)
    weight_decay: float  # on every trained parameter but those of norm layers (detectron2's default)
    schedule: Literal["step", "cosine"]  # after the warm-up: gamma at each of `steps`, or cosine to 0 at iters
    warmup_iters: int  # linear warm-up from warmup_factor·lr to lr
    warmup_factor: float
    steps: tuple[int, ...]  # iterations where lr is multiplied by gamma (schedule step)
    gamma: float
    min_sizes: tuple[int, ...]  # short side of a training frame, drawn uniformly
    max_size: int  # cap on the long side
    flip_prob: float
    grad_clip: float | None  # max global L2 norm of the gradients, or None
    amp: Literal["fp32", "bf16", "fp16"]  # autocast dtype on CUDA; CPU always runs fp32
    sync_bn: bool  # SyncBatchNorm over the GPUs; false = per-GPU BatchNorm statistics, as BoxInst
    checkpoint_every: int
    seed: int
    max_bad_steps: int  # stop after this many non-finite steps in a row (checked when statistics are gathered)
    channels_last: bool  # model and inputs in torch.channels_last memory (same numbers up to float rounding)
    tf32: bool  # CUDA matmuls and cuDNN convolutions may use TF32 (10-bit mantissa); false = true fp32
    compile: bool  # torch.compile the model (same numbers up to float rounding)

    def __post_init__(self) -> None:
        """Types are checked (a bool is not an int, NaN is not a number), lists from JSON become tuples, values
        are checked; errors name the config field. Steps may lie beyond iters here (a run stopped early);
        the workflow refuses them at start (pipeline/config.py schedule_errors)."""
        check_field_types(self, "train")
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "min_sizes", tuple(self.min_sizes))
        for name in ("iters", "batch_size", "base_batch", "checkpoint_every", "max_bad_steps", "max_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be ≥ 1, got {getattr(self, name)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"train.steps: must increase strictly, got {list(self.steps)}")
        if not self.min_sizes:
            raise ValueError("train.min_sizes: needs at least one size")

    @property
    def scaled_lr(self) -> float:
        """Peak learning rate after linear scaling by the global batch."""
        return self.lr * self.batch_size / self.base_batch


def warmup_at(step: int, warmup_iters: int, warmup_factor: float) -> float:
    """Factor of the linear warm-up at 0-based iteration `step`: warmup_factor at 0, rising to 1 at warmup_iters."""
    if step >= warmup_iters:
        return 1.0
    alpha = step / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def lr_at(step: int, lr: float, warmup_iters: int, warmup_factor: float, steps: tuple[int, ...],
          gamma: float) -> float:
    """Learning rate of 0-based iteration `step`: linear warm-up from warmup_factor·lr over warmup_iters,
    times gamma for every milestone in `steps` already reached (detectron2's WarmupMultiStepLR)."""
    return lr * warmup_at(step, warmup_iters, warmup_factor) * gamma ** bisect.bisect_right(steps, step)


def cosine_lr_at(step: int, lr: float, warmup_iters: int, warmup_factor: float, iters: int) -> float:
    """Learning rate of 0-based iteration `step`: the same linear warm-up, times the half cosine
    (1 + cos(π · step / iters)) / 2 from 1 at step 0 to 0 at `iters` (detectron2's WarmupCosineLR)."""
    return lr * warmup_at(step, warmup_iters, warmup_factor) * 0.5 * (1 + math.cos(math.pi * step / iters))


def scheduled_lr(step: int, params: TrainParams) -> float:
    """Learning rate of 0-based iteration `step` under the train section's schedule (peak: scaled_lr)."""
    if params.schedule == "cosine":
        return cosine_lr_at(step, params.scaled_lr, params.warmup_iters, params.warmup_factor, params.iters)
    return lr_at(step, params.scaled_lr, params.warmup_iters, params.warmup_factor, params.steps, params.gamma)


NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """SGD groups as detectron2 builds them for AdelaiDet (WEIGHT_DECAY_NORM = 0, WEIGHT_DECAY_BIAS =
    WEIGHT_DECAY): no decay on the parameters of norm layers (BN, GN affine), `weight_decay` on every other
    parameter, biases and scalars included. Frozen parameters are left out; a shared one counts once."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                (no_decay if isinstance(module, NORM_LAYERS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over `param_groups`, at the peak rate scaled_lr (the loop sets each step's).
    Fused: the step reads the optimizer's `found_inf` tensor and skips on the device, so the loop can skip a
    non-finite step without waiting for the GPU (GradScaler uses the same attribute)."""
    groups = param_groups(model, params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.scaled_lr, betas=(params.momentum, 0.999), fused=True)
    return torch.optim.SGD(groups, lr=params.scaled_lr, momentum=params.momentum, fused=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while isinstance(model, DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, DistributedDataParallel) else model._orig_mod
    return model


# -----------------------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary name and renamed, with a sha256 sidecar; `last` names the newest.

CHECKPOINT_PREFIX = "ckpt_"


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """ckpt_dir/ckpt_<step, 8 digits>.pt."""
    return ckpt_dir / f"{CHECKPOINT_PREFIX}{step:08d}.pt"


def save_checkpoint(ckpt_dir: Path, state: dict, step: int, keep: int) -> Path:
    """Save `state` as the checkpoint of `step` (file, then its checksum, then `last`); keep the newest `keep`."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(ckpt_dir, step)
    write_bytes_atomic(path, data)
    write_bytes_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    write_bytes_atomic(ckpt_dir / "last", path.name.encode())
    for old in list_checkpoints(ckpt_dir)[keep:]:
        if old != path:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files in `ckpt_dir`, newest step first (temporary files are hidden and not listed)."""
    return sorted(ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*.pt"), reverse=True)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint whose bytes match its sha256 sidecar, loaded with weights_only=True.
    Raises ValueError naming the file when it is truncated, corrupt or has no checksum."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        raise ValueError(f"{path}: no checksum file {sidecar.name} (the save did not finish)")
    data = path.read_bytes()
    expected = sidecar.read_text().strip()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual[:12]}… does not match {sidecar.name} ({expected[:12]}…); "
                         f"the file is truncated or corrupt")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError on damaged archives
        raise ValueError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from e


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's file name (ckpt_<step>.pt)."""
    return int(path.stem.removeprefix(CHECKPOINT_PREFIX))


def find_resume(ckpt_dir: Path, max_step: int | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies and loads: `last` first, then the others newest first; with
    `max_step` (train.iters), only checkpoints of steps up to it (a run shortened after a longer one)."""
    if not ckpt_dir.is_dir():
        return None
    candidates = list_checkpoints(ckpt_dir)
    pointer = ckpt_dir / "last"
    if pointer.exists():
        named = ckpt_dir / pointer.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    if max_step is not None:
        later = [c.name for c in candidates if checkpoint_step(c) > max_step]
        if later:
            log.info("%s: not resuming %s, past step %d", ckpt_dir, ", ".join(later), max_step)
        candidates = [c for c in candidates if checkpoint_step(c) <= max_step]
    for path in candidates:
        if not path.exists():
            log.warning("%s: named by %s but missing; trying older checkpoints", path, pointer)
            continue
        try:
            return path, load_checkpoint(path)
        except ValueError as e:
            log.warning("%s; trying the previous checkpoint", e)
    if candidates:
        log.warning("%s: no usable checkpoint; starting from scratch", ckpt_dir)
    return None


def rng_state() -> dict:
    """This process's RNG states (torch CPU and CUDA, numpy, random) in weights_only-loadable types."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "random": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def differing_fields(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between two flat config dicts, as 'key: saved -> current'."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


def parameter_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes in order: equal on all ranks while DDP keeps them in sync."""
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().cpu().reshape(-1).numpy().tobytes())
    return digest.hexdigest()


# Fields that do not change what an iteration computes: channels_last and compile pick other kernels for the same
# arithmetic (float rounding differs, as between cuDNN algorithms); tf32 lowers matmul precision, so it is part of
# the key.
TRAJECTORY_NEUTRAL = ("iters", "checkpoint_every", "max_bad_steps", "channels_last", "compile")


def run_key(model_params: dict, params: TrainParams, inputs: dict) -> str:
    """12 hex digits naming a training trajectory: the model section, the train fields that change what any
    iteration computes, and the input identity (pipeline.identity.input_identity). Extending `iters` keeps
    the key (the run resumes); any other change starts fresh in its own checkpoint folder, so a Snakemake
    rerun after a params or data change equals a fresh run. Under the cosine schedule `iters` sets every
    iteration's rate, so there it is part of the key."""
    neutral = [k for k in TRAJECTORY_NEUTRAL if not (k == "iters" and params.schedule == "cosine")]
    train = {k: v for k, v in dataclasses.asdict(params).items() if k not in neutral}
    text = json.dumps({"model": model_params, "train": train, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def trim_metrics(path: Path, step: int) -> None:
    """Drop lines of a metrics JSONL logged after `step` (by a run that died before its next checkpoint)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())


def record_has_values(record: dict) -> bool:
    """Whether a metrics.jsonl record holds loss values: the mean of at least one finite step (`steps` >
    `skipped`); a record of older logs with `skipped: true` was a single skipped step."""
    return record.get("steps", 1) > record.get("skipped", 0)


class StepStats:
    """Per-step statistics (total loss, each term, grad norm: the mean over ranks) kept on the device between
    records, so that a step never waits for the GPU: `add` accumulates the finite steps' sum, counts skipped
    (non-finite) steps and the current and longest run of them in a row; `gather` reads all of it with one
    device-to-host copy (the loop calls it every log_every steps, at checkpoints and at the end) and starts a
    new window. The run of non-finite steps carries over windows."""

    def __init__(self, size: int, device: torch.device):
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)  # (size,) Σ over finite steps
        self.counts = torch.zeros(4, dtype=torch.int64, device=device)  # finite, skipped, run now, longest run

    def add(self, stats: torch.Tensor, bad: torch.Tensor) -> None:
        """Account one step: stats (size,) float32, bad () bool (the step was skipped)."""
        self.sums += torch.where(bad, 0.0, stats.double())
        finite, skipped, run, longest = self.counts.unbind()
        run = torch.where(bad, run + 1, 0)
        self.counts = torch.stack([finite + (~bad), skipped + bad, run, torch.maximum(longest, run)])

    def gather(self) -> tuple[list[float], int, int, int]:
        """(mean stats of the window's finite steps, NaN if none; finite steps; skipped steps; longest run of
        non-finite steps in a row, this window or carried in); then a new window."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        finite, skipped, run, longest = counts
        self.sums.zero_()
        self.counts = torch.tensor([0, 0, run, run], dtype=torch.int64, device=self.counts.device)
        return [v / finite if finite else float("nan") for v in sums], finite, skipped, longest


# -----------------------------------------------------------------------------------------------------------
# The network of the model section, and which inputs it reads.

BuildModel = Callable[[dict, int], tuple[nn.Module, bool, bool]]


def build_network(model_params: dict, num_classes: int) -> tuple[nn.Module, bool, bool]:
    """TwoStreamCondInst of the model section; returns (module, reads flow images, reads flow pair masks)."""
    from model.network import ModelParams, TwoStreamCondInst
    params = params_from_json(ModelParams, json.dumps(model_params), "model")
    network = TwoStreamCondInst(params, num_classes)
    return network, params.flow_for_detection or params.flow_for_mask, params.flow_pairwise


@dataclass(frozen=True)
class RunPaths:
    """Inputs and output folder of one training run, and runtime knobs (they change no result)."""

    index: Path  # results/index/train_train.h5
    frames: Path  # <dataset root>/JPEGImages
    flow: Path  # results/flow
    affinity: Path  # results/affinity
    out: Path  # results/train/<exp>
    workers: int = 2  # loader worker processes per training process
    log_every: int = 20  # steps between metrics records, and between progress lines in a log file
    log_interval: float = LOG_INTERVAL  # seconds at least between two progress lines in a log file
    keep_checkpoints: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    flow_params: dict | None = None  # the flow section the stores were made with: final.pt keeps it for predict


def train(paths: RunPaths, model_params: dict, params: TrainParams, build_model: BuildModel = build_network) -> Path:
    """Train (or resume) one experiment; returns the path of final.pt (written by rank 0)."""
    # ---- DDP: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; without them this is one process.
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = paths.device == "cuda" or (paths.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # few input shapes: aspect grouping, sizes from train.min_sizes
        torch.backends.cuda.matmul.allow_tf32 = params.tf32
        torch.backends.cudnn.allow_tf32 = params.tf32  # torch's default is True: false keeps convolutions fp32
    memory_format = torch.channels_last if params.channels_last else torch.contiguous_format
    if ddp:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    master = rank == 0
    if params.batch_size % world_size:
        raise ValueError(f"train.batch_size {params.batch_size} is not divisible by {world_size} processes")
    torch.manual_seed(params.seed)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.amp) if use_cuda else None
    if master:
        paths.out.mkdir(parents=True, exist_ok=True)
        log.info("rank 0 of %d on %s; global batch %d (%d per process), lr %.4g, amp %s",
                 world_size, device, params.batch_size, params.batch_size // world_size, params.scaled_lr,
                 amp_dtype or "off")

    # ---- model and optimizer (same seed on every rank; DDP also broadcasts rank 0's weights).
    dataset_categories = FrameDataset.categories(paths.index)
    model, reads_flow, reads_flow_pairs = build_model(model_params, len(dataset_categories[0]))
    model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, params)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    # ---- resume: rank 0 reads the input identity and picks a checkpoint of the run key, every rank loads
    # the same file.
    choice = [None, None, None]  # input identity, checkpoint folder of the run key, checkpoint to resume from
    if master:
        inputs = input_identity(paths.index, paths.flow, paths.affinity)
        log.info("inputs: %s", ", ".join(f"{name} {attrs[DIGEST_ATTR][:12]}" for name, attrs in inputs.items()))
        ckpt_dir = paths.out / "checkpoints" / run_key(model_params, params, inputs)
        found = find_resume(ckpt_dir, params.iters)
        choice = [inputs, str(ckpt_dir), str(found[0]) if found else None]
    if ddp:
        dist.broadcast_object_list(choice, src=0)
    inputs, ckpt_dir, resume_from = choice[0], Path(choice[1]), choice[2]
    start_step = 0
    if resume_from is None and master:
        others = sorted(p.name for p in ckpt_dir.parent.glob("*") if p.is_dir() and p != ckpt_dir)
        log.info("training from step 0 to %d: no checkpoint of run %s in %s%s", params.iters, ckpt_dir.name,
                 ckpt_dir.parent, f" (runs {', '.join(others)} are not resumed: made with other model or train "
                                  f"params or other inputs)" if others else "")
    if resume_from is not None:
        state = load_checkpoint(Path(resume_from))
        changed = differing_fields(state["model_params"], model_params)
        if changed:
            raise ValueError(f"{resume_from}: the checkpoint was trained with a different model section "
                             f"({'; '.join(changed[:10])}); delete {ckpt_dir} to train this model from scratch")
        for line in differing_fields(state["train_params"], dataclasses.asdict(params)):
            log.warning("resuming with a changed train section: %s", line)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        rng_per_rank = state["rng"]
        if len(rng_per_rank) == world_size:
            set_rng_state(rng_per_rank[rank])
        elif master:
            log.warning("checkpoint has RNG states of %d processes, this run has %d; RNG not restored",
                        len(rng_per_rank), world_size)
        if master:
            log.info("resumed from %s at step %d; %s", resume_from, start_step,
                     f"training steps {start_step + 1} to {params.iters}" if start_step < params.iters
                     else "no steps left to train")
    if params.sync_bn and ddp and use_cuda and world_size > 1:
        # BatchNorm that trains (the mask branches) sees the global batch, so N GPUs match one GPU with the
        # same global batch. torch's SyncBatchNorm runs on GPUs only; CPU processes keep per-rank statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ddp:
        with warnings.catch_warnings():
            # torch 2.14 deprecates broadcast_buffers for forward_sync_buffers, which older releases lack; False
            # is what per-rank BatchNorm statistics need (every rank starts from the same weights and buffers)
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                            broadcast_buffers=False, gradient_as_bucket_view=True)
    if params.compile:
        model = torch.compile(model)

    # ---- data: this rank's slice of the global batches, from start_step on.
    dataset = FrameDataset(paths.index, paths.frames, paths.flow, paths.affinity, params.min_sizes,
                           params.max_size, params.flip_prob, load_flow=reads_flow, load_flow_pairs=reads_flow_pairs)
    sampler = IterationBatchSampler(dataset.aspect_groups, params.batch_size, rank, world_size, params.iters,
                                    params.seed, start_iter=start_step)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=paths.workers,
                        collate_fn=functools.partial(collate, channels_last=params.channels_last),
                        pin_memory=use_cuda, worker_init_fn=worker_init, persistent_workers=False,
                        prefetch_factor=4 if paths.workers > 0 else None)

    # ---- logging (rank 0): JSONL and TensorBoard, trimmed back to the resumed step.
    metrics_path = paths.out / "metrics.jsonl"
    writer = None
    if master:
        from torch.utils.tensorboard import SummaryWriter
        trim_metrics(metrics_path, start_step)
        writer = SummaryWriter(str(paths.out / "tb"), purge_step=start_step + 1)

    # ---- the loop. `step` counts finished iterations; iteration `step` runs at scheduled_lr(step) and passes
    # step + 1 to the network (its pairwise warm-up min(step / 10000, 1), as AdelaiDet's counter). No step waits
    # for the device: a non-finite step is skipped by the fused optimizer on the device (`found_inf`), and the
    # statistics (StepStats) reach the host every log_every steps, at checkpoints and at the end, where the run
    # of non-finite steps is checked against max_bad_steps.
    step = start_step
    trained = 0  # iterations run by this call (the log reports them)
    progress = progress_bar(params.iters, "train", every=paths.log_every, initial=start_step, disable=not master,
                            interval=paths.log_interval)
    model.train()
    loader_iter = iter(loader)
    window: StepStats | None = None
    t_window, t_data = time.perf_counter(), 0.0
    while step < params.iters:
        t0 = time.perf_counter()
        batch = next(loader_iter).to(device)
        t_data += time.perf_counter() - t0
        lr = scheduled_lr(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model(batch, step + 1)
        loss = sum(losses.values())
        scaler.scale(loss).backward()  # DDP averages the gradients over ranks here
        scaler.unscale_(optimizer)
        # clip_grad_norm_ with max_norm inf only measures the global norm
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip or float("inf"))
        # (2 + terms,): total loss, each term, grad norm; the mean over ranks (an asynchronous all-reduce). A
        # non-finite value on any rank makes the sum non-finite everywhere, so every rank skips the same steps.
        stats = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()]
                            + [grad_norm.detach().float()])
        if ddp:
            dist.all_reduce(stats)
            stats /= world_size
        bad = ~torch.isfinite(stats[:-1]).all()
        if not scaler.is_enabled():  # fp16: an overflowing gradient is the scaler's to skip and rescale
            bad = bad | ~torch.isfinite(stats[-1])
        optimizer.found_inf = bad.float()  # the fused step skips when 1 (with fp16 the scaler sets its own)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window = window or StepStats(len(stats), device)
        window.add(stats, bad)
        step += 1
        trained += 1
        if master:
            progress.update(1)
        if step % paths.log_every == 0 or step % params.checkpoint_every == 0 or step == params.iters:
            means, finite, skipped, longest = window.gather()
            t_now = time.perf_counter()
            record = {"step": step, "lr": lr, "loss": means[0], **dict(zip(losses, means[1:-1])),
                      "grad_norm": means[-1], "steps": finite + skipped, "skipped": skipped,
                      "data_s": t_data / (finite + skipped), "step_s": (t_now - t_window) / (finite + skipped)}
            t_window, t_data = t_now, 0.0
            if master:
                if skipped:
                    log.warning("steps %d-%d: %d non-finite step(s) skipped: %s", step - finite - skipped + 1,
                                step, skipped, record)
                progress.set_postfix(loss=f"{means[0]:.3f}", lr=f"{lr:.2e}", refresh=False)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                for name, value in record.items():
                    if name != "step":
                        writer.add_scalar(f"train/{name}", value, step)
            if longest >= params.max_bad_steps:
                raise RuntimeError(f"{longest} non-finite training steps in a row (by step {step}: {record}); "
                                   f"lower train.lr or set train.grad_clip, and resume from {ckpt_dir / 'last'}")

        # ---- checkpoint: every rank contributes its RNG state and a digest of its weights (they must
        # agree: DDP keeps replicas identical), rank 0 writes.
        if step % params.checkpoint_every == 0 or step == params.iters:
            per_rank = [(rng_state(), parameter_digest(model))]
            if ddp:
                per_rank = [None] * world_size
                dist.all_gather_object(per_rank, (rng_state(), parameter_digest(model)))
            digests = [d for _, d in per_rank]
            if len(set(digests)) != 1:
                raise RuntimeError(f"step {step}: the weights differ between ranks (digests {digests}); "
                                   f"DDP replicas diverged")
            if master:
                state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "step": step, "model_params": model_params,
                         "train_params": dataclasses.asdict(params), "inputs": inputs, "rng": [r for r, _ in per_rank],
                         "param_digests": digests}
                path = save_checkpoint(ckpt_dir, state, step, paths.keep_checkpoints)
                log.info("step %d: saved %s", step, path)
            t_window = time.perf_counter()  # the save is not the next window's step time
    progress.close()

    # ---- final weights: the evaluate rule's input.
    final = paths.out / "final.pt"
    if master:
        categories = dataset_categories
        buffer = io.BytesIO()
        torch.save({"model": unwrap(model).state_dict(), "model_params": model_params,
                    "train_params": dataclasses.asdict(params), "inputs": inputs, "step": step,
                    "num_classes": len(categories[0]),
                    "category_ids": categories[0], "category_names": categories[1],
                    "flow_params": paths.flow_params}, buffer)
        write_bytes_atomic(final, buffer.getvalue())
        writer.close()
        log.info("wrote %s after %d steps, %d of them trained in this run", final, step, trained)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return final


def main(argv: list[str] | None = None) -> None:
    """CLI: train one experiment (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-params", required=True, help="model section with the experiment's overrides (JSON)")
    parser.add_argument("--train-params", required=True, help="train section (JSON)")
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--frames", required=True, type=Path, help="<dataset root>/JPEGImages")
    parser.add_argument("--flow", required=True, type=Path, help="folder of the flow shard stores")
    parser.add_argument("--affinity", required=True, type=Path, help="folder of the affinity shard stores")
    parser.add_argument("--out", required=True, type=Path, help="results/train/<exp>")
    parser.add_argument("--workers", type=int, default=2, help="loader workers per process")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--flow-params", default=None, help="flow section (JSON) the stores were made with; kept "
                                                            "in final.pt so that predict computes the same flow")
    parser.add_argument("--threads", type=int, default=None, help="torch compute threads per process")
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_params = json.loads(args.model_params)
    if not isinstance(model_params, dict):
        raise ValueError(f"--model-params: expected a JSON object, got {args.model_params[:80]!r}")
    params = params_from_json(TrainParams, args.train_params, "train")
    paths = RunPaths(index=args.index, frames=args.frames, flow=args.flow, affinity=args.affinity, out=args.out,
                     workers=args.workers, log_every=args.log_every, keep_checkpoints=args.keep_checkpoints,
                     device=args.device, flow_params=json.loads(args.flow_params) if args.flow_params else None)
    train(paths, model_params, params)


if __name__ == "__main__":
    main()
