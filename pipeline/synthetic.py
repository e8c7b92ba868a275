"""The embedded synthetic camouflage dataset (method §1.4): YouTube-VIS 2019 layout plus ground-truth flow.

Each video is a layered scene rendered at subpixel precision:

* **Background.** A smooth multi-scale texture over a small random palette (PALETTE_SIZES: 2-4 related
  colours, std PALETTE_SPREAD = 34 levels around a random base colour): one multi-scale noise field per
  palette colour (TEXTURE_CELLS: cell sizes 35 %, 18 % and 9 % of the short side), a softmax over the
  fields (gain TEXTURE_SHARPNESS = 12) picks a blend of palette colours per pixel (transitions a few pixels
  wide), and a band-limited luminance grain (Gaussian-blurred white noise, sigma GRAIN_SIGMA_PX = 1.2 px,
  std GRAIN_AMPLITUDE = 2 grey levels) adds fine detail that a flow estimator can track. It is drawn on an
  oversized canvas and moves under a global similarity motion: a translation of up to 1.5 % of the short
  side per frame and a zoom of up to ±1 %.
* **Objects.** 1..max_objects shapes, one of `classes` shape classes (ellipse, rectangle, triangle, star,
  cross, ring, crescent, arrow: the class is recognisable from the outline alone), of radius 12-25 % of the
  short side, rasterised anti-aliased at 4x and layered back to front in a random depth order, so they
  occlude each other. Each has its own similarity motion relative to the background: a translation of
  0.8-2.5 % of the short side per frame, a rotation of up to 2.5 degrees and a scale change of up to 1.5 %
  per frame. Centres stay within the middle 70 % of the frame, so objects leave it only partly.
  The first object of video v has class (v mod K) + 1, so every class occurs in about videos/K videos.
* **Camouflage.** With probability `camouflage_prob` an object's texture is a fresh draw of the
  background's own generator (same palette, same scales, same grain) with its palette scaled by a
  brightness factor within ±2 % (CAMOUFLAGE_BRIGHTNESS = 0.02): the object wears the background's colours,
  so no colour of its own marks it, but its texture is an independent draw, so its rim is a texture seam
  (measured below: a weak colour cue, far weaker than a distinct object's edge). The object moves
  differently from the background. Otherwise the object is a two-tone texture around the colour furthest
  from the palette among random candidates (a clear colour edge).

Why it is a fair test rather than a rigged one. Flow is not made trivially perfect: the relative motion is
only 1-3 px per frame at 128x160, objects rotate and scale (the flow varies inside an object), layers
occlude and disocclude each other, and the palette has flat, weakly textured regions where estimators
struggle. Colour is not made useless: the non-camouflaged objects (1 - camouflage_prob of them) have
clear colour edges, and camouflaged ones keep a texture seam. Measured in tests/pipeline/test_synthetic.py
(24 videos, 96x128, camouflage_prob 0.5): pixel pairs 2 apart across a camouflaged boundary differ by
0.8x as much as two random background pixels, and 24 % of them by < 8 grey levels (distinct objects: 2.8x
and 0.1 %); the mean colour of an object's 3-px rim differs from that of the 3-px background ring around
it by ~26 RGB levels when camouflaged against ~191 when distinct, while that background ring differs from
the next ring out by ~10 (the background's own smooth texture). The flow jumps by 1.5-1.6 px on average
across both kinds of boundary, against 0.01 px between background neighbours. OpenCV DIS (medium) on the
rendered frames of the default config (96 videos, measured once; rule flow_quality reports the same on
every run) scores EPE 0.20 px overall, 0.53 px on objects and 1.01 px within 2 px of a layer boundary
(mean |flow| 1.4 px): estimated flow is informative but far from perfect at the boundaries.

Ground truth. Masks are the visible part of each object (alpha >= 0.5, minus what lies in front); a frame
where nothing is visible gets null segmentation, bbox and area. The forward flow F(t -> t+1) at pixel p is
the motion of the topmost layer visible at p in frame t (object where its visible mask holds, background
elsewhere), in pixels, (u, v) = (dx, dy). Both frames are rendered by bilinear resampling (cv2.warpAffine)
of fixed canvases with exactly these motions, so warping frame t+1 by F reproduces frame t on pixels that
stay visible, up to interpolation error. No sensor noise is added; JPEG (quality 95, 4:4:4) adds about 1.5 grey levels.

Output (`write_dataset`): `train.json` (YouTube-VIS 2019: videos, annotations as tracks with compressed
RLE strings, categories), `JPEGImages/<video>/<t:05d>.jpg`, and `flow_gt/<video>.npy` of shape
(T-1, H, W, 2) float32. Everything is a pure function of the params: the same seed gives byte-identical
files. CLI: `python -m pipeline.synthetic --params JSON --out results/synthetic`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pipeline.io import atomic_dir, params_from_json, setup_logging, write_json_atomic
from pipeline.progress import progress_bar

SHAPE_NAMES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring", "crescent", "arrow")
JPEG_QUALITY = 95
MAX_OBJECTS = 16                      # objects per video (the schema's maximum)
SUPERSAMPLE = 4                       # anti-aliasing factor of the shape rasteriser
TEXTURE_CELLS = (0.35, 0.18, 0.09)    # noise cell sizes, fraction of the short side
TEXTURE_AMPLITUDES = (1.0, 0.7, 0.45)
TEXTURE_SHARPNESS = 12.0              # softmax gain over the palette fields
GRAIN_SIGMA_PX = 1.2                  # luminance grain blur
GRAIN_AMPLITUDE = 2.0                 # grain std, grey levels
PALETTE_SIZES = (2, 4)                # inclusive range of palette colours
PALETTE_SPREAD = 34.0                 # std of palette colours around the base colour
BG_SPEED = 0.015                      # max background translation per frame, fraction of short side
BG_ZOOM = 0.01                        # max |zoom - 1| per frame
OBJ_RADIUS = (0.12, 0.25)             # object radius range, fraction of short side
OBJ_SPEED = (0.008, 0.025)            # object speed relative to the background, fraction of short side
OBJ_ROTATION_DEG = 2.5                # max rotation per frame
OBJ_SCALE = 0.015                     # max |scale - 1| per frame
CENTRE_MARGIN = 0.15                  # object centres stay in [m, 1 - m] of the frame
CAMOUFLAGE_BRIGHTNESS = 0.02          # max relative brightness change of a camouflaged texture


@dataclass(frozen=True)
class SyntheticParams:
    """Config section `dataset.synthetic`: sizes, class count, camouflage probability and seed."""

    videos: int
    frames: int
    height: int
    width: int
    classes: int
    max_objects: int
    camouflage_prob: float
    seed: int

    def __post_init__(self) -> None:
        """Reject values the generator cannot honour, naming the config field."""
        for name in ("videos", "frames", "height", "width", "classes", "max_objects", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"dataset.synthetic.{name}: expected an integer, got {value!r}")
        for name, low in (("videos", 1), ("frames", 1), ("height", 32), ("width", 32),
                          ("classes", 1), ("max_objects", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"dataset.synthetic.{name}: must be >= {low}, got {getattr(self, name)}")
        if self.max_objects > MAX_OBJECTS:
            raise ValueError(f"dataset.synthetic.max_objects: at most {MAX_OBJECTS}, got {self.max_objects}")
        if self.classes > len(SHAPE_NAMES):
            raise ValueError(f"dataset.synthetic.classes: at most {len(SHAPE_NAMES)} shape classes "
                             f"({', '.join(SHAPE_NAMES)}), got {self.classes}")
        if not isinstance(self.camouflage_prob, (int, float)) or not 0.0 <= self.camouflage_prob <= 1.0:
            raise ValueError(f"dataset.synthetic.camouflage_prob: expected a number in [0, 1], "
                             f"got {self.camouflage_prob!r}")


@dataclass(frozen=True)
class SyntheticObject:
    """One object track: its class, whether it is camouflaged, and its visible masks (T, H, W) bool."""

    category_id: int
    camouflaged: bool
    masks: np.ndarray


@dataclass(frozen=True)
class SyntheticVideo:
    """One rendered video. frames (T, H, W, 3) uint8 RGB; flow (T-1, H, W, 2) float32 (u, v) px, t -> t+1;
    layers (T, H, W) uint8: 0 background, i + 1 where object i is the visible (topmost) layer."""

    name: str
    frames: np.ndarray
    flow: np.ndarray
    layers: np.ndarray
    objects: tuple[SyntheticObject, ...]


# --- textures ---------------------------------------------------------------------------------------

def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish std noise (height, width) float32, smooth over `cell` pixels (bicubic upsampling)."""
    cell_px = max(2, int(round(cell)))
    grid = rng.standard_normal((height // cell_px + 4, width // cell_px + 4)).astype(np.float32)
    up = cv2.resize(grid, (grid.shape[1] * cell_px, grid.shape[0] * cell_px), interpolation=cv2.INTER_CUBIC)
    oy, ox = rng.integers(cell_px, 2 * cell_px, size=2)
    return up[oy:oy + height, ox:ox + width]


def palette_texture(rng: np.random.Generator, palette: np.ndarray, height: int, width: int,
                    short_side: int) -> np.ndarray:
    """Texture (height, width, 3) float32 in [0, 255]: a soft per-pixel blend of `palette` (P, 3) colours
    chosen by multi-scale noise fields, plus a band-limited luminance grain."""
    fields = np.stack([
        sum(a * smooth_noise(rng, height, width, c * short_side)
            for c, a in zip(TEXTURE_CELLS, TEXTURE_AMPLITUDES))
        for _ in range(len(palette))
    ])                                                        # (P, H, W)
    logits = TEXTURE_SHARPNESS * fields
    weights = np.exp(logits - logits.max(axis=0, keepdims=True))
    weights /= weights.sum(axis=0, keepdims=True)
    image = np.einsum("phw,pc->hwc", weights, palette.astype(np.float32))
    grain = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), GRAIN_SIGMA_PX)
    grain *= GRAIN_AMPLITUDE / max(float(grain.std()), 1e-6)
    return np.clip(image + grain[..., None], 0.0, 255.0).astype(np.float32)


