"""COCO AP with pycocotools: results lists in, the paper's metric names out (method §6)."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Literal

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def load_coco(gt: dict) -> COCO:
    """A pycocotools COCO object from an in-memory ground-truth dict, without its prints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections_coco(coco_gt: COCO, dets: list[dict[str, Any]]) -> COCO:
    """The detections as a COCO object over the ground truth's images; an empty one for no detections
    (pycocotools' loadRes cannot load an empty list)."""
    if dets:
        return coco_gt.loadRes(dets)
    return load_coco({"images": coco_gt.dataset["images"], "annotations": [],
                      "categories": coco_gt.dataset["categories"]})


def evaluate_results(coco_gt: COCO, results: list[dict[str, Any]],
                     iou_type: Literal["segm", "bbox"]) -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl in percent plus per-class AP, for `results` (COCO results format).

    For `segm` each result needs a compressed-RLE `segmentation`; its `bbox` is dropped so that pycocotools
    takes the detection's area from the mask (as detectron2 does). For `bbox` the `segmentation` is dropped.
    A metric pycocotools reports as -1 (no ground-truth object in that size range, or a class with no
    ground truth in the split) is None (null in JSON), never 0: there is nothing to score.
    """
    drop = "bbox" if iou_type == "segm" else "segmentation"
    dets = [{k: v for k, v in r.items() if k != drop} for r in results]
    cat_names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, _detections_coco(coco_gt, dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: (float(100 * ev.stats[i]) if ev.stats[i] >= 0 else None) for i, name in enumerate(STAT_NAMES)}
    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M max dets); area "all", 100 dets
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        p = p[p > -1]
        per_class[cat_names[cid]] = float(100 * p.mean()) if p.size else None
    return {**stats, "per_class": per_class, "num_detections": len(dets)}
