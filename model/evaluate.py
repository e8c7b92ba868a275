"""Evaluation (method §6): inference over the train_val frames, COCO results, and COCO AP for masks and boxes.

`python -m model.evaluate` reads a trained experiment's `final.pt`, runs it on every frame of the
train_val index (flow from the flow stores, never recomputed), writes the detections as a COCO results
file (compressed-RLE masks, XYWH boxes, scores) and scores them with pycocotools against
`train_val_coco.json`: AP, AP50, AP75, APs, APm, APl for `segm` and `bbox`, and per-class AP, into
`metrics.json`.

The masks are thresholded on the model's device; from a GPU only the positions where their column-major
pixels change come to the host (mask_runs), on the CPU OpenCV lays them out for pycocotools (fortran_masks);
one background thread RLE-encodes them while the next batch is predicted and streams the results to a temporary
file (ResultsFile), renamed once scored: no result list grows in memory during inference, and an interrupted
run leaves no results file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import h5py
import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from model.coco_eval import BACKENDS, NO_MASKS, evaluate_results, has_masks, iou_types, load_coco, unscored
from model.data import ShardStores, pad_images, padded_size, resized_shape
from model.network import Detections, ModelParams, TwoStreamCondInst
from pipeline.io import atomic_file, params_from_json, setup_logging, write_json_atomic
from pipeline.progress import progress_bar
from pipeline.torch_files import TorchFileError, as_state_dict, describe_mismatch, load_torch_file
from pipeline.ytvis import read_frame

log = logging.getLogger("mowis.evaluate")


@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` config section (method §6 inference settings)."""

    min_size: int  # test short side (800 in the paper)
    max_size: int  # long-side cap (1333)
    score_thresh: float  # keep cls·ctr above this (0.05)
    nms_thresh: float  # class-aware NMS IoU (0.6)
    topk_per_level: int  # candidates per FPN level before NMS (1000)
    max_dets: int  # detections per image (100)
    mask_thresh: float  # mask probability threshold (0.5)


class EvalFrames(Dataset):
    """Frames of a split index, resized for testing, with their RGB flow (none when the model takes none); the
    stored flow is read through model.data.ShardStores (checked stores, no silent zeros)."""

    def __init__(self, index_path: Path, frames_dir: Path, flow_dir: Path | None, min_size: int, max_size: int):
        self.index_path, self.frames_dir, self.flow_dir = index_path, frames_dir, flow_dir
        self.min_size, self.max_size = min_size, max_size
        with h5py.File(index_path, "r") as f:
            self.video_id = f["video_id"][:]
            self.frame_index = f["frame_index"][:]
            self.shard = f["shard"][:]
            self.height, self.width = f["height"][:], f["width"][:]
            self.file_name = [n.decode() for n in f["file_name"][:]]
        self.stores = ShardStores(index_path, flow_dir, None) if flow_dir is not None else None

    def __len__(self) -> int:
        """Frames in the split."""
        return len(self.file_name)

    def __getitem__(self, row: int) -> dict[str, Any]:
        """Resized image and flow (h, w, 3) uint8 with the original size and the frame's identity."""
        height, width = int(self.height[row]), int(self.width[row])
        video_id, t = int(self.video_id[row]), int(self.frame_index[row])
        image = read_frame(self.frames_dir / self.file_name[row], video_id, t, height, width)
        h, w = resized_shape(height, width, self.min_size, self.max_size)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        flow = None
        if self.stores is not None:
            stored = self.stores.frame("flow", int(self.shard[row]), video_id, t, None, (height, width, 3))
            flow = cv2.resize(stored, (w, h), interpolation=cv2.INTER_LINEAR)
        return {"image": image, "flow": flow, "orig_hw": (height, width), "video_id": video_id, "frame_index": t}


