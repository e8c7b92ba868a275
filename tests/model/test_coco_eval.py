"""COCO AP on hand-built cases whose answer is known without pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from model.coco_eval import STAT_NAMES, evaluate_results, load_coco
from model.evaluate import read_ground_truth
from model.subsets import subset_gt

from test_subsets import scene


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box_mask(h: int, w: int, x: int, y: int, bw: int, bh: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y:y + bh, x:x + bw] = 1
    return m


def _gt() -> dict:
    """Two 100×100 images; image 1 has a cat (area 2000), image 2 a dog (3000): both medium (32² < a < 96²)."""
    h = w = 100
    anns = []
    for ann_id, (img, cat, box) in enumerate([(1, 1, (10, 10, 50, 40)), (2, 2, (20, 30, 60, 50))], start=1):
        m = _box_mask(h, w, *box)
        anns.append({"id": ann_id, "image_id": img, "category_id": cat, "iscrowd": 0,
                     "bbox": list(map(float, box)), "area": float(m.sum()), "segmentation": _rle(m)})
    return {"images": [{"id": 1, "width": w, "height": h}, {"id": 2, "width": w, "height": h}],
            "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def _as_results(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 0.9} for a in gt["annotations"]]


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ground_truth_as_predictions_scores_100(iou_type: str) -> None:
    gt = _gt()
    m = evaluate_results(load_coco(gt), _as_results(gt), iou_type)
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0)
    assert m["APm"] == pytest.approx(100.0)
    assert m["APs"] is None and m["APl"] is None  # no small or large objects: pycocotools' -1, not a score
    assert m["per_class"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(100.0)}


def test_known_ap_with_one_missed_class() -> None:
    """The dog is found, the cat missed: AP = mean over classes = (0 + 100) / 2 = 50 at every threshold."""
    gt = _gt()
    res = [r for r in _as_results(gt) if r["category_id"] == 2]
    m = evaluate_results(load_coco(gt), res, "segm")
    assert m["AP"] == pytest.approx(50.0) and m["AP75"] == pytest.approx(50.0)
    assert m["per_class"]["cat"] == 0.0


def test_known_ap_from_iou_between_thresholds() -> None:
    """The cat box shifted right by 10 px: IoU = (40·40) / (2·2000 − 1600) = 2/3, a true positive at the
    thresholds 0.50–0.65 (4 of 10), so the cat's AP is 40; the dog is exact (100): AP 70, AP50 100, AP75 50."""
    gt = _gt()
    res = _as_results(gt)
    res[0] = dict(res[0], bbox=[20.0, 10.0, 50.0, 40.0])  # GT cat: x 10..60, y 10..50
    m = evaluate_results(load_coco(gt), res, "bbox")
    assert m["per_class"]["cat"] == pytest.approx(40.0)
    assert m["AP"] == pytest.approx(70.0) and m["AP50"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(50.0)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_no_detections_score_zero_only_where_there_is_ground_truth(iou_type: str) -> None:
    """Both objects are medium and both missed: AP, AP50, AP75, APm and both classes 0; APs, APl undefined."""
    gt = _gt()
    gt["categories"].append({"id": 3, "name": "bird"})  # a class with no ground truth in the split
    m = evaluate_results(load_coco(gt), [], iou_type)
    assert {k: m[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} == {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": None, "APm": 0.0, "APl": None}
    assert m["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": None} and m["num_detections"] == 0
    assert json.loads(json.dumps(m))["APs"] is None  # null in metrics.json, not -1 or 0.0


def test_undefined_sizes_stay_null_with_detections() -> None:
    """A small cat (20x20 = 400 px < 32²) and a medium dog (70x70 = 4900 px, between 32² and 96²), both found
    exactly: APs and APm are 100; there is no large object, so APl stays None."""
    h = w = 100
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [5.0, 5.0, 20.0, 20.0],
             "area": 400.0, "segmentation": _rle(_box_mask(h, w, 5, 5, 20, 20))},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [25.0, 25.0, 70.0, 70.0],
             "area": 4900.0, "segmentation": _rle(_box_mask(h, w, 25, 25, 70, 70))}]
    gt = {"images": [{"id": 1, "width": w, "height": h}], "annotations": anns,
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    m = evaluate_results(load_coco(gt), _as_results(gt), "segm")
    assert m["APs"] == pytest.approx(100.0) and m["APm"] == pytest.approx(100.0) and m["APl"] is None


def test_ground_truth_without_images_or_annotations_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "train_val_coco.json"
    gt = _gt()
    path.write_text(json.dumps(dict(gt, images=[], annotations=[])))
    with pytest.raises(ValueError, match=f"{path}: no images: the train_val split is empty"):
        read_ground_truth(path)
    path.write_text(json.dumps(dict(gt, annotations=[])))
    with pytest.raises(ValueError, match=f"{path}: 2 images but no annotations"):
        read_ground_truth(path)
    path.write_text(json.dumps({"images": gt["images"]}))
    with pytest.raises(ValueError, match=f"{path}: expected COCO ground truth"):
        read_ground_truth(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        read_ground_truth(path)
    path.write_text(json.dumps(gt))
    assert read_ground_truth(path) == gt


def assert_same_metrics(a: dict, b: dict) -> None:
    """The same metrics: None in the same places, numbers equal up to float summation order (1e-9 %)."""
    assert a.keys() == b.keys() and a["per_class"].keys() == b["per_class"].keys()
    pairs = [(a[k], b[k]) for k in STAT_NAMES] + [(a["per_class"][k], b["per_class"][k]) for k in a["per_class"]]
    for x, y in pairs:
        assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-9), (x, y)
    assert a["num_detections"] == b["num_detections"]


def parity_cases() -> list[tuple[str, dict, list[dict]]]:
    """The hand-built cases above, a class without ground truth, and random scenes (tests/model/test_subsets.py)
    whole and as subsets whose other objects are ignored (iscrowd), with duplicates and false positives."""
    gt = _gt()
    shifted = _as_results(gt)
    shifted[0] = dict(shifted[0], bbox=[20.0, 10.0, 50.0, 40.0])
    bird = dict(gt, categories=[*gt["categories"], {"id": 3, "name": "bird"}])
    cases = [("exact", gt, _as_results(gt)), ("missed class", gt, [r for r in _as_results(gt) if r["category_id"] == 2]),
             ("shifted", gt, shifted), ("no detections, a class without objects", bird, []),
             ("a class without objects", bird, _as_results(gt))]
    for seed in range(3):
        scene_gt, dets, kind = scene(videos=4, frames=3, seed=seed)
        dets = [{k: v for k, v in d.items() if k != "on"} for d in dets]
        cases += [(f"scene {seed}", scene_gt, dets),
                  (f"scene {seed}, kind b ignored", subset_gt(scene_gt, {i for i, k in kind.items() if k == "a"}), dets)]
    return cases


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_faster_coco_eval_gives_pycocotools_numbers(iou_type: str) -> None:
    """faster-coco-eval (evaluate.coco_backend) equals pycocotools on every parity case; an unknown backend is
    named."""
    for name, gt, results in parity_cases():
        expected = evaluate_results(load_coco(gt), results, iou_type)
        assert_same_metrics(evaluate_results(load_coco(gt), results, iou_type, "faster-coco-eval"), expected)
    with pytest.raises(ValueError, match="evaluate.coco_backend: expected one of pycocotools, faster-coco-eval"):
        evaluate_results(load_coco(_gt()), [], iou_type, "detectron2")
