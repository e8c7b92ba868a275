"""Time the flow stage, side by side in one run.

  dis        OpenCV DIS frames/s at 640x360 (each preset), grey conversion included, one thread.
  overhead   one shard job through pipeline.flow.write_shard at 640x360 (JPEG frames, DIS medium, 2 encoding
             threads as the rule gives): decode (cv2.imread + BGR->RGB), encode (flow_to_rgb per frame),
             Zarr write (Zstd 3, one shard per video) as a share of the estimator's time (goal <= 10 %): summed
             (as if serial), and as run, where decode and encode+write are threads beside the estimator
             (wall - estimate).
  encode     encode + write throughput at 1280x720, the routes taking turns in each of --rounds rounds:
             `before` (the code before the pool: flow_to_rgb frame after frame, then one chunk file per frame,
             store format 1) and `after` (pipeline.flow.store_video: frames encoded in a pool of
             --encode-threads FEW or MANY threads, default 1 and 2, one shard per video); wall and CPU time (time.process_time, all threads) per frame, the
             CPU/wall ratio (how many cores the route kept busy), and files + folders per video. Zarr's own
             codec pool (Zstd) gets the route's thread count, as the job gives it --threads.
  gil        how much of flow_to_rgb's CPU time at 720p can hold the GIL (so serialises threads): the same
             numpy calls on 8-pixel blocks (dispatch only) against the real frame; with the Amdahl bound for
             8 threads. Load-independent where thread scaling is not (see benchmarks/README.md).
  gma        pipeline.gma with seeded random weights on the CPU at 128x160 (padded to 128x160), 12
             iterations: B pairs in one batch vs the same pairs one at a time (best of two alternated
             rounds each).

Frames are a smooth random texture (Gaussian-blurred noise, sigma 2 px) translating by (2, 1) px per
frame; DIS's speed depends little on content, the Zstd ratio and so the write time do. The 720p flow is a
smooth random field (noise at 1/16 resolution, bicubic upsampled, about 8 px), different per frame.

    python benchmarks/flow.py [--frames 20] [--videos 6] [--gma-pairs 4] [--gma-iters 12]
                              [--parts dis overhead encode gil gma] [--rounds 5] [--encode-threads 1 2]
                              [--json out.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import zarr  # noqa: E402

from pipeline.flow import (ZSTD_LEVEL, DisEstimator, GmaEstimator, store_attributes,  # noqa: E402
                           store_video, write_shard)
from pipeline.flow_codec import _colors, _hue_index, flow_scale  # noqa: E402
from pipeline.flow import FlowParams, GmaParams, DisParams, RaftParams  # noqa: E402
from pipeline.ytvis import Video  # noqa: E402

HEIGHT, WIDTH = 360, 640
HD_HEIGHT, HD_WIDTH = 720, 1280


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
    times = write_shard(out, folder, videos, DisEstimator("medium"), attributes, progress=False, threads=2)
    stored = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    num_frames = num_videos * len(frames)
    overhead = times.decode + times.encode + times.write
    return {"frames": num_frames, "decode_ms": 1e3 * times.decode / num_frames,
            "estimate_ms": 1e3 * times.estimate / num_frames, "encode_ms": 1e3 * times.encode / num_frames,
            "write_ms": 1e3 * times.write / num_frames, "wall_ms": 1e3 * times.wall / num_frames,
            "overhead_share_serial": overhead / times.estimate,
            "overhead_share_wall": (times.wall - times.estimate) / times.estimate,
            "stored_kib_per_frame": stored / 1024 / num_frames}


def smooth_flows(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 2) float32 smooth random flow, about 8 px: noise at 1/16 resolution, bicubic upsampled."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 8, (num_frames, height // 16, width // 16, 2)).astype(np.float32)
    return np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])


def flow_to_rgb_whole_frame(flow: np.ndarray) -> np.ndarray:
    """flow_to_rgb as it was before: each step on whole-frame arrays (the same bytes, checked in the run)."""
    scale = flow_scale(flow)
    u, v = flow[..., 0] / scale, flow[..., 1] / scale
    return _colors(_hue_index(u, v), np.sqrt(np.square(u) + np.square(v)))


def store_video_before(group: zarr.Group, video_id: int, flows: np.ndarray) -> tuple[float, float]:
    """The flow job's encode + write before this change (store format 1): whole-frame flow_to_rgb frame after
    frame in the writer thread, then one Zstd chunk file per frame; returns (encode, write) seconds."""
    began = time.perf_counter()
    rgb = np.stack([flow_to_rgb_whole_frame(flow) for flow in flows])
    scales = [float(flow_scale(flow)) for flow in flows]
    mid = time.perf_counter()
    array = group.create_array(name=str(video_id), shape=rgb.shape, dtype="uint8", chunks=(1,) + rgb.shape[1:],
                               compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL), fill_value=0)
    array[...] = rgb
    array.attrs["scale"] = scales
    return mid - began, time.perf_counter() - mid


def use_zarr_threads(threads: int) -> None:
    """Restart zarr's codec thread pool (made on first use) with `threads` workers, as the flow job sizes it."""
    from zarr.core.sync import cleanup_resources
    cleanup_resources()
    zarr.config.set({"threading.max_workers": threads})


