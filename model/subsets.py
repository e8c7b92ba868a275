"""Subset AP: mask and box COCO AP on a subset of the objects, the others ignored, with bootstrap intervals.

Subsets of train_val's objects (image-level annotations): `all`; on the synthetic data `camouflaged` and
`distinct` (the tracks pipeline/synthetic.py lists in train.json's info.camouflaged_annotation_ids, matched
through each annotation's `instance_id`); on any data `static`, `slow` and `fast`, each object's motion
relative to its surroundings (model.object_motion, px/frame) binned at the configured edges (objects whose
motion is unknown are in no motion bin).

Ignoring an object uses COCOeval's own mechanism: pycocotools sets a ground truth's `ignore` flag from
`iscrowd` (cocoeval.py `_prepare`), so the objects outside the subset are marked `iscrowd: 1`. A detection
that no subset object claims at the IoU threshold but that overlaps an ignored object (crowd IoU: the
intersection over the detection's area) is then neither a true nor a false positive, and the ignored objects
are no misses. Crowd regions absorb any number of detections, so duplicates on an ignored object cost
nothing either. Every number comes with a percentile interval over videos (model.bootstrap).

CLI (rule subset_ap): python -m model.subsets --gt train_val_coco.json --results coco_results.json
  --metrics metrics.json --motion object_motion.json [--camouflage train.json] --params JSON --out subsets.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.bootstrap import draws, interval, replicates
from model.coco_eval import NO_MASKS, STAT_NAMES, accumulated_stats, evaluated, iou_types, load_coco
from pipeline.io import params_from_json, setup_logging, write_json_atomic

MOTION_BINS = ("static", "slow", "fast")
IOU_TYPES = ("segm", "bbox")


@dataclass(frozen=True)
class SubsetParams:
    """The `evaluate.subsets` config section."""

    motion_edges: list[float]  # px/frame: static < edges[0] <= slow < edges[1] <= fast
    ring_px: int  # width of the background ring around an object (model.object_motion)
    resamples: int  # bootstrap resamples of the videos
    seed: int
    level: float  # interval coverage, e.g. 0.95

    def __post_init__(self) -> None:
        """Reject values the evaluation cannot use, naming the config field."""
        edges = self.motion_edges
        if len(edges) != len(MOTION_BINS) - 1 or not all(0 <= a < b for a, b in zip([0.0, *edges], edges)):
            raise ValueError(f"evaluate.subsets.motion_edges: expected {len(MOTION_BINS) - 1} increasing "
                             f"non-negative px/frame values, got {edges!r}")
        if type(self.resamples) is not int or self.resamples < 1:
            raise ValueError(f"evaluate.subsets.resamples: expected an integer >= 1, got {self.resamples!r}")
        if not 0 < self.level < 1:
            raise ValueError(f"evaluate.subsets.level: expected a number in (0, 1), got {self.level!r}")


def subset_gt(gt: dict[str, Any], keep: set[int]) -> dict[str, Any]:
    """A copy of COCO ground truth `gt` whose annotations outside `keep` (ids) are ignored (iscrowd 1)."""
    out = copy.copy(gt)
    out["annotations"] = [a if a["id"] in keep else {**a, "iscrowd": 1} for a in gt["annotations"]]
    return out


def motion_bin(motion: float, edges: list[float]) -> str:
    """static, slow or fast: the bin of a relative motion in px/frame."""
    return MOTION_BINS[sum(motion >= e for e in edges)]


def define_subsets(gt: dict[str, Any], motion: dict[int, float | None], edges: list[float],
                   camouflaged_tracks: set[int] | None) -> dict[str, set[int]]:
    """Subset name -> annotation ids: all, camouflaged and distinct (when the tracks are known), the motion
    bins. `motion`: annotation id -> px/frame or None (unknown)."""
    ids = [a["id"] for a in gt["annotations"]]
    subsets = {"all": set(ids)}
    if camouflaged_tracks is not None:
        subsets["camouflaged"] = {a["id"] for a in gt["annotations"] if a["instance_id"] in camouflaged_tracks}
        subsets["distinct"] = subsets["all"] - subsets["camouflaged"]
    unknown = [i for i in ids if i not in motion]
    if unknown:
        raise KeyError(f"object motion: no entry for annotations {unknown[:10]}; rerun rule object_motion")
    for name in MOTION_BINS:
        subsets[name] = {i for i in ids if motion[i] is not None and motion_bin(motion[i], edges) == name}
    return subsets


def subset_metrics(gt: dict[str, Any], results: list[dict[str, Any]], subsets: dict[str, set[int]],
                   params: SubsetParams) -> tuple[dict[str, Any], dict[str, float]]:
    """Per subset and IoU type, each COCO stat's value, bootstrap interval and replicates (draws over the
    videos of `gt`, shared by every subset and experiment); and the seconds spent matching (COCOeval
    evaluate and the point estimate, once per subset and IoU type) and resampling (the replicates)."""
    video_of_image = {img["id"]: img["video_id"] for img in gt["images"]}
    videos = sorted(set(video_of_image.values()))
    samples = draws(len(videos), params.resamples, params.seed)
    out: dict[str, Any] = {}
    seconds = {"evaluate": 0.0, "resample": 0.0}
    for name, keep in subsets.items():
        coco = load_coco(subset_gt(gt, keep))
        out[name] = {"objects": len(keep)}
        for iou_type in IOU_TYPES:
            if iou_type not in iou_types(gt):  # boxes-only ground truth: no mask AP
                out[name][iou_type] = {stat: {"value": None, "interval": None, "replicates": []} for stat in STAT_NAMES}
                continue
            began = time.perf_counter()
            ev = evaluated(coco, results, iou_type)
            point = accumulated_stats(ev)
            mid = time.perf_counter()
            reps = replicates(ev, video_of_image, videos, samples)
            seconds["evaluate"] += mid - began
            seconds["resample"] += time.perf_counter() - mid
            out[name][iou_type] = {stat: {"value": point[stat], "interval": interval(reps[stat], params.level),
                                          "replicates": [None if r is None else round(r, 4) for r in reps[stat]]}
                                   for stat in STAT_NAMES}
    return out, seconds


def camouflaged_tracks(dataset_json: Path) -> set[int]:
    """Track ids pipeline/synthetic.py marked camouflaged (train.json info.camouflaged_annotation_ids)."""
    info = json.loads(dataset_json.read_text()).get("info") or {}
    if "camouflaged_annotation_ids" not in info:
        raise KeyError(f"{dataset_json}: no info.camouflaged_annotation_ids (not the synthetic dataset?)")
    return {int(i) for i in info["camouflaged_annotation_ids"]}


def main(argv: list[str] | None = None) -> None:
    """CLI: subset AP with bootstrap intervals of one evaluated experiment."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True, type=Path, help="results/split/train_val_coco.json")
    ap.add_argument("--results", required=True, type=Path, help="results/eval/<exp>/coco_results.json")
    ap.add_argument("--metrics", required=True, type=Path, help="results/eval/<exp>/metrics.json")
    ap.add_argument("--motion", required=True, type=Path, help="results/eval/object_motion.json")
    ap.add_argument("--camouflage", type=Path, nargs="?",
                    help="the synthetic dataset's train.json (a bare --camouflage: none, real data)")
    ap.add_argument("--params", required=True, help="the evaluate.subsets config section (JSON)")
    ap.add_argument("--out", required=True, type=Path, help="results/eval/<exp>/subsets.json")
    args = ap.parse_args(argv)
    log = setup_logging()
    params = params_from_json(SubsetParams, args.params, "evaluate.subsets")
    gt = json.loads(args.gt.read_text())
    missing = [a["id"] for a in gt["annotations"] if "instance_id" not in a]
    if args.camouflage and missing:
        raise KeyError(f"{args.gt}: annotations {missing[:10]} have no instance_id; rerun rule split")
    metrics = json.loads(args.metrics.read_text())
    motion = {int(k): v for k, v in json.loads(args.motion.read_text())["motion"].items()}
    subsets = define_subsets(gt, motion, params.motion_edges,
                             camouflaged_tracks(args.camouflage) if args.camouflage else None)
    out = {key: metrics[key] for key in ("experiment", "dataset", "backbone")}
    out["subsets"], seconds = subset_metrics(gt, json.loads(args.results.read_text()), subsets, params)
    out["bootstrap"] = {"unit": "video", "resamples": params.resamples, "seed": params.seed, "level": params.level,
                        "videos": sorted({img["video_id"] for img in gt["images"]}),
                        "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    out["motion_edges_px_per_frame"] = params.motion_edges
    if "segm" not in iou_types(gt):
        out["note"] = NO_MASKS
    write_json_atomic(args.out, out, indent=None)
    log.info("%s: %s; COCOeval matching %.1f s, bootstrap of %d resamples x %d evaluations %.1f s", out["experiment"],
             ", ".join(f"{n} mask AP {s['segm']['AP']['value']}" for n, s in out["subsets"].items()),
             seconds["evaluate"], params.resamples, 2 * len(subsets), seconds["resample"])


if __name__ == "__main__":
    main()
