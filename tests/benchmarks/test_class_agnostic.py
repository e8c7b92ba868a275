"""benchmarks/class_agnostic.py on a hand-worked case: AP with classes, without, and the class confusion."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from model.coco_eval import evaluate_results, load_coco

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks/class_agnostic.py"
spec = importlib.util.spec_from_file_location("class_agnostic", SCRIPT)
class_agnostic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(class_agnostic)


def ann(i: int, cat: int, box: list[float]) -> dict:
    """One ground-truth object of image 1."""
    return {"id": i, "image_id": 1, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}


GT = {"images": [{"id": 1, "height": 64, "width": 64}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
      "annotations": [ann(1, 1, [0, 0, 10, 10]), ann(2, 2, [20, 20, 10, 10])]}
# Object a found twice on the same box (class b scored above class a), object b found once, one false
# positive of class a on the background.
DETS = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 5, 5], "score": 0.1}]


def test_class_agnostic_ap_and_confusion_by_hand() -> None:
    """With classes: class a ranks its true positive (0.8) above its false one (0.1): AP 100; class b ranks a
    false positive (0.9, on object a) above its true one: precision 1/2 at every recall, AP 50; mean 75.
    Without classes NMS keeps one box per object (0.9, 0.7) above the background box: AP 100. The best
    detection on both objects says class b: confusion [[0, 1], [0, 1]], accuracy 1/2."""
    assert evaluate_results(load_coco(GT), DETS, "bbox")["AP"] == pytest.approx(75.0)
    gt1, dets1 = class_agnostic.agnostic(GT, DETS, nms_thresh=0.6)
    assert sorted(d["score"] for d in dets1) == [0.1, 0.7, 0.9] and {d["category_id"] for d in dets1} == {1}
    assert evaluate_results(load_coco(gt1), dets1, "bbox")["AP"] == pytest.approx(100.0)
    np.testing.assert_array_equal(class_agnostic.confusion(GT, DETS), [[0, 1], [0, 1]])
