"""Each ground-truth object's motion relative to its surroundings, from the flow stores (subset AP by motion).

Per train_val annotation (one object in one frame): the frame's stored flow decoded to pixels, the median
(u, v) inside the object's mask minus the median (u, v) in a ring `ring_px` wide around it (the mask dilated,
less every annotated object of the frame), and the length of that difference in px/frame at the frame's
own resolution. Null when the ring is empty (the object covers its surroundings). Medians make it robust
to the flow errors at the object's boundary; the ring, rather than the whole frame, makes it relative to
the background the object is seen against (camera motion and zoom cancel).

Why the stores carry a scale: the RGB encoding (pipeline.flow_codec) divides each frame's flow by its
largest radius, so the colours keep direction and relative size but not pixels. A motion bin in px/frame
needs the magnitude, so the flow stage keeps each frame's divisor as the array attribute `scale`, and
`rgb_to_flow` turns colours back into pixels, to within ~1 % of the frame's largest flow (uint8
quantisation of the radius; measured in tests/model/test_object_motion.py). This is the flow the model
sees (the configured estimator), not the synthetic ground truth, so the same bins exist on YouTube-VIS.

CLI (rule object_motion): python -m model.object_motion --gt train_val_coco.json --flow shard_0.zarr ...
  --ring-px 3 --out results/eval/object_motion.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zarr
from tqdm import tqdm

from model.coco_eval import annotation_mask
from pipeline.flow_codec import rgb_to_flow
from pipeline.io import setup_logging, write_json_atomic
from pipeline.stores import stored_frame


def ring(mask: np.ndarray, occupied: np.ndarray, ring_px: int) -> np.ndarray:
    """(H, W) bool pixels within `ring_px` (chessboard distance) of `mask` that no object occupies."""
    kernel = np.ones((2 * ring_px + 1, 2 * ring_px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~occupied


def relative_motion(flow: np.ndarray, mask: np.ndarray, around: np.ndarray) -> float | None:
    """|median flow in mask - median flow in around| in px/frame; flow (H, W, 2), masks (H, W) bool."""
    if not mask.any() or not around.any():
        return None
    inside = np.median(flow[mask], axis=0)  # (2,)
    outside = np.median(flow[around], axis=0)
    return float(np.linalg.norm(inside - outside))


def frame_motions(rgb: np.ndarray, scale: float, anns: list[dict[str, Any]], ring_px: int) -> dict[int, float | None]:
    """Annotation id -> relative motion for the objects `anns` of one frame with encoded flow rgb (H, W, 3).
    Only the pixels of the masks and rings are decoded."""
    masks = [annotation_mask(a, *rgb.shape[:2]) for a in anns]  # a boxes-only object: its box
    occupied = np.logical_or.reduce(masks)
    rings = [ring(m, occupied, ring_px) for m in masks]
    used = occupied | np.logical_or.reduce(rings)
    flow = np.zeros(rgb.shape[:2] + (2,))  # (H, W, 2), decoded where used
    flow[used] = rgb_to_flow(rgb[used], scale)
    return {a["id"]: relative_motion(flow, m, r) for a, m, r in zip(anns, masks, rings)}


def open_stores(paths: list[Path]) -> dict[int, tuple[Path, zarr.Array]]:
    """Video id -> (store path, its flow array) over the flow stores at `paths`."""
    out = {}
    for path in paths:
        if not (path / "zarr.json").is_file():
            raise FileNotFoundError(f"{path}: no flow store here; rerun rule flow")
        group = zarr.open_group(str(path), mode="r")
        for vid in group.attrs["videos"]:
            out[int(vid)] = (path, group[str(vid)])
    return out


def object_motion(gt: dict[str, Any], stores: dict[int, tuple[Path, zarr.Array]], ring_px: int,
                  progress: bool = False) -> dict[int, float | None]:
    """Annotation id -> px/frame relative motion of every annotation of `gt` (image-level COCO with
    video_id and frame_index per image)."""
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out: dict[int, float | None] = {}
    for img in tqdm([i for i in gt["images"] if i["id"] in by_image], desc="object motion", disable=not progress):
        video, t = int(img["video_id"]), int(img["frame_index"])
        if video not in stores:
            raise KeyError(f"video {video} is in no flow store; rerun rule flow")
        path, array = stores[video]
        scales = array.attrs.get("scale")
        if scales is None or len(scales) != array.shape[0]:
            raise ValueError(f"{path}: video {video} has no per-frame `scale` attribute for its {array.shape[0]} "
                             f"frames (a store from before it was kept); delete it and rerun rule flow")
        if t >= array.shape[0] or tuple(array.shape[1:3]) != (img["height"], img["width"]):
            raise ValueError(f"{path}: video {video} flow has shape {array.shape}, frame {t} of "
                             f"{img['height']}x{img['width']} is needed; rerun rule flow")
        rgb = stored_frame(array, t, f"{path}: video {video} flow", "flow")  # a missing or bad chunk is an error
        out.update(frame_motions(rgb, float(scales[t]), by_image[img["id"]], ring_px))
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: relative motion of every train_val object, from the flow stores."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", required=True, type=Path, help="results/split/train_val_coco.json")
    ap.add_argument("--flow", required=True, nargs="+", type=Path, help="the flow stores results/flow/shard_*.zarr")
    ap.add_argument("--ring-px", required=True, type=int, help="ring width around each object (evaluate.subsets)")
    ap.add_argument("--out", required=True, type=Path, help="results/eval/object_motion.json")
    args = ap.parse_args(argv)
    log = setup_logging()
    if args.ring_px < 1:
        raise ValueError(f"evaluate.subsets.ring_px: expected an integer >= 1, got {args.ring_px}")
    motion = object_motion(json.loads(args.gt.read_text()), open_stores(args.flow), args.ring_px, progress=True)
    known = np.array([m for m in motion.values() if m is not None])
    quantiles = {f"q{q}": round(float(np.percentile(known, q)), 3) for q in (10, 25, 50, 75, 90)} if known.size else {}
    write_json_atomic(args.out, {"unit": "px/frame", "ring_px": args.ring_px, "quantiles": quantiles,
                                 "unknown": len(motion) - int(known.size),
                                 "motion": {str(k): None if v is None else round(v, 4) for k, v in motion.items()}},
                      indent=None)
    log.info("relative motion of %d objects (%d unknown): %s px/frame", len(motion), len(motion) - known.size,
             quantiles)


if __name__ == "__main__":
    main()
