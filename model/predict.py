"""Prediction on your own frames (method §6 inference): a folder of frames or a video file → masks and overlays.

    python -m model.predict --input FRAMES_DIR_OR_VIDEO --checkpoint results/train/<exp>/final.pt --out OUT_DIR

The checkpoint brings its settings: the flow section it was trained with (final.pt) and the evaluate section
its evaluation used (`results/eval/<exp>/metrics.json` beside `results/train/<exp>/`; without one, the
method's inference settings at the largest training size). `--params` / `--flow-params` (JSON) override them.

A folder is read as its image files in sorted name order; a video file through cv2.VideoCapture. Frames are
resized like evaluation (`evaluate.min_size`, `evaluate.max_size`). When the network reads flow (a two-stream
checkpoint), the flow is computed on the fly with the configured estimator (`--flow-params`, the `flow`
section) by the rules of `pipeline.flow.video_flow`: F(t→t+1), the last frame −F(T−1→T−2), a one-frame input
zeros. OUT_DIR gets
- `results.json`: COCO results (image_id, category_id, score, XYWH bbox, compressed-RLE segmentation);
- `images.json`: {"source", "checkpoint", "images": [{"id", "file_name", "frame_index", "height", "width"}],
  "categories": [{"id", "name"}]}; the image id of a frame is its position in frame order (0, 1, ...);
- `overlays/<name>.png`: each frame with its detections above `--overlay-thresh` (masks coloured per
  instance, boxes, class names and scores); <name> is the frame's whole file name (`a.jpg` → `a.jpg.png`, so
  `a.jpg` and `a.png` get one overlay each) or `<video stem>_<t, 6 digits>` for a video file;
- `overlay.mp4` (a video input): the overlays as a video at the input's frame rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml

from model.data import resized_shape
from model.evaluate import EvaluateParams, Final, model_from_final, pad_batch, read_final, to_coco_results
from model.network import Detections, TwoStreamCondInst
from pipeline.io import atomic_dir, write_bytes_atomic
from pipeline.flow import FlowParams, PairEstimator, encode_video, make_estimator, video_flow
from pipeline.io import params_from_json, setup_logging, write_json_atomic
from pipeline.progress import progress_bar
from pipeline.ytvis import read_image

log = logging.getLogger("mowis.predict")
# The default config, whose evaluate section (method §6) is the fallback when a checkpoint was never evaluated.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Instance colours of the overlays (RGB), cycled in detection order (highest score first).
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190)], np.uint8)
MASK_ALPHA = 0.5


@dataclass(frozen=True)
class Frame:
    """One input frame: (H, W, 3) uint8 RGB, its name (file name or '<video>:<t>') and position t."""

    rgb: np.ndarray
    name: str
    index: int


# --- input ------------------------------------------------------------------------------------------------

def frame_files(folder: Path) -> list[Path]:
    """The image files of `folder` in sorted name order; an empty folder raises naming it."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no frames (image files ending in {', '.join(IMAGE_SUFFIXES)})")
    return files


def read_folder(folder: Path) -> Iterator[Frame]:
    """Frames of a folder in sorted name order; a missing, truncated or unreadable file, or a size change, is an
    error naming the file and the frame (pipeline.ytvis.read_image, the project's one image reader)."""
    shape = None
    for t, path in enumerate(frame_files(folder)):
        rgb = read_image(path, f"frame {t}")
        if shape is not None and rgb.shape != shape:
            raise ValueError(f"{path}: frame {t} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame "
                             f"{shape[1]}x{shape[0]}; all frames of one input must have one size")
        shape = rgb.shape
        yield Frame(rgb, path.name, t)


