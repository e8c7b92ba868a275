"""pipeline/index.py: one row per frame (zero-box frames too), ragged boxes, shards of the full dataset."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from pipeline.index import main

from manifests import write_test_manifest


def _write(root: Path, videos: list[dict], annotations: list[dict], split_ids: list[int]) -> Path:
    """A dataset folder (black 8×12 frames) and a split json holding the videos `split_ids`."""
    for v in videos:
        for name in v["file_names"]:
            (root / "JPEGImages" / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "JPEGImages" / name), np.zeros((8, 12, 3), np.uint8))
    categories = [{"id": 3, "name": "cat", "supercategory": "a"}, {"id": 7, "name": "dog", "supercategory": "a"}]
    full = {"videos": videos, "annotations": annotations, "categories": categories}
    (root / "train.json").write_text(json.dumps(full))
    split = {"videos": [v for v in videos if v["id"] in split_ids],
             "annotations": [a for a in annotations if a["video_id"] in split_ids], "categories": categories}
    path = root / "split.json"
    path.write_text(json.dumps(split))
    return path


def _video(vid: int, frames: int) -> dict:
    return {"id": vid, "width": 12, "height": 8, "length": frames,
            "file_names": [f"v{vid}/{t:05d}.jpg" for t in range(frames)]}


def _track(aid: int, vid: int, cat: int, boxes: list, iscrowd: int = 0) -> dict:
    rle = {"size": [8, 12], "counts": [0, 96]}  # a full mask; only its presence matters here
    return {"id": aid, "video_id": vid, "category_id": cat, "iscrowd": iscrowd,
            "segmentations": [rle if b else None for b in boxes], "bboxes": boxes,
            "areas": [96.0 if b else None for b in boxes]}


def test_index_rows_boxes_and_shards(tmp_path: Path) -> None:
    """Hand-worked index: video 9 and 4 of a 4-video dataset (shard size 2: ids 2,4 | 7,9)."""
    videos = [_video(7, 1), _video(2, 1), _video(9, 3), _video(4, 2)]
    annotations = [
        _track(11, 9, 7, [[1, 1, 2, 2], None, [0, 0, 3, 4]]),
        _track(12, 9, 3, [[2, 2, 1, 1], None, None]),
        _track(13, 9, 3, [[0, 0, 5, 5], [0, 0, 5, 5], None], iscrowd=1),  # crowd: left out
        _track(14, 4, 7, [None, [4, 3, 2, 1]]),
        _track(15, 2, 7, [[1, 1, 1, 1]]),  # not in the split
    ]
    split = _write(tmp_path, videos, annotations, [9, 4])
    out = tmp_path / "index" / "x.h5"
    main(["--root", str(tmp_path), "--manifest", str(write_test_manifest(tmp_path)), "--split", str(split),
          "--shard-size", "2", "--out", str(out)])
    with h5py.File(out) as f:
        assert f["video_id"][:].tolist() == [4, 4, 9, 9, 9]  # videos by id, frames in order
        assert f["frame_index"][:].tolist() == [0, 1, 0, 1, 2]
        assert [n.decode() for n in f["file_name"][:]] == ["v4/00000.jpg", "v4/00001.jpg", "v9/00000.jpg",
                                                           "v9/00001.jpg", "v9/00002.jpg"]
        assert f["shard"][:].tolist() == [0, 0, 1, 1, 1]  # 4 is 2nd of (2, 4, 7, 9), 9 is 4th
        assert f["height"][:].tolist() == [8] * 5 and f["width"][:].tolist() == [12] * 5
        assert f["box_offsets"][:].tolist() == [0, 0, 1, 3, 3, 4]  # frames 0 and 3 have no box
        assert f["boxes_xywh"][:].tolist() == [[4, 3, 2, 1], [1, 1, 2, 2], [2, 2, 1, 1], [0, 0, 3, 4]]
        assert f["box_category_ids"][:].tolist() == [7, 7, 3, 7]
        assert f["box_track_ids"][:].tolist() == [14, 11, 12, 11]
        assert f["category_ids"][:].tolist() == [3, 7]
        assert [n.decode() for n in f["category_names"][:]] == ["cat", "dog"]
    assert [p.name for p in out.parent.iterdir()] == ["x.h5"]  # no temporary file left


def test_split_video_missing_from_dataset_is_named(tmp_path: Path) -> None:
    """A split listing a video the dataset's train.json lacks fails naming the video."""
    split = _write(tmp_path, [_video(1, 1), _video(2, 1)], [], [1, 2])
    full = json.loads((tmp_path / "train.json").read_text())
    full["videos"] = full["videos"][:1]
    (tmp_path / "train.json").write_text(json.dumps(full))
    with pytest.raises(ValueError, match="video 2"):
        main(["--root", str(tmp_path), "--manifest", str(write_test_manifest(tmp_path)), "--split", str(split),
              "--shard-size", "2", "--out", str(tmp_path / "i.h5")])
    assert not (tmp_path / "i.h5").exists()
