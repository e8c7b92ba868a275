"""A tiny on-disk training set for the trainer tests: synthetic frames, flow and affinity stores, index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.affinity import AffinityParams, frame_masks
from pipeline.flow_codec import flow_to_rgb
from pipeline.index import main as index_main
from pipeline.shards import num_shards, videos_of_shard
from pipeline.synthetic import SyntheticParams, video_name, write_dataset

SHARD_SIZE = 2
AFFINITY = AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=4)


def write_stores(root: Path, flow_dir: Path, affinity_dir: Path, shard_size: int) -> None:
    """Flow stores from the ground-truth flow (last frame −F(t→t−1)) and affinity stores, in the
    layouts of docs/design.md."""
    train = json.loads((root / "train.json").read_text())
    ids = [v["id"] for v in train["videos"]]
    for shard in range(num_shards(len(ids), shard_size)):
        flow_store = zarr.open_group(str(flow_dir / f"shard_{shard}.zarr"), mode="w")
        affinity_store = zarr.open_group(str(affinity_dir / f"shard_{shard}.zarr"), mode="w")
        for vid in videos_of_shard(ids, shard, shard_size):
            import cv2
            gt = np.load(root / "flow_gt" / f"{video_name(vid)}.npy")  # (T-1, H, W, 2)
            flows = np.concatenate([gt, -gt[-1:]]) if len(gt) else None
            video = next(v for v in train["videos"] if v["id"] == vid)
            frames = [cv2.cvtColor(cv2.imread(str(root / "JPEGImages" / f)), cv2.COLOR_BGR2RGB)
                      for f in video["file_names"]]
            if flows is None:
                flows = np.zeros((len(frames), *frames[0].shape[:2], 2), np.float32)
            rgb = np.stack([flow_to_rgb(f) for f in flows])  # (T, H, W, 3)
            flow_store.create_array(str(vid), data=rgb, chunks=(1, *rgb.shape[1:]))
            masks = [frame_masks(frame, f, AFFINITY) for frame, f in zip(frames, rgb)]
            group = affinity_store.create_group(str(vid))
            group.create_array("color", data=np.stack([m[0] for m in masks]))
            group.create_array("flow", data=np.stack([m[1] for m in masks]))


def make_dataset(out: Path, videos: int = 4, frames: int = 3, height: int = 64, width: int = 64) -> dict[str, Path]:
    """Synthetic frames, stores and the index of all videos under `out`; returns the paths."""
    root = out / "data"
    write_dataset(SyntheticParams(videos=videos, frames=frames, height=height, width=width, classes=2,
                                  max_objects=2, camouflage_prob=0.5, seed=0), root)
    flow_dir, affinity_dir = out / "flow", out / "affinity"
    write_stores(root, flow_dir, affinity_dir, SHARD_SIZE)
    index = out / "index" / "train_train.h5"
    index_main(["--root", str(root), "--split", str(root / "train.json"), "--shard-size", str(SHARD_SIZE),
                "--out", str(index)])
    return {"root": root, "frames": root / "JPEGImages", "flow": flow_dir, "affinity": affinity_dir,
            "index": index}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny dataset, built once per test session."""
    return make_dataset(tmp_path_factory.mktemp("tiny"))
