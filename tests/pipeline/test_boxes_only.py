"""Boxes-only datasets: annotations with `bboxes` and no masks load for box supervision; a dataset with masks
that lacks one where a box is present stays an error; the COCO ground truth then has boxes only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.split import to_coco
from pipeline.ytvis import YtvisError, load_ytvis


def boxes_only(root: Path, data: dict, areas: bool, segmentations: str) -> Path:
    """Rewrite root/train.json without masks: `segmentations` 'absent' or 'null' (every frame), areas kept or not."""
    for ann in data["annotations"]:
        if segmentations == "absent":
            del ann["segmentations"]
        else:
            ann["segmentations"] = [None] * len(ann["bboxes"])
        if not areas:
            del ann["areas"]
    (root / "train.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("segmentations", ["absent", "null"])
@pytest.mark.parametrize("areas", [True, False])
def test_boxes_only_loads_with_box_presence(make_ytvis, segmentations: str, areas: bool) -> None:
    """Tracks are present where their boxes are; areas are the json's or, absent, w*h of each box."""
    root = make_ytvis()
    data = json.loads((root / "train.json").read_text())
    expected = {ann["id"]: ann for ann in json.loads(json.dumps(data["annotations"]))}
    dataset = load_ytvis(boxes_only(root, data, areas, segmentations))
    assert not dataset.has_masks
    for track in dataset.tracks:
        raw = expected[track.id]
        assert track.segmentations == (None,) * len(raw["bboxes"])
        assert [list(b) if b else None for b in track.bboxes_xywh] == raw["bboxes"]
        want = raw["areas"] if areas else [b[2] * b[3] if b else None for b in raw["bboxes"]]
        assert list(track.areas) == want


def test_coco_ground_truth_of_boxes_only_has_no_segmentation(make_ytvis) -> None:
    """One COCO annotation per (track, frame) with a box, the same count as the masked dataset, no masks."""
    root = make_ytvis()
    masked = load_ytvis(root)
    with_masks = to_coco(masked, [v.id for v in masked.videos])
    dataset = load_ytvis(boxes_only(root, json.loads((root / "train.json").read_text()), True, "absent"))
    coco = to_coco(dataset, [v.id for v in dataset.videos])
    assert masked.has_masks and len(coco["annotations"]) == len(with_masks["annotations"]) > 0
    assert all("segmentation" not in ann for ann in coco["annotations"])
    assert [(a["image_id"], a["bbox"], a["area"]) for a in coco["annotations"]] == \
           [(a["image_id"], a["bbox"], a["area"]) for a in with_masks["annotations"]]


@pytest.mark.parametrize("change, field", [
    (lambda ann: ann.pop("segmentations"), "'segmentations'"),
    (lambda ann: ann["segmentations"].__setitem__(0, None), r"'bboxes\[0\]': present where segmentations"),
])
def test_masked_dataset_missing_a_mask_is_an_error(make_ytvis, change, field: str) -> None:
    """With masks elsewhere, an annotation without segmentations, or a null mask where a box is, is refused."""
    root = make_ytvis(tracks_per_video=2)
    data = json.loads((root / "train.json").read_text())
    ann = next(a for a in data["annotations"] if a["segmentations"][0] is not None)
    change(ann)
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(YtvisError, match=field) as error:
        load_ytvis(root)
    assert f"annotation {ann['id']}" in str(error.value)


def test_boxes_only_box_without_area_is_named(make_ytvis) -> None:
    """Boxes-only with areas given: a null area where the box is present names areas[t]."""
    root = make_ytvis()
    data = json.loads((root / "train.json").read_text())
    boxes_only(root, data, True, "absent")
    ann = next(a for a in data["annotations"] if a["bboxes"][0] is not None)
    ann["areas"][0] = None
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(YtvisError, match=r"areas\[0\].*null where bboxes\[t\] is present"):
        load_ytvis(root)
