"""Mask and box AP of a results file on the synthetic camouflaged / distinct objects (the demo's lab notebook).

The objects outside the subset are ignored by COCOeval (its `ignore` flag: a detection matched to one is
neither a true nor a false positive), so a subset's AP scores the same detections as the full AP does.
`python benchmarks/subset_ap.py --gt results/split/train_val_coco.json --train-json results/synthetic/train.json
--results RUN/coco_results.json [--json out.json]`
"""

from __future__ import annotations

import os
import sys

# benchmarks/model.py would shadow the `model` package: drop this script's folder from the import path.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from pycocotools.cocoeval import COCOeval  # noqa: E402

from model.coco_eval import load_coco  # noqa: E402


class SubsetCOCOeval(COCOeval):
    """COCOeval whose ground truth outside `keep` (a set of `instance_id`s, or None = all) is ignored."""

    def __init__(self, coco_gt, coco_dt, iou_type: str, keep: set[int] | None):
        super().__init__(coco_gt, coco_dt, iou_type)
        self.keep = keep

    def _prepare(self) -> None:
        """pycocotools' preparation, then the `ignore` flag on every object outside the subset."""
        super()._prepare()
        if self.keep is not None:
            for gts in self._gts.values():
                for g in gts:
                    g["ignore"] = g["ignore"] or g["instance_id"] not in self.keep


def subset_ap(gt: dict, results: list[dict], keep: set[int] | None, iou_type: str) -> float:
    """COCO AP (percent, IoU .50:.95) of `results` on the objects whose instance_id is in `keep`."""
    coco_gt = load_coco(gt)
    drop = "bbox" if iou_type == "segm" else "segmentation"
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
        ev = SubsetCOCOeval(coco_gt, coco_dt, iou_type, keep)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(100 * max(ev.stats[0], 0.0))


def main() -> None:
    """CLI: print mask and box AP on all, camouflaged and distinct objects."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", required=True, type=Path, help="results/split/train_val_coco.json")
    parser.add_argument("--train-json", required=True, type=Path, help="results/synthetic/train.json")
    parser.add_argument("--results", required=True, type=Path, help="coco_results.json of model.evaluate")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    gt = json.loads(args.gt.read_text())
    camouflaged = set(json.loads(args.train_json.read_text())["info"]["camouflaged_annotation_ids"])
    present = {a["instance_id"] for a in gt["annotations"]}
    subsets = {"all": None, "camouflaged": present & camouflaged, "distinct": present - camouflaged}
    results = json.loads(args.results.read_text())
    out = {}
    for name, keep in subsets.items():
        n = sum(keep is None or a["instance_id"] in keep for a in gt["annotations"])
        out[name] = {"objects": n, "mask_AP": subset_ap(gt, results, keep, "segm"),
                     "box_AP": subset_ap(gt, results, keep, "bbox")}
        print(f"{name}: {n} masks, mask AP {out[name]['mask_AP']:.1f}, box AP {out[name]['box_AP']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
