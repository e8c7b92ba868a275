"""Time the flow stage, side by side in one run, on one CPU core.

  dis        OpenCV DIS frames/s at 640x360 (each preset), grey conversion included, one thread.
  overhead   one shard job through pipeline.flow.write_shard at 640x360 (JPEG frames, DIS medium): decode
             (cv2.imread + BGR->RGB), encode (flow_to_rgb per frame), Zarr write (Zstd 3, chunk one frame)
             as a share of the estimator's time (goal <= 10 %): summed (as if serial), and as run, where
             decode and encode+write are threads beside the estimator (wall - estimate).
  gma        pipeline.gma with seeded random weights on the CPU at 128x160 (padded to 128x160), 12
             iterations: B pairs in one batch vs the same pairs one at a time (best of two alternated
             rounds each).

Frames are a smooth random texture (Gaussian-blurred noise, sigma 2 px) translating by (2, 1) px per
frame; DIS's speed depends little on content, the Zstd ratio and so the write time do.

    python benchmarks/flow.py [--frames 20] [--videos 6] [--gma-pairs 4] [--gma-iters 12] [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.flow import DisEstimator, GmaEstimator, store_attributes, write_shard  # noqa: E402
from pipeline.flow import FlowParams, GmaParams, DisParams, RaftParams  # noqa: E402
from pipeline.ytvis import Video  # noqa: E402

HEIGHT, WIDTH = 360, 640


def translating_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a blurred-noise texture moving (2, 1) px per frame."""
    rng = np.random.default_rng(seed)
    margin = 2 * num_frames + 2
    noise = rng.random((height + 2 * margin, width + 2 * margin, 3)).astype(np.float32)
    big = cv2.GaussianBlur(noise, (0, 0), 2.0)
    big = ((big - big.min()) / (big.max() - big.min()) * 255).astype(np.uint8)
    return np.stack([big[margin - t:margin - t + height, margin - 2 * t:margin - 2 * t + width]
                     for t in range(num_frames)])


def dis_fps(frames: np.ndarray, preset: str) -> float:
    """Frames per second of DIS over consecutive pairs of `frames` (one pair = one frame)."""
    dis = DisEstimator(preset)
    dis(frames[:1], frames[1:2])  # warm-up
    start = time.perf_counter()
    for t in range(len(frames) - 1):
        dis(frames[t:t + 1], frames[t + 1:t + 2])
    return (len(frames) - 1) / (time.perf_counter() - start)


def stage_overhead(frames: np.ndarray, folder: Path, num_videos: int) -> dict:
    """Seconds per step of one shard job (num_videos videos of these frames as JPEG), overhead shares."""
    videos = []
    for vid in range(1, num_videos + 1):
        names = []
        for t, frame in enumerate(frames):
            name = f"v{vid}/{t:05d}.jpg"
            (folder / "JPEGImages" / f"v{vid}").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / "JPEGImages" / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            names.append(name)
        videos.append(Video(vid, WIDTH, HEIGHT, tuple(names)))
    params = FlowParams("dis", num_videos, gma=GmaParams("unused.pth", 12, "float32"),
                        raft=RaftParams("large", "C_T_SKHT_V2", 12), dis=DisParams("medium"))
    out = folder / "shard_0.zarr"
    attributes = store_attributes(params, [v.id for v in videos], None)
    times = write_shard(out, folder, videos, DisEstimator("medium"), attributes, progress=False)
    stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    num_frames = num_videos * len(frames)
    overhead = times.decode + times.encode + times.write
    return {"frames": num_frames, "decode_ms": 1e3 * times.decode / num_frames,
            "estimate_ms": 1e3 * times.estimate / num_frames, "encode_ms": 1e3 * times.encode / num_frames,
            "write_ms": 1e3 * times.write / num_frames, "wall_ms": 1e3 * times.wall / num_frames,
            "overhead_share_serial": overhead / times.estimate,
            "overhead_share_wall": (times.wall - times.estimate) / times.estimate,
            "stored_kib_per_frame": stored / 1024 / num_frames}


def gma_batched_vs_single(pairs: int, iters: int) -> dict:
    """Seconds per pair of random-weight GMA at 128x160 on the CPU, batched vs one pair at a time."""
    from pipeline.gma import GMA
    torch.manual_seed(0)
    model = GMA().eval()
    with torch.no_grad():
        model.update_block.aggregator.gamma.fill_(0.5)
    frames = translating_frames(pairs + 1, 128, 160, seed=1)
    first, second = frames[:-1], frames[1:]
    batched = GmaEstimator(model, iters, "float32", batch_size=pairs)
    single = GmaEstimator(model, iters, "float32", batch_size=1)
    single(first[:1], second[:1])  # warm-up
    out: dict = {}
    for _ in range(2):  # alternate the two, keep each one's best round (the machine is shared)
        for name, est in (("batched", batched), ("single", single)):
            start = time.perf_counter()
            out[f"{name}_flow"] = est(first, second)
            per_pair = (time.perf_counter() - start) / pairs
            out[f"{name}_s_per_pair"] = min(per_pair, out.get(f"{name}_s_per_pair", np.inf))
    diff = float(np.abs(out.pop("batched_flow") - out.pop("single_flow")).max())
    return {**out, "pairs": pairs, "iters": iters, "speedup": out["single_s_per_pair"] / out["batched_s_per_pair"],
            "max_abs_diff_px": diff}


def main() -> None:
    """Run the three measurements and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per video at 640x360")
    ap.add_argument("--videos", type=int, default=6, help="videos in the shard of the overhead measurement")
    ap.add_argument("--gma-pairs", type=int, default=4)
    ap.add_argument("--gma-iters", type=int, default=12)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    frames = translating_frames(args.frames, HEIGHT, WIDTH)
    results: dict = {"dis_fps_640x360": {p: dis_fps(frames, p) for p in ("ultrafast", "fast", "medium")}}
    with tempfile.TemporaryDirectory() as tmp:
        results["overhead_640x360"] = stage_overhead(frames, Path(tmp), args.videos)
    results["gma_cpu_128x160"] = gma_batched_vs_single(args.gma_pairs, args.gma_iters)

    print("| measurement | value |\n|---|---|")
    for preset, fps in results["dis_fps_640x360"].items():
        print(f"| DIS {preset}, 640x360, 1 core | {fps:.1f} frames/s |")
    o = results["overhead_640x360"]
    print(f"| stage per frame (DIS medium): decode / estimate / encode / write | {o['decode_ms']:.1f} / "
          f"{o['estimate_ms']:.1f} / {o['encode_ms']:.1f} / {o['write_ms']:.1f} ms |")
    print(f"| overhead if run serially: (decode + encode + write) / estimate | "
          f"{100 * o['overhead_share_serial']:.1f} % |")
    print(f"| overhead as run (threads beside the estimator): (wall - estimate) / estimate | "
          f"{100 * o['overhead_share_wall']:.1f} % |")
    print(f"| stored per frame (Zstd 3) | {o['stored_kib_per_frame']:.0f} KiB |")
    g = results["gma_cpu_128x160"]
    print(f"| GMA CPU 128x160, {g['iters']} iters: batched ({g['pairs']}) vs single | "
          f"{g['batched_s_per_pair']:.2f} vs {g['single_s_per_pair']:.2f} s/pair ({g['speedup']:.2f}x), "
          f"max diff {g['max_abs_diff_px']:.1e} px |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
