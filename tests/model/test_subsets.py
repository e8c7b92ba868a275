"""Subset AP and its bootstrap intervals, checked against COCO AP computed another way: on a ground truth with
the other objects (and their detections) removed, and on a ground truth with the resampled videos copied."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import bootstrap
from model.bootstrap import draws, interval, paired_difference, replicates
from model.coco_eval import STAT_NAMES, accumulated_stats, evaluate_results, evaluated, load_coco
from model.figures import main as figures_main
from model.subsets import SubsetParams, define_subsets, motion_bin, subset_gt, subset_metrics
from model.subsets import main as subsets_main

H = W = 96
CELLS = [(4, 4), (52, 4), (4, 52), (52, 52)]  # top-left corners of four separate 40x40 cells


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _object(x: int, y: int, w: int, h: int) -> tuple[dict, list[float], float]:
    """RLE, XYWH box and area of a filled rectangle."""
    m = np.zeros((H, W), np.uint8)
    m[y:y + h, x:x + w] = 1
    return _rle(m), [float(x), float(y), float(w), float(h)], float(m.sum())


def scene(videos: int, frames: int, seed: int) -> tuple[dict, list[dict], dict[int, str]]:
    """A ground truth of `videos` x `frames` images with 1-4 rectangles in separate cells, two classes, and
    detections: per object a copy shifted by 0-12 px (random IoU and score), sometimes a duplicate, and
    false positives. Also each annotation's 'kind' a or b, drawn at random."""
    rng = np.random.default_rng(seed)
    images, anns, dets, kind = [], [], [], {}
    for v in range(1, videos + 1):
        for t in range(frames):
            image_id = len(images) + 1
            images.append({"id": image_id, "video_id": v, "frame_index": t, "height": H, "width": W})
            for cx, cy in [CELLS[i] for i in rng.permutation(4)[:rng.integers(1, 5)]]:
                w, h = (int(s) for s in rng.integers(14, 30, size=2))
                x, y = cx + int(rng.integers(0, 40 - w)), cy + int(rng.integers(0, 40 - h))
                seg, box, area = _object(x, y, w, h)
                cat = int(rng.integers(1, 3))
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                             "segmentation": seg, "bbox": box, "area": area, "instance_id": 100 * v + len(anns)})
                kind[anns[-1]["id"]] = "a" if rng.uniform() < 0.5 else "b"
                if rng.uniform() < 0.85:
                    dx, dy = (int(s) for s in rng.integers(-6, 7, size=2))
                    seg, box, _ = _object(max(x + dx, 0), max(y + dy, 0), w, h)
                    dets.append({"image_id": image_id, "category_id": cat, "score": float(rng.uniform()),
                                 "segmentation": seg, "bbox": box, "on": anns[-1]["id"]})
                if rng.uniform() < 0.2:  # a duplicate, inside the object
                    seg, box, _ = _object(x + 1, y + 1, w - 2, h - 2)
                    dets.append({"image_id": image_id, "category_id": cat, "score": float(rng.uniform()),
                                 "segmentation": seg, "bbox": box, "on": anns[-1]["id"]})
            if rng.uniform() < 0.3:  # a false positive across two cells, overlapping no object by much
                seg, box, _ = _object(40, 40, 16, 16)
                dets.append({"image_id": image_id, "category_id": int(rng.integers(1, 3)),
                             "score": float(rng.uniform()), "segmentation": seg, "bbox": box, "on": None})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    return gt, dets, kind


