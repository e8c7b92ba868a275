"""Where one demo training iteration spends its CPU time: loader, forward per module, losses, backward, step.

Runs the configured experiments (config.yaml's model section with each experiment's overrides, the train
section's batch and sizes) on stores a workflow run made (`--data`: the folder with results/), on one
thread, and reports CPU time (`time.process_time`, not wall time: the machine is shared) per iteration.
Module times come from forward pre/post hooks on the network's top-level children; "losses" is the rest
of the forward (FCOS matching, the five loss terms, the dynamic mask head's losses).

    OMP_NUM_THREADS=1 python benchmarks/profile_train.py --data /work/scratch/demo --iters 20 [--json out.json]
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from model.data import FrameDataset, IterationBatchSampler, collate  # noqa: E402
from model.train import build_network, make_optimizer  # noqa: E402
from pipeline.io import params_from_json  # noqa: E402
from model.train import TrainParams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def hook_timers(model: torch.nn.Module, totals: dict[str, float]) -> None:
    """Add each top-level child's forward CPU time to totals[name] (pre/post forward hooks)."""
    for name, child in model.named_children():
        starts: list[float] = []
        child.register_forward_pre_hook(lambda *_, s=starts: s.append(time.process_time()))
        child.register_forward_hook(
            lambda *_, s=starts, n=name: totals.__setitem__(n, totals[n] + time.process_time() - s.pop()))


def profile(model_params: dict, train: TrainParams, data: Path, iters: int, warmup: int) -> dict:
    """Mean CPU seconds per iteration of each part, over `iters` iterations after `warmup` untimed ones."""
    torch.manual_seed(0)
    index = data / "results/index/train_train.h5"
    model, flow, flow_pairs = build_network(model_params, len(FrameDataset.categories(index)[0]))
    model.train()
    optimizer = make_optimizer(model, train)
    dataset = FrameDataset(index, data / "results/synthetic/JPEGImages", data / "results/flow",
                           data / "results/affinity", train.min_sizes, train.max_size, train.flip_prob,
                           load_flow=flow, load_flow_pairs=flow_pairs)
    sampler = IterationBatchSampler(dataset.aspect_groups, train.batch_size, 0, 1, iters + warmup, train.seed)
    modules: dict[str, float] = defaultdict(float)
    hook_timers(model, modules)
    parts: dict[str, list[float]] = defaultdict(list)
    for i, keys in enumerate(sampler):
        if i == warmup:
            modules.clear()
        t0 = time.process_time()
        batch = collate([dataset[k] for k in keys])
        t1 = time.process_time()
        before = sum(modules.values())
        losses = model(batch, i + 1)
        t2 = time.process_time()
        sum(losses.values()).backward()
        t3 = time.process_time()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.process_time()
        if i >= warmup:
            for name, value in (("loader", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                                ("optimizer", t4 - t3), ("losses", t2 - t1 - (sum(modules.values()) - before))):
                parts[name].append(value)
    out = {name: float(np.mean(v)) for name, v in parts.items()}
    out.update({f"forward.{name}": v / iters for name, v in modules.items()})
    out["total"] = out["loader"] + out["forward"] + out["backward"] + out["optimizer"]
    out["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
    return out


def main() -> None:
    """CLI: print a table of CPU s/iteration per part for each experiment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="working directory of a workflow run")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(args.config.read_text())
    train = params_from_json(TrainParams, json.dumps(config["train"]), "train")
    results = {}
    for exp, spec in config["experiments"].items():
        r = profile({**config["model"], **spec["model"]}, train, args.data, args.iters, warmup=3)
        results[exp] = r
        print(f"{exp}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
