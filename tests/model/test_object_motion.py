"""Objects' motion relative to their surroundings, from flow stores: decoding pixels back from the RGB encoding
with the stored per-frame scale, and the ring medians on hand-built flow whose answer is known."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import zarr

from model.object_motion import main, object_motion, open_stores, ring
from model.subsets import define_subsets
from pipeline.flow import DisEstimator, FlowParams, read_frames, store_attributes, video_flow, write_shard
from pipeline.flow_codec import flow_scale, flow_to_rgb, rgb_to_flow
from pipeline.split import to_coco
from pipeline.stores import CorruptStore
from pipeline.ytvis import load_ytvis

from damage import corrupt_shard_chunk

H, W = 40, 60


def test_rgb_to_flow_recovers_pixels_within_one_percent_of_the_largest_flow() -> None:
    """Random smooth and rough flows: every decoded vector lies within 1 % of the frame's max radius of the
    true one; zero flow decodes to zero."""
    rng = np.random.default_rng(0)
    for flow in (rng.normal(0, 4, (H, W, 2)).astype(np.float32),
                 np.cumsum(rng.normal(0, 0.3, (H, W, 2)), axis=1).astype(np.float32)):
        scale = float(flow_scale(flow))
        error = np.linalg.norm(rgb_to_flow(flow_to_rgb(flow), scale) - flow, axis=-1)
        assert error.max() < 0.01 * scale
    zero = np.zeros((4, 5, 2), np.float32)
    assert np.abs(rgb_to_flow(flow_to_rgb(zero), float(flow_scale(zero)))).max() < 1e-6


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _store(path: Path, flows: dict[int, np.ndarray], with_scale: bool = True) -> None:
    """A flow store in the flow stage's layout: video id -> (T, H, W, 2) flow, encoded, with scales."""
    group = zarr.open_group(str(path), mode="w")
    for vid, video in flows.items():
        array = group.create_array(str(vid), data=np.stack([flow_to_rgb(f) for f in video]))
        if with_scale:
            array.attrs["scale"] = [float(flow_scale(f)) for f in video]
    group.attrs["videos"] = list(flows)


def test_relative_motion_on_hand_built_flow(tmp_path: Path) -> None:
    """Background (1, -0.5) px/frame; object A (rows 10-20, cols 10-22) moves (3, 1.5): relative (2, 2), length
    2.83. Object B right beside A moves (9, 0) with A's ring partly on it: B is left out of A's ring, so A's
    answer is unchanged; B's relative motion is 8.02. Object C moves with the background: 0."""
    flow = np.empty((H, W, 2), np.float32)
    flow[...] = (1.0, -0.5)
    a = np.zeros((H, W), bool)
    a[10:20, 10:22] = True
    b = np.zeros((H, W), bool)
    b[10:20, 23:35] = True  # one pixel from A
    c = np.zeros((H, W), bool)
    c[28:36, 40:50] = True
    flow[a], flow[b] = (3.0, 1.5), (9.0, 0.0)
    _store(tmp_path / "shard_0.zarr", {7: flow[None]})
    gt = {"images": [{"id": 1, "video_id": 7, "frame_index": 0, "height": H, "width": W}],
          "annotations": [{"id": i, "image_id": 1, "segmentation": _rle(m)} for i, m in ((1, a), (2, b), (3, c))]}
    motion = object_motion(gt, open_stores([tmp_path / "shard_0.zarr"]), ring_px=2)
    tolerance = 0.01 * float(np.hypot(9.0, 0.0))
    assert motion[1] == pytest.approx(np.hypot(2.0, 2.0), abs=tolerance)
    assert motion[2] == pytest.approx(np.hypot(8.0, 0.5), abs=tolerance)
    assert motion[3] == pytest.approx(0.0, abs=tolerance)
    assert not (ring(a, a | b | c, 2) & b).any() and ring(a, a | b | c, 2).sum() > 0
    bins = define_subsets(gt, motion, [0.5, 4.0], None)
    assert (bins["static"], bins["slow"], bins["fast"]) == ({3}, {1}, {2})
    # an object that covers the frame has no surroundings: unknown, in no motion bin
    gt["annotations"] = [{"id": 4, "image_id": 1, "segmentation": _rle(np.ones((H, W), bool))}]
    assert object_motion(gt, open_stores([tmp_path / "shard_0.zarr"]), ring_px=2) == {4: None}


