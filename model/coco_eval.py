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


def evaluate_results(coco_gt: COCO, results: list[dict[str, Any]],
                     iou_type: Literal["segm", "bbox"]) -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl in percent plus per-class AP, for `results` (COCO results format).

    For `segm` each result needs a compressed-RLE `segmentation`; its `bbox` is dropped so that pycocotools
    takes the detection's area from the mask (as detectron2 does). For `bbox` the `segmentation` is dropped.
    No results at all gives zeros (pycocotools cannot load an empty list). A class with no ground truth in
    the split has per-class AP null.
    """
    drop = "bbox" if iou_type == "segm" else "segmentation"
    dets = [{k: v for k, v in r.items() if k != drop} for r in results]
    cat_names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    if not dets:
        per_class = {name: (0.0 if coco_gt.getAnnIds(catIds=[cid]) else None) for cid, name in cat_names.items()}
        return {**{k: 0.0 for k in STAT_NAMES}, "per_class": per_class, "num_detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(100 * max(ev.stats[i], 0.0)) for i, name in enumerate(STAT_NAMES)}
    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M max dets); area "all", 100 dets
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        p = p[p > -1]
        per_class[cat_names[cid]] = float(100 * p.mean()) if p.size else None
    return {**stats, "per_class": per_class, "num_detections": len(dets)}
