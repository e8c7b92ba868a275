"""pipeline/manifest.py: the manifest holds what load_ytvis gives for train.json, less the masks; the stages
reading it write what they wrote reading train.json; a damaged manifest is an error naming it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from pipeline import flow, index
from pipeline.boxes_csv import main as boxes_csv_main
from pipeline.identity import DIGEST_ATTR, h5_digest, store_digest
from pipeline.manifest import load_manifest, main
from pipeline.ytvis import YtvisDataset, YtvisError, load_ytvis

from manifests import write_test_manifest

FLOW = {"estimator": "dis", "shard_size": 2, "gma": {"checkpoint": "absent.pth", "iters": 1, "dtype": "float32"},
        "raft": {"model": "small", "weights": "C_T_V2", "iters": 2}, "dis": {"preset": "ultrafast"}}


def assert_same_records(manifest: YtvisDataset, full: YtvisDataset) -> None:
    """Videos (ids, sizes, frames), categories and tracks (ids, classes, crowd flags, boxes, areas: values and
    their int/float types) equal; the manifest's segmentations all None; has_masks and sha256 train.json's."""
    assert manifest.videos == full.videos and manifest.categories == full.categories
    assert manifest.has_masks == full.has_masks and manifest.sha256 == full.sha256
    assert len(manifest.tracks) == len(full.tracks)
    for got, want in zip(manifest.tracks, full.tracks):
        assert (got.id, got.video_id, got.category_id, got.iscrowd) == (want.id, want.video_id, want.category_id,
                                                                         want.iscrowd)
        assert got.bboxes_xywh == want.bboxes_xywh and got.areas == want.areas
        assert [type(v) for b in got.bboxes_xywh if b for v in b] == [type(v) for b in want.bboxes_xywh if b for v in b]
        assert [type(a) for a in got.areas] == [type(a) for a in want.areas]
        assert got.segmentations == (None,) * len(want.segmentations)


@pytest.mark.parametrize("rle", ["str", "list", "mixed"])
def test_manifest_holds_what_load_ytvis_gives(make_ytvis, tmp_path: Path, rle: str) -> None:
    """Both RLE forms (and a file mixing them): the CLI's manifest reads back to train.json's records, its
    source digest is sha256 of train.json's bytes, it holds no RLE, and no temporary file is left."""
    root = make_ytvis(videos=4, frames=4, rle=rle)
    out = tmp_path / "results" / "manifest.json"
    assert main(["--root", str(root), "--out", str(out)]) == 0
    full = load_ytvis(root)
    assert full.has_masks and full.sha256 == hashlib.sha256((root / "train.json").read_bytes()).hexdigest()
    raw = json.loads(out.read_text())
    assert raw["source"] == {"file": str(root / "train.json"), "sha256": full.sha256}
    assert "counts" not in out.read_text() and "segmentations" not in out.read_text()
    assert_same_records(load_manifest(out, root), full)
    assert [p.name for p in out.parent.iterdir()] == ["manifest.json"]


def test_manifest_of_a_boxes_only_dataset(tmp_path: Path) -> None:
    """A box CSV's train.json (pipeline.boxes_csv): the manifest says has_masks false and keeps the box areas."""
    for video, count in (("b", 3), ("a", 2)):
        (tmp_path / "JPEGImages" / video).mkdir(parents=True)
        for t in range(count):
            cv2.imwrite(str(tmp_path / "JPEGImages" / video / f"{t:05d}.jpg"), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "boxes.csv").write_text("video,frame,track,class,x,y,w,h\nb,00002.jpg,7,dog,1,2,10,5\n"
                                        "b,00000.jpg,7,dog,0,0,30,20\na,00001.jpg,1,cat,4,4,8,8\n")
    boxes_csv_main(["--root", str(tmp_path), "--csv", str(tmp_path / "boxes.csv")])
    assert main(["--root", str(tmp_path), "--out", str(tmp_path / "manifest.json")]) == 0
    full = load_ytvis(tmp_path)
    manifest = load_manifest(tmp_path / "manifest.json", tmp_path)
    assert not manifest.has_masks and len(manifest.tracks) == 2
    assert_same_records(manifest, full)
    assert sorted(a for t in manifest.tracks for a in t.areas if a is not None) == sorted([50, 600, 64])


