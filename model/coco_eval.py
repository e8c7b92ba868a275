"""COCO AP with pycocotools (or faster-coco-eval): results lists in, the paper's metric names out (method §6).

`evaluated` runs COCOeval's per-image matching (evalImgs) once; `precision_stats` reads the six AP numbers
off an accumulated precision array, as COCOeval.summarize does, so that model.bootstrap can read the same
numbers off the precision it accumulates for resampled videos from those matches.

The `faster-coco-eval` backend (C++ matching and accumulation, config evaluate.coco_backend) gives the same
numbers as pycocotools on the project's cases up to float summation order (≤ 1e-9 %,
tests/model/test_coco_eval.py); its per-image matches live in C++, so the bootstrap always uses pycocotools.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger("mowis.coco_eval")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IouType = Literal["segm", "bbox"]
Backend = Literal["pycocotools", "faster-coco-eval"]
BACKENDS: tuple[Backend, ...] = ("pycocotools", "faster-coco-eval")
NO_MASKS = "no mask AP: the ground truth has boxes only (a boxes-only dataset); box AP is the measure"


def has_masks(gt: dict[str, Any]) -> bool:
    """Whether the ground truth's annotations carry masks (split writes none for a boxes-only dataset)."""
    return bool(gt["annotations"]) and all("segmentation" in a for a in gt["annotations"])


def iou_types(gt: dict[str, Any]) -> tuple[IouType, ...]:
    """The IoU types the ground truth can score: segm and bbox, or bbox alone without masks."""
    return ("segm", "bbox") if has_masks(gt) else ("bbox",)


def annotation_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a COCO annotation or result: its RLE (compressed or not), or, on a boxes-only
    ground truth without `segmentation`, the filled box."""
    seg = ann.get("segmentation")
    if seg is None:
        x, y, w, h = ann["bbox"]
        mask = np.zeros((height, width), bool)
        mask[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = True
        return mask
    if not isinstance(seg, dict):
        raise ValueError(f"annotation {ann.get('id')}: expected an RLE segmentation, got {type(seg).__name__}")
    if isinstance(seg.get("counts"), list):
        seg = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg.get("counts"), str):
        seg = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(seg).astype(bool)


def unscored(coco_gt: COCO, results: list[dict[str, Any]], note: str) -> dict[str, Any]:
    """The metrics entry of an IoU type the ground truth cannot score: every AP null, and why."""
    return {**{k: None for k in STAT_NAMES}, "per_class": {c["name"]: None for c in coco_gt.dataset["categories"]},
            "num_detections": len(results), "note": note}


def load_coco(gt: dict) -> COCO:
    """A pycocotools COCO object from an in-memory ground-truth dict, without its prints."""
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_for(results: list[dict[str, Any]], iou_type: IouType) -> list[dict[str, Any]]:
    """`results` without the field the other IoU type uses: a `segm` result keeps its mask only (pycocotools
    then takes its area from the mask, as detectron2 does), a `bbox` result its box only."""
    drop = "bbox" if iou_type == "segm" else "segmentation"
    return [{k: v for k, v in r.items() if k != drop} for r in results]


def evaluated(coco_gt: COCO, results: list[dict[str, Any]], iou_type: IouType,
              backend: Backend = "pycocotools") -> COCOeval:
    """COCOeval after `evaluate` (per-image matches in evalImgs, not yet accumulated; with faster-coco-eval its
    COCOeval_faster, whose matches stay in C++). No results is an empty detection set (pycocotools' loadRes
    cannot load an empty list)."""
    detections = detections_for(results, iou_type)
    empty = {key: coco_gt.dataset[key] for key in ("images", "categories")} | {"annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster-coco-eval":
            try:
                import faster_coco_eval  # optional backend: imported only when configured
            except ImportError as err:
                raise ImportError("evaluate.coco_backend is faster-coco-eval, which is not installed: "
                                  "pip install 'mowis[coco]' (envs/train.yaml has it)") from err
            gt = faster_coco_eval.COCO(copy.deepcopy(coco_gt.dataset))
            dt = gt.loadRes(copy.deepcopy(detections)) if results else faster_coco_eval.COCO(copy.deepcopy(empty))
            ev = faster_coco_eval.COCOeval_faster(gt, dt, iou_type, print_function=print)
        elif backend == "pycocotools":
            ev = COCOeval(coco_gt, coco_gt.loadRes(detections) if results else load_coco(empty), iou_type)
        else:
            raise ValueError(f"evaluate.coco_backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        ev.evaluate()
    return ev


def precision_stats(precision: np.ndarray, iou_thrs: np.ndarray) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl in percent from COCOeval precision (T, R, K, A) at the largest max-dets,
    areas in COCO's order (all, small, medium, large); None where no class has ground truth (COCO's -1)."""
    def mean(p: np.ndarray) -> float | None:
        p = p[p > -1]
        return float(100 * p.mean()) if p.size else None
    t50, t75 = (int(np.argmin(np.abs(iou_thrs - t))) for t in (0.5, 0.75))
    return {"AP": mean(precision[..., 0]), "AP50": mean(precision[t50, ..., 0]),
            "AP75": mean(precision[t75, ..., 0]), "APs": mean(precision[..., 1]),
            "APm": mean(precision[..., 2]), "APl": mean(precision[..., 3])}


def accumulated_stats(ev: COCOeval) -> dict[str, float | None]:
    """COCOeval.accumulate on every evaluated image, then precision_stats at the largest max-dets."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    return precision_stats(ev.eval["precision"][..., -1], ev.params.iouThrs)


def evaluate_results(coco_gt: COCO, results: list[dict[str, Any]], iou_type: IouType,
                     backend: Backend = "pycocotools") -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl in percent plus per-class AP, for `results` (COCO results format).

    For `segm` each result needs a compressed-RLE `segmentation`; its `bbox` is dropped so that pycocotools
    takes the detection's area from the mask (as detectron2 does). For `bbox` the `segmentation` is dropped.
    A metric pycocotools reports as -1 (no ground-truth object in that size range, or a class with no
    ground truth in the split) is None (null in JSON), never 0: there is nothing to score. `backend` computes
    them with pycocotools or faster-coco-eval.
    """
    cat_names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    ev = evaluated(coco_gt, results, iou_type, backend)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.accumulate()
        ev.summarize()
    log.info("COCOeval %s, %d detections:\n%s", iou_type, len(results), summary.getvalue().rstrip())
    stats = {name: (float(100 * ev.stats[i]) if ev.stats[i] >= 0 else None) for i, name in enumerate(STAT_NAMES)}
    # precision: (T iou thresholds, R recall points, K classes, A area ranges, M max dets); area "all", 100 dets
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        p = p[p > -1]
        per_class[cat_names[cid]] = float(100 * p.mean()) if p.size else None
    return {**stats, "per_class": per_class, "num_detections": len(results)}
