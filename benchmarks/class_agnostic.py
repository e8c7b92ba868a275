"""Detection diagnosis (the demo's lab notebook): is AP lost to the class or to the box and mask?

Class-agnostic AP: every ground-truth object and detection relabelled to one class, detections merged by
class-agnostic NMS (the evaluation's `nms_thresh`), then the same COCO evaluation (model.coco_eval). Class
confusion: for each ground-truth object, the class of the best-scored detection whose box overlaps it at
IoU >= 0.5 (rows: true class, columns: detected class). `gt` writes the COCO ground truth of any split of
the dataset with the project's own `pipeline.split.to_coco` (e.g. train_train, to measure fit vs generalisation).

    python benchmarks/class_agnostic.py gt --root results/synthetic --split results/split/train_train.json \
        --out train_train_coco.json
    python benchmarks/class_agnostic.py score --gt results/split/train_val_coco.json \
        --results results/eval/ours/coco_results.json [--nms 0.6] [--json out.json]
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pycocotools.mask as mask_utils  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import box_convert, nms  # noqa: E402

from model.coco_eval import evaluate_results, load_coco  # noqa: E402
from pipeline.io import write_json_atomic  # noqa: E402
from pipeline.split import to_coco  # noqa: E402
from pipeline.ytvis import load_ytvis  # noqa: E402


def by_image(items: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Annotations or detections grouped by image_id."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        out[item["image_id"]].append(item)
    return out


def agnostic(gt: dict[str, Any], results: list[dict[str, Any]],
             nms_thresh: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and detections with one class (id 1, 'object'); detections after class-agnostic NMS."""
    gt1 = {**gt, "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
           "annotations": [{**a, "category_id": 1} for a in gt["annotations"]]}
    kept = []
    for dets in by_image(results).values():
        boxes = box_convert(torch.tensor([d["bbox"] for d in dets], dtype=torch.float64), "xywh", "xyxy")
        scores = torch.tensor([d["score"] for d in dets], dtype=torch.float64)
        kept += [{**dets[i], "category_id": 1} for i in nms(boxes, scores, nms_thresh).tolist()]
    return gt1, kept


def confusion(gt: dict[str, Any], results: list[dict[str, Any]], iou: float = 0.5) -> np.ndarray:
    """(K, K) counts: row = an object's true class, column = the class of the best-scored detection whose
    box IoU with it is >= iou (objects without one are not counted); classes in the order of gt categories."""
    column = {c["id"]: k for k, c in enumerate(gt["categories"])}
    out = np.zeros((len(column), len(column)), np.int64)
    dets_of = by_image(results)
    for image_id, objects in by_image(gt["annotations"]).items():
        dets = dets_of.get(image_id, [])
        if not dets:
            continue
        ious = mask_utils.iou([d["bbox"] for d in dets], [a["bbox"] for a in objects],
                              [0] * len(objects))  # (D, G)
        scores = np.array([d["score"] for d in dets])
        for g, a in enumerate(objects):
            hits = np.flatnonzero(ious[:, g] >= iou)
            if hits.size:
                best = hits[np.argmax(scores[hits])]
                out[column[a["category_id"]], column[dets[best]["category_id"]]] += 1
    return out


def score(gt: dict[str, Any], results: list[dict[str, Any]], nms_thresh: float) -> dict[str, Any]:
    """AP/AP50/AP75 per IoU type with classes and class-agnostic, the class confusion and its accuracy."""
    gt1, results1 = agnostic(gt, results, nms_thresh)
    coco, coco1 = load_coco(gt), load_coco(gt1)
    out: dict[str, Any] = {}
    for iou_type in ("segm", "bbox"):
        for name, g, r in ((iou_type, coco, results), (f"{iou_type}_agnostic", coco1, results1)):
            stats = evaluate_results(g, r, iou_type)
            out[name] = {k: stats[k] for k in ("AP", "AP50", "AP75")}
    matrix = confusion(gt, results)
    out["confusion"] = {"classes": [c["name"] for c in gt["categories"]], "counts": matrix.tolist(),
                        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
                        "objects_found": int(matrix.sum()), "objects": len(gt["annotations"])}
    return out


def main() -> None:
    """CLI: `gt` writes a split's COCO ground truth; `score` prints AP with and without classes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gt", help="COCO ground truth of a split (pipeline.split.to_coco)")
    p.add_argument("--root", required=True, type=Path, help="dataset folder with train.json and JPEGImages/")
    p.add_argument("--split", required=True, type=Path, help="results/split/<split>.json")
    p.add_argument("--out", required=True, type=Path)
    p = sub.add_parser("score", help="AP with and without classes, class confusion")
    p.add_argument("--gt", required=True, type=Path)
    p.add_argument("--results", required=True, type=Path, help="coco_results.json of model.evaluate")
    p.add_argument("--nms", type=float, default=0.6, help="class-agnostic NMS IoU (config evaluate.nms_thresh)")
    p.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "gt":
        video_ids = [v["id"] for v in json.loads(args.split.read_text())["videos"]]
        write_json_atomic(args.out, to_coco(load_ytvis(args.root), video_ids), indent=None)
        return
    out = score(json.loads(args.gt.read_text()), json.loads(args.results.read_text()), args.nms)
    for key in ("segm", "segm_agnostic", "bbox", "bbox_agnostic"):
        print(f"{key}: " + ", ".join(f"{k} {v:.1f}" for k, v in out[key].items()))
    c = out["confusion"]
    print(f"class of the best detection at box IoU >= 0.5 ({c['objects_found']} of {c['objects']} objects), "
          f"accuracy {100 * c['accuracy']:.1f} %; rows true {c['classes']}:")
    print("\n".join(" ".join(f"{n:5d}" for n in row) for row in c["counts"]))
    if args.json:
        write_json_atomic(args.json, out)


if __name__ == "__main__":
    main()