def inodes(folder: Path) -> int:
    """Files and folders under `folder`, itself included."""
    return 1 + sum(1 for _ in folder.rglob("*"))


def encode_write_720p(folder: Path, num_frames: int, num_videos: int, rounds: int,
                      thread_counts: tuple[int, int]) -> dict:
    """Per-frame wall and CPU ms of encode + write at 1280x720 for `before` and `after` with each of two thread
    counts, the routes taking turns in every round; medians and bests over rounds, per-round ratios, inodes per
    video."""
    videos = [smooth_flows(num_frames, HD_HEIGHT, HD_WIDTH, seed) for seed in range(num_videos)]
    frames = num_frames * num_videos
    few, many = thread_counts
    routes = ["before", f"after_{few}", f"after_{many}"]
    samples: dict[str, list[tuple[float, float, float, float]]] = {route: [] for route in routes}
    files: dict[str, int] = {}
    reference: list[np.ndarray] | None = None
    for r in range(rounds):
        for route in routes:
            out = folder / f"{route}_{r}.zarr"
            group = zarr.open_group(out, mode="w", zarr_format=3)
            threads = int(route.split("_")[1]) if route != "before" else 1
            use_zarr_threads(threads)
            steps = np.zeros(2)  # encode, write seconds
            with ThreadPoolExecutor(threads) as encoder:
                wall, cpu = time.perf_counter(), time.process_time()
                for vid, flows in enumerate(videos):
                    steps += (store_video_before(group, vid, flows) if route == "before"
                              else store_video(group, vid, flows, encoder))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            samples[route].append((1e3 * wall / frames, 1e3 * cpu / frames, *(1e3 * steps / frames)))
            files[route] = inodes(out / "0")
            if r == 0:  # every route stores the same frames
                stored = zarr.open_group(out, mode="r")
                rgb = [stored[str(vid)][...] for vid in range(len(videos))]
                reference = reference if reference is not None else rgb
                assert all(np.array_equal(a, b) for a, b in zip(rgb, reference)), f"{route}: other frames stored"
    result: dict = {"frames_per_route": frames, "frames_per_video": num_frames, "rounds": rounds}
    for route in routes:
        walls, cpus, encodes, writes = zip(*samples[route])
        result[route] = {"wall_ms_median": statistics.median(walls), "wall_ms_best": min(walls),
                         "cpu_ms_median": statistics.median(cpus), "encode_ms_median": statistics.median(encodes),
                         "write_ms_median": statistics.median(writes), "cpu_per_wall_median":
                         statistics.median(c / w for w, c, *_ in samples[route]), "inodes_per_video": files[route]}
    for num, den in (("before", f"after_{few}"), (f"after_{few}", f"after_{many}"), ("before", f"after_{many}")):
        name = f"{den}_vs_{num}"
        ratios = [a[0] / b[0] for a, b in zip(samples[num], samples[den])]  # wall time ratio within a round
        result[name] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                        "of_bests": result[num]["wall_ms_best"] / result[den]["wall_ms_best"]}
    return result


