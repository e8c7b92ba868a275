"""Time the training data loader: samples/s on one core at 640×360 with every input (JPEG, RGB flow from the
flow store, both packed masks from the affinity store, boxes), the paper's augmentation (short side 640–800,
long ≤ 1333, flip 0.5) and collate into a Batch — the work one loader worker does.

The dataset is pipeline.synthetic's generator at 640×360; its flow store holds the ground-truth flow encoded by
pipeline.flow_codec and written by pipeline.flow's writer, its affinity store is computed by pipeline.affinity's
stage, the index by pipeline.index — the same stores as the DAG's (docs/design.md).

    python benchmarks/loader.py [--videos 4] [--frames 6] [--batches 30] [--batch 2] [--json out.json]
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

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
import zarr  # noqa: E402

from model.data import FrameDataset, IterationBatchSampler, collate  # noqa: E402
from pipeline.affinity import AffinityParams, run_shard  # noqa: E402
from pipeline.flow import DisParams, FlowParams, GmaParams, encode_video, store_attributes, write_video  # noqa: E402
from pipeline.index import main as index_main  # noqa: E402
from pipeline.manifest import write_manifest  # noqa: E402
from pipeline.synthetic import SyntheticParams, video_name, write_dataset  # noqa: E402
from pipeline.ytvis import load_ytvis  # noqa: E402

AFFINITY = AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=10)


def make_inputs(out: Path, videos: int, frames: int, height: int, width: int, shard_size: int = 2) -> dict:
    """Synthetic dataset, flow and affinity stores and the index under `out`; returns their paths."""
    root = out / "data"
    train = write_dataset(SyntheticParams(videos=videos, frames=frames, height=height, width=width, classes=4,
                                          max_objects=3, camouflage_prob=0.85, seed=0), root)
    ordered = sorted(train["videos"], key=lambda v: v["id"])
    manifest = out / "manifest.json"
    write_manifest(manifest, load_ytvis(root))
    flow_params = FlowParams(estimator="dis", shard_size=shard_size, dis=DisParams("medium"),
                             gma=GmaParams("weights/gma-sintel.pth", 12, "float32"))
    for start in range(0, len(ordered), shard_size):
        shard = start // shard_size
        videos = [v["id"] for v in ordered[start:start + shard_size]]
        flow_store = out / "flow" / f"shard_{shard}.zarr"
        group = zarr.open_group(str(flow_store), mode="w", zarr_format=3)
        for vid in videos:
            gt = np.load(root / "flow_gt" / f"{video_name(vid)}.npy")  # (T-1, H, W, 2)
            write_video(group, vid, encode_video(np.concatenate([gt, -gt[-1:]])))
        group.attrs.update(store_attributes(flow_params, videos, None))  # ground truth, in a DIS store's layout
        run_shard(root, manifest, shard, flow_store, AFFINITY, out / "affinity" / f"shard_{shard}.zarr")
    index = out / "index" / "train_train.h5"
    index_main(["--root", str(root), "--manifest", str(manifest), "--split", str(root / "train.json"),
                "--shard-size", str(shard_size), "--out", str(index)])
    return {"index": index, "frames": root / "JPEGImages", "flow": out / "flow", "affinity": out / "affinity"}


def time_loader(paths: dict, batches: int, batch: int, min_sizes: tuple[int, ...], max_size: int,
                flow: bool) -> dict:
    """Samples/s of dataset[key] + collate in this process (one core), and the time per stage."""
    dataset = FrameDataset(paths["index"], paths["frames"], paths["flow"], paths["affinity"], min_sizes, max_size,
                           0.5, load_flow=flow, load_flow_pairs=flow)
    sampler = IterationBatchSampler(dataset.aspect_groups, batch, 0, 1, iters=batches + 2, seed=0)
    keys = list(sampler)
    for k in keys[:2]:  # warm-up: open the stores, fill caches
        collate([dataset[key] for key in k])
    t_read = t_aug = t_collate = 0.0
    start = time.perf_counter()
    for k in keys[2:]:
        samples = []
        for key in k:
            t0 = time.perf_counter()
            dataset.read(key.frame)
            t_read += time.perf_counter() - t0
            t0 = time.perf_counter()
            samples.append(dataset[key])  # reads again: `read` above is only timed apart
            t_aug += time.perf_counter() - t0
        t0 = time.perf_counter()
        collate(samples)
        t_collate += time.perf_counter() - t0
    wall = time.perf_counter() - start - t_read  # the extra read is not part of the loader's work
    n = batches * batch
    return {"samples_per_s": n / wall, "read_ms": 1e3 * t_read / n, "augment_ms": 1e3 * (t_aug - t_read) / n,
            "collate_ms": 1e3 * t_collate / n}


def main() -> None:
    """CLI: print (and optionally save) the loader's throughput per core."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), args.videos, args.frames, 360, 640)
        for name, sizes, max_size, flow in (
                ("paper sizes (640-800, <=1333), all inputs", (640, 672, 704, 736, 768, 800), 1333, True),
                ("paper sizes, BoxInst inputs (no flow)", (640, 672, 704, 736, 768, 800), 1333, False),
                ("stored size (360, no resize), all inputs", (360,), 640, True)):
            results[name] = time_loader(paths, args.batches, args.batch, sizes, max_size, flow)
            r = results[name]
            print(f"{name}: {r['samples_per_s']:.1f} samples/s per core (read {r['read_ms']:.1f} ms, "
                  f"augment {r['augment_ms']:.1f} ms, collate {r['collate_ms']:.1f} ms per sample)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
