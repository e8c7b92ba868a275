"""Bootstrap intervals of COCO AP over videos: resample videos with replacement, re-accumulate, take percentiles.

Frames of one video are not independent samples, so the unit of resampling is the video. COCOeval's
per-image matching (`evalImgs`, the expensive part) is computed once; a resample only re-runs COCOeval's own
`accumulate` on the resampled set. To keep that fast on YouTube-VIS (10 796 frames, 391 videos), each
video's per-image entries are first merged into one entry per (class, area range, video): `accumulate` only
concatenates its entries' score, match and ignore arrays before sorting by score, so a merged entry gives the
same arrays as its frames in order, and a resample with a video drawn twice holds its merged entry twice.
Per-image truncation to the max-dets limit already happened in `evaluate`; the resampled accumulate runs
with one unlimited max-dets value so it does not truncate a merged entry again.

The draws depend only on the number of videos and the seed, so two experiments evaluated on the same
videos get the same resamples: their replicate APs pair up for an interval of the difference.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

from model.coco_eval import STAT_NAMES, precision_stats

Entry = dict[str, Any] | None  # one evalImgs entry: dtScores (D,), dtMatches (T, D), dtIgnore (T, D), gtIgnore (G,)


def _merge(entries: list[dict[str, Any]]) -> Entry:
    """One evalImgs entry holding `entries` in order, with the fields `accumulate` reads; None if empty."""
    if not entries:
        return None
    return {"dtScores": np.concatenate([e["dtScores"] for e in entries]),
            "dtMatches": np.concatenate([e["dtMatches"] for e in entries], axis=1),
            "dtIgnore": np.concatenate([e["dtIgnore"] for e in entries], axis=1),
            "gtIgnore": np.concatenate([e["gtIgnore"] for e in entries])}


def video_entries(ev: COCOeval, video_of_image: dict[int, int], videos: Sequence[int]) -> list[list[Entry]]:
    """Per (class, area range) in evalImgs order, the merged entry of each of `videos` (its frames in image
    id order). Every evaluated image must belong to one of `videos`."""
    image_ids = ev._paramsEval.imgIds
    position = {v: j for j, v in enumerate(videos)}
    missing = sorted({i for i in image_ids if video_of_image.get(i) not in position})
    if missing:
        raise KeyError(f"images {missing[:10]} belong to none of the {len(videos)} resampled videos")
    n = len(image_ids)
    out = []
    for start in range(0, len(ev.evalImgs), n):
        per_video: list[list[dict[str, Any]]] = [[] for _ in videos]
        for image_id, entry in zip(image_ids, ev.evalImgs[start:start + n]):
            if entry is not None:
                per_video[position[video_of_image[image_id]]].append(entry)
        out.append([_merge(entries) for entries in per_video])
    return out


def resampled_precision(ev: COCOeval, entries: list[list[Entry]], sample: np.ndarray) -> np.ndarray:
    """COCOeval.accumulate on the videos at positions `sample` (repeats allowed): precision (T, R, K, A)."""
    params = copy.copy(ev._paramsEval)
    params.imgIds = list(range(len(sample)))  # one pseudo-image per drawn video
    params.maxDets = [sys.maxsize]  # each frame was cut to maxDets[-1] in evaluate; do not cut a video
    boot = copy.copy(ev)
    boot.params, boot._paramsEval = params, params
    boot.evalImgs = [per_video[j] for per_video in entries for j in sample]
    with contextlib.redirect_stdout(io.StringIO()):
        boot.accumulate()
    return boot.eval["precision"][..., 0]


def draws(num_videos: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_videos) video positions drawn with replacement; a function of its arguments only."""
    return np.random.default_rng(seed).integers(0, num_videos, size=(resamples, num_videos))


def replicates(ev: COCOeval, video_of_image: dict[int, int], videos: Sequence[int],
               samples: np.ndarray) -> dict[str, list[float | None]]:
    """Per COCO stat name, its value on each resample of `samples` (rows of video positions)."""
    entries = video_entries(ev, video_of_image, videos)
    thresholds = ev._paramsEval.iouThrs
    rows = [precision_stats(resampled_precision(ev, entries, sample), thresholds) for sample in samples]
    return {name: [row[name] for row in rows] for name in STAT_NAMES}


def interval(values: Sequence[float | None], level: float = 0.95) -> tuple[float, float] | None:
    """The central `level` percentile interval of the replicate values that exist; None if none does."""
    kept = np.array([v for v in values if v is not None], float)
    if not kept.size:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(kept, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    """Replicate-wise a - b of two experiments' replicates on the same draws (None where either is None)."""
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap: {len(a)} and {len(b)} replicates; both need the same draws")
    return [None if x is None or y is None else x - y for x, y in zip(a, b)]