def random_palette(rng: np.random.Generator) -> np.ndarray:
    """A background palette (P, 3) float of related colours around a random base colour."""
    size = int(rng.integers(PALETTE_SIZES[0], PALETTE_SIZES[1] + 1))
    base = rng.uniform(50.0, 205.0, size=3)
    return np.clip(base + rng.normal(0.0, PALETTE_SPREAD, size=(size, 3)), 0.0, 255.0)


def distinct_colour(rng: np.random.Generator, palette: np.ndarray, candidates: int = 64) -> np.ndarray:
    """The candidate colour (3,) furthest (min RGB distance) from every palette colour."""
    options = rng.uniform(0.0, 255.0, size=(candidates, 3))
    dist = np.linalg.norm(options[:, None, :] - palette[None, :, :], axis=-1).min(axis=1)
    return options[int(np.argmax(dist))]


# --- shapes -----------------------------------------------------------------------------------------

def _circle(radius: float, cx: float = 0.0, cy: float = 0.0, aspect: float = 1.0, n: int = 96) -> np.ndarray:
    """Polygon (n, 2) of an ellipse with semi-axes (radius, radius * aspect) centred at (cx, cy)."""
    a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(a), cy + radius * aspect * np.sin(a)], axis=1)


def shape_polygons(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Outline of shape class `name` in unit-radius coordinates: (polygon (n, 2) xy, fill 1 or hole 0) drawn
    in order."""
    match name:
        case "ellipse":
            return [(_circle(1.0, aspect=rng.uniform(0.5, 0.8)), 1)]
        case "rectangle":
            h = rng.uniform(0.45, 0.75)
            return [(np.array([[-0.95, -h], [0.95, -h], [0.95, h], [-0.95, h]]), 1)]
        case "triangle":
            a = np.deg2rad(-90.0 + np.arange(3) * 120.0)
            return [(np.stack([np.cos(a), np.sin(a)], axis=1), 1)]
        case "star":
            a = np.deg2rad(-90.0 + np.arange(10) * 36.0)
            r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
            return [(np.stack([r * np.cos(a), r * np.sin(a)], axis=1), 1)]
        case "cross":
            w = 0.3
            return [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                               [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=float), 1)]
        case "ring":
            return [(_circle(1.0), 1), (_circle(0.55), 0)]
        case "crescent":
            return [(_circle(1.0), 1), (_circle(0.85, cx=0.5), 0)]
        case "arrow":
            return [(np.array([[1.0, 0.0], [0.1, -0.8], [0.1, -0.35], [-1.0, -0.35], [-1.0, 0.35],
                               [0.1, 0.35], [0.1, 0.8]]), 1)]
    raise ValueError(f"unknown shape class {name!r}; expected one of {SHAPE_NAMES}")


def rasterise(polygons: list[tuple[np.ndarray, int]], radius: float, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in [0, 1] of `polygons` scaled by `radius` px, centred
    at pixel ((size-1)/2, (size-1)/2)."""
    s = SUPERSAMPLE
    canvas = np.zeros((size * s, size * s), np.uint8)
    centre = (size - 1) / 2.0
    for poly, fill in polygons:
        px = ((centre + radius * poly) + 0.5) * s - 0.5           # pixel centres at the 4x grid
        cv2.fillPoly(canvas, [np.round(px).astype(np.int32)], int(fill))
    return cv2.resize(canvas.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


# --- motion -----------------------------------------------------------------------------------------

def similarity(centre: np.ndarray, angle: float, scale: float, origin: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping `origin` (x, y) to `centre`, rotating by `angle` rad and scaling by `scale`."""
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    lin = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = centre - lin @ origin
    return m


def affine_flow(m_t: np.ndarray, m_t1: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flow (H, W, 2) float64 of pixel p in frame t to M_{t+1} M_t^{-1} p, for source->frame matrices (3, 3)."""
    rel = m_t1 @ np.linalg.inv(m_t)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u = rel[0, 0] * xs + rel[0, 1] * ys + rel[0, 2] - xs
    v = rel[1, 0] * xs + rel[1, 1] * ys + rel[1, 2] - ys
    return np.stack([u, v], axis=-1)


def warp(source: np.ndarray, m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Render `source` (h, w[, C]) float32 into an (H, W[, C]) frame: dst(p) = src(M^{-1} p), bilinear."""
    return cv2.warpAffine(source, m[:2], (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# --- one video --------------------------------------------------------------------------------------

def video_name(video_id: int) -> str:
    """Folder name of video `video_id` under JPEGImages/."""
    return f"video_{video_id:05d}"


def _background(rng: np.random.Generator, p: SyntheticParams, palette: np.ndarray,
                short: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Background canvas (h, w, 3) float32, its canvas->frame matrices (3, 3) per frame, and its velocity
    (2,) px/frame at the frame centre."""
    speed = BG_SPEED * short * math.sqrt(rng.uniform())
    heading = rng.uniform(0.0, 2.0 * math.pi)
    velocity = speed * np.array([math.cos(heading), math.sin(heading)])
    zoom = 1.0 + rng.uniform(-BG_ZOOM, BG_ZOOM)
    frame_centre = np.array([(p.width - 1) / 2.0, (p.height - 1) / 2.0])
    corners = np.array([[0, 0], [p.width - 1, 0], [0, p.height - 1], [p.width - 1, p.height - 1]], float)
    # canvas point of frame pixel x at frame t: (x - c - t v) / z^t relative to the canvas centre
    half = np.array([np.abs((corners - frame_centre - t * velocity) / zoom ** t).max(axis=0)
                     for t in range(p.frames)]).max(axis=0)          # (2,) x, y half-extent
    canvas_w, canvas_h = (2 * np.ceil(half) + 8).astype(int)
    canvas_centre = np.array([(canvas_w - 1) / 2.0, (canvas_h - 1) / 2.0])
    canvas = palette_texture(rng, palette, int(canvas_h), int(canvas_w), short)
    mats = [similarity(frame_centre + t * velocity, 0.0, zoom ** t, canvas_centre) for t in range(p.frames)]
    return canvas, mats, velocity


def _object_motion(rng: np.random.Generator, p: SyntheticParams, short: int, bg_velocity: np.ndarray,
                   radius: float, origin: np.ndarray) -> list[np.ndarray]:
    """Sprite->frame matrices (3, 3) per frame of one object; its centre stays inside the middle of the frame."""
    speed = rng.uniform(*OBJ_SPEED) * short
    heading = rng.uniform(0.0, 2.0 * math.pi)
    velocity = bg_velocity + speed * np.array([math.cos(heading), math.sin(heading)])
    size = np.array([p.width, p.height], float)
    low, high = CENTRE_MARGIN * size, (1.0 - CENTRE_MARGIN) * size
    travel = velocity * max(p.frames - 1, 0)
    room = 0.8 * (high - low)
    shrink = np.min(np.where(np.abs(travel) > room, room / np.maximum(np.abs(travel), 1e-9), 1.0))
    velocity, travel = velocity * shrink, travel * shrink
    start = rng.uniform(np.maximum(low, low - travel), np.minimum(high, high - travel))
    angle0 = rng.uniform(0.0, 2.0 * math.pi)
    spin = math.radians(rng.uniform(-OBJ_ROTATION_DEG, OBJ_ROTATION_DEG))
    growth = 1.0 + rng.uniform(-OBJ_SCALE, OBJ_SCALE)
    return [similarity(start + t * velocity, angle0 + t * spin, growth ** t, origin) for t in range(p.frames)]


def generate_video(params: SyntheticParams, video_id: int) -> SyntheticVideo:
    """Render video `video_id` (1-based) of the dataset: a pure function of (params, video_id)."""
    rng = np.random.default_rng([params.seed, video_id])
    h, w, t_len = params.height, params.width, params.frames
    short = min(h, w)
    palette = random_palette(rng)
    canvas, bg_mats, bg_velocity = _background(rng, params, palette, short)

    n_objects = int(rng.integers(1, params.max_objects + 1))
    sprites, obj_mats, classes, camouflaged = [], [], [], []
    for i in range(n_objects):
        cls = (video_id - 1) % params.classes + 1 if i == 0 else int(rng.integers(1, params.classes + 1))
        radius = rng.uniform(*OBJ_RADIUS) * short
        size = 2 * int(math.ceil(radius)) + 6
        alpha = rasterise(shape_polygons(SHAPE_NAMES[cls - 1], rng), radius, size)
        camo = bool(rng.uniform() < params.camouflage_prob)
        if camo:
            obj_palette = palette * (1.0 + rng.uniform(-CAMOUFLAGE_BRIGHTNESS, CAMOUFLAGE_BRIGHTNESS))
        else:
            colour = distinct_colour(rng, palette)
            obj_palette = np.stack([colour, colour * 0.8])
        texture = palette_texture(rng, np.clip(obj_palette, 0.0, 255.0), size, size, short)
        origin = np.array([(size - 1) / 2.0, (size - 1) / 2.0])
        obj_mats.append(_object_motion(rng, params, short, bg_velocity, radius, origin))
        sprites.append((texture, alpha))
        classes.append(cls)
        camouflaged.append(camo)
    depth_order = rng.permutation(n_objects)                 # back to front

    frames = np.zeros((t_len, h, w, 3), np.uint8)
    layers = np.zeros((t_len, h, w), np.uint8)
    for t in range(t_len):
        image = warp(canvas, bg_mats[t], h, w)                 # (H, W, 3)
        for i in depth_order:
            texture, alpha = sprites[i]
            a = warp(alpha, obj_mats[i][t], h, w)[..., None]    # (H, W, 1)
            image = image * (1.0 - a) + warp(texture, obj_mats[i][t], h, w) * a
            layers[t][a[..., 0] >= 0.5] = i + 1
        frames[t] = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    flow = np.zeros((max(t_len - 1, 0), h, w, 2), np.float32)
    for t in range(t_len - 1):
        composite = affine_flow(bg_mats[t], bg_mats[t + 1], h, w)
        for i in range(n_objects):
            visible = layers[t] == i + 1
            composite[visible] = affine_flow(obj_mats[i][t], obj_mats[i][t + 1], h, w)[visible]
        flow[t] = composite
    objects = tuple(SyntheticObject(classes[i], camouflaged[i], layers == i + 1) for i in range(n_objects))
    return SyntheticVideo(video_name(video_id), frames, flow, layers, objects)


# --- YouTube-VIS records ------------------------------------------------------------------------------

def encode_mask(mask: np.ndarray) -> dict | None:
    """Compressed RLE {"size": [H, W], "counts": str} of a (H, W) bool mask, or None when it is empty."""
    if not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def track_record(obj: SyntheticObject, annotation_id: int, video_id: int) -> dict:
    """One YouTube-VIS annotation (instance track) with per-frame segmentations, bboxes XYWH and areas."""
    segmentations, bboxes, areas = [], [], []
    for mask in obj.masks:
        rle = encode_mask(mask)
        segmentations.append(rle)
        if rle is None:
            bboxes.append(None)
            areas.append(None)
        else:
            coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            bboxes.append([float(x) for x in mask_utils.toBbox(coded)])
            areas.append(int(mask_utils.area(coded)))
    height, width = obj.masks.shape[1:]
    return {"id": annotation_id, "video_id": video_id, "category_id": obj.category_id, "iscrowd": 0,
            "height": int(height), "width": int(width),
            "segmentations": segmentations, "bboxes": bboxes, "areas": areas}


def video_record(video: SyntheticVideo, video_id: int) -> dict:
    """One YouTube-VIS `videos[]` entry."""
    t_len, height, width = video.frames.shape[:3]
    return {"id": video_id, "width": int(width), "height": int(height), "length": int(t_len),
            "file_names": [f"{video.name}/{t:05d}.jpg" for t in range(t_len)]}


def categories(num_classes: int) -> list[dict]:
    """YouTube-VIS `categories[]`: ids 1..K named after the shape classes."""
    return [{"id": k + 1, "name": SHAPE_NAMES[k], "supercategory": "shape"} for k in range(num_classes)]


def write_video(video: SyntheticVideo, root: Path) -> None:
    """Write the frames as JPEG (quality 95, no chroma subsampling) under root/JPEGImages/<name>/ and the flow to root/flow_gt/."""
    frame_dir = root / "JPEGImages" / video.name
    frame_dir.mkdir(parents=True)
    for t, frame in enumerate(video.frames):
        ok = cv2.imwrite(str(frame_dir / f"{t:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                          cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        if not ok:
            raise OSError(f"{frame_dir / f'{t:05d}.jpg'}: OpenCV could not write the frame")
    (root / "flow_gt").mkdir(exist_ok=True)
    np.save(root / "flow_gt" / f"{video.name}.npy", video.flow)


def write_dataset(params: SyntheticParams, out: str | Path) -> dict:
    """Generate every video into `out` (built in a temporary folder, then renamed); return train.json."""
    videos, annotations, camouflaged_ids = [], [], []
    with atomic_dir(out) as tmp:
        ids = range(1, params.videos + 1)
        for video_id in progress_bar(len(ids), "synthetic videos", unit="video", iterable=ids):
            video = generate_video(params, video_id)
            write_video(video, tmp)
            videos.append(video_record(video, video_id))
            for obj in video.objects:
                annotations.append(track_record(obj, len(annotations) + 1, video_id))
                if obj.camouflaged:
                    camouflaged_ids.append(len(annotations))
        dataset = {
            "info": {"description": "mowis synthetic camouflage dataset (pipeline/synthetic.py)",
                     "params": dataclasses.asdict(params), "camouflaged_annotation_ids": camouflaged_ids},
            "licenses": [],
            "videos": videos,
            "annotations": annotations,
            "categories": categories(params.classes),
        }
        write_json_atomic(tmp / "train.json", dataset, indent=None)
    return dataset


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m pipeline.synthetic --params JSON --out results/synthetic."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="the dataset.synthetic config section as JSON")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    args = parser.parse_args(argv)
    log = setup_logging()
    params = params_from_json(SyntheticParams, args.params, "dataset.synthetic")
    dataset = write_dataset(params, args.out)
    n_tracks = len(dataset["annotations"])
    n_camo = len(dataset["info"]["camouflaged_annotation_ids"])
    log.info("wrote %d videos, %d tracks (%d camouflaged) to %s", params.videos, n_tracks, n_camo, args.out)
    log.info("params: %s", json.dumps(dataclasses.asdict(params), sort_keys=True))


if __name__ == "__main__":
    main()
