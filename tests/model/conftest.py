"""A tiny on-disk training set for the trainer tests: synthetic frames, flow and affinity stores, index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.affinity import AffinityParams, run_shard
from pipeline.flow import DisParams, FlowParams, GmaParams, encode_video, store_attributes, write_video
from pipeline.index import main as index_main
from pipeline.shards import num_shards, videos_of_shard
from pipeline.synthetic import SyntheticParams, video_name, write_dataset

SHARD_SIZE = 2
AFFINITY = AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=4)


def write_stores(root: Path, flow_dir: Path, affinity_dir: Path, shard_size: int) -> None:
    """Flow stores of the ground-truth flow (last frame −F(t→t−1)), written by pipeline.flow's writer with the
    attributes of a DIS store of `shard_size`, and affinity stores computed from them by pipeline.affinity's
    stage (run_shard): the layouts and checks of docs/design.md."""
    train = json.loads((root / "train.json").read_text())
    ids = sorted(v["id"] for v in train["videos"])
    lengths = {v["id"]: len(v["file_names"]) for v in train["videos"]}
    params = FlowParams(estimator="dis", shard_size=shard_size, gma=GmaParams("weights/gma-sintel.pth", 12, "float32"),
                        dis=DisParams("medium"))
    for shard in range(num_shards(len(ids), shard_size)):
        videos = videos_of_shard(ids, shard, shard_size)
        flow_store = flow_dir / f"shard_{shard}.zarr"
        group = zarr.open_group(str(flow_store), mode="w", zarr_format=3)
        for vid in videos:
            gt = np.load(root / "flow_gt" / f"{video_name(vid)}.npy")  # (T-1, H, W, 2)
            flows = np.concatenate([gt, -gt[-1:]]) if len(gt) else np.zeros((lengths[vid], *gt.shape[1:]), np.float32)
            write_video(group, vid, encode_video(flows))
        group.attrs.update(store_attributes(params, videos, None))
        run_shard(root, Path("train.json"), shard, flow_store, AFFINITY, affinity_dir / f"shard_{shard}.zarr")


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