def pad_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack resized frames into zero-padded (N, 3, H, W) uint8 tensors, H and W multiples of 32
    (model.data's padder)."""
    sizes = [it["image"].shape[:2] for it in items]
    padded_hw = padded_size(sizes)
    images = pad_images([it["image"] for it in items], padded_hw)
    flows = pad_images([it["flow"] for it in items], padded_hw) if items[0]["flow"] is not None else None
    return {"images": images, "flows": flows, "image_sizes": [tuple(hw) for hw in sizes],
            "output_sizes": [it["orig_hw"] for it in items],
            "keys": [(it["video_id"], it["frame_index"]) for it in items]}


def column_major(masks: torch.Tensor) -> torch.Tensor:
    """(D, H, W) bool masks as (D, W, H) uint8, contiguous, on their device: each mask's column-major bytes."""
    return masks.transpose(1, 2).contiguous().view(torch.uint8)


def fortran_masks(masks: torch.Tensor) -> np.ndarray:
    """(D, H, W) bool masks on the CPU as the (H, W, D) uint8 Fortran-ordered array pycocotools.mask.encode
    reads, transposed by OpenCV (≈3× faster than torch's or numpy's strided copy; benchmarks/evaluate.py)."""
    d, h, w = masks.shape
    rows = masks.contiguous().view(torch.uint8).numpy()  # (D, H, W)
    by_column = np.empty((d, w, h), np.uint8)
    for src, dst in zip(rows, by_column):
        cv2.transpose(src, dst)
    return by_column.transpose(2, 1, 0)  # (H, W, D) view of the same memory, Fortran-contiguous


@dataclass(frozen=True)
class MaskRuns:
    """Binary masks as the positions where their column-major pixels change value (a pixel before the first is
    taken as 0): what a GPU hands over instead of the masks, a few KB instead of D·H·W bytes."""

    height: int
    width: int
    count: int  # masks
    mask: np.ndarray  # (N,) int64, ascending: the mask each change belongs to
    position: np.ndarray  # (N,) int64, ascending within a mask: column-major index of the changed pixel

    def encode(self) -> list[dict[str, Any]]:
        """Compressed RLEs of the masks, as pycocotools.mask.encode makes them (run lengths alternate 0s and 1s,
        starting with 0s, compressed by pycocotools)."""
        ends = np.searchsorted(self.mask, np.arange(self.count + 1))
        area = self.height * self.width
        runs = [{"size": [self.height, self.width], "counts": np.diff(self.position[a:b], prepend=0, append=area)}
                for a, b in zip(ends[:-1], ends[1:])]
        return mask_utils.frPyObjects(runs, self.height, self.width) if runs else []


def mask_runs(masks: torch.Tensor) -> MaskRuns:
    """The changes of (D, H, W) bool masks, found on their device (thresholded masks never reach the host)."""
    d, h, w = masks.shape
    pixels = column_major(masks).view(d, h * w)  # (D, H·W)
    before = F.pad(pixels[:, :-1], (1, 0))  # each pixel's predecessor, 0 before the first
    mask, position = (pixels != before).nonzero(as_tuple=True)  # row-major order: by mask, then position
    return MaskRuns(h, w, d, mask.cpu().numpy(), position.cpu().numpy())


@dataclass(frozen=True)
class HostDetections:
    """One image's detections copied to the host, ready for RLE encoding off the main thread."""

    image_id: int
    boxes_xyxy: list[list[float]]
    scores: list[float]
    classes: list[int]
    masks: np.ndarray | MaskRuns  # (H, W, D) uint8 Fortran-ordered (fortran_masks) or, from a GPU, mask_runs


def to_host(det: Detections, image_id: int) -> HostDetections:
    """`det` on the host: boxes, scores and classes as lists; masks laid out for pycocotools' encode on the
    CPU, as their runs (found on the device) from a GPU."""
    masks = fortran_masks(det.masks) if det.masks.device.type == "cpu" else mask_runs(det.masks)
    return HostDetections(image_id, det.boxes_xyxy.cpu().tolist(), det.scores.cpu().tolist(),
                          det.classes.cpu().tolist(), masks)


def encode_masks(masks: np.ndarray | MaskRuns) -> list[dict[str, Any]]:
    """Compressed RLEs of HostDetections.masks. A Fortran buffer is encoded a mask per call: pycocotools'
    encode holds the GIL, and between calls the main thread gets it."""
    if isinstance(masks, MaskRuns):
        return masks.encode()
    return [mask_utils.encode(masks[:, :, i:i + 1])[0] for i in range(masks.shape[2])]


def coco_results(host: HostDetections, category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO results: XYWH boxes, compressed-RLE masks, dataset category ids."""
    out = []
    for box, score, cls, rle in zip(host.boxes_xyxy, host.scores, host.classes, encode_masks(host.masks)):
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": host.image_id, "category_id": int(category_ids[cls]), "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "segmentation": rle})
    return out


def to_coco_results(det: Detections, image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO results (coco_results of to_host), in the calling thread."""
    return coco_results(to_host(det, image_id), category_ids)


def read_ground_truth(path: Path) -> dict[str, Any]:
    """The image-level COCO ground truth at `path` (rule split's train_val_coco.json). No images or no
    annotations raise naming the file: an AP over no ground truth would be a made-up number."""
    try:
        gt = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun rule split") from err
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{path}: expected COCO ground truth with 'images' and 'annotations' lists; "
                         f"rerun rule split")
    if not gt["images"]:
        raise ValueError(f"{path}: no images: the train_val split is empty, there is nothing to evaluate "
                         f"(check the dataset and split.videos_per_class)")
    if not gt["annotations"]:
        raise ValueError(f"{path}: {len(gt['images'])} images but no annotations: without ground truth every "
                         f"AP would be undefined; the train_val videos have no masks")
    return gt


FINAL_EXPECTED = "a mowis final checkpoint (results/train/<exp>/final.pt, written by rule train)"


@dataclass(frozen=True)
class Final:
    """The checked contents of a final.pt: class c is category category_ids[c], named category_names[c]."""

    model: dict[str, torch.Tensor]  # state dict of TwoStreamCondInst
    params: ModelParams
    category_ids: list[int]
    category_names: list[str]
    flow_params: dict | None = None  # the flow section it was trained with (older files: None)
    train_params: dict | None = None


def read_final(checkpoint: Path) -> Final:
    """Read and check a `final.pt` (weights_only); a missing file raises FileNotFoundError, any other wrong
    file (not a torch file, a training checkpoint, a field missing or of the wrong type) TorchFileError, both
    naming the file and what it should be."""
    state = load_torch_file(checkpoint, FINAL_EXPECTED)

    def wrong(problem: str) -> TorchFileError:
        return TorchFileError(f"{checkpoint}: {problem}; expected {FINAL_EXPECTED}")

    if not isinstance(state, dict):
        raise wrong(f"holds a {type(state).__name__}, not a dict")
    missing = [k for k in ("model", "model_params", "num_classes", "category_ids") if k not in state]
    if missing:
        raise wrong(f"no {', '.join(map(repr, missing))} (it has {sorted(map(str, state))[:10]}: a training "
                    f"checkpoint or another file, not a final one; rerun rule train)")
    num_classes = state["num_classes"]
    if type(num_classes) is not int or num_classes < 1:
        raise wrong(f"num_classes is {str(num_classes)[:80]}, expected a positive integer")
    ids, names = state["category_ids"], state.get("category_names")
    if not isinstance(ids, list) or len(ids) != num_classes or any(type(c) is not int for c in ids):
        raise wrong(f"category_ids is not a list of {num_classes} integers (num_classes)")
    if names is not None and (not isinstance(names, list) or len(names) != num_classes
                              or any(type(n) is not str for n in names)):
        raise wrong(f"category_names is not a list of {num_classes} strings (num_classes)")
    if not isinstance(state["model_params"], dict):
        raise wrong(f"model_params is a {type(state['model_params']).__name__}, not the model config section")
    try:
        params = params_from_json(ModelParams, json.dumps(state["model_params"]), f"{checkpoint}: model_params")
    except (TypeError, ValueError) as err:
        raise wrong(f"model_params do not build the network ({err})") from err
    flow = state.get("flow_params")
    if flow is not None and not isinstance(flow, dict):
        raise wrong(f"flow_params is a {type(flow).__name__}, not the flow config section")
    train = state.get("train_params") if isinstance(state.get("train_params"), dict) else None
    return Final(as_state_dict(state["model"], checkpoint, FINAL_EXPECTED), params, ids,
                 names if names is not None else [str(c) for c in ids], flow, train)


def model_from_final(final: Final, checkpoint: Path, device: str) -> TwoStreamCondInst:
    """The trained network of `final` (read from `checkpoint`) on `device`, in eval mode; weights that do
    not fit the network its model_params describe raise TorchFileError listing the keys."""
    model = TwoStreamCondInst(final.params, len(final.category_ids), load_weights=False)  # final's weights follow
    mismatch = describe_mismatch(model.state_dict(), final.model)
    if mismatch is not None:
        raise TorchFileError(f"{checkpoint}: the weights under 'model' do not fit the network of its "
                             f"model_params: {mismatch}; expected {FINAL_EXPECTED}")
    model.load_state_dict(final.model)
    return model.to(device).eval()


def load_trained(checkpoint: Path, device: str) -> tuple[TwoStreamCondInst, list[int]]:
    """The trained network in eval mode and its class → dataset category id list, from `final.pt`."""
    final = read_final(checkpoint)
    return model_from_final(final, checkpoint, device), final.category_ids


class ResultsFile:
    """COCO results streamed to an open file as one JSON array, a result per line: one background thread encodes
    each image's masks and appends its results in submission order while the caller predicts the next frames;
    at most `pending` images wait (host memory stays bounded, nothing accumulates)."""

    def __init__(self, file: BinaryIO, category_ids: list[int], pending: int = 4):
        self.file, self.category_ids, self.pending = file, category_ids, pending
        self.count = 0  # results written so far (the writer thread's, exact once closed)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coco-rle")
        self._queued: deque[Future] = deque()
        file.write(b"[")

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        """Close the array after every queued image is written; on an error drop what is still queued."""
        try:
            if kind is None:
                while self._queued:
                    self._queued.popleft().result()
                self.file.write(b"\n]\n" if self.count else b"]\n")
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, host: HostDetections) -> None:
        """Queue one image's detections; waits while `pending` images are queued, and re-raises a failed write."""
        while len(self._queued) >= self.pending or (self._queued and self._queued[0].done()):
            self._queued.popleft().result()
        self._queued.append(self._pool.submit(self._write, host))

    def _write(self, host: HostDetections) -> None:
        """Encode and append one image's results (runs in the writer thread, one image at a time)."""
        for result in coco_results(host, self.category_ids):
            self.file.write(b"\n" if self.count == 0 else b",\n")
            self.file.write(json.dumps(result).encode())
            self.count += 1