def read_video(path: Path) -> Iterator[Frame]:
    """Frames of a video file decoded by cv2.VideoCapture; an unopenable or empty video raises naming it."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open this video file (cv2.VideoCapture); is it a video?")
    try:
        t = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(np.ascontiguousarray(bgr[..., ::-1]), f"{path.name}:{t:06d}", t)
            t += 1
        if t == 0:
            raise ValueError(f"{path}: the video has no readable frames")
    finally:
        capture.release()


def open_input(path: Path) -> tuple[Iterator[Frame], int | None]:
    """The frames of a folder or a video file, and their count when known up front (for the progress bar)."""
    if path.is_dir():
        return read_folder(path), len(frame_files(path))
    if path.is_file():
        capture = cv2.VideoCapture(str(path))
        opened, count = capture.isOpened(), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        if not opened:
            raise ValueError(f"{path}: cannot open this video file (cv2.VideoCapture); is it a video?")
        return read_video(path), (count or None)
    raise FileNotFoundError(f"{path}: no such folder of frames or video file")


def chunks_with_context(frames: Iterator[Frame], size: int) -> Iterator[tuple[list[Frame], Frame | None,
                                                                            Frame | None]]:
    """Consecutive chunks of `size` frames with the frame before the chunk and the frame after it (None at
    the ends): all the flow of a chunk needs, without holding the whole video in memory."""
    before: Frame | None = None
    chunk: list[Frame] = []
    for frame in frames:
        if len(chunk) == size:
            yield chunk, before, frame
            before, chunk = chunk[-1], []
        chunk.append(frame)
    if chunk:
        yield chunk, before, None


def chunk_flow(chunk: list[Frame], before: Frame | None, after: Frame | None,
               estimate: PairEstimator) -> np.ndarray:
    """(B, H, W, 3) uint8 RGB-encoded flow of a chunk, equal to `video_flow` of the whole input restricted to
    it: with a next frame F(t→t+1); the input's last frame −F(T−1→T−2); a one-frame input zeros."""
    rgb = np.stack([f.rgb for f in chunk])  # (B, H, W, 3)
    if after is not None:
        flows = video_flow(np.concatenate([rgb, after.rgb[None]]), estimate)[:-1]
    elif before is not None:
        flows = video_flow(np.concatenate([before.rgb[None], rgb]), estimate)[1:]
    else:
        flows = video_flow(rgb, estimate)
    return encode_video(flows)


# --- output -----------------------------------------------------------------------------------------------