PARAMS = SubsetParams(motion_edges=[0.5, 2.0], ring_px=3, resamples=50, seed=0, level=0.95)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_subset_ap_equals_ap_with_the_other_objects_and_their_detections_removed(iou_type: str) -> None:
    """Detections on the ignored objects are exact copies or inside them, and the false positives overlap no
    object: marking the other objects iscrowd gives the AP of a ground truth without them, scored on the
    detections without theirs."""
    gt, dets, kind = scene(videos=4, frames=3, seed=1)
    keep = {i for i, k in kind.items() if k == "a"}
    for d in dets:  # the ignored objects' detections: exact copies, as the docstring says
        if d["on"] is not None and d["on"] not in keep and d["bbox"][2] > 0:
            ann = gt["annotations"][d["on"] - 1]
            if d["segmentation"] != ann["segmentation"] and not _inside(d, ann):
                d["segmentation"], d["bbox"] = ann["segmentation"], ann["bbox"]
    subset = accumulated_stats(evaluated(load_coco(subset_gt(gt, keep)), dets, iou_type))
    removed_gt = dict(gt, annotations=[a for a in gt["annotations"] if a["id"] in keep])
    removed_dets = [d for d in dets if d["on"] is None or d["on"] in keep]
    removed = evaluate_results(load_coco(removed_gt), removed_dets, iou_type)
    assert len(keep) < len(gt["annotations"]) and len(removed_dets) < len(dets)
    for stat in STAT_NAMES:
        if subset[stat] is None:
            assert removed[stat] is None  # pycocotools' -1: nothing to score in both
        else:
            assert subset[stat] == pytest.approx(removed[stat], abs=1e-9), stat
    # and the ignore flags matter: without them the ignored objects are misses and the AP differs
    plain = accumulated_stats(evaluated(load_coco(removed_gt | {"annotations": gt["annotations"]}), removed_dets,
                                        iou_type))
    assert plain["AP"] < subset["AP"]


def _inside(det: dict, ann: dict) -> bool:
    """The detection's box lies within the annotation's box."""
    dx, dy, dw, dh = det["bbox"]
    ax, ay, aw, ah = ann["bbox"]
    return ax <= dx and ay <= dy and dx + dw <= ax + aw and dy + dh <= ay + ah


def test_subsets_from_camouflage_and_motion() -> None:
    """camouflaged/distinct by track id; motion bins at the edges (an edge value goes to the faster bin);
    unknown motion in no bin; an annotation without motion entry is an error naming rule object_motion."""
    gt, _, _ = scene(videos=1, frames=1, seed=3)
    gt["annotations"] = [dict(gt["annotations"][0], id=i, instance_id=10 + i) for i in range(1, 6)]
    motion = {1: 0.0, 2: 0.5, 3: 1.9, 4: 2.0, 5: None}
    subsets = define_subsets(gt, motion, [0.5, 2.0], camouflaged_tracks={11, 13})
    assert subsets == {"all": {1, 2, 3, 4, 5}, "camouflaged": {1, 3}, "distinct": {2, 4, 5},
                       "static": {1}, "slow": {2, 3}, "fast": {4}}
    assert [motion_bin(m, [0.5, 2.0]) for m in (0.49, 0.5, 1.99, 2.0, 9.0)] == ["static", "slow", "slow", "fast",
                                                                                "fast"]
    assert "camouflaged" not in define_subsets(gt, motion, [0.5, 2.0], None)
    with pytest.raises(KeyError, match="object_motion"):
        define_subsets(gt, {1: 0.0}, [0.5, 2.0], None)
    with pytest.raises(ValueError, match="motion_edges"):
        SubsetParams(motion_edges=[2.0, 0.5], ring_px=3, resamples=10, seed=0, level=0.95)


def _copied_videos(gt: dict, dets: list[dict], sample: np.ndarray) -> tuple[dict, list[dict]]:
    """The ground truth and detections of the drawn videos, a video drawn twice copied under new ids."""
    videos = sorted({img["video_id"] for img in gt["images"]})
    images, anns, out = [], [], []
    for copy, j in enumerate(sample):
        for img in [i for i in gt["images"] if i["video_id"] == videos[j]]:
            new_id = len(images) + 1
            images.append(dict(img, id=new_id, video_id=copy))
            anns += [dict(a, id=len(anns) + 1 + k, image_id=new_id)
                     for k, a in enumerate(a for a in gt["annotations"] if a["image_id"] == img["id"])]
            out += [dict(d, image_id=new_id) for d in dets if d["image_id"] == img["id"]]
    return dict(gt, images=images, annotations=anns), out


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_each_replicate_equals_cocoeval_on_the_resampled_videos(iou_type: str) -> None:
    """Re-accumulating the merged per-video entries gives, for every draw, the AP of a full COCOeval run on a
    ground truth holding the drawn videos (repeats copied); the identity draw gives the point estimate."""
    gt, dets, kind = scene(videos=5, frames=2, seed=2)
    video_of_image = {img["id"]: img["video_id"] for img in gt["images"]}
    videos = sorted(set(video_of_image.values()))
    keep = {i for i, k in kind.items() if k == "a"}
    ev = evaluated(load_coco(subset_gt(gt, keep)), dets, iou_type)
    samples = np.concatenate([np.arange(5)[None], draws(5, 4, seed=7)])
    reps = replicates(ev, video_of_image, videos, samples)
    point = accumulated_stats(ev)
    assert {s: reps[s][0] for s in STAT_NAMES} == pytest.approx(point)
    for row, sample in enumerate(samples[1:], 1):
        copied_gt, copied_dets = _copied_videos(subset_gt(gt, keep), dets, sample)
        direct = accumulated_stats(evaluated(load_coco(copied_gt), copied_dets, iou_type))
        assert {s: reps[s][row] for s in STAT_NAMES} == pytest.approx(direct), sample


