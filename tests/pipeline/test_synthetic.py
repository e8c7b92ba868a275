"""Tests of pipeline/synthetic.py: YouTube-VIS validity, determinism, flow ground truth, masks, camouflage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline import synthetic
from pipeline.io import params_from_json
from pipeline.synthetic import SHAPE_NAMES, SyntheticParams, generate_video, write_dataset
from pipeline.ytvis import load_ytvis

SMALL = SyntheticParams(videos=5, frames=4, height=64, width=96, classes=4, max_objects=3,
                        camouflage_prob=0.85, seed=7)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """SMALL written to disk once for the module."""
    out = tmp_path_factory.mktemp("syn") / "synthetic"
    write_dataset(SMALL, out)
    return out


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image (H, W, C) float sampled at float coordinates x, y (H, W) by an explicit bilinear formula;
    coordinates are clamped to the frame (callers mask out-of-frame pixels)."""
    h, w = image.shape[:2]
    x = np.clip(x, 0, w - 1.000001)
    y = np.clip(y, 0, h - 1.000001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def stable_pixels(layers_t: np.ndarray, layers_t1: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of frame t that land inside frame t+1 on the same layer, at least 2 px from any
    layer boundary in both frames (no occlusion, no anti-aliased edge)."""
    h, w = layers_t.shape
    ys, xs = np.mgrid[0:h, 0:w]
    tx = np.rint(xs + flow[..., 0]).astype(int)
    ty = np.rint(ys + flow[..., 1]).astype(int)
    inside = (tx >= 1) & (tx < w - 1) & (ty >= 1) & (ty < h - 1)
    kernel = np.ones((5, 5), np.uint8)

    def edges(layers):
        return cv2.dilate(layers, kernel) != cv2.erode(layers, kernel)

    txc, tyc = np.clip(tx, 0, w - 1), np.clip(ty, 0, h - 1)
    return inside & ~edges(layers_t) & ~edges(layers_t1)[tyc, txc] & (layers_t1[tyc, txc] == layers_t)


def warp_error(frame_t: np.ndarray, frame_t1: np.ndarray, flow: np.ndarray, where: np.ndarray) -> float:
    """Mean |frame_t(p) - frame_t1(p + flow(p))| over `where` (grey levels, averaged over RGB)."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    warped = bilinear(frame_t1.astype(np.float64), xs + flow[..., 0], ys + flow[..., 1])
    return float(np.abs(warped - frame_t.astype(np.float64)).mean(axis=-1)[where].mean())


# --- params -------------------------------------------------------------------------------------------

def test_params_from_json_and_errors_name_the_field():
    text = json.dumps(dataclasses.asdict(SMALL))
    assert params_from_json(SyntheticParams, text, "dataset.synthetic") == SMALL
    with pytest.raises(ValueError, match="unknown keys.*'speed'"):
        params_from_json(SyntheticParams, json.dumps({**dataclasses.asdict(SMALL), "speed": 1}), "dataset.synthetic")
    for field, value in (("classes", len(SHAPE_NAMES) + 1), ("frames", 0), ("height", 16),
                         ("camouflage_prob", 1.5), ("videos", 2.0), ("max_objects", 100)):
        with pytest.raises(ValueError, match=f"dataset.synthetic.{field}"):
            dataclasses.replace(SMALL, **{field: value})


# --- layout -------------------------------------------------------------------------------------------

def test_output_is_valid_youtube_vis(small_dataset: Path):
    dataset = load_ytvis(small_dataset, "train.json", check_files=True)
    assert [v.id for v in dataset.videos] == list(range(1, SMALL.videos + 1))
    assert [(c.id, c.name) for c in dataset.categories] == list(enumerate(SHAPE_NAMES[:SMALL.classes], 1))
    raw = json.loads((small_dataset / "train.json").read_text())
    for video in raw["videos"]:
        name = synthetic.video_name(video["id"])
        assert video["file_names"] == [f"{name}/{t:05d}.jpg" for t in range(SMALL.frames)]
        assert (video["width"], video["height"], video["length"]) == (SMALL.width, SMALL.height, SMALL.frames)
        frame = cv2.imread(str(small_dataset / "JPEGImages" / video["file_names"][-1]))
        assert frame.shape == (SMALL.height, SMALL.width, 3)
        flow = np.load(small_dataset / "flow_gt" / f"{name}.npy")
        assert flow.shape == (SMALL.frames - 1, SMALL.height, SMALL.width, 2) and flow.dtype == np.float32
    for ann in raw["annotations"]:
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= SMALL.classes
        for seg in ann["segmentations"]:
            assert seg is None or (isinstance(seg["counts"], str) and seg["size"] == [SMALL.height, SMALL.width])
    assert sorted(p.name for p in (small_dataset / "flow_gt").iterdir()) == \
        [f"{synthetic.video_name(i)}.npy" for i in range(1, SMALL.videos + 1)]


def _file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path, small_dataset: Path):
    write_dataset(SMALL, tmp_path / "again")
    first, second = _file_bytes(small_dataset), _file_bytes(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    write_dataset(dataclasses.replace(SMALL, seed=SMALL.seed + 1), tmp_path / "other")
    other = _file_bytes(tmp_path / "other")
    assert other["train.json"] != first["train.json"]
    frame = f"JPEGImages/{synthetic.video_name(1)}/00000.jpg"
    assert other[frame] != first[frame]


def test_cli_writes_atomically(tmp_path: Path, monkeypatch):
    out = tmp_path / "synthetic"
    params = json.dumps(dataclasses.asdict(dataclasses.replace(SMALL, videos=2)))
    synthetic.main(["--params", params, "--out", str(out)])
    assert json.loads((out / "train.json").read_text())["info"]["params"]["videos"] == 2
    calls = []

    def failing(p, video_id):
        calls.append(video_id)
        if video_id == 2:
            raise RuntimeError("disk full")
        return generate_video(p, video_id)

    monkeypatch.setattr(synthetic, "generate_video", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.main(["--params", params, "--out", str(out)])
    assert calls == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]       # no temporary folder left
    assert len(json.loads((out / "train.json").read_text())["videos"]) == 2   # the old output is intact


# --- ground truth -------------------------------------------------------------------------------------

def test_masks_boxes_areas_agree(small_dataset: Path):
    raw = json.loads((small_dataset / "train.json").read_text())
    by_video: dict[int, list[dict]] = {}
    for ann in raw["annotations"]:
        by_video.setdefault(ann["video_id"], []).append(ann)
    for video_id, anns in by_video.items():
        video = generate_video(SMALL, video_id)
        assert [a["category_id"] for a in anns] == [o.category_id for o in video.objects]
        for ann, obj in zip(anns, video.objects):
            for t in range(SMALL.frames):
                seg, box, area = ann["segmentations"][t], ann["bboxes"][t], ann["areas"][t]
                mask = obj.masks[t]
                if seg is None:
                    assert box is None and area is None and not mask.any()
                    continue
                decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
                np.testing.assert_array_equal(decoded, mask)
                ys, xs = np.nonzero(mask)
                assert box == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert area == mask.sum()
        stacked = np.stack([o.masks for o in video.objects]).sum(axis=0)    # (T, H, W) visible layers
        assert stacked.max() <= 1, f"video {video_id}: visible masks overlap"
        np.testing.assert_array_equal(stacked > 0, video.layers > 0)


PERTURBATIONS = {"+0.25 px x": (np.array([0.25, 0.0]), 1.0), "-0.25 px x": (np.array([-0.25, 0.0]), 1.0),
                 "+0.25 px y": (np.array([0.0, 0.25]), 1.0), "-0.25 px y": (np.array([0.0, -0.25]), 1.0),
                 "x1.1": (np.zeros(2), 1.1), "x0.9": (np.zeros(2), 0.9)}


def test_warp_by_gt_flow_reproduces_previous_frame():
    """On stable pixels, frame t+1 warped by the GT flow matches frame t within interpolation error, and
    better than any slightly wrong flow (a quarter pixel off, or 10 % too long/short), separately on the
    background and on the objects."""
    params = dataclasses.replace(SMALL, videos=8, frames=5, height=96, width=128, max_objects=4)
    errors = {"background": [], "objects": []}
    worse = {(region, name): [] for region in errors for name in PERTURBATIONS}
    for video_id in range(1, params.videos + 1):
        video = generate_video(params, video_id)
        for t in range(params.frames - 1):
            flow, f0, f1 = video.flow[t], video.frames[t], video.frames[t + 1]
            stable = stable_pixels(video.layers[t], video.layers[t + 1], flow)
            assert stable.mean() > 0.5
            regions = {"background": stable & (video.layers[t] == 0), "objects": stable & (video.layers[t] > 0)}
            for region, where in regions.items():
                if where.sum() < 100:
                    continue
                errors[region].append(warp_error(f0, f1, flow, where))
                for name, (offset, scale) in PERTURBATIONS.items():
                    wrong = (flow * scale + offset).astype(np.float32)
                    worse[(region, name)].append(warp_error(f0, f1, wrong, where))
    for region, errs in errors.items():
        print(region, f"GT {np.mean(errs):.3f}", {name: round(float(np.mean(worse[(region, name)])), 3)
                                                    for name in PERTURBATIONS})
    margin = {name: 0.02 if scale != 1.0 else 0.15 for name, (_, scale) in PERTURBATIONS.items()}
    for region, errs in errors.items():
        assert len(errs) >= 10
        assert np.mean(errs) < 0.7 and np.max(errs) < 1.3, (region, np.mean(errs), np.max(errs))
        for name in PERTURBATIONS:
            assert np.mean(worse[(region, name)]) > np.mean(errs) + margin[name], \
                (region, name, np.mean(worse[(region, name)]), np.mean(errs))


def test_warp_on_written_jpeg_frames(small_dataset: Path):
    errors, shifted = [], []
    for video_id in range(1, SMALL.videos + 1):
        name = synthetic.video_name(video_id)
        layers = generate_video(SMALL, video_id).layers
        flow = np.load(small_dataset / "flow_gt" / f"{name}.npy")
        frames = [cv2.cvtColor(cv2.imread(str(small_dataset / "JPEGImages" / name / f"{t:05d}.jpg")),
                               cv2.COLOR_BGR2RGB) for t in range(SMALL.frames)]
        for t in range(SMALL.frames - 1):
            stable = stable_pixels(layers[t], layers[t + 1], flow[t])
            errors.append(warp_error(frames[t], frames[t + 1], flow[t], stable))
            shifted.append(warp_error(frames[t], frames[t + 1], flow[t] + np.float32(0.5), stable))
    print(f"JPEG warp error {np.mean(errors):.2f}, with flow off by half a pixel {np.mean(shifted):.2f}")
    # JPEG noise (about 1.5 grey levels per frame, see test_jpeg_fidelity) dominates the error here
    assert np.mean(errors) < 2.5 and np.mean(shifted) > np.mean(errors) + 0.5, (errors, shifted)


def test_mean_flow_of_an_object_is_its_centroid_motion():
    """For a similarity motion the centroid moves like any point: mean flow over the mask at t equals the
    centroid shift from t to t+1 (masks taken only where the object is whole and unoccluded in both frames)."""
    params = dataclasses.replace(SMALL, videos=12, max_objects=1, height=96, width=128)
    errors, background_errors = [], []
    for video_id in range(1, params.videos + 1):
        video = generate_video(params, video_id)
        masks = video.objects[0].masks
        for t in range(params.frames - 1):
            m0, m1 = masks[t], masks[t + 1]
            if m0[[0, -1]].any() or m0[:, [0, -1]].any() or m1[[0, -1]].any() or m1[:, [0, -1]].any():
                continue                                               # touches the frame border
            ys0, xs0 = np.nonzero(m0)
            ys1, xs1 = np.nonzero(m1)
            shift = np.array([xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()])
            errors.append(np.abs(video.flow[t][m0].mean(axis=0) - shift).max())
            background = video.flow[t][video.layers[t] == 0].mean(axis=0)
            background_errors.append(np.abs(background - shift).max())
    assert len(errors) >= 10
    # the binary masks quantise the centroid: a few tenths of a pixel at most; the background's motion is
    # far off (objects move 0.8-2.5 % of the short side relative to it)
    assert np.max(errors) < 0.3 and np.mean(errors) < 0.1, (np.max(errors), np.mean(errors))
    assert np.min(background_errors) > 0.3 and np.mean(background_errors) > 0.7


# --- the dataset as a test of the paper's claim --------------------------------------------------------

def _boundary_pairs(layers: np.ndarray, obj: int, offset: int = 2):
    """Index pairs (a, b) of pixels `offset` apart (vertical and horizontal) straddling object `obj`'s
    boundary with the background, and pairs inside the background."""
    out = []
    for a, b in (((slice(None, -offset), slice(None)), (slice(offset, None), slice(None))),
                 ((slice(None), slice(None, -offset)), (slice(None), slice(offset, None)))):
        la, lb = layers[a], layers[b]
        boundary = ((la == obj) & (lb == 0)) | ((la == 0) & (lb == obj))
        out.append((a, b, boundary, (la == 0) & (lb == 0)))
    return out


def test_camouflage_colour_ambiguous_motion_not():
    """Camouflaged objects: colour contrast across the boundary is no larger than between two random
    background pixels, and a fair share of boundary pairs look the same; distinct objects show a clear colour
    edge. For both, the flow jumps across the boundary while it is smooth inside the background."""
    params = dataclasses.replace(SMALL, videos=24, frames=3, height=96, width=128, classes=8, camouflage_prob=0.5)
    rng = np.random.default_rng(0)
    stats: dict[bool, list[tuple[float, float, float, float]]] = {True: [], False: []}
    flow_interior = []
    for video_id in range(1, params.videos + 1):
        video = generate_video(params, video_id)
        for t in range(params.frames - 1):
            image, flow, layers = video.frames[t].astype(np.float64), video.flow[t], video.layers[t]
            background = image[layers == 0]
            i, j = rng.integers(0, len(background), size=(2, 4000))
            random_contrast = np.linalg.norm(background[i] - background[j], axis=-1).mean()
            for k, obj in enumerate(video.objects):
                colour, motion = [], []
                for a, b, boundary, interior in _boundary_pairs(layers, k + 1):
                    colour.append(np.linalg.norm(image[a] - image[b], axis=-1)[boundary])
                    motion.append(np.linalg.norm(flow[a] - flow[b], axis=-1)[boundary])
                    flow_interior.append(np.linalg.norm(flow[a] - flow[b], axis=-1)[interior])
                colour, motion = np.concatenate(colour), np.concatenate(motion)
                if colour.size >= 30:
                    stats[obj.camouflaged].append((colour.mean() / random_contrast, (colour < 8).mean(),
                                                   motion.mean(), (motion < 0.25).mean()))
    camo, distinct = np.array(stats[True]), np.array(stats[False])
    assert len(camo) >= 10 and len(distinct) >= 10
    assert 0.6 < camo[:, 0].mean() < 1.0, f"camouflaged boundary colour contrast / random pairs {camo[:, 0].mean():.2f}"
    assert 2.2 < distinct[:, 0].mean() < 3.4, \
        f"distinct boundary colour contrast / random pairs {distinct[:, 0].mean():.2f}"
    assert camo[:, 1].mean() > 0.1 and distinct[:, 1].mean() < 0.02, (camo[:, 1].mean(), distinct[:, 1].mean())
    interior = np.concatenate(flow_interior).mean()
    for group in (camo, distinct):
        assert group[:, 2].mean() > 1.0 and group[:, 2].mean() > 20 * interior, (group[:, 2].mean(), interior)
        assert group[:, 3].mean() < 0.05


def _rings(mask: np.ndarray, layers: np.ndarray, width: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) bool rings of an object mask: its rim (the last `width` px inside), the background ring
    around it (0..width px outside) and the background ring beyond that (width..2 width px outside)."""
    kernel = np.ones((3, 3), np.uint8)
    m = mask.astype(np.uint8)
    near = cv2.dilate(m, kernel, iterations=width).astype(bool)
    far = cv2.dilate(m, kernel, iterations=2 * width).astype(bool)
    rim = mask & ~cv2.erode(m, kernel, iterations=width).astype(bool)
    return rim, near & ~mask & (layers == 0), far & ~near & (layers == 0)


def test_camouflage_ring_contrast_of_nearby_pixels():
    """The docstring's ring measurement: the mean colour of an object's 3-px rim against that of the 3-px
    background ring around it is ~26 RGB levels when camouflaged, ~191 when distinct; that background ring
    against the next one out ~10. Camouflage is a weak colour cue at the boundary, not an invisible one."""
    params = dataclasses.replace(SMALL, videos=24, frames=3, height=96, width=128, classes=8, camouflage_prob=0.5)
    contrast: dict[bool, list[float]] = {True: [], False: []}
    texture = []
    for video_id in range(1, params.videos + 1):
        video = generate_video(params, video_id)
        for t in range(params.frames - 1):
            image = video.frames[t].astype(np.float64)
            for obj in video.objects:
                rim, ring, beyond = _rings(obj.masks[t], video.layers[t])
                if min(rim.sum(), ring.sum(), beyond.sum()) < 30:
                    continue
                contrast[obj.camouflaged].append(float(np.linalg.norm(image[rim].mean(0) - image[ring].mean(0))))
                texture.append(float(np.linalg.norm(image[ring].mean(0) - image[beyond].mean(0))))
    camo, distinct, background = np.mean(contrast[True]), np.mean(contrast[False]), np.mean(texture)
    assert len(contrast[True]) >= 20 and len(contrast[False]) >= 20
    assert 20 < camo < 32 and 150 < distinct < 240 and 6 < background < 13, (camo, distinct, background)
    assert camo < 0.2 * distinct and camo > 2 * background


def test_objects_stay_mostly_in_frame_and_classes_are_covered():
    params = dataclasses.replace(SMALL, videos=16, frames=8, classes=8, camouflage_prob=0.85, height=96, width=128)
    present, total, classes, camouflaged, objects = 0, 0, set(), 0, 0
    for video_id in range(1, params.videos + 1):
        video = generate_video(params, video_id)
        assert 1 <= len(video.objects) <= params.max_objects
        for obj in video.objects:
            visible = obj.masks.any(axis=(1, 2))
            present, total = present + visible.sum(), total + visible.size
            classes.add(obj.category_id)
            camouflaged, objects = camouflaged + obj.camouflaged, objects + 1
    assert present / total > 0.9
    assert classes == set(range(1, 9))
    expected, sd = 0.85 * objects, np.sqrt(objects * 0.85 * 0.15)
    assert abs(camouflaged - expected) < 3 * sd


def test_jpeg_fidelity(small_dataset: Path):
    """The written JPEGs are the rendered frames up to compression noise."""
    for video_id in (1, SMALL.videos):
        video = generate_video(SMALL, video_id)
        for t in range(SMALL.frames):
            path = small_dataset / "JPEGImages" / video.name / f"{t:05d}.jpg"
            decoded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float64)
            assert np.abs(decoded - video.frames[t]).mean() < 2.5


def test_single_frame_videos_and_odd_sizes(tmp_path: Path):
    params = dataclasses.replace(SMALL, videos=2, frames=1, height=33, width=50)
    write_dataset(params, tmp_path / "one")
    dataset = load_ytvis(tmp_path / "one", "train.json")
    assert [v.length for v in dataset.videos] == [1, 1]
    flow = np.load(tmp_path / "one" / "flow_gt" / f"{synthetic.video_name(1)}.npy")
    assert flow.shape == (0, 33, 50, 2) and flow.dtype == np.float32