def gil_held_share(flow: np.ndarray, repeats: int) -> dict:
    """Upper bound of the share of flow_to_rgb's CPU time on one (H, W, 2) frame that holds the GIL, and the
    Amdahl bound it puts on 8 threads: the same numpy calls (same number of blocks) on blocks of one row of
    8 pixels, where the arithmetic is negligible and what is left is Python and numpy's dispatch (which hold
    the GIL; numpy releases it inside its loops). Best CPU time (time.process_time) of `repeats` each."""
    import pipeline.flow_codec as codec
    rows = max(1, codec.BLOCK_PIXELS // flow.shape[1])
    blocks = -(-flow.shape[0] // rows)
    tiny = np.ascontiguousarray(flow[:blocks, :8])  # (blocks, 8, 2): one block per row below

    def best_cpu(frame: np.ndarray) -> float:
        times = []
        for _ in range(repeats):
            began = time.process_time()
            codec.flow_to_rgb(frame)
            times.append(time.process_time() - began)
        return min(times)

    full = best_cpu(flow)
    saved, codec.BLOCK_PIXELS = codec.BLOCK_PIXELS, 8
    try:
        dispatch = best_cpu(tiny)
    finally:
        codec.BLOCK_PIXELS = saved
    share = dispatch / full
    return {"blocks": blocks, "frame_cpu_ms": 1e3 * full, "dispatch_cpu_ms": 1e3 * dispatch, "gil_share_max": share,
            "amdahl_8_threads_min": 1 / (share + (1 - share) / 8)}


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
    """Run the measurements asked for and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per video at 640x360")
    ap.add_argument("--videos", type=int, default=6, help="videos in the shard of the overhead measurement")
    ap.add_argument("--gma-pairs", type=int, default=4)
    ap.add_argument("--gma-iters", type=int, default=12)
    ap.add_argument("--parts", nargs="+", choices=["dis", "overhead", "encode", "gil", "gma"],
                    default=["dis", "overhead", "encode", "gil", "gma"])
    ap.add_argument("--hd-frames", type=int, default=12, help="frames per video at 1280x720 (encode)")
    ap.add_argument("--hd-videos", type=int, default=2, help="videos per route and round at 1280x720 (encode)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the encode routes taking turns")
    ap.add_argument("--encode-threads", type=int, nargs=2, default=[1, 2], metavar=("FEW", "MANY"),
                    help="the two thread counts of the `after` routes (this VM has 2 cores)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    frames = translating_frames(args.frames, HEIGHT, WIDTH)
    results: dict = {"load_before": os.getloadavg()}
    if "dis" in args.parts:
        results["dis_fps_640x360"] = {p: dis_fps(frames, p) for p in ("ultrafast", "fast", "medium")}
    with tempfile.TemporaryDirectory() as tmp:
        if "overhead" in args.parts:
            results["overhead_640x360"] = stage_overhead(frames, Path(tmp), args.videos)
        if "encode" in args.parts:
            results["encode_write_720p"] = encode_write_720p(Path(tmp), args.hd_frames, args.hd_videos, args.rounds,
                                                             tuple(args.encode_threads))
    if "gil" in args.parts:
        results["gil_720p"] = gil_held_share(smooth_flows(1, HD_HEIGHT, HD_WIDTH, seed=0)[0], repeats=7)
    if "gma" in args.parts:
        results["gma_cpu_128x160"] = gma_batched_vs_single(args.gma_pairs, args.gma_iters)
    results["load_after"] = os.getloadavg()

    print(f"load average before / after: {results['load_before']} / {results['load_after']}")
    print("| measurement | value |\n|---|---|")
    for preset, fps in results.get("dis_fps_640x360", {}).items():
        print(f"| DIS {preset}, 640x360, 1 core | {fps:.1f} frames/s |")
    if "overhead_640x360" in results:
        o = results["overhead_640x360"]
        print(f"| stage per frame (DIS medium): decode / estimate / encode / write | {o['decode_ms']:.1f} / "
              f"{o['estimate_ms']:.1f} / {o['encode_ms']:.1f} / {o['write_ms']:.1f} ms |")
        print(f"| overhead if run serially: (decode + encode + write) / estimate | "
              f"{100 * o['overhead_share_serial']:.1f} % |")
        print(f"| overhead as run (threads beside the estimator): (wall - estimate) / estimate | "
              f"{100 * o['overhead_share_wall']:.1f} % |")
        print(f"| stored per frame (Zstd 3) | {o['stored_kib_per_frame']:.0f} KiB |")
    if "encode_write_720p" in results:
        e = results["encode_write_720p"]
        routes = [k for k in e if k == "before" or k.startswith("after_") and "_vs_" not in k]
        for route in routes:
            r = e[route]
            print(f"| 720p {route}: wall ms/frame median (best); encode / write wall; CPU ms/frame; CPU/wall; "
                  f"inodes/video ({e['frames_per_video']} frames) | {r['wall_ms_median']:.1f} ({r['wall_ms_best']:.1f});"
                  f" {r['encode_ms_median']:.1f} / {r['write_ms_median']:.1f}; {r['cpu_ms_median']:.1f}; "
                  f"{r['cpu_per_wall_median']:.2f}; {r['inodes_per_video']} |")
        for name in [k for k in e if "_vs_" in k]:
            q = e[name]
            print(f"| 720p throughput ratio {name}: median (range) of per-round ratios; ratio of bests | "
                  f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f}); {q['of_bests']:.2f}x |")
    if "gil_720p" in results:
        g = results["gil_720p"]
        print(f"| flow_to_rgb 720p CPU per frame; same {g['blocks']} blocks of 8 px (dispatch, holds the GIL) | "
              f"{g['frame_cpu_ms']:.1f} ms; {g['dispatch_cpu_ms']:.2f} ms |")
        print(f"| GIL-held share at most; Amdahl bound for 8 threads at least | {100 * g['gil_share_max']:.1f} %; "
              f"{g['amdahl_8_threads_min']:.2f}x |")
    if "gma_cpu_128x160" in results:
        g = results["gma_cpu_128x160"]
        print(f"| GMA CPU 128x160, {g['iters']} iters: batched ({g['pairs']}) vs single | "
              f"{g['batched_s_per_pair']:.2f} vs {g['single_s_per_pair']:.2f} s/pair ({g['speedup']:.2f}x), "
              f"max diff {g['max_abs_diff_px']:.1e} px |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