def test_store_without_scale_and_missing_video_are_clear_errors(tmp_path: Path) -> None:
    """A store written before scales were kept names itself and rule flow; so does a video in no store."""
    _store(tmp_path / "shard_0.zarr", {3: np.ones((2, H, W, 2), np.float32)}, with_scale=False)
    mask = np.zeros((H, W), bool)
    mask[5:9, 5:9] = True
    gt = {"images": [{"id": 1, "video_id": 3, "frame_index": 1, "height": H, "width": W}],
          "annotations": [{"id": 1, "image_id": 1, "segmentation": _rle(mask)}]}
    with pytest.raises(ValueError, match=r"shard_0\.zarr.*video 3.*scale.*rule flow"):
        object_motion(gt, open_stores([tmp_path / "shard_0.zarr"]), ring_px=2)
    gt["images"][0]["video_id"] = 4
    with pytest.raises(KeyError, match="video 4 is in no flow store"):
        object_motion(gt, open_stores([tmp_path / "shard_0.zarr"]), ring_px=2)


def test_flow_stage_store_decodes_to_the_estimated_flow(tmp_path: Path,
                                                        make_ytvis: Callable[..., Path]) -> None:
    """The flow stage (write_shard with DIS) keeps per-frame scales with which the stored colours decode to the
    estimator's own flow, and the CLI writes one motion per annotation; a corrupt frame in a video's shard is
    an error naming store, video and frame, and nothing is written."""
    root = make_ytvis(videos=2, frames=3, height=32, width=48)
    dataset = load_ytvis(str(root), "train.json")
    estimator = DisEstimator("fast")
    out = tmp_path / "shard_0.zarr"
    params = FlowParams.from_json(json.dumps({"estimator": "dis", "shard_size": 2, "dis": {"preset": "fast"},
                                              "gma": {"checkpoint": "x", "iters": 1, "dtype": "float32"},
                                              "raft": {"model": "small", "weights": "C_T_V2", "iters": 2}}), "flow")
    ids = [v.id for v in dataset.videos]
    write_shard(out, root, dataset.videos, estimator, store_attributes(params, ids, None), progress=False)
    group = zarr.open_group(str(out), mode="r")
    for video in dataset.videos:
        flows = video_flow(read_frames(root, video), estimator)  # (T, H, W, 2)
        array = group[str(video.id)]
        assert len(array.attrs["scale"]) == video.length
        for t, flow in enumerate(flows):
            decoded = rgb_to_flow(array[t], array.attrs["scale"][t])
            assert np.linalg.norm(decoded - flow, axis=-1).max() < 0.01 * float(flow_scale(flow)) + 1e-6
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(to_coco(dataset, ids)))
    main(["--gt", str(gt_path), "--flow", str(out), "--ring-px", "2", "--out", str(tmp_path / "motion.json")])
    written = json.loads((tmp_path / "motion.json").read_text())
    assert len(written["motion"]) == len(json.loads(gt_path.read_text())["annotations"]) > 0
    assert written["unit"] == "px/frame" and written["ring_px"] == 2
    corrupt_shard_chunk(out / str(ids[0]), 1)  # frame 1 of the first video, inside its shard
    with pytest.raises(CorruptStore, match=f"{out}: video {ids[0]} flow: frame 1: chunk {ids[0]}/c/0/0/0/0 cannot"):
        main(["--gt", str(gt_path), "--flow", str(out), "--ring-px", "2", "--out", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()