def test_invalid_dataset_writes_no_manifest(make_ytvis, tmp_path: Path) -> None:
    """A missing frame file: the CLI fails naming it and leaves nothing (an older manifest stays whole)."""
    root = make_ytvis(videos=2, frames=3)
    out = tmp_path / "manifest.json"
    out.write_text("older")
    (root / "JPEGImages" / "vid001ab" / "00005.jpg").unlink()
    assert main(["--root", str(root), "--out", str(out)]) == 1
    assert out.read_text() == "older" and [p.name for p in tmp_path.iterdir() if p.name != "ytvis"] == ["manifest.json"]


def edited(path: Path, change) -> Path:
    """The manifest at `path` with `change(raw)` applied, rewritten in place."""
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return path


DAMAGE = {  # name: (change of the parsed manifest, item, field named in the error)
    "width removed": (lambda m: m["videos"][0].pop("width"), "video", "width"),
    "box outside the frame": (lambda m: m["annotations"][0]["bboxes"].__setitem__(0, [0, 0, 99, 99]), "annotation",
                              "bboxes[0]"),
    "unknown category": (lambda m: m["annotations"][0].__setitem__("category_id", 77), "annotation", "category_id"),
    "file name leaving the root": (lambda m: m["videos"][0]["file_names"].__setitem__(0, "../x.jpg"), "video",
                                   "file_names[0]"),
    "other format": (lambda m: m.__setitem__("format", 0), "manifest", "format"),
    "no source": (lambda m: m.pop("source"), "manifest", "source"),
    "has_masks a string": (lambda m: m.__setitem__("has_masks", "yes"), "manifest", "has_masks"),
    "videos not a list": (lambda m: m.__setitem__("videos", {}), "dataset", "videos"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_manifest_is_an_error_naming_it(make_ytvis, name: str) -> None:
    change, item, field = DAMAGE[name]
    root = make_ytvis(videos=2, frames=3)
    path = edited(write_test_manifest(root), change)
    with pytest.raises(YtvisError) as info:
        load_manifest(path, root)
    assert info.value.file == str(path) and item in info.value.item and info.value.field == field, str(info.value)


@pytest.mark.parametrize("cut", [0, 1, 100])
def test_truncated_manifest_is_an_error_naming_it(make_ytvis, cut: int) -> None:
    root = make_ytvis(videos=2, frames=3)
    path = write_test_manifest(root)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(YtvisError, match="not valid JSON") as info:
        load_manifest(path, root)
    assert info.value.file == str(path)


def test_jobs_reading_the_manifest_write_what_train_json_gave(make_ytvis, tmp_path: Path) -> None:
    """Flow store of shard 1 and the frame index: the CLIs (manifest) against the same writers fed with
    load_ytvis(train.json)'s records, as the jobs were before the manifest: the same digest, byte for byte."""
    root = make_ytvis(videos=4, frames=3, rle="list")
    manifest = write_test_manifest(root)
    full = load_ytvis(root)
    out = tmp_path / "manifest_route" / "shard_1.zarr"
    flow.main(["--root", str(root), "--manifest", str(manifest), "--shard", "1", "--params", json.dumps(FLOW),
               "--out", str(out), "--log-json", str(tmp_path / "log.json")])
    params = flow.FlowParams.from_json(json.dumps(FLOW), "test")
    ids = [v.id for v in full.videos][2:4]
    reference = tmp_path / "train_json_route" / "shard_1.zarr"
    flow.write_shard(reference, root, [full.video_by_id[i] for i in ids], flow.make_estimator(params),
                     flow.store_attributes(params, ids, None))
    assert store_digest(out) == store_digest(reference)
    assert flow.open_flow_store(out, params).attrs[DIGEST_ATTR] == store_digest(reference)

    split = tmp_path / "split.json"
    split.write_text((root / "train.json").read_text())
    index.main(["--root", str(root), "--manifest", str(manifest), "--split", str(split), "--shard-size", "2",
                "--out", str(tmp_path / "index.h5")])
    built = index.build_index(load_ytvis(root, split), [v.id for v in full.videos], 2,
                              [c.id for c in full.categories], [c.name for c in full.categories])
    index.write_index(built, tmp_path / "reference.h5", {})
    with h5py.File(tmp_path / "index.h5") as a, h5py.File(tmp_path / "reference.h5") as b:
        assert h5_digest(a) == h5_digest(b) and a.attrs[DIGEST_ATTR] == b.attrs[DIGEST_ATTR]
        assert a["boxes_xywh"].shape[0] > 0