def blend_masks(rgb: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB with masks (D, H, W) bool blended in, instance k in colour PALETTE[k mod 10]."""
    out = rgb.astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = (1 - MASK_ALPHA) * out[m] + MASK_ALPHA * PALETTE[k % len(PALETTE)].astype(np.float32)
    return np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))


def draw_overlay(rgb: np.ndarray, det: Detections, class_names: list[str], min_score: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the detections scoring at least `min_score`: each mask blended in its
    instance colour, its box, and '<class> <score>' above the box."""
    keep = [i for i, s in enumerate(det.scores.tolist()) if s >= min_score]
    out = blend_masks(rgb, det.masks.cpu().numpy()[keep])
    scale = max(0.3, min(rgb.shape[:2]) / 600)
    for k, i in enumerate(keep):
        colour = tuple(int(c) for c in PALETTE[k % len(PALETTE)])
        x1, y1, x2, y2 = (int(round(v)) for v in det.boxes_xyxy[i].tolist())
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, 1)
        label = f"{class_names[int(det.classes[i])]} {float(det.scores[i]):.2f}"
        cv2.putText(out, label, (x1, max(y1 - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return out


def overlay_name(frame: Frame, video: bool) -> str:
    """overlays/ file name of a frame: the frame's file name with '.png' added (one overlay per file, whatever
    the extensions), or '<video stem>_<t, 6 digits>.png' for a video."""
    return f"{Path(frame.name.split(':')[0]).stem}_{frame.index:06d}.png" if video else f"{frame.name}.png"


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 RGB as PNG through a temporary file and a rename."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # RGB -> BGR
    if not ok:
        raise ValueError(f"{path}: could not encode the overlay as PNG")
    write_bytes_atomic(path, data.tobytes())


# --- the loop ---------------------------------------------------------------------------------------------

def reads_flow(model: TwoStreamCondInst) -> bool:
    """Whether the network reads flow at inference (a flow FPN exists: two-stream with motion used)."""
    return model.fpn_flow is not None


def predict_frames(model: TwoStreamCondInst, frames: Iterator[Frame], estimate: PairEstimator | None,
                   params: EvaluateParams, device: str, batch_size: int,
                   total: int | None = None) -> Iterator[tuple[Frame, Detections]]:
    """Detections of every frame at its own size, in frame order; flow from `estimate` when not None."""
    progress = progress_bar(total, "predict", unit="frame")
    for chunk, before, after in chunks_with_context(frames, batch_size):
        flows = chunk_flow(chunk, before, after, estimate) if estimate is not None else [None] * len(chunk)
        items = []
        for frame, flow in zip(chunk, flows):
            height, width = frame.rgb.shape[:2]
            h, w = resized_shape(height, width, params.min_size, params.max_size)
            items.append({"image": cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_LINEAR),
                          "flow": None if flow is None else cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR),
                          "orig_hw": (height, width), "video_id": 0, "frame_index": frame.index})
        batch = pad_batch(items)
        batch_flows = batch["flows"].to(device) if batch["flows"] is not None else None
        dets = model.predict(batch["images"].to(device), batch_flows, batch["image_sizes"], batch["output_sizes"],
                             params.score_thresh, params.nms_thresh, params.topk_per_level, params.max_dets,
                             params.mask_thresh)
        yield from zip(chunk, dets)
        progress.update(len(chunk))
    progress.close()


def load_checkpoint(path: Path, device: str) -> tuple[TwoStreamCondInst, Final]:
    """The trained network and the checked contents of a `final.pt`; a wrong file raises naming it
    (model.evaluate.read_final)."""
    final = read_final(path)
    return model_from_final(final, path, device), final


def video_fps(path: Path) -> float:
    """Frames per second of a video file (25 where the container does not say)."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return fps if fps and fps > 0 else 25.0


class OverlayVideo:
    """The overlays of a video input as an mp4 beside the frames: written to a temporary file, renamed when
    every frame is in; nothing is left when prediction fails. With fps 0 (a folder input) it writes nothing."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps, None
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")

    def add(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                          (rgb.shape[1], rgb.shape[0]))
            if not self.writer.isOpened():
                raise OSError(f"{self.tmp}: OpenCV cannot write an mp4 video here")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def __enter__(self) -> "OverlayVideo":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.writer is not None:
            self.writer.release()
            if kind is None:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


def evaluated_settings(checkpoint: Path) -> Path:
    """Where the workflow's evaluation of `<results>/train/<exp>/final.pt` recorded its evaluate section:
    `<results>/eval/<exp>/metrics.json`."""
    return checkpoint.parent.parent.parent / "eval" / checkpoint.parent.name / "metrics.json"


def inference_params(checkpoint: Path, final: Final) -> tuple[EvaluateParams, str]:
    """The evaluate section for `final` (and where it came from): the one its evaluation used, else the
    method's inference settings (§6) at the largest training size."""
    metrics = evaluated_settings(checkpoint)
    if metrics.is_file():
        recorded = json.loads(metrics.read_text()).get("evaluate_params")
        if isinstance(recorded, dict):
            return params_from_json(EvaluateParams, json.dumps(recorded), f"{metrics}: evaluate_params"), str(metrics)
    train = final.train_params or {}
    if not train.get("min_sizes") or not train.get("max_size"):
        raise ValueError(f"{checkpoint}: no evaluation recorded at {metrics} and no training sizes in the file: "
                         f"pass --params (the evaluate config section as JSON)")
    defaults = yaml.safe_load(DEFAULT_CONFIG.read_text())["evaluate"]
    thresholds = {field.name: defaults[field.name] for field in fields(EvaluateParams)}
    sizes = {"min_size": max(train["min_sizes"]), "max_size": train["max_size"]}
    return (EvaluateParams(**{**thresholds, **sizes}),
            f"the method's settings ({DEFAULT_CONFIG}'s evaluate section) at {checkpoint}'s training size")


def run(input_path: Path, checkpoint: Path, params: EvaluateParams | None, flow_params: FlowParams | None,
        out: Path, device: str, batch_size: int, overlay_thresh: float) -> dict[str, Any]:
    """Predict every frame of `input_path`, write results.json, images.json and overlays/ (and, for a video
    file, overlay.mp4) under `out`; returns the images.json content. Settings left None come with the
    checkpoint: the flow section it was trained with, the evaluate section it was evaluated with."""
    model, final = load_checkpoint(checkpoint, device)
    category_ids, class_names = final.category_ids, final.category_names
    if params is None:
        params, source = inference_params(checkpoint, final)
        log.info("inference settings from %s: %s", source, params)
    estimate = None
    if reads_flow(model):
        if flow_params is None and final.flow_params is None:
            raise ValueError(f"{checkpoint}: a two-stream model reads flow, and this file does not say which "
                             f"flow it was trained with; pass --flow-params (the flow config section as JSON)")
        flow_params = flow_params or FlowParams.from_json(json.dumps(final.flow_params), f"{checkpoint}: flow_params")
        estimate = make_estimator(flow_params, device)
    frames, total = open_input(input_path)
    video = input_path.is_file()
    made_out = not out.exists()
    results: list[dict[str, Any]] = []
    images = []
    movie = OverlayVideo(out / "overlay.mp4", video_fps(input_path) if video else 0.0)
    try:  # overlays go to a temporary folder renamed when every frame is done: a failed run leaves none
        with atomic_dir(out / "overlays") as overlays, movie:
            for frame, det in predict_frames(model, frames, estimate, params, device, batch_size, total):
                results.extend(to_coco_results(det, frame.index, category_ids))
                height, width = frame.rgb.shape[:2]
                images.append({"id": frame.index, "file_name": frame.name, "frame_index": frame.index,
                               "height": height, "width": width})
                drawn = draw_overlay(frame.rgb, det, class_names, overlay_thresh)
                write_png_atomic(overlays / overlay_name(frame, video), drawn)
                if video:
                    movie.add(drawn)
    except BaseException:
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    info = {"source": str(input_path), "checkpoint": str(checkpoint), "images": images,
            "categories": [{"id": c, "name": n} for c, n in zip(category_ids, class_names)]}
    write_json_atomic(out / "results.json", results, indent=None)
    write_json_atomic(out / "images.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    """CLI: masks and overlays for a folder of frames or a video file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, type=Path, help="a folder of frames or a video file")
    ap.add_argument("--checkpoint", required=True, type=Path, help="results/train/<exp>/final.pt")
    ap.add_argument("--params", help="the evaluate config section (JSON); default: the one the checkpoint's "
                                     "evaluation used (results/eval/<exp>/metrics.json), else the method's")
    ap.add_argument("--flow-params", help="the flow config section (JSON); default: the one the checkpoint was "
                                          "trained with")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--batch-size", type=int, default=4, help="frames per forward pass")
    ap.add_argument("--overlay-thresh", type=float, default=0.3, help="lowest score drawn on the overlays")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = ap.parse_args(argv)
    log = setup_logging()
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    params = params_from_json(EvaluateParams, args.params, "--params (config section evaluate)") if args.params else None
    flow_params = (FlowParams.from_json(args.flow_params, "--flow-params (config section flow)")
                   if args.flow_params else None)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    info = run(args.input, args.checkpoint, params, flow_params, args.out, device, args.batch_size,
               args.overlay_thresh)
    log.info("%d frames of %s: results.json, images.json and overlays/ in %s", len(info["images"]),
             args.input, args.out)


if __name__ == "__main__":
    main()