def _box(image_id: int, category_id: int, box: list[float], **fields) -> dict:
    """A box annotation (area = w * h, iscrowd 0 unless given) or, with a `score`, a box detection."""
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "area": box[2] * box[3],
            "iscrowd": 0} | fields


def _box_scene(frames: list[tuple[int, list[dict], list[dict]]]) -> tuple[dict, list[dict]]:
    """Ground truth and detections of 128x128 frames given as (video, annotations, detections) in image id
    order (image ids 1, 2, ...); annotations get ids 1, 2, ..."""
    images, anns, dets = [], [], []
    for image_id, (video, frame_anns, frame_dets) in enumerate(frames, 1):
        images.append({"id": image_id, "video_id": video, "height": 128, "width": 128})
        anns += [dict(a, image_id=image_id, id=len(anns) + k + 1) for k, a in enumerate(frame_anns)]
        dets += [dict(d, image_id=image_id) for d in frame_dets]
    categories = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def _replicates_and_direct(gt: dict, dets: list[dict], samples: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Per draw, the bootstrap's replicate stats and COCOeval's stats on the drawn videos copied (box AP)."""
    video_of_image = {img["id"]: img["video_id"] for img in gt["images"]}
    reps = replicates(evaluated(load_coco(gt), dets, "bbox"), video_of_image, sorted(set(video_of_image.values())),
                      samples)
    direct = [accumulated_stats(evaluated(load_coco(g), d, "bbox")) for g, d in
              (_copied_videos(gt, dets, sample) for sample in samples)]
    return [{s: reps[s][row] for s in STAT_NAMES} for row in range(len(samples))], direct


def test_replicates_equal_cocoeval_on_drawn_videos_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-built boxes: a crowd (ignored ground truth) absorbing a detection, objects and detections of every
    area range (the other ranges ignore them), a detection matching at IoU 0.5 and 0.55 only, class 2 absent from
    video 1 and class 1 from video 3 (no ground truth: -1, None). Every draw, repeats included, gives exactly
    COCOeval's numbers on the drawn videos copied; in chunks of one resample too. Video 3 drawn three times,
    by hand: class 2 only, false positive (0.25) above true positive (0.15) three times over, precision
    1/4, 2/5, 3/6 at recalls 1/3, 2/3, 1: 0.5 everywhere, AP 50."""
    gt, dets = _box_scene([
        (1, [_box(0, 1, [10, 10, 40, 40]), _box(0, 1, [60, 60, 60, 60], iscrowd=1)],
         [_box(0, 1, [11, 10, 40, 40], score=0.95), _box(0, 1, [70, 70, 30, 30], score=0.85),
          _box(0, 1, [10, 90, 20, 20], score=0.55)]),
        (1, [_box(0, 1, [5, 5, 20, 20])], [_box(0, 1, [9, 7, 20, 20], score=0.75)]),  # IoU 0.56
        (2, [_box(0, 1, [10, 10, 100, 100]), _box(0, 2, [0, 0, 40, 40])],
         [_box(0, 1, [10, 10, 100, 100], score=0.65), _box(0, 2, [2, 0, 40, 40], score=0.45)]),
        (2, [_box(0, 2, [50, 50, 16, 16])], [_box(0, 2, [51, 51, 16, 16], score=0.35)]),
        (3, [_box(0, 2, [20, 20, 50, 50])], [_box(0, 2, [50, 50, 50, 50], score=0.25),
                                             _box(0, 2, [20, 20, 50, 50], score=0.15)]),
    ])
    samples = np.concatenate([[[0, 0, 0], [1, 1, 1], [2, 2, 2], [0, 1, 2], [2, 0, 0], [1, 2, 2], [0, 2, 1]],
                              draws(3, 6, seed=1)])
    reps, direct = _replicates_and_direct(gt, dets, samples)
    assert reps == direct
    assert reps[2]["AP"] == 50.0 and reps[2]["AP"] != reps[0]["AP"]
    assert any(r[s] is None for r in reps for s in STAT_NAMES)  # an area range without ground truth in a draw
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 1)  # one resample at a time
    assert _replicates_and_direct(gt, dets, samples)[0] == reps


