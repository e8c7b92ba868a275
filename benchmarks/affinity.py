"""Time the affinity stage against BoxInst's on-the-fly colour similarity, per frame on one core at 640x360.

Side by side, on the same frames, in one run:
  stage      pipeline.affinity.frame_masks: pool 4x4, Lab, 8-neighbour similarity, threshold, pack; colour
             and flow (once per dataset, offline); and the colour half alone.
  read       what the trainer pays per frame with precomputed masks: read one frame of both packed arrays
             from the Zarr store and unpack them to (8, h, w) bool tensors.
  boxinst    what AdelaiDet does per frame in every training iteration (colour only): avg_pool2d 4x4 in
             torch, `.byte()`, Lab conversion on the CPU (skimage.color.rgb2lab when scikit-image is
             installed, as AdelaiDet; else pipeline.affinity.rgb_to_lab), unfold 3x3 dilation 2 without the
             centre, exp(-||dLab|| / 2), times the unfolded validity mask.
Also the stored bytes per frame (both masks, Zarr v3, Zstd 3, the stage's own writer), and the pool: the
stage's per-frame work on 1 and `--workers` threads (what `run_shard --threads` does) and processes (fork), frames/s
of wall time and CPU seconds per frame, the pools taking turns.

Timing is CPU time of this process (time.process_time): the routes are single-threaded, and CPU time moves
less than wall time on a loaded machine. The pool part reports wall time (what a pool buys) beside CPU time.

Frames are procedural (smooth colour fields, flat blocks, noise) and the flow is pipeline.flow_codec's
encoding of a smooth synthetic field; compressed sizes depend on content, so real frames will differ.

    python benchmarks/affinity.py [--frames 40] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import zarr  # noqa: E402

from pipeline import affinity as aff  # noqa: E402
from pipeline.flow_codec import flow_to_rgb  # noqa: E402

HEIGHT, WIDTH = 360, 640


def procedural_frame(rng: np.random.Generator) -> np.ndarray:
    """uint8 (360, 640, 3): a smooth colour field, a few flat rectangles and mild noise."""
    coarse = rng.uniform(0, 255, (6, 10, 3)).astype(np.float32)
    frame = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(HEIGHT, WIDTH),
                                            mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    for _ in range(6):
        y, x = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 80)
        frame[y:y + rng.integers(20, 60), x:x + rng.integers(20, 80)] = rng.uniform(0, 255, 3)
    frame += rng.normal(0, 2.0, frame.shape)
    return np.ascontiguousarray(np.clip(frame, 0, 255).astype(np.uint8))  # (H, W, 3) rows, as a JPEG decodes


def procedural_flow(rng: np.random.Generator) -> np.ndarray:
    """uint8 (360, 640, 3) RGB-encoded flow of a smooth field with one moving rectangle."""
    coarse = rng.normal(0, 3, (4, 6, 2)).astype(np.float32)
    flow = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(HEIGHT, WIDTH),
                                           mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    y, x = rng.integers(0, HEIGHT - 120), rng.integers(0, WIDTH - 160)
    flow[y:y + 120, x:x + 160] = rng.normal(0, 8, 2)
    return flow_to_rgb(np.ascontiguousarray(flow))


def unfold_without_centre(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 8, H, W): 3x3 neighbourhood of dilation 2, zero padded, centre removed."""
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size=3, dilation=2, padding=2)          # (N, C*9, H*W)
    cols = cols.reshape(n, c, 9, h, w)                                # (N, C, 9, H, W)
    return torch.cat([cols[:, :, :4], cols[:, :, 5:]], dim=2)         # (N, C, 8, H, W)


def boxinst_colour_similarity(image: torch.Tensor, lab_of, bottom_rows: int) -> torch.Tensor:
    """AdelaiDet's per-image route: image (3, H, W) float32 RGB in [0, 255] -> similarity (8, H/4, W/4)."""
    _, height, width = image.shape
    valid = torch.ones((1, 1, height, width))
    valid[..., height - bottom_rows:, :] = 0                          # 10 rows at the original size
    pooled = F.avg_pool2d(image[None], kernel_size=4, stride=4)       # (1, 3, H/4, W/4)
    rgb = pooled[0].byte().permute(1, 2, 0).numpy()                   # (H/4, W/4, 3) uint8, truncated
    lab = torch.as_tensor(lab_of(rgb), dtype=torch.float32).permute(2, 0, 1)[None]  # (1, 3, H/4, W/4)
    diff = lab[:, :, None] - unfold_without_centre(lab)               # (1, 3, 8, H/4, W/4)
    similarity = torch.exp(-torch.norm(diff, dim=1) * 0.5)            # (1, 8, H/4, W/4)
    valid_s4 = valid[:, :, 2::4, 2::4]                                # sample at offset stride // 2
    return (similarity * unfold_without_centre(valid_s4)[:, 0])[0]


def frames_per_second(routes: dict[str, tuple], repeats: int) -> dict[str, float]:
    """Frames per second of each route (fn, items), best of `repeats` passes; the routes take turns within
    each pass, so a change of machine load hits them alike."""
    best = {name: float("inf") for name in routes}
    for name, (fn, items) in routes.items():
        fn(items[0])                                                  # warm-up
    for _ in range(repeats):
        for name, (fn, items) in routes.items():
            start = time.process_time()
            for item in items:
                fn(item)
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(routes[name][1]) / seconds for name, seconds in best.items()}


