"""Optical-flow stage (method §2): per shard of videos, flow between consecutive frames, RGB-encoded into Zarr.

Three estimators behind one call signature, `(frames_t, frames_t1) (B, H, W, 3) uint8 RGB -> (B, H, W, 2)
float32 flow F(t -> t+1)` in pixels, u right, v down: `gma` (the official network, pipeline.gma, on CUDA
when present), `raft` (torchvision's RAFT small or large, on CUDA when present) and `dis` (OpenCV DIS on
grey frames, CPU, deterministic). `video_flow` applies the method's rules for the last frame
(-F(t -> t-1)) and one-frame videos (zeros). A fourth source, `gt`, is no estimator: the synthetic
dataset's own ground-truth flow (`GroundTruthFlow`, the oracle: the upper bound of what flow can do),
encoded and stored exactly like estimated flow; a dataset without `flow_gt/` (real YouTube-VIS) is an error.

Store, one per shard (docs/design.md "Stores"): a Zarr v3 group with one uint8 array (T, H, W, 3) per
video named str(video_id), one shard per video (one file) holding chunks of one frame, Zstd: a video is 7
inodes (its zarr.json, the shard, 5 folders) whatever its length, where one file per frame took 4 T + 3.
Group attributes `estimator`, `params` (the flow section), `checkpoint_sha256`, `iters`, `dtype`, `videos`,
`encoding`, and `content_sha256` (the digest of its arrays, pipeline.identity); each array's attribute
`scale` holds its frames' normalisation divisors (T,), so the flow in pixels is recoverable
(flow_codec.rgb_to_flow). It is written into a temporary folder and renamed when complete; `open_flow_store`
refuses a store made with other settings. The frames of a video are encoded in a pool of the job's
--threads (`write_shard`), with the same bytes for any thread count.

CLI (rule `flow`): python -m pipeline.flow --root R --manifest results/manifest.json --shard K --params JSON
  --out results/flow/shard_K.zarr --log-json logs/flow/shard_K.json [--num-videos N]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import zarr

from pipeline.flow_codec import encode_flow
from pipeline.identity import DIGEST_ATTR, store_digest
from pipeline.io import atomic_dir, params_from_json, setup_logging, write_json_atomic
from pipeline.shards import videos_of_shard
from pipeline.manifest import load_manifest
from pipeline.progress import progress_bar
from pipeline.ytvis import FRAMES_DIR, Video, read_frame

EstimatorName = Literal["gma", "raft", "dis", "gt"]
GmaDtype = Literal["float32", "bfloat16", "float16"]
DisPreset = Literal["ultrafast", "fast", "medium"]
RaftModel = Literal["small", "large"]

ENCODING = "baker-colour-wheel (GMA flow_viz), per-frame max radius + 1e-5"
STORE_FORMAT = 2  # bump when the store layout changes; readers refuse other versions (2: one shard per video)
ZSTD_LEVEL = 3

# Where the official GMA checkpoints live (github.com/zacjiang/GMA, branch main, folder checkpoints/).
GMA_REPOSITORY = "https://github.com/zacjiang/GMA"
GMA_CHECKPOINTS = ("gma-sintel.pth", "gma-chairs.pth", "gma-things.pth", "gma-kitti.pth")

PairEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
GT_DIR = "flow_gt"  # pipeline.synthetic writes <root>/flow_gt/<video folder>.npy, (T-1, H, W, 2) float32
RAFT_STRIDE = 8  # RAFT's feature stride: its input sides must be multiples of 8


# --- params ---------------------------------------------------------------------------------------------

def _check_choice(value: Any, choices: type, field: str) -> None:
    """Raise ValueError naming the config field unless value is one of the Literal's choices."""
    if value not in get_args(choices):
        raise ValueError(f"config {field}: expected one of {list(get_args(choices))}, got {value!r}")


