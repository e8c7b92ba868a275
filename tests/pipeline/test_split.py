"""pipeline.split: the seeded per-class split, the COCO conversion and the CLI's four outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipeline.split import PAPER_COUNTS, main, split_videos, to_coco
from pipeline.ytvis import YtvisError, load_ytvis

from damage import damage_frame, leftovers


def decode_uncompressed(counts: list[int], height: int, width: int) -> np.ndarray:
    """Brute-force decoding of an uncompressed COCO RLE to a (H, W) uint8 mask."""
    values = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    return values.reshape(width, height).T


def classes_of_videos(raw: dict) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {v["id"]: set() for v in raw["videos"]}
    for a in raw["annotations"]:
        out[a["video_id"]].add(a["category_id"])
    return out


def test_split_is_seeded_disjoint_complete_and_covers_every_class(make_ytvis):
    root = make_ytvis(videos=30, frames=2, categories=5, tracks_per_video=2, images=False)
    ds = load_ytvis(root, check_files=False)
    raw = json.loads((root / "train.json").read_text())
    train_train, train_val = split_videos(ds, videos_per_class=2, seed=3)
    assert (train_train, train_val) == split_videos(ds, videos_per_class=2, seed=3)
    assert not set(train_train) & set(train_val)
    assert sorted(train_train + train_val) == sorted(v["id"] for v in raw["videos"])
    assert train_train == sorted(train_train) and train_val == sorted(train_val)
    classes = classes_of_videos(raw)
    for c in range(1, 6):
        assert sum(1 for v in train_val if c in classes[v]) >= 2
    assert len(train_val) <= 5 * 2
    others = {tuple(split_videos(ds, 2, seed)[1]) for seed in range(6)}
    assert len(others) > 1  # the seed matters


def test_one_class_per_video_gives_exactly_n_per_class(make_ytvis):
    # Video k holds two tracks of class k % 4 + 1 only; class 4 has 2 videos, fewer than N = 3.
    root = make_ytvis(videos=14, frames=2, categories=4, images=False,
                      category_of=lambda k, j: 4 if k in (3, 7) else k % 3 + 1)
    ds = load_ytvis(root, check_files=False)
    raw = json.loads((root / "train.json").read_text())
    classes = classes_of_videos(raw)
    _, train_val = split_videos(ds, videos_per_class=3, seed=0)
    per_class = [sum(1 for v in train_val if c in classes[v]) for c in range(1, 5)]
    assert per_class == [3, 3, 3, 2]
    assert {101 + 7 * 3, 101 + 7 * 7} <= set(train_val)


def test_to_coco_matches_brute_force_masks(make_ytvis, tmp_path):
    root = make_ytvis(videos=4, frames=6, tracks_per_video=3, rle="list")
    raw = json.loads((root / "train.json").read_text())
    ds = load_ytvis(root)
    coco_dict = to_coco(ds, [108, 122])
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco_dict))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 12
    image_of = {(im["video_id"], im["frame_index"]): im for im in coco.dataset["images"]}
    assert image_of[(122, 4)]["file_name"] == "vid003ab/00020.jpg"
    assert (image_of[(122, 4)]["height"], image_of[(122, 4)]["width"]) == (24, 32)
    expected = [(a, t) for a in raw["annotations"] if a["video_id"] in (108, 122)
                for t, s in enumerate(a["segmentations"]) if s is not None]
    assert len(coco.getAnnIds()) == len(expected)
    by_key = {(a["instance_id"], coco.imgs[a["image_id"]]["frame_index"]): a for a in coco.dataset["annotations"]}
    for a, t in expected:
        got = by_key[(a["id"], t)]
        assert coco.imgs[got["image_id"]]["video_id"] == a["video_id"]
        assert isinstance(got["segmentation"]["counts"], str)
        mask = coco.annToMask(got)
        truth = decode_uncompressed(a["segmentations"][t]["counts"], 24, 32)
        assert np.array_equal(mask, truth)
        assert mask.sum() == got["area"] == a["areas"][t]
        assert got["bbox"] == a["bboxes"][t]
        assert (got["category_id"], got["iscrowd"]) == (a["category_id"], a["iscrowd"])


def test_to_coco_same_for_compressed_and_uncompressed_input(make_ytvis):
    as_str = to_coco(load_ytvis(make_ytvis("s", videos=3, rle="str")), [101, 115])
    as_list = to_coco(load_ytvis(make_ytvis("l", videos=3, rle="list")), [101, 115])
    mixed = to_coco(load_ytvis(make_ytvis("m", videos=3, rle="mixed")), [101, 115])
    assert as_str == as_list == mixed


def test_to_coco_rejects_compressed_rle_of_the_wrong_length(make_ytvis):
    from pycocotools import mask as mask_utils
    root = make_ytvis(videos=2, frames=3, images=False)
    wrong = np.zeros((24, 31), np.uint8)  # 744 pixels claimed as 24 x 32 = 768
    wrong[3:9, 4:10] = 1
    counts = mask_utils.encode(np.asfortranarray(wrong))["counts"].decode("ascii")
    raw = json.loads((root / "train.json").read_text())
    next(a for a in raw["annotations"] if a["id"] == 1011)["segmentations"][0]["counts"] = counts
    (root / "train.json").write_text(json.dumps(raw))
    ds = load_ytvis(root, check_files=False)  # the cheap check passes
    with pytest.raises(YtvisError, match=r"annotation 1011 \(video 108\): field 'segmentations\[0\]'.*744"):
        to_coco(ds, [108])


def test_cli_writes_four_files_with_counts(make_ytvis, tmp_path):
    root = make_ytvis(videos=12, frames=4, categories=3)
    raw = json.loads((root / "train.json").read_text())
    out = tmp_path / "split"
    assert main(["--root", str(root), "--params", '{"seed": 1, "videos_per_class": 2}',
                 "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "train_train.json", "train_val.json",
                                                    "train_val_coco.json"]
    summary = json.loads((out / "summary.json").read_text())
    tt = load_ytvis(root, out / "train_train.json")
    tv = load_ytvis(root, out / "train_val.json")
    assert sorted([v.id for v in tt.videos] + [v.id for v in tv.videos]) == sorted(v["id"] for v in raw["videos"])
    assert summary["paper"] == PAPER_COUNTS == {"train_train": {"videos": 1847, "images": 51049},
                                                "train_val": {"videos": 391, "images": 10796}}
    assert summary["seed"] == 1 and summary["reconstruction"] is True
    assert "reconstruct" in summary["notes"][0].lower()
    for name, part in (("train_train", tt), ("train_val", tv)):
        ours = summary["ours"][name]
        assert ours["videos"] == len(part.videos)
        assert ours["images"] == sum(len(video["file_names"]) for video in raw["videos"]
                                     if video["id"] in {v.id for v in part.videos}) == 4 * len(part.videos)
        frames_with_mask = {(a["video_id"], t) for a in raw["annotations"] for t, s in enumerate(a["segmentations"])
                            if s is not None and a["video_id"] in {v.id for v in part.videos}}
        assert ours["images_with_masks"] == len(frames_with_mask)
    coco = json.loads((out / "train_val_coco.json").read_text())
    assert len(coco["images"]) == summary["ours"]["train_val"]["images"]
    assert len(coco["annotations"]) == summary["ours"]["train_val"]["masks"]
    classes = classes_of_videos(raw)
    for c in range(1, 4):
        entry = summary["per_class"][f"class{c}"]
        assert entry["train_val_videos"] == sum(1 for v in tv.videos if c in classes[v.id]) >= 2
        assert entry["videos_available"] == sum(1 for cs in classes.values() if c in cs)


def test_cli_writes_nothing_when_validation_fails(make_ytvis, tmp_path):
    root = make_ytvis(videos=5, frames=2, categories=3, images=False,
                      category_of=lambda k, j: 3 if k == 4 else 1 + k % 2)
    (root / "JPEGImages").mkdir()
    out = tmp_path / "split"
    # The frames are missing: validation fails and nothing is written.
    assert main(["--root", str(root), "--params", '{"seed": 0, "videos_per_class": 2}',
                 "--out-dir", str(out)]) == 1
    assert not out.exists() or not any(out.iterdir())
    ds = load_ytvis(root, check_files=False)
    _, train_val = split_videos(ds, videos_per_class=2, seed=0)
    assert 101 + 7 * 4 in train_val  # the only video of class 3


def test_cli_summary_names_short_classes(make_ytvis, tmp_path):
    root = make_ytvis(videos=5, frames=2, categories=3, category_of=lambda k, j: 3 if k == 4 else 1 + k % 2)
    out = tmp_path / "split"
    assert main(["--root", str(root), "--params", '{"seed": 0, "videos_per_class": 2}', "--out-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes_with_fewer_videos"] == ["class3"]
    assert summary["per_class"]["class3"] == {"category_id": 3, "videos_available": 1, "drawn": 1,
                                              "train_val_videos": 1, "train_train_videos": 0}
    assert any("class3" in note for note in summary["notes"])


def test_cli_rejects_bad_params(make_ytvis, tmp_path):
    root = make_ytvis(videos=2, frames=2)
    with pytest.raises(ValueError, match="videos_per_class"):
        main(["--root", str(root), "--params", '{"seed": 0, "videos_per_class": 0}', "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="unknown keys"):
        main(["--root", str(root), "--params", '{"seed": 0, "videos_per_class": 1, "x": 1}',
              "--out-dir", str(tmp_path)])


def test_cli_checks_frame_headers_and_decodes_frames_with_check_frames(make_ytvis, tmp_path, capsys):
    root = make_ytvis(videos=4, frames=3)
    section = '{"seed": 0, "videos_per_class": 2}'
    frame = root / "JPEGImages" / "vid002ab" / "00010.jpg"
    damage_frame(frame, "wrong_size")
    out = tmp_path / "split"
    assert main(["--root", str(root), "--params", section, "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "video 115: field 'file_names[2]'" in err and "32x28 (by its header)" in err
    assert not out.exists()
    root = make_ytvis("truncated", videos=4, frames=3)
    damage_frame(root / "JPEGImages" / "vid002ab" / "00010.jpg", "truncated_jpeg")
    assert main(["--root", str(root), "--params", section, "--out-dir", str(out)]) == 0  # the header is intact
    capsys.readouterr()
    out = tmp_path / "checked"
    assert main(["--root", str(root), "--params", section, "--out-dir", str(out), "--check-frames"]) == 1
    assert "vid002ab/00010.jpg: video 115 frame 2 is a truncated JPEG" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


def test_cli_refuses_an_empty_train_val(make_ytvis, tmp_path, capsys):
    root = make_ytvis(videos=3, frames=2, tracks_per_video=0)
    out = tmp_path / "split"
    assert main(["--root", str(root), "--params", '{"seed": 0, "videos_per_class": 2}', "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'train.json'}: dataset: field 'annotations': no video has an annotated track" in err
    assert not out.exists()