def predict_split(model: TwoStreamCondInst, frames: EvalFrames, image_ids: dict[tuple[int, int], int],
                  params: EvaluateParams, device: str, batch_size: int, workers: int, out: ResultsFile) -> None:
    """Predict every frame of `frames` and stream its COCO results to `out`; `image_ids` maps (video_id,
    frame_index) to the COCO image id."""
    loader = DataLoader(frames, batch_size=batch_size, num_workers=workers, collate_fn=pad_batch)
    log.info("predicting %d frames in %d batches", len(frames), len(loader))
    for batch in progress_bar(len(loader), "evaluate", unit="batch", every=max(len(loader) // 10, 1),
                              iterable=loader):
        flows = batch["flows"].to(device) if batch["flows"] is not None else None
        dets = model.predict(batch["images"].to(device), flows, batch["image_sizes"], batch["output_sizes"],
                             params.score_thresh, params.nms_thresh, params.topk_per_level, params.max_dets,
                             params.mask_thresh)
        for key, det in zip(batch["keys"], dets):
            if key not in image_ids:
                raise KeyError(f"video {key[0]} frame {key[1]} is in the index but not in the ground truth; "
                               f"rerun rules split and frame_index")
            out.add(to_host(det, image_ids[key]))


def main(argv: list[str] | None = None) -> None:
    """CLI: evaluate one trained experiment on the train_val frames."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="results/train/<exp>/final.pt")
    ap.add_argument("--index", required=True, type=Path, help="results/index/train_val.h5")
    ap.add_argument("--gt", required=True, type=Path, help="results/split/train_val_coco.json")
    ap.add_argument("--frames", required=True, type=Path, help="<dataset root>/JPEGImages")
    ap.add_argument("--flow", required=True, type=Path, help="folder of the flow shard stores")
    ap.add_argument("--params", required=True, help="the evaluate config section (JSON)")
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--dataset", required=True, help="what the numbers are on (for the tables)")
    ap.add_argument("--out", required=True, type=Path, help="metrics.json")
    ap.add_argument("--results", required=True, type=Path, help="COCO results JSON")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None,
                    help="the job's CPU threads: torch's compute threads, and threads - 1 loader processes beside "
                         "(default: torch's threads, one loader process)")
    ap.add_argument("--workers", type=int, default=None, help="loader processes (overrides the one from --threads)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--coco-backend", choices=BACKENDS, default="pycocotools",
                    help="what computes COCO AP (evaluate.coco_backend; the same numbers, model/coco_eval.py)")
    args = ap.parse_args(argv)
    setup_logging()
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(min(args.threads, len(os.sched_getaffinity(0))))  # never more than this job's CPUs
    workers = args.workers if args.workers is not None else 1 if args.threads is None else args.threads - 1
    params = params_from_json(EvaluateParams, args.params, "evaluate")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gt = read_ground_truth(args.gt)
    log.info("ground truth %s: %d frames, %d objects; model %s on %s", args.gt, len(gt["images"]),
             len(gt["annotations"]), args.checkpoint, device)
    model, category_ids = load_trained(args.checkpoint, device)
    image_ids = {(img["video_id"], img["frame_index"]): img["id"] for img in gt["images"]}
    frames = EvalFrames(args.index, args.frames, args.flow if model.params.two_stream else None,
                        params.min_size, params.max_size)
    made_dir = not args.results.parent.exists()
    try:  # results stream into a temporary file renamed once scored: a failed run leaves none (nor a new folder)
        with atomic_file(args.results) as streamed:
            with streamed.open("wb") as f, ResultsFile(f, category_ids) as out:
                predict_split(model, frames, image_ids, params, device, args.batch_size, workers, out)
            log.info("%d detections streamed to %s; scoring them with COCOeval (%s)", out.count, streamed,
                     args.coco_backend)
            results = json.loads(streamed.read_bytes())
            coco_gt = load_coco(gt)
            metrics = {"experiment": args.experiment, "dataset": args.dataset, "checkpoint": str(args.checkpoint),
                       "backbone": model.params.backbone, "frames": len(frames),
                       "evaluate_params": json.loads(args.params), "coco_backend": args.coco_backend,
                       **{t: (evaluate_results(coco_gt, results, t, args.coco_backend) if t in iou_types(gt)
                              else unscored(coco_gt, results, NO_MASKS)) for t in ("segm", "bbox")}}
    except BaseException:
        if made_dir and args.results.parent.is_dir() and not any(args.results.parent.iterdir()):
            args.results.parent.rmdir()
        raise
    write_json_atomic(args.out, metrics)
    log.info("%s: mask AP %s, box AP %s on %d frames%s", args.experiment, metrics["segm"]["AP"],
             metrics["bbox"]["AP"], len(frames), "" if has_masks(gt) else f" ({NO_MASKS})")


if __name__ == "__main__":
    main()
