"""A tiny, valid YouTube-VIS 2019 folder (train.json + real JPEGs) with known masks: `write_tiny_ytvis`.
A module of its own so that session fixtures (tests/workflow/conftest.py) can import it; tests use the
`make_ytvis` fixture of tests/conftest.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H, W) 0/1 mask in column-major order, starting with a background run (COCO RLE)."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def track_mask(height: int, width: int, video_index: int, track_index: int, t: int) -> np.ndarray:
    """The (H, W) uint8 0/1 mask of track `track_index` of video `video_index` at frame t: a moving ellipse."""
    mask = np.zeros((height, width), np.uint8)
    cx = min(width - 1, int(width * (0.25 + 0.5 * (track_index % 2)) + 2 * t - video_index % 3))
    cy = min(height - 1, int(height * (0.3 + 0.15 * (track_index % 3)) + t))
    axes = (max(2, width // 6 + track_index % 3), max(2, height // 5 - track_index % 3))
    cv2.ellipse(mask, (cx, cy), axes, 15.0 * video_index, 0, 360, 1, thickness=-1)
    return mask


def write_tiny_ytvis(root: Path, videos: int = 6, frames: int = 5, height: int = 24, width: int = 32,
                     categories: int = 3, tracks_per_video: int = 2,
                     rle: Literal["str", "list", "mixed"] = "str", images: bool = True,
                     category_of: Callable[[int, int], int] | None = None) -> dict:
    """Write `root/train.json` and `root/JPEGImages/<video>/<5t:05d>.jpg`; returns the json written.
    Video ids are 101 + 7k, listed in reverse order; track j of video k has category
    category_of(k, j) (default (k + j) % categories + 1) and is absent (null) at frames with (t + j + k) % 4 == 3.
    Masks are `track_mask(...)`; areas and boxes are computed from them with numpy."""
    rng = np.random.default_rng(0)
    category_of = category_of or (lambda k, j: (k + j) % categories + 1)
    video_list, annotations = [], []
    for k in range(videos):
        vid, folder = 101 + 7 * k, f"vid{k:03d}ab"
        names = [f"{folder}/{5 * t:05d}.jpg" for t in range(frames)]
        video_list.append({"id": vid, "width": width, "height": height, "length": frames, "file_names": names,
                           "license": 1, "flickr_url": "", "coco_url": "", "date_captured": None})
        if images:
            (root / "JPEGImages" / folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                cv2.imwrite(str(root / "JPEGImages" / name), rng.integers(0, 255, (height, width, 3), np.uint8))
        for j in range(tracks_per_video):
            segs, boxes, areas = [], [], []
            for t in range(frames):
                if (t + j + k) % 4 == 3:
                    segs.append(None), boxes.append(None), areas.append(None)
                    continue
                m = track_mask(height, width, k, j, t)
                ys, xs = np.nonzero(m)
                assert xs.size, "empty fixture mask"
                use_list = rle == "list" or (rle == "mixed" and t % 2 == 0)
                counts = (uncompressed_counts(m) if use_list
                          else mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii"))
                segs.append({"size": [height, width], "counts": counts})
                boxes.append([float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)])
                areas.append(int(m.sum()))
            annotations.append({"id": 1000 + 10 * k + j, "video_id": vid, "category_id": category_of(k, j),
                                "iscrowd": 0, "height": height, "width": width,
                                "segmentations": segs, "bboxes": boxes, "areas": areas})
    data = {"info": {"description": "tiny test set"}, "licenses": [],
            "videos": video_list[::-1], "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}", "supercategory": "object"}
                           for c in range(1, categories + 1)]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps(data))
    return data
