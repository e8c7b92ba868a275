"""Bootstrap intervals of COCO AP over videos: resample videos with replacement, re-accumulate, take percentiles.

Frames of one video are not independent samples, so the unit of resampling is the video. COCOeval's
per-image matching (`evalImgs`) is computed once; a resample only re-does COCOeval's `accumulate`, here for
all resamples at once in numpy instead of pycocotools' Python loops once per resample.

A resample that draws video v w_v times holds, for each (class, area range), v's detections and ground
truth w_v times. Its precision/recall curve is therefore that of all evaluated detections, ranked once by
score as `accumulate` ranks them (`np.argsort(-scores, kind="mergesort")` over the images in image id order),
each detection counted w_v times: the true and false positive counts are cumulative sums of the draw counts,
and the non-ignored ground truth is npig = sum_v w_v npig_v. From them precision and recall are COCO's (recall
tp / npig, precision tp / (tp + fp + eps), the precision envelope read at the first rank whose recall reaches
each of the 101 recall thresholds, 0 past the last recall, -1 where npig is 0). The envelope and the recall
crossings lie at true positives (a false positive or an ignored detection lowers or keeps the precision and
keeps the recall), so only the ranks of true positives are evaluated; the false positives ranked above each
are the draw counts (resamples, V) times each video's false positives above it (V, P), a matrix product. Per-image
truncation to the max-dets limit already happened in `evaluate`; the resampled accumulate does not truncate.

Ties: a detection drawn w_v times takes w_v consecutive ranks, and detections of equal score keep
`accumulate`'s order on the whole set (image id, then rank within the image). A replicate is thus a function
of the draw counts only, and the identity draw gives `accumulate`'s own numbers; pycocotools run on the drawn
videos concatenated in draw order can order two equal scores of different videos otherwise (and then give a
different value), since its order of equal scores follows the order of the draws.

The draws depend only on the number of videos and the seed, so two experiments evaluated on the same
videos get the same resamples: their replicate APs pair up for an interval of the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.cocoeval import COCOeval

from model.coco_eval import STAT_NAMES, precision_stats

CHUNK_ELEMENTS = 1 << 24  # floats in a chunk's precision array (128 MB): resamples are processed in chunks


@dataclass(frozen=True)
class Ranking:
    """The detections of one (class, area range) over every evaluated image, ranked by score as `accumulate`
    ranks them, reduced to what a resample needs: per IoU threshold, the video of each true and each false
    positive in rank order and, per false positive, the true positives ranked above it."""

    tp_video: list[np.ndarray]  # per IoU threshold: (P,) int32 video position of each true positive
    fp_video: list[np.ndarray]  # per IoU threshold: (F,) int32 video position of each false positive
    fp_tp_above: list[np.ndarray]  # per IoU threshold: (F,) int32 true positives ranked above each false positive
    gt_per_video: np.ndarray  # (V,) non-ignored ground truth of each video


def rankings(ev: COCOeval, video_of_image: dict[int, int], videos: Sequence[int]) -> list[list[Ranking]]:
    """The Ranking of each class (outer list) and area range (inner list) of an evaluated COCOeval. Every
    evaluated image must belong to one of `videos`."""
    image_ids, area_ranges = ev._paramsEval.imgIds, ev._paramsEval.areaRng
    position = {v: j for j, v in enumerate(videos)}
    missing = sorted({i for i in image_ids if video_of_image.get(i) not in position})
    if missing:
        raise KeyError(f"images {missing[:10]} belong to none of the {len(videos)} resampled videos")
    image_video = [position[video_of_image[i]] for i in image_ids]
    n, num_thresholds = len(image_ids), len(ev._paramsEval.iouThrs)
    flat = []
    for start in range(0, len(ev.evalImgs), n):  # evalImgs: class-major, then area range, then image
        kept = [(image_video[j], e) for j, e in enumerate(ev.evalImgs[start:start + n]) if e is not None]
        gt_per_video = np.zeros(len(videos), int)
        for v, e in kept:
            gt_per_video[v] += np.count_nonzero(e["gtIgnore"] == 0)
        if not any(len(e["dtScores"]) for _, e in kept):
            none = [np.zeros(0, np.int32)] * num_thresholds
            flat.append(Ranking(none, none, none, gt_per_video))
            continue
        order = np.argsort(-np.concatenate([e["dtScores"] for _, e in kept]), kind="mergesort")  # ties: image order
        video = np.concatenate([np.full(len(e["dtScores"]), v, np.int32) for v, e in kept])[order]  # (D,)
        matched = np.concatenate([e["dtMatches"] for _, e in kept], axis=1)[:, order] != 0  # (T, D)
        ignored = np.concatenate([e["dtIgnore"] for _, e in kept], axis=1)[:, order].astype(bool)  # (T, D)
        tps, fps = matched & ~ignored, ~matched & ~ignored
        flat.append(Ranking(tp_video=[video[t] for t in tps], fp_video=[video[f] for f in fps],
                            fp_tp_above=[np.cumsum(t, dtype=np.int32)[f] for t, f in zip(tps, fps)],
                            gt_per_video=gt_per_video))
    return [flat[k:k + len(area_ranges)] for k in range(0, len(flat), len(area_ranges))]


def _fewest_true_positives(npig: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """(C, R): per resample with npig (C,) > 0 ground truth, the fewest true positives m whose recall m / npig,
    computed as COCO computes it, reaches each recall threshold."""
    values, inverse = np.unique(npig, return_inverse=True)
    table = np.stack([np.searchsorted(np.arange(n + 1) / n, recall_thresholds, side="left") for n in values])
    return table[inverse.ravel()]


def _interpolated(tp: np.ndarray, fp: np.ndarray, needed: np.ndarray) -> np.ndarray:
    """COCO's interpolated precision (C, R) of C resamples from their weighted true and false positive counts
    (C, P) at each true positive's rank and the true positives (C, R) each recall threshold needs."""
    chunk, ranks = tp.shape
    if ranks == 0:
        return np.zeros(needed.shape)
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # best precision at this rank or deeper
    # the first rank holding `needed` true positives, one searchsorted over the rows laid end to end: counts
    # are whole numbers, so shifting row c by c * (largest count + 1) keeps the rows apart exactly
    shift = (np.arange(chunk) * (max(tp[:, -1].max(), needed.max()) + 1))[:, None]
    first = np.searchsorted((tp + shift).ravel(), needed + shift) - np.arange(chunk)[:, None] * ranks  # (C, R)
    reached = first < ranks  # else the recall threshold lies past the last recall: precision 0
    return np.where(reached, np.take_along_axis(envelope, np.minimum(first, ranks - 1), axis=1), 0.0)