@st.composite
def _random_box_scenes(draw: st.DrawFn) -> tuple[dict, list[dict], np.ndarray]:
    """2-4 videos of 1-2 frames, each with 0-3 objects of two classes and every area range (some crowds), a
    detection near most objects and some false positives, all scores distinct; and 3 draws of the videos."""
    frames = []
    for video in range(1, draw(st.integers(2, 4)) + 1):
        for _ in range(draw(st.integers(1, 2))):
            anns, dets = [], []
            for _ in range(draw(st.integers(0, 3))):
                x, y, w, h = (draw(st.integers(0, 60)), draw(st.integers(0, 60)), draw(st.integers(4, 68)),
                              draw(st.integers(4, 68)))
                category = draw(st.integers(1, 2))
                anns.append(_box(0, category, [x, y, w, h], iscrowd=int(draw(st.integers(0, 4)) == 0)))
                for _ in range(draw(st.integers(0, 2))):  # detections near it, from exact to far off
                    dx, dy = draw(st.integers(-8, 8)), draw(st.integers(-8, 8))
                    dets.append(_box(0, category, [x + dx, y + dy, w, h], score=0.0))
            dets += [_box(0, draw(st.integers(1, 2)), [draw(st.integers(0, 100)), draw(st.integers(0, 100)), 24, 24],
                          score=0.0) for _ in range(draw(st.integers(0, 2)))]
            frames.append((video, anns, dets))
    gt, dets = _box_scene(frames)
    for d, rank in zip(dets, draw(st.permutations(range(len(dets))))):
        d["score"] = (rank + 1) / (len(dets) + 1)
    return gt, dets, draws(len({f[0] for f in frames}), 3, seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(_random_box_scenes())
def test_replicates_equal_cocoeval_on_drawn_videos_random(case: tuple[dict, list[dict], np.ndarray]) -> None:
    """Random box scenes with distinct scores: every draw gives exactly COCOeval's numbers on the drawn videos
    copied."""
    reps, direct = _replicates_and_direct(*case)
    assert reps == direct


def test_equal_scores_keep_the_order_of_the_whole_set() -> None:
    """Video 1's true positive and video 2's false positive share score 0.5 (video 2 has no ground truth).
    Ranked as on the whole set (image 1 first), each detection repeated as often as its video is drawn, the
    true positive leads: precision 1 at recall 1, AP 100, whether the draw lists video 2 or video 1 first; the
    identity draw is COCOeval's own result. COCOeval on the videos concatenated in draw order ranks equal scores
    by draw instead: draw (2, 1) puts the false positive first, precision 1/2 at recall 1, AP 50."""
    gt, dets = _box_scene([(1, [_box(0, 1, [10, 10, 40, 40])], [_box(0, 1, [10, 10, 40, 40], score=0.5)]),
                           (2, [], [_box(0, 1, [60, 60, 40, 40], score=0.5)])])
    reps, direct = _replicates_and_direct(gt, dets, np.array([[1, 0], [0, 1]]))
    assert [r["AP"] for r in reps] == pytest.approx([100.0, 100.0])  # precision 1 / (1 + eps)
    assert [d["AP"] for d in direct] == pytest.approx([50.0, 100.0])
    assert reps[1] == accumulated_stats(evaluated(load_coco(gt), dets, "bbox"))


def test_interval_contains_the_estimate_and_shrinks_with_more_videos() -> None:
    """Intervals on 6 and on 48 videos of the same process: both contain the point estimate, the second is
    narrower. The paired difference of an experiment with itself is exactly 0 on every draw."""
    widths = []
    for videos in (6, 48):
        gt, dets, _ = scene(videos=videos, frames=2, seed=4)
        params = SubsetParams(motion_edges=[0.5, 2.0], ring_px=3, resamples=100, seed=0, level=0.95)
        began = time.perf_counter()
        metrics, _ = subset_metrics(gt, dets, {"all": {a["id"] for a in gt["annotations"]}}, params)
        ap = metrics["all"]["segm"]["AP"]
        low, high = ap["interval"]
        assert low <= ap["value"] <= high and high > low
        widths.append(high - low)
        assert time.perf_counter() - began < 20
        assert set(paired_difference(ap["replicates"], ap["replicates"])) == {0.0}
    assert widths[1] < 0.6 * widths[0], widths


def test_interval_of_replicates_without_values() -> None:
    """Replicates where the subset had no object (None) are left out; none at all gives no interval."""
    assert interval([None, None]) is None
    assert interval([1.0, None, 3.0], level=0.5) == pytest.approx((1.5, 2.5))
    assert paired_difference([1.0, None], [0.5, 2.0]) == [0.5, None]


def test_cli_writes_subsets_and_the_figure_draws_them(tmp_path: Path) -> None:
    """model.subsets on files: camouflage from a train.json info, motion bins from object_motion.json, subset
    `all` equal to evaluate's AP; an empty bin has null AP. The subset figure of two runs is a PNG."""
    gt, dets, kind = scene(videos=3, frames=2, seed=5)
    files = {"gt": gt, "results": [{k: v for k, v in d.items() if k != "on"} for d in dets],
             "metrics": {"experiment": "ours", "dataset": "synthetic", "backbone": "resnet18"},
             "motion": {"motion": {str(a["id"]): (0.1 if kind[a["id"]] == "a" else 1.5) for a in gt["annotations"]}},
             "train": {"info": {"camouflaged_annotation_ids": sorted({a["instance_id"] for a in gt["annotations"]
                                                                      if kind[a["id"]] == "a"})}}}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    out = tmp_path / "subsets.json"
    subsets_main(["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json"),
                  "--metrics", str(tmp_path / "metrics.json"), "--motion", str(tmp_path / "motion.json"),
                  "--camouflage", str(tmp_path / "train.json"), "--out", str(out),
                  "--params", json.dumps({"motion_edges": [0.5, 1.0], "ring_px": 3, "resamples": 20, "seed": 0,
                                          "level": 0.9})])
    written = json.loads(out.read_text())
    assert list(written["subsets"]) == ["all", "camouflaged", "distinct", "static", "slow", "fast"]
    assert written["subsets"]["camouflaged"]["objects"] == written["subsets"]["static"]["objects"] > 0
    assert written["subsets"]["slow"]["segm"]["AP"] == {"value": None, "interval": None, "replicates": [None] * 20}
    expected = evaluate_results(load_coco(gt), files["results"], "bbox")["AP"]
    assert written["subsets"]["all"]["bbox"]["AP"]["value"] == pytest.approx(expected)
    assert set(written["bootstrap"]["seconds"]) == {"evaluate", "resample"}
    args = ["--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json"), "--metrics",
            str(tmp_path / "metrics.json"), "--motion", str(tmp_path / "motion.json"), "--out", str(tmp_path / "r.json"),
            "--params", json.dumps({"motion_edges": [0.5, 1.0], "ring_px": 3, "resamples": 2, "seed": 0, "level": 0.9})]
    subsets_main(args + ["--camouflage"])  # real data: the rule passes a bare --camouflage
    assert list(json.loads((tmp_path / "r.json").read_text())["subsets"]) == ["all", "static", "slow", "fast"]
    base = tmp_path / "boxinst.json"
    base.write_text(json.dumps(written | {"experiment": "boxinst"}))
    figures_main(["subsets", "--subsets", str(base), str(out), "--out", str(tmp_path / "subset_ap.png")])
    image = cv2.imread(str(tmp_path / "subset_ap.png"))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 300
