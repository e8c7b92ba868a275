"""A tiny on-disk training set for the trainer tests: synthetic frames, flow and affinity stores, index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.affinity import AffinityParams, run_shard
from pipeline.flow import DisParams, FlowParams, GmaParams, RaftParams, encode_video, store_attributes, write_video
from pipeline.index import main as index_main
from pipeline.shards import num_shards, videos_of_shard
from pipeline.synthetic import SyntheticParams, video_name, write_dataset

from damage import corrupt_shard_chunk, damage_chunk, damage_frame, drop_shard_chunk, set_store_attribute
from manifests import write_test_manifest

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
                        dis=DisParams("medium"), raft=RaftParams("small", "C_T_V2", 12))
    for shard in range(num_shards(len(ids), shard_size)):
        videos = videos_of_shard(ids, shard, shard_size)
        flow_store = flow_dir / f"shard_{shard}.zarr"
        group = zarr.open_group(str(flow_store), mode="w", zarr_format=3)
        for vid in videos:
            gt = np.load(root / "flow_gt" / f"{video_name(vid)}.npy")  # (T-1, H, W, 2)
            flows = np.concatenate([gt, -gt[-1:]]) if len(gt) else np.zeros((lengths[vid], *gt.shape[1:]), np.float32)
            write_video(group, vid, encode_video(flows))
        group.attrs.update(store_attributes(params, videos, None))
        run_shard(root, write_test_manifest(root), shard, flow_store, AFFINITY, affinity_dir / f"shard_{shard}.zarr")


def make_dataset(out: Path, videos: int = 4, frames: int = 3, height: int = 64, width: int = 64) -> dict[str, Path]:
    """Synthetic frames, stores and the index of all videos under `out`; returns the paths."""
    root = out / "data"
    write_dataset(SyntheticParams(videos=videos, frames=frames, height=height, width=width, classes=2,
                                  max_objects=2, camouflage_prob=0.5, seed=0), root)
    flow_dir, affinity_dir = out / "flow", out / "affinity"
    write_stores(root, flow_dir, affinity_dir, SHARD_SIZE)
    index = out / "index" / "train_train.h5"
    index_main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--split", str(root / "train.json"),
                "--shard-size", str(SHARD_SIZE), "--out", str(index)])
    return {"root": root, "frames": root / "JPEGImages", "flow": flow_dir, "affinity": affinity_dir,
            "index": index}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny dataset, built once per test session."""
    return make_dataset(tmp_path_factory.mktemp("tiny"))


# Row 7 of the tiny index: video 3, frame 1, in shard 1 (videos 3 and 4).
BAD_ROW, BAD_VIDEO, BAD_FRAME, BAD_SHARD = 7, 3, 1, 1
FRAME_DAMAGE = ["truncated_jpeg", "wrong_size"]
FLOW_DAMAGE = ["flow_missing_chunk", "flow_corrupt_chunk", "flow_store_of_another_shard_size"]
PAIRS_DAMAGE = ["pairs_missing_chunk", "pairs_corrupt_chunk", "affinity_store_of_another_flow_store"]


def damaged_copy(tiny: dict[str, Path], out: Path, how: str) -> tuple[dict[str, Path], str]:
    """A copy of the tiny dataset under `out` with one bad input at BAD_ROW, and the text the reader's error must
    hold: the frame file or store, the video and the frame index."""
    shutil.copytree(tiny["root"].parent, out / "tiny")
    paths = {k: out / "tiny" / p.relative_to(tiny["root"].parent) for k, p in tiny.items()}
    frame = paths["frames"] / f"{video_name(BAD_VIDEO)}" / f"{BAD_FRAME:05d}.jpg"
    flow_store = paths["flow"] / f"shard_{BAD_SHARD}.zarr"
    affinity_store = paths["affinity"] / f"shard_{BAD_SHARD}.zarr"
    pairs_shard = affinity_store / str(BAD_VIDEO) / "color" / "c" / "0" / "0" / "0"  # one shard per video
    if how in FRAME_DAMAGE:
        damage_frame(frame, how)
        return paths, f"{frame}: video {BAD_VIDEO} frame {BAD_FRAME} " + (
            "is a truncated JPEG" if how == "truncated_jpeg" else "is 64x68, train.json says 64x64")
    if how in ("flow_missing_chunk", "flow_corrupt_chunk"):
        damage = drop_shard_chunk if how == "flow_missing_chunk" else corrupt_shard_chunk
        damage(flow_store / str(BAD_VIDEO), BAD_FRAME)  # only this frame's chunk in the video's shard
        verb = "is missing" if how == "flow_missing_chunk" else "cannot be decoded"
        return paths, (f"{flow_store}: video {BAD_VIDEO} flow: frame {BAD_FRAME}: chunk "
                       f"{BAD_VIDEO}/c/0/0/0/0 {verb}")
    if how in ("pairs_missing_chunk", "pairs_corrupt_chunk"):
        damage_chunk(pairs_shard, how.removeprefix("pairs_"))
        verb = "is missing" if how == "pairs_missing_chunk" else "cannot be decoded"
        return paths, (f"{affinity_store}: video {BAD_VIDEO} color: frame {BAD_FRAME}: chunk "
                       f"{BAD_VIDEO}/color/c/0/0/0 {verb}")
    if how == "flow_store_of_another_shard_size":
        set_store_attribute(flow_store, ("params", "shard_size"), SHARD_SIZE + 1)
        return paths, (f"{flow_store}: made with flow.shard_size {SHARD_SIZE + 1}, the index {paths['index']} "
                       f"was built with {SHARD_SIZE}")
    assert how == "affinity_store_of_another_flow_store", how
    set_store_attribute(affinity_store, ("flow_store", "params", "dis", "preset"), "fast")
    return paths, f"{affinity_store}: built from another flow store than the one of shard {BAD_SHARD}"
