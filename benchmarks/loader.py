"""Time the training data loader: samples/s on one core from 640×360 and 1280×720 sources with every input
(JPEG, RGB flow from the flow store, both packed masks from the affinity store, boxes), the paper's
augmentation (short side 640–800, long ≤ 1333, flip 0.5) and collate into a Batch — the work one loader
worker does.

The dataset is pipeline.synthetic's generator at each source size; its flow store holds the ground-truth flow
encoded by pipeline.flow_codec and written by pipeline.flow's writer, its affinity store is computed by
pipeline.affinity's stage, the index by pipeline.index — the same stores as the DAG's (docs/design.md).

Timing is CPU time of this process (time.process_time, all its threads: zarr decodes in threads), which moves
less than wall time on a loaded machine; the settings take turns, best of --repeats passes.
--channels-last: collate as for a channels_last network (no HWC -> CHW copy).

    python benchmarks/loader.py [--sources 640x360,1280x720] [--videos 4] [--frames 6] [--batches 30] [--batch 2]
        [--repeats 3] [--channels-last] [--json out.json]
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
import yaml  # noqa: E402
import zarr  # noqa: E402

from model.data import FrameDataset, IterationBatchSampler, collate  # noqa: E402
from pipeline.affinity import AffinityParams, run_shard  # noqa: E402
from pipeline.flow import FlowParams, encode_video, store_attributes, write_video  # noqa: E402
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
    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["flow"]
    flow_params = FlowParams.from_json(json.dumps(section | {"estimator": "dis", "shard_size": shard_size}),
                                       "config.yaml flow section")
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
                flow: bool, channels_last: bool) -> dict:
    """Samples/s (CPU time) of dataset[key] + collate in this process (one core), and the time per stage."""
    dataset = FrameDataset(paths["index"], paths["frames"], paths["flow"], paths["affinity"], min_sizes, max_size,
                           0.5, load_flow=flow, load_flow_pairs=flow)
    sampler = IterationBatchSampler(dataset.aspect_groups, batch, 0, 1, iters=batches + 2, seed=0)
    keys = list(sampler)
    for k in keys[:2]:  # warm-up: open the stores, fill caches
        collate([dataset[key] for key in k])
    t_read = t_aug = t_collate = 0.0
    start = time.process_time()
    for k in keys[2:]:
        samples = []
        for key in k:
            t0 = time.process_time()
            dataset.read(key.frame)
            t_read += time.process_time() - t0
            t0 = time.process_time()
            samples.append(dataset[key])  # reads again: `read` above is only timed apart
            t_aug += time.process_time() - t0
        t0 = time.process_time()
        collate(samples, channels_last)
        t_collate += time.process_time() - t0
    wall = time.process_time() - start - t_read  # the extra read is not part of the loader's work
    n = batches * batch
    return {"samples_per_s": n / wall, "read_ms": 1e3 * t_read / n, "augment_ms": 1e3 * (t_aug - t_read) / n,
            "collate_ms": 1e3 * t_collate / n}


def main() -> None:
    """CLI: print (and optionally save) the loader's throughput per core."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="640x360,1280x720", help="source frame sizes WxH, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the best of each setting is reported")
    parser.add_argument("--channels-last", action="store_true", help="collate for a channels_last network")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    settings = (("paper sizes (640-800, <=1333), all inputs", (640, 672, 704, 736, 768, 800), 1333, True),
                ("paper sizes, BoxInst inputs (no flow)", (640, 672, 704, 736, 768, 800), 1333, False))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = [tuple(int(v) for v in size.split("x")) for size in args.sources.split(",")]
        paths = {(w, h): make_inputs(Path(tmp) / f"{w}x{h}", args.videos, args.frames, h, w) for w, h in sources}
        for _ in range(args.repeats):
            for (w, h), source in paths.items():
                for name, sizes, max_size, flow in settings + ((f"stored size ({h}, no resize), all inputs", (h,),
                                                                max(w, h), True),):
                    r = time_loader(source, args.batches, args.batch, sizes, max_size, flow, args.channels_last)
                    key = f"from {w}x{h}: {name}"
                    if key not in results or r["samples_per_s"] > results[key]["samples_per_s"]:
                        results[key] = r
        for key, r in results.items():
            print(f"{key}: {r['samples_per_s']:.1f} samples/s per core (read {r['read_ms']:.1f} ms, "
                  f"augment {r['augment_ms']:.1f} ms, collate {r['collate_ms']:.1f} ms per sample)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
