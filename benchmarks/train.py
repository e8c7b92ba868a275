"""Time training iterations (forward, backward, SGD step) of the configured model on prepared batches.

CPU (default): the demo config — config.yaml's model section with the `ours` experiment's overrides and the
train section's batch and sizes — on synthetic frames of the configured size, the loader excluded (batches
are collated beforehand from the real FrameDataset).
--cuda: the paper's network (ResNet-50, FPN 256, mask branch 128, 4 head convs, two streams) at batch 8 on
640×360 synthetic frames resized as in the paper (short side 640–800), fp32 and bf16 autocast; peak memory;
cudnn.benchmark on, TF32 off (train.tf32 false, the paper's fp32) unless --tf32.
--channels-last adds the variants with model and batches in channels_last memory (as train.channels_last),
--compile those under torch.compile (train.compile); each variant on the same batches, one after the other.

    python benchmarks/train.py [--iters 10] [--cuda] [--channels-last] [--compile] [--tf32] [--json out.json]
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from model.data import FrameDataset, IterationBatchSampler, collate  # noqa: E402
from model.train import build_network, param_groups  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAPER_MODEL = dict(backbone="resnet50", weights=None, fpn_channels=256, mask_branch_channels=128, head_convs=4,
                   pairwise_warmup=10000)


def _make_inputs():
    """benchmarks/loader.py's make_inputs (loaded by path: this folder is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_loader", Path(__file__).with_name("loader.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_inputs


def batches(paths: dict, n: int, batch: int, min_sizes, max_size: int, flow: bool, channels_last: bool) -> list:
    """`n` collated batches from the real dataset (flip 0.5, multi-scale), channels_last memory if asked."""
    dataset = FrameDataset(paths["index"], paths["frames"], paths["flow"], paths["affinity"], min_sizes, max_size,
                           0.5, load_flow=flow, load_flow_pairs=flow)
    sampler = IterationBatchSampler(dataset.aspect_groups, batch, 0, 1, iters=n, seed=0)
    return [collate([dataset[k] for k in keys], channels_last) for keys in sampler]


def time_steps(model_params: dict, data: list, device: torch.device, amp: torch.dtype | None, warmup: int,
               channels_last: bool, compile_model: bool) -> dict:
    """Iterations/s of forward + backward + SGD step over `data` (the first `warmup` untimed, compilation too)."""
    torch.manual_seed(0)
    network, _, _ = build_network(model_params, 4)
    network.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    model = torch.compile(network) if compile_model else network
    optimizer = torch.optim.SGD(param_groups(network, 1e-4), lr=1e-3, momentum=0.9, fused=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = None
    for i, batch in enumerate(data):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            losses = model(batch, i + 1)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"it_per_s": (len(data) - warmup) / seconds, "s_per_it": seconds / (len(data) - warmup)}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def main() -> None:
    """CLI: print (and optionally save) iterations/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--cuda", action="store_true", help="the paper's ResNet-50 at batch 8 on the GPU")
    parser.add_argument("--channels-last", action="store_true", help="also time channels_last model and batches")
    parser.add_argument("--compile", action="store_true", help="also time the channels_last variant compiled")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls and convolutions (CUDA)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    layouts = [("contiguous", False, False)] + [("channels_last", True, False)] * args.channels_last + [
        ("channels_last+compile", True, True)] * args.compile
    if args.cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    model_params = {**config["model"], **config["experiments"]["ours"]["model"]}
    train, synth = config["train"], config["dataset"]["synthetic"]
    warmup = 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.cuda:
            paths = _make_inputs()(Path(tmp), 4, 6, 360, 640)
            for layout, channels_last, compile_model in layouts:
                data = batches(paths, args.iters + warmup, 8, (640, 672, 704, 736, 768, 800), 1333, True,
                               channels_last)
                for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
                    r = time_steps({**model_params, **PAPER_MODEL}, data, torch.device("cuda"), amp, warmup,
                                   channels_last, compile_model)
                    key = f"R-50 two-stream, batch 8, {name}, {layout}{', tf32' if args.tf32 else ''}"
                    results[key] = r
                    print(f"{key}: {r['it_per_s']:.2f} it/s, peak {r['peak_mem_gib']:.1f} GiB", flush=True)
        else:
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
            paths = _make_inputs()(Path(tmp), 4, synth["frames"], synth["height"], synth["width"])
            for layout, channels_last, compile_model in layouts:
                data = batches(paths, args.iters + warmup, train["batch_size"], tuple(train["min_sizes"]),
                               train["max_size"], True, channels_last)
                r = time_steps(model_params, data, torch.device("cpu"), None, warmup, channels_last, compile_model)
                results[f"demo config ({model_params['backbone']}, batch {train['batch_size']}), CPU, {layout}"] = r
                print(f"demo config, CPU, {torch.get_num_threads()} threads, {layout}: {r['it_per_s']:.2f} it/s "
                      f"({r['s_per_it']:.2f} s/it); {train['iters']} iters ≈ "
                      f"{train['iters'] * r['s_per_it'] / 60:.1f} min", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
