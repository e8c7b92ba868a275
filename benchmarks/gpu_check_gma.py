"""GMA on a GPU: frames/s at 640x360 and 1280x720 in strict float32, float32 with TF32, and bfloat16 autocast,
and how far each setting moves the flow from strict float32.

The network gets a deterministic random state dict (no checkpoint needed), loaded through
`pipeline.gma.load_gma`, and is timed through `estimate_flow` on batched uint8 numpy frames, as the
flow stage calls it (padding, host-device copies and cropping included). The "EPE delta" of a setting is the
mean endpoint distance |flow - flow_strict_fp32| (pixels) over all pixels: how much the setting alone moves
the flow, the quantity that decides whether flow.gma.tf32 may be turned on. Random weights give
meaningless flow, so it is a numerical check, not a quality figure (with the real checkpoint on a
synthetic dataset, rule flow_quality gives the EPE against ground truth).

    python benchmarks/gpu_check_gma.py                      # CUDA: both sizes, the three settings
    python benchmarks/gpu_check_gma.py --cpu-smoke          # CPU, 128x128, 2 iterations: checks it runs
    python benchmarks/gpu_check_gma.py --json out.json      # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a bare checkout too
from pipeline.gma import GMA, estimate_flow, load_gma  # noqa: E402

GPU_SIZES = [(360, 640), (720, 1280)]  # (H, W)
SMOKE_SIZES = [(128, 128)]
# (autocast dtype, TF32 allowed): strict float32 first, the reference of the others
SETTINGS = [("float32", False), ("float32", True), ("bfloat16", False)]


def random_gma(device: str, seed: int = 0) -> GMA:
    """GMA with a deterministic random state dict (gamma = 0.5, positive BN variances), via load_gma."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in GMA().state_dict().items():
        if value.dtype == torch.int64:  # num_batches_tracked, rel_ind: keep
            state["module." + name] = value.clone()
        elif name.endswith("running_var"):
            state["module." + name] = torch.rand(value.shape, generator=gen) + 0.5
        elif value.dim() >= 2:
            state["module." + name] = torch.randn(value.shape, generator=gen) / math.sqrt(value[0].numel())
        else:
            state["module." + name] = 0.1 * torch.randn(value.shape, generator=gen)
    state["module.update_block.aggregator.gamma"] = torch.tensor([0.5])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gma-random.pth"
        torch.save(state, path)
        return load_gma(path, device=device)


def frame_pairs(batch: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random RGB frames (B, H, W, 3) uint8 and the same frames shifted by (3, 5) pixels."""
    gen = np.random.default_rng(seed)
    coarse = torch.from_numpy(gen.uniform(0, 255, (batch, 3, height // 8 + 2, width // 8 + 2)).astype(np.float32))
    big = torch.nn.functional.interpolate(coarse, size=(height + 8, width + 8), mode="bicubic")
    big = big.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, H+8, W+8, 3)
    return np.ascontiguousarray(big[:, 3:height + 3, 5:width + 5]), np.ascontiguousarray(big[:, :height, :width])


def synchronize(device: str) -> None:
    """Wait for queued CUDA work so wall-clock timings are complete."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_estimator(model: GMA, frames_t: np.ndarray, frames_t1: np.ndarray, iters: int, dtype: str,
                   tf32: bool, repeats: int, device: str) -> tuple[float, np.ndarray, float]:
    """(frames/s over `repeats` timed batches after one warm-up, the flow (B, H, W, 2), peak GiB on CUDA)."""
    flow = estimate_flow(model, frames_t, frames_t1, iters=iters, dtype=dtype, tf32=tf32)  # warm-up (autotune)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        flow = estimate_flow(model, frames_t, frames_t1, iters=iters, dtype=dtype, tf32=tf32)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return repeats * frames_t.shape[0] / seconds, flow, peak


def endpoint_delta(flow: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel endpoint distance |flow - reference| in pixels: (B, H, W, 2) twice -> (B, H, W)."""
    return np.sqrt(np.square(flow - reference).sum(axis=-1))


def main() -> None:
    """Parse flags, time every size and setting, print a table (and JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run that only checks the script works")
    parser.add_argument("--iters", type=int, default=12, help="GMA iterations (config flow.gma.iters)")
    parser.add_argument("--batch", type=int, default=4, help="frame pairs per estimate_flow call")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per setting")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if args.cpu_smoke:
        device, sizes, iters, batch, repeats = "cpu", SMOKE_SIZES, 2, 1, 1
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device; use --cpu-smoke to check the script on CPU")
        device, sizes, iters, batch, repeats = "cuda", GPU_SIZES, args.iters, args.batch, args.repeats
        torch.backends.cudnn.benchmark = True

    model = random_gma(device)
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "iters": iters, "batch": batch, "repeats": repeats}
    print(json.dumps(info), flush=True)
    print(f"{'size':>10} {'dtype':>9} {'tf32':>5} {'frames/s':>9} {'peak GiB':>9} {'mean|flow|':>11} "
          f"{'EPE delta':>10} {'max delta':>10}", flush=True)
    rows = []
    for height, width in sizes:
        frames_t, frames_t1 = frame_pairs(batch, height, width)
        reference = None
        for dtype, tf32 in SETTINGS:
            fps, flow, peak = time_estimator(model, frames_t, frames_t1, iters, dtype, tf32, repeats, device)
            reference = flow if reference is None else reference
            delta = endpoint_delta(flow, reference)
            row = {"height": height, "width": width, "dtype": dtype, "tf32": tf32, "frames_per_s": fps,
                   "peak_gib": peak, "mean_abs_flow": float(np.abs(flow).mean()),
                   "epe_delta_vs_strict_fp32": float(delta.mean()), "max_delta_vs_strict_fp32": float(delta.max()),
                   "finite": bool(np.isfinite(flow).all())}
            rows.append(row)
            print(f"{width:>5}x{height:<4} {dtype:>9} {str(tf32):>5} {fps:>9.2f} {peak:>9.2f} "
                  f"{row['mean_abs_flow']:>11.4f} {row['epe_delta_vs_strict_fp32']:>10.5f} "
                  f"{row['max_delta_vs_strict_fp32']:>10.4f}" + ("" if row["finite"] else "  NON-FINITE"), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
