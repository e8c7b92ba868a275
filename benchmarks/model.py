"""Forward+backward seconds per image and peak memory on CPU: two-stream vs BoxInst, demo vs paper size.

    python benchmarks/model.py [--threads 1] [--iters 5] [--configs demo,r50]

Each (config, variant) runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own;
memory is the peak resident size and its rise over the size once the model and batch were built (the
training step's activations, gradients and optimizer state). Prints a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    """Current resident set size, MiB (from /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_one(spec: dict) -> dict:
    """Build the model of `spec`, time `iters` forward+backward steps on a random batch; return numbers."""
    import torch
    import yaml

    from model.batch import Batch
    from model.network import ModelParams, TwoStreamCondInst
    from pipeline.io import params_from_json

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    params = params_from_json(ModelParams, json.dumps(cfg["model"]), "config.yaml model")
    params = replace(params, weights=None, **spec["changes"])
    n, h, w = spec["batch"], spec["height"], spec["width"]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32  # padded to a multiple of 32
    model = TwoStreamCondInst(params, num_classes=spec["classes"]).train()
    gen = torch.Generator().manual_seed(0)
    boxes = [torch.tensor([[0.1 * w, 0.2 * h, 0.5 * w, 0.8 * h], [0.4 * w, 0.1 * h, 0.9 * w, 0.6 * h]])
             for _ in range(n)]
    batch = Batch(images=torch.rand(n, 3, hp, wp, generator=gen) * 255,
                  flows=torch.rand(n, 3, hp, wp, generator=gen) * 255,
                  image_sizes=[(h, w)] * n, boxes_xyxy=boxes,
                  classes=[torch.tensor([0, 1]) % spec["classes"] for _ in range(n)],
                  pair_color=torch.rand(n, 8, hp // 4, wp // 4, generator=gen) > 0.3,
                  pair_flow=torch.rand(n, 8, hp // 4, wp // 4, generator=gen) > 0.3)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses = model(batch, step=10**6)
        sum(losses.values()).backward()
        opt.step()

    base = _current_rss_mib()  # model and batch built, no step yet
    step()  # warm-up: allocator, optimizer state
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    return {"s_per_image": times[len(times) // 2] / n, "peak_mib": _rss_mib(), "base_mib": base,
            "params_m": params_m}


CONFIGS = {
    # config.yaml's model section at the synthetic dataset's size, the demo training batch
    "demo": dict(changes={}, size="synthetic"),
    # the paper's network at 640x360
    "r50": dict(changes=dict(backbone="resnet50", fpn_channels=256, mask_branch_channels=128, head_convs=4),
                height=360, width=640, batch=2),
}


def main() -> None:
    """Run every (config, variant) in a subprocess and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--configs", default="demo,r50")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    import yaml

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    syn = cfg["dataset"]["synthetic"]
    rows = []
    for name in args.configs.split(","):
        conf = CONFIGS[name]
        for variant, extra in (("two-stream", dict(two_stream=True)), ("BoxInst", dict(two_stream=False))):
            spec = dict(threads=args.threads, iters=args.iters, classes=syn["classes"],
                        changes={**conf["changes"], **extra},
                        height=conf.get("height", syn["height"]), width=conf.get("width", syn["width"]),
                        batch=conf.get("batch", cfg["train"]["batch_size"]))
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True,
                                 capture_output=True, text=True, cwd=ROOT)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((name, variant, spec, res))
            print(f"{name} {variant}: {res}", file=sys.stderr)
    print(f"threads {args.threads}, median of {args.iters} steps (after 1 warm-up), SGD step included\n")
    print("| config | variant | input (h×w) | batch | params (M) | s / image (fwd+bwd) | peak RSS MiB "
          "| peak − built MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, variant, spec, res in rows:
        print(f"| {name} | {variant} | {spec['height']}×{spec['width']} | {spec['batch']} | "
              f"{res['params_m']:.1f} | {res['s_per_image']:.3f} | {res['peak_mib']:.0f} | "
              f"{res['peak_mib'] - res['base_mib']:.0f} |")


if __name__ == "__main__":
    main()