_POOL_WORK: list = []
"""(frame, flow, params) items of the pool part; set before the process pools fork, so workers get it for free."""


def _pool_item(i: int) -> tuple[np.ndarray, np.ndarray]:
    """The stage's per-frame work on item i of _POOL_WORK (a module function, so process pools can call it)."""
    frame, flow, params = _POOL_WORK[i]
    return aff.frame_masks(frame, flow, params)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its threads, and its children that have been waited for."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def pool_scaling(workers: int, repeats: int) -> dict[str, float]:
    """Frames/s (wall) and CPU ms per frame of _POOL_WORK on pools of 1 and `workers` threads and processes,
    best of `repeats` passes, the pools taking turns; a process pool is started (forked) and shut down within
    its timing, as a job would."""
    makers = {f"{kind}_{n}": (lambda kind=kind, n=n: ThreadPoolExecutor(n) if kind == "threads" else
                              ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")))
              for kind in ("threads", "processes") for n in sorted({1, workers})}
    wall = {name: float("inf") for name in makers}
    cpu = {name: float("inf") for name in makers}
    items = range(len(_POOL_WORK))
    for _ in range(repeats):
        for name, make in makers.items():
            start_wall, start_cpu = time.perf_counter(), cpu_seconds()
            pool: Executor
            with make() as pool:
                list(pool.map(_pool_item, items, chunksize=1 if name.startswith("threads") else 4))
            wall[name] = min(wall[name], time.perf_counter() - start_wall)
            cpu[name] = min(cpu[name], cpu_seconds() - start_cpu)
    return {**{f"pool_{name}_fps": round(len(items) / wall[name], 1) for name in makers},
            **{f"pool_{name}_cpu_ms_per_frame": round(1e3 * cpu[name] / len(items), 2) for name in makers}}


def main() -> None:
    """Run the three routes on the same frames, print a table, optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="pool size compared with 1")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames = [procedural_frame(rng) for _ in range(args.frames)]
    flows = [procedural_flow(rng) for _ in range(args.frames)]
    params = aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=10)
    try:
        from skimage.color import rgb2lab as lab_of
        lab_name = "skimage.color.rgb2lab"
    except ImportError:
        lab_of, lab_name = aff.rgb_to_lab, "pipeline.affinity.rgb_to_lab (scikit-image not installed)"

    pairs = list(zip(frames, flows))
    images = [torch.from_numpy(f).permute(2, 0, 1).float().contiguous() for f in frames]  # (3, H, W)
    masks = [aff.frame_masks(f, fl, params) for f, fl in pairs]

    # Agreement: BoxInst's thresholded similarity vs the stored colour bits (neighbour side masked in both).
    boxinst_bits = (boxinst_colour_similarity(images[0], lab_of, 10) >= 0.3).numpy()
    agreement = float((aff.unpack_bits(masks[0][0]) == boxinst_bits).mean())

    with tempfile.TemporaryDirectory() as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        aff.write_video(group, 0, np.stack([m[0] for m in masks]), np.stack([m[1] for m in masks]))
        stored = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and p.name != "zarr.json")
        color_array, flow_array = group["0"]["color"], group["0"]["flow"]

        def unpack(packed: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(aff.unpack_bits(packed[0])), torch.from_numpy(aff.unpack_bits(packed[1]))

        fps = frames_per_second({
            "stage_colour_and_flow": (lambda p: aff.frame_masks(p[0], p[1], params), pairs),
            "stage_colour_only": (lambda f: aff.color_masks(f, 2.0, 0.3, 10), frames),
            "trainer_unpack": (unpack, masks),
            "trainer_zarr_read_and_unpack": (lambda t: unpack((color_array[t], flow_array[t])),
                                             list(range(args.frames))),
            "boxinst_on_the_fly_colour": (lambda im: boxinst_colour_similarity(im, lab_of, 10), images),
        }, args.repeats)
    _POOL_WORK[:] = [(f, fl, params) for f, fl in pairs]
    pools = pool_scaling(args.workers, args.repeats)
    h, w = aff.grid_shape(HEIGHT, WIDTH)
    result = {
        "size": f"{WIDTH}x{HEIGHT}", "frames": args.frames, "threads": torch.get_num_threads(),
        "lab": lab_name,
        **{f"{name}_fps": round(value, 1) for name, value in fps.items()},
        "speedup_stage_colour_and_flow_vs_boxinst": round(fps["stage_colour_and_flow"]
                                                          / fps["boxinst_on_the_fly_colour"], 1),
        "speedup_stage_colour_only_vs_boxinst": round(fps["stage_colour_only"] / fps["boxinst_on_the_fly_colour"], 1),
        "speedup_trainer_unpack_vs_boxinst": round(fps["trainer_unpack"] / fps["boxinst_on_the_fly_colour"], 1),
        "bits_agreeing_with_boxinst": round(agreement, 5),
        "stored_bytes_per_frame": round(stored / args.frames, 1),
        "raw_bytes_per_frame": 2 * h * w,
        "cpus_available": len(os.sched_getaffinity(0)), "load_average_1min": round(os.getloadavg()[0], 2),
        **pools,
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