@dataclass(frozen=True)
class GmaParams:
    """flow.gma: the checkpoint file, refinement iterations, the autocast dtype (float32 = none), and whether CUDA
    matmuls and convolutions may use TF32 (off: strict float32, until benchmarks/gpu_check_gma.py has shown
    on a GPU that it leaves the flow unchanged)."""
    checkpoint: str
    iters: int
    dtype: GmaDtype
    tf32: bool = False

    def __post_init__(self) -> None:
        _check_choice(self.dtype, GmaDtype, "flow.gma.dtype")
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"config flow.gma.iters: expected an integer >= 1, got {self.iters!r}")
        if not isinstance(self.tf32, bool):
            raise ValueError(f"config flow.gma.tf32: expected true or false, got {self.tf32!r}")


@dataclass(frozen=True)
class DisParams:
    """flow.dis: the OpenCV DIS preset."""
    preset: DisPreset

    def __post_init__(self) -> None:
        _check_choice(self.preset, DisPreset, "flow.dis.preset")


@dataclass(frozen=True)
class RaftParams:
    """flow.raft: torchvision's RAFT variant, its weights (a name of torchvision's weights enum for that
    variant, e.g. C_T_SKHT_V2, or a local state-dict file) and the refinement iterations."""
    model: RaftModel
    weights: str
    iters: int

    def __post_init__(self) -> None:
        _check_choice(self.model, RaftModel, "flow.raft.model")
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"config flow.raft.iters: expected an integer >= 1, got {self.iters!r}")
        if not isinstance(self.weights, str) or not self.weights:
            raise ValueError(f"config flow.raft.weights: expected a weights name or a file path, got {self.weights!r}")


@dataclass(frozen=True)
class FlowParams:
    """The `flow` config section: which estimator, videos per shard, and each estimator's settings."""
    estimator: EstimatorName
    shard_size: int
    gma: GmaParams
    raft: RaftParams
    dis: DisParams

    def __post_init__(self) -> None:
        _check_choice(self.estimator, EstimatorName, "flow.estimator")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"config flow.shard_size: expected an integer >= 1, got {self.shard_size!r}")

    @classmethod
    def from_json(cls, text: str, where: str) -> FlowParams:
        """Build from the rule's canonical JSON of the flow section; unknown or missing keys name `where`."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
        top = params_from_json(_Top, json.dumps(raw), where)
        return cls(estimator=top.estimator, shard_size=top.shard_size,
                   gma=params_from_json(GmaParams, json.dumps(top.gma), f"{where}: flow.gma"),
                   raft=params_from_json(RaftParams, json.dumps(top.raft), f"{where}: flow.raft"),
                   dis=params_from_json(DisParams, json.dumps(top.dis), f"{where}: flow.dis"))

    def as_dict(self) -> dict[str, Any]:
        """The section as plain JSON types (what a store records in its `params` attribute)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Top:
    """The flow section with its subsections still raw (for key checking only)."""
    estimator: str
    shard_size: int
    gma: dict
    raft: dict
    dis: dict


# --- estimators -----------------------------------------------------------------------------------------

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _check_pairs(frames_t: np.ndarray, frames_t1: np.ndarray) -> None:
    """Both (B, H, W, 3) uint8 of the same shape."""
    for name, frames in (("frames_t", frames_t), ("frames_t1", frames_t1)):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{name}: expected (B, H, W, 3) uint8 RGB, got {frames.dtype} {frames.shape}")
    if frames_t.shape != frames_t1.shape:
        raise ValueError(f"frames_t {frames_t.shape} and frames_t1 {frames_t1.shape} differ in shape")