def _fp_between(ranking: Ranking, t: int, num_videos: int) -> np.ndarray:
    """(V, P) at IoU threshold `t`: per video, its false positives ranked above true positive j but below true
    positive j - 1 (above the first: none before it)."""
    num_tp = len(ranking.tp_video[t])
    cell = np.ravel_multi_index((ranking.fp_video[t], ranking.fp_tp_above[t]), (num_videos, num_tp + 1))
    hits = np.bincount(cell, minlength=num_videos * (num_tp + 1)).reshape(num_videos, num_tp + 1)
    return hits[:, :-1].astype(float)  # the last column: below every true positive, above none


def resampled_precision(ranked: list[list[Ranking]], counts: np.ndarray, recall_thresholds: np.ndarray) -> np.ndarray:
    """COCOeval.accumulate's precision (C, T, R, K, A) of C resamples given as draw counts (C, V) per video, -1
    where a class has no ground truth in the area range."""
    num_thresholds = len(ranked[0][0].tp_video)
    num_videos = counts.shape[1]
    precision = -np.ones((len(counts), num_thresholds, len(recall_thresholds), len(ranked), len(ranked[0])))
    for k, per_area in enumerate(ranked):
        for a, ranking in enumerate(per_area):
            npig = counts @ ranking.gt_per_video  # (C,)
            rows = np.flatnonzero(npig > 0)
            if not rows.size:
                continue
            weights = counts[rows].astype(float)  # (C', V) each video's draw count
            needed = _fewest_true_positives(npig[rows], recall_thresholds)
            for t in range(num_thresholds):
                tp_video = ranking.tp_video[t]
                if not len(tp_video):
                    precision[rows, t, :, k, a] = 0.0
                    continue
                tp = np.cumsum(weights[:, tp_video], axis=1)  # (C', P) at each true positive
                fp = np.cumsum(weights @ _fp_between(ranking, t, num_videos), axis=1)  # (C', P) above each
                precision[rows, t, :, k, a] = _interpolated(tp, fp, needed)
    return precision


def draw_counts(samples: np.ndarray, num_videos: int) -> np.ndarray:
    """(resamples, num_videos): how often each resample (a row of video positions) draws each video."""
    return np.stack([np.bincount(sample, minlength=num_videos) for sample in samples])


def draws(num_videos: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_videos) video positions drawn with replacement; a function of its arguments only."""
    return np.random.default_rng(seed).integers(0, num_videos, size=(resamples, num_videos))


def replicates(ev: COCOeval, video_of_image: dict[int, int], videos: Sequence[int],
               samples: np.ndarray) -> dict[str, list[float | None]]:
    """Per COCO stat name, its value on each resample of `samples` (rows of video positions)."""
    ranked = rankings(ev, video_of_image, videos)
    params = ev._paramsEval
    cells = len(params.iouThrs) * len(params.recThrs) * len(ranked) * len(params.areaRng)  # precision per resample
    widest = max([1] + [len(v) for per_area in ranked for r in per_area for v in r.tp_video])  # (C, P) arrays
    chunk = max(1, CHUNK_ELEMENTS // max(cells, widest))
    counts = draw_counts(samples, len(videos))
    rows = []
    for start in range(0, len(counts), chunk):
        precision = resampled_precision(ranked, counts[start:start + chunk], params.recThrs)
        rows += [precision_stats(p, params.iouThrs) for p in precision]
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