class DisEstimator:
    """OpenCV DIS (Kroeger et al. 2016) on grey frames, CPU; the same input always gives the same flow."""

    def __init__(self, preset: DisPreset) -> None:
        _check_choice(preset, DisPreset, "flow.dis.preset")
        self.preset = preset

    def __call__(self, frames_t: np.ndarray, frames_t1: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB pairs -> (B, H, W, 2) float32 flow F(t -> t+1)."""
        _check_pairs(frames_t, frames_t1)
        dis = cv2.DISOpticalFlow.create(DIS_PRESETS[self.preset])  # fresh per call: no state carried over
        out = np.empty(frames_t.shape[:3] + (2,), np.float32)
        for b in range(frames_t.shape[0]):
            grey_t = cv2.cvtColor(frames_t[b], cv2.COLOR_RGB2GRAY)
            grey_t1 = cv2.cvtColor(frames_t1[b], cv2.COLOR_RGB2GRAY)
            out[b] = dis.calc(grey_t, grey_t1, None)
        return out


class GmaEstimator:
    """GMA (pipeline.gma) on its model's device, `batch_size` pairs per forward pass, optional autocast and TF32."""

    def __init__(self, model: Any, iters: int, dtype: GmaDtype, batch_size: int, tf32: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"GMA batch size must be >= 1, got {batch_size}")
        self.model, self.iters, self.dtype, self.batch_size, self.tf32 = model, iters, dtype, batch_size, tf32

    def __call__(self, frames_t: np.ndarray, frames_t1: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB pairs -> (B, H, W, 2) float32 flow F(t -> t+1)."""
        from pipeline.gma import estimate_flow
        _check_pairs(frames_t, frames_t1)
        parts = [estimate_flow(self.model, frames_t[i:i + self.batch_size], frames_t1[i:i + self.batch_size],
                               iters=self.iters, dtype=self.dtype, tf32=self.tf32)
                 for i in range(0, frames_t.shape[0], self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)


def missing_checkpoint_message(path: str | os.PathLike) -> str:
    """What to do when the configured GMA checkpoint is absent: the file, where to get it, where to put it."""
    name = Path(path).name
    source = checkpoint_url(name) if name in GMA_CHECKPOINTS else (
        f"{GMA_REPOSITORY} (folder checkpoints/: {', '.join(GMA_CHECKPOINTS)})")
    return (f"config flow.gma.checkpoint: GMA checkpoint {path} does not exist. Download {name} from {source} "
            f"and put it at {Path(path).resolve()} (or run `snakemake gma_checkpoint` on a machine that is "
            f"online), or set flow.estimator: dis.")


def checkpoint_url(name: str) -> str:
    """Download URL of an official GMA checkpoint file name (e.g. gma-sintel.pth)."""
    if name not in GMA_CHECKPOINTS:
        raise ValueError(f"{name} is not an official GMA checkpoint; known: {', '.join(GMA_CHECKPOINTS)}")
    return f"{GMA_REPOSITORY}/raw/main/checkpoints/{name}"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def raft_inputs(frames: np.ndarray, device: Any) -> Any:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32 in [-1, 1] on `device`: torchvision's RAFT transforms
    (OpticalFlow preset: convert_image_dtype to [0, 1], then normalise with mean 0.5, std 0.5)."""
    import torch
    images = torch.as_tensor(frames).to(device).permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
    return (images / 255.0 - 0.5) / 0.5


class RaftEstimator:
    """torchvision's RAFT on its model's device, `batch_size` pairs per forward pass, `iters` refinements.

    Frames are normalised as torchvision's RAFT transforms do (`raft_inputs`), padded by edge replication
    to sides that are multiples of 8 and at least 8 * 2^levels (the coarsest correlation level 2x2; the
    split of pipeline.gma's padder), and the last refinement's flow is cropped back."""

    def __init__(self, model: Any, iters: int, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"RAFT batch size must be >= 1, got {batch_size}")
        model.eval()  # BatchNorm of the context encoder uses running statistics
        self.model, self.iters, self.batch_size = model, iters, batch_size
        self.min_size = RAFT_STRIDE * 2 ** model.corr_block.num_levels

    def __call__(self, frames_t: np.ndarray, frames_t1: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 RGB pairs -> (B, H, W, 2) float32 flow F(t -> t+1)."""
        import torch
        from pipeline.gma.estimate import pad_amounts, pad_images, unpad
        _check_pairs(frames_t, frames_t1)
        device = next(self.model.parameters()).device
        pads = pad_amounts(frames_t.shape[1], frames_t.shape[2], self.min_size)
        parts = []
        with torch.inference_mode():
            for i in range(0, frames_t.shape[0], self.batch_size):
                image1 = pad_images(raft_inputs(frames_t[i:i + self.batch_size], device), pads)
                image2 = pad_images(raft_inputs(frames_t1[i:i + self.batch_size], device), pads)
                flow = self.model(image1, image2, num_flow_updates=self.iters)[-1]  # (b, 2, H', W')
                parts.append(unpad(flow, pads).permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(parts)


def _raft_weights_enum(model: RaftModel) -> Any:
    """torchvision's weights enum of a RAFT variant."""
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights
    return {"small": Raft_Small_Weights, "large": Raft_Large_Weights}[model]


def raft_cache_path(model: RaftModel, name: str) -> Path:
    """Where torchvision's weights API looks for (and downloads) the RAFT weights `name` of `model`."""
    import torch
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_raft_weights_enum(model)[name].url)


def raft_state_dict(params: RaftParams) -> dict:
    """flow.raft.weights: a name of torchvision's weights enum (cache first, download when online; offline,
    the error names the file and where to put it) or a local state-dict file (read with weights_only)."""
    import torch
    enum = _raft_weights_enum(params.model)
    if params.weights in enum.__members__:
        weights = enum[params.weights]
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise FileNotFoundError(
                f"config flow.raft.weights = {params.weights}: could not load {weights.url} ({err}); on an "
                f"offline machine put that file at {raft_cache_path(params.model, params.weights)} (or set "
                f"flow.raft.weights to a local state-dict path)") from err
    path = Path(params.weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"config flow.raft.weights: {path} is neither a file nor a torchvision weights name of raft_"
            f"{params.model} ({', '.join(n for n in enum.__members__ if n != 'DEFAULT')}, DEFAULT)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"config flow.raft.weights: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_raft(params: RaftParams, device: str) -> Any:
    """torchvision's raft_small / raft_large with the configured weights loaded strictly, in eval mode."""
    from torchvision.models.optical_flow import raft_large, raft_small
    model = {"small": raft_small, "large": raft_large}[params.model](weights=None, progress=False)
    state = raft_state_dict(params)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"config flow.raft.weights: {params.weights} does not fit raft_{params.model}: {err}") from err
    return model.to(device).eval()


class GroundTruthFlow:
    """flow.estimator gt: the synthetic dataset's ground-truth flow (`<root>/flow_gt/<video folder>.npy`,
    written by pipeline.synthetic), the oracle that bounds what flow can do. Not a pair estimator: it
    answers per video."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.gt_dir = Path(root) / GT_DIR
        if not self.gt_dir.is_dir():
            raise FileNotFoundError(
                f"flow.estimator gt: {self.gt_dir} does not exist; only the synthetic dataset (dataset.root: "
                f"null) has ground-truth flow. Use flow.estimator dis, gma or raft for {root}.")

    def path(self, video: Video) -> Path:
        """`<gt_dir>/<folder of the video's frames>.npy` (file names are checked to stay inside the root)."""
        return self.gt_dir / f"{posixpath.dirname(video.file_names[0])}.npy"

    def forward(self, video: Video) -> np.ndarray:
        """The video's forward flows F(t -> t+1), t < T-1: (T-1, H, W, 2) float32; errors name the file."""
        path = self.path(video)
        if not path.is_file():
            raise FileNotFoundError(f"video {video.id}: ground-truth flow {path} does not exist")
        truth = np.load(path, allow_pickle=False)
        expected = (video.length - 1, video.height, video.width, 2)
        if truth.shape != expected or truth.dtype != np.float32:
            raise ValueError(f"video {video.id}: ground truth {path} is {truth.dtype} {truth.shape}, "
                             f"expected float32 {expected}")
        return truth

    def video_flow(self, video: Video) -> np.ndarray:
        """(T, H, W, 2) float32 as `video_flow` lays it out: F(t -> t+1) for t < T-1; the last frame gets
        F(T-2 -> T-1) (no backward ground truth is stored; the same constant-motion assumption as
        -F(T-1 -> T-2)); a one-frame video gets zeros."""
        if video.length == 1:
            return np.zeros((1, video.height, video.width, 2), np.float32)
        forward = self.forward(video)
        return np.concatenate([forward, forward[-1:]])


FlowSource = PairEstimator | GroundTruthFlow


def make_estimator(params: FlowParams, device: str | None = None, batch_size: int = 8,
                   root: str | os.PathLike | None = None) -> FlowSource:
    """The configured estimator. GMA loads params.gma.checkpoint strictly onto `device` (default: CUDA
    when present); a missing file raises FileNotFoundError saying where to get it and where to put it.
    RAFT loads torchvision's weights the same way; `gt` reads the ground truth of the dataset at `root`."""
    match params.estimator:
        case "gma":
            checkpoint = Path(params.gma.checkpoint)
            if not checkpoint.is_file():
                raise FileNotFoundError(missing_checkpoint_message(checkpoint))
            from pipeline.gma import load_gma
            model = load_gma(checkpoint, device=device or default_device())
            return GmaEstimator(model, params.gma.iters, params.gma.dtype, batch_size, params.gma.tf32)
        case "raft":
            return RaftEstimator(load_raft(params.raft, device or default_device()), params.raft.iters, batch_size)
        case "dis":
            return DisEstimator(params.dis.preset)
        case "gt":
            if root is None:
                raise ValueError("flow.estimator gt reads a synthetic dataset's ground-truth flow, and there is "
                                 "no dataset here (new footage has none): use dis, gma or raft")
            return GroundTruthFlow(root)


# --- per video -----------------------------------------------------------------------------------------

def video_flow(frames: np.ndarray, estimate: PairEstimator) -> np.ndarray:
    """Flow of every frame of one video (method §2): (T, H, W, 3) uint8 RGB -> (T, H, W, 2) float32.

    Frame t < T-1 gets F(t -> t+1); the last frame gets -F(T-1 -> T-2); a one-frame video gets zeros.
    All T pairs go to `estimate` in one call (it batches as it likes)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video_flow: expected frames (T, H, W, 3), got {frames.shape}")
    num_frames = frames.shape[0]
    if num_frames == 1:
        return np.zeros(frames.shape[:3] + (2,), np.float32)
    firsts = np.concatenate([frames[:-1], frames[-1:]])  # t = 0..T-2, then T-1
    seconds = np.concatenate([frames[1:], frames[-2:-1]])  # t+1 = 1..T-1, then T-2
    flows = estimate(firsts, seconds)  # (T, H, W, 2)
    if flows.shape != frames.shape[:3] + (2,):
        raise ValueError(f"estimator returned {flows.shape}, expected {frames.shape[:3] + (2,)}")
    flows[-1] = -flows[-1]
    return flows


def flows_of(video: Video, frames: np.ndarray, source: FlowSource) -> np.ndarray:
    """(T, H, W, 2) float32 flow of one video: the stored ground truth for `gt`, else `video_flow`."""
    if isinstance(source, GroundTruthFlow):
        return source.video_flow(video)
    return video_flow(frames, source)


def encode_video(flows: np.ndarray, pool: Executor | None = None) -> np.ndarray:
    """(T, H, W, 2) float flow -> (T, H, W, 3) uint8, each frame normalised on its own (flow_to_rgb); the
    frames are encoded in `pool` when given (numpy releases the GIL), the result is the same either way."""
    return encode_video_scales(flows, pool)[0]


def encode_video_scales(flows: np.ndarray, pool: Executor | None = None) -> tuple[np.ndarray, list[float]]:
    """encode_video's (T, H, W, 3) uint8 colours and each frame's divisor (flow_scale), computed once."""
    frames = pool.map(encode_flow, flows) if pool is not None else map(encode_flow, flows)
    rgb = np.empty(flows.shape[:-1] + (3,), np.uint8)
    scales = []
    for t, (frame, scale) in enumerate(frames):
        rgb[t] = frame
        scales.append(float(scale))
    return rgb, scales


def read_frames(root: str | os.PathLike, video: Video) -> np.ndarray:
    """The video's frames as (T, H, W, 3) uint8 RGB; errors name the video id and the frame file."""
    frames = np.empty((video.length, video.height, video.width, 3), np.uint8)
    for t, name in enumerate(video.file_names):
        frames[t] = read_frame(Path(root) / FRAMES_DIR / name, video.id, t, video.height, video.width)
    return frames


# --- stores ---------------------------------------------------------------------------------------------

def store_attributes(params: FlowParams, videos: Sequence[int], checkpoint_sha256: str | None) -> dict:
    """Group attributes of a flow store made with `params` for `videos`."""
    gma = params.estimator == "gma"
    iters = {"gma": params.gma.iters, "raft": params.raft.iters}.get(params.estimator)
    return {"format": STORE_FORMAT, "encoding": ENCODING, "estimator": params.estimator,
            "params": params.as_dict(), "checkpoint_sha256": checkpoint_sha256 if gma else None,
            "iters": iters,
            "dtype": params.gma.dtype if gma else "float32", "videos": [int(v) for v in videos]}


def write_video(group: zarr.Group, video_id: int, rgb: np.ndarray) -> None:
    """Store one video's (T, H, W, 3) uint8 encoded flow as array str(video_id): one shard (file) per video,
    chunks of one frame inside, Zstd; zarr compresses the chunks concurrently in its thread pool."""
    array = group.create_array(name=str(video_id), shape=rgb.shape, dtype="uint8", chunks=(1,) + rgb.shape[1:],
                               shards=rgb.shape, compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
                               fill_value=0, config={"write_empty_chunks": True})  # no frame left out of a shard
    array[...] = rgb  # whole video in one assignment


def store_video(group: zarr.Group, video_id: int, flows: np.ndarray, encoder: Executor) -> tuple[float, float]:
    """Encode one video's (T, H, W, 2) flow in `encoder`'s threads, store it (write_video) with its per-frame
    divisors as the array's `scale` attribute; returns the seconds spent encoding and writing."""
    began = time.perf_counter()
    rgb, scales = encode_video_scales(flows, encoder)  # (T, H, W, 3), (T,) divisors
    mid = time.perf_counter()
    write_video(group, video_id, rgb)
    group[str(video_id)].attrs["scale"] = scales
    return mid - began, time.perf_counter() - mid


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete temporary folders a killed job left beside `out` (pipeline.io.atomic_dir names them .<name>.*.tmp)."""
    stale = sorted(out.parent.glob(f".{out.name}.*.tmp")) if out.parent.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


class FlowStoreMismatch(ValueError):
    """A flow store made with settings other than the expected ones."""


def open_flow_store(path: str | os.PathLike, expected: FlowParams, videos: Sequence[int] | None = None,
                    checkpoint_sha256: str | None = None) -> zarr.Group:
    """Open a flow store read-only after checking it was made with `expected` (and for `videos`, and with
    the checkpoint `checkpoint_sha256` when given); any difference raises FlowStoreMismatch."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no flow store here (run rule flow for this shard)")
    group = zarr.open_group(path, mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    fix = f"; delete {path} and rerun rule flow for this shard"
    if attrs.get("format") != STORE_FORMAT:
        raise FlowStoreMismatch(f"{path}: store format {attrs.get('format')!r}, this code reads {STORE_FORMAT}{fix}")
    diffs = _dict_diff(attrs.get("params"), expected.as_dict(), "flow")
    if diffs:
        raise FlowStoreMismatch(f"{path}: made with other flow settings: {'; '.join(diffs)}{fix}")
    if videos is not None and [int(v) for v in videos] != attrs.get("videos"):
        raise FlowStoreMismatch(f"{path}: holds videos {attrs.get('videos')}, expected {list(videos)}{fix}")
    if checkpoint_sha256 is not None and attrs.get("checkpoint_sha256") != checkpoint_sha256:
        raise FlowStoreMismatch(f"{path}: made with GMA checkpoint sha256 {attrs.get('checkpoint_sha256')}, "
                                f"the configured file has {checkpoint_sha256}{fix}")
    missing = [v for v in attrs["videos"] if str(v) not in group]
    if missing:
        raise FlowStoreMismatch(f"{path}: incomplete, no arrays for videos {missing[:10]}{fix}")
    return group


def recorded_params(path: str | os.PathLike) -> FlowParams:
    """The flow settings a flow store records in its `params` attribute (FileNotFoundError when absent)."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no flow store here (run rule flow for this shard)")
    attrs = dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)
    if not isinstance(attrs.get("params"), dict):
        raise FlowStoreMismatch(f"{path}: the store has no flow 'params' attribute (attributes {sorted(attrs)}); "
                                f"delete it and rerun rule flow for this shard")
    return FlowParams.from_json(json.dumps(attrs["params"]), f"{path}: attribute params")


def open_recorded_flow_store(path: str | os.PathLike, shard_size: int, user: str) -> zarr.Group:
    """A flow store opened with the flow settings it records (checked by `open_flow_store`), refused when it was
    made with another flow.shard_size than `shard_size`, the one `user` (e.g. the frame index) was built with."""
    params = recorded_params(path)
    if params.shard_size != shard_size:
        raise FlowStoreMismatch(f"{path}: made with flow.shard_size {params.shard_size}, {user} was built with "
                                f"{shard_size}; rerun rules flow, affinity and frame_index")
    return open_flow_store(path, params)


def _dict_diff(found: Any, expected: Any, where: str) -> list[str]:
    """'key: store X, expected Y' for every leaf that differs between two nested dicts."""
    if isinstance(found, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(found) | set(expected)):
            out += _dict_diff(found.get(key, "<absent>"), expected.get(key, "<absent>"), f"{where}.{key}")
        return out
    return [] if found == expected else [f"{where}: store {found!r}, expected {expected!r}"]


# --- one shard ------------------------------------------------------------------------------------------

@dataclass
class ShardTimes:
    """Seconds per step of a shard job; decode, encode and write run in threads beside the estimator."""
    decode: float = 0.0
    estimate: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    wall: float = 0.0


def write_shard(out: str | os.PathLike, root: str | os.PathLike, videos: Sequence[Video],
                estimate: FlowSource, attributes: dict, progress: bool = True, threads: int = 1) -> ShardTimes:
    """Compute and store the encoded flow of `videos` into a new store at `out`, atomically, with `attributes`
    and the content digest of what it wrote (pipeline.identity.DIGEST_ATTR).

    While the estimator works on video i, one thread decodes video i+1 and another hands video i-1 to a
    pool of `threads` threads that encode its frames (numpy, OpenCV and Zstd release the GIL) before zarr
    compresses and writes them; the store's bytes do not depend on `threads`."""
    if threads < 1:
        raise ValueError(f"write_shard: threads must be >= 1, got {threads}")
    out = Path(out)
    times = ShardTimes()
    start = time.perf_counter()
    remove_stale_temps(out)

    def load(video: Video) -> np.ndarray:
        began = time.perf_counter()
        frames = read_frames(root, video)
        times.decode += time.perf_counter() - began
        return frames

    def store(group: zarr.Group, video_id: int, flows: np.ndarray) -> None:
        encode, write = store_video(group, video_id, flows, encoder)
        times.encode += encode
        times.write += write

    # the pools are shut down (waiting for their tasks) before atomic_dir commits or removes the folder
    # (the writer's tasks use the encoder pool, so it closes after them)
    with (atomic_dir(out) as tmp, ThreadPoolExecutor(threads, thread_name_prefix="flow-encode") as encoder,
          ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer):
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        pending: list[Future] = []
        upcoming = reader.submit(load, videos[0]) if videos else None
        for i, video in enumerate(progress_bar(len(videos), f"flow {out.name}", unit="video", disable=not progress,
                                               iterable=videos)):
            frames = upcoming.result()
            if i + 1 < len(videos):
                upcoming = reader.submit(load, videos[i + 1])
            began = time.perf_counter()
            flows = flows_of(video, frames, estimate)
            times.estimate += time.perf_counter() - began
            pending.append(writer.submit(store, group, video.id, flows))
            while len(pending) > 2:  # at most two videos of flow waiting in memory
                pending.pop(0).result()
        for future in pending:
            future.result()
        group.attrs.update(attributes | {DIGEST_ATTR: store_digest(tmp)})
    times.wall = time.perf_counter() - start
    return times


def estimator_cli(description: str | None) -> argparse.ArgumentParser:
    """Arguments shared by the CLIs that run an estimator over a dataset: --root, --manifest, --params (the
    flow section), --out, and the runtime knobs --batch-size, --device, --threads (not params: no reruns)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="dataset folder holding JPEGImages/")
    ap.add_argument("--manifest", required=True, help="the dataset's manifest (rule manifest)")
    ap.add_argument("--params", required=True, help="the flow config section as JSON")
    ap.add_argument("--out", required=True, help="what to write")
    ap.add_argument("--batch-size", type=int, default=8, help="GMA / RAFT pairs per forward pass")
    ap.add_argument("--device", help="GMA / RAFT device (default: cuda when present, else cpu)")
    ap.add_argument("--threads", type=int, help="CPU threads for OpenCV / torch")
    return ap


def estimator_from_args(args: argparse.Namespace) -> tuple[FlowParams, FlowSource]:
    """The flow params and estimator an `estimator_cli` command line asks for, with its thread count set."""
    if args.threads:
        zarr.config.set({"threading.max_workers": args.threads})  # zarr's codec pool (made on first use)
        cv2.setNumThreads(args.threads)
        import torch
        torch.set_num_threads(args.threads)
    params = FlowParams.from_json(args.params, "--params (config section flow)")
    return params, make_estimator(params, args.device, args.batch_size, root=args.root)


def main(argv: list[str] | None = None) -> None:
    """CLI of rule `flow`: one shard of videos -> one Zarr store, plus a JSON log of its speed."""
    ap = estimator_cli(__doc__)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--log-json", required=True, help="per-shard JSON log (frames, seconds, frames/s)")
    ap.add_argument("--num-videos", type=int, help="videos the workflow planned its shards for")
    args = ap.parse_args(argv)
    log = setup_logging()
    params, estimate = estimator_from_args(args)
    dataset = load_manifest(args.manifest, args.root)
    if args.num_videos is not None and len(dataset.videos) != args.num_videos:
        raise ValueError(f"{dataset.annotation_file} lists {len(dataset.videos)} videos, but the workflow planned "
                         f"its flow shards for {args.num_videos} (the JPEGImages/ folder count or "
                         f"dataset.synthetic.videos); the dataset changed since: rerun snakemake so it replans")
    shard_ids = videos_of_shard([v.id for v in dataset.videos], args.shard, params.shard_size)
    by_id = {v.id: v for v in dataset.videos}
    videos = [by_id[i] for i in shard_ids]
    sha = file_sha256(params.gma.checkpoint) if params.estimator == "gma" else None
    log.info("shard %d: %d videos, estimator %s", args.shard, len(videos), params.estimator)
    start = time.perf_counter()
    times = write_shard(args.out, args.root, videos, estimate, store_attributes(params, shard_ids, sha),
                        threads=args.threads or 1)
    seconds = time.perf_counter() - start
    frames = sum(v.length for v in videos)
    write_json_atomic(args.log_json, {
        "shard": args.shard, "videos": len(videos), "frames": frames, "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 3) if seconds > 0 else None, "estimator": params.estimator,
        "steps_seconds": {k: round(v, 3) for k, v in dataclasses.asdict(times).items()}})
    log.info("shard %d: %d frames in %.1f s (%.1f frames/s)", args.shard, frames, seconds, frames / seconds)


if __name__ == "__main__":
    main()
