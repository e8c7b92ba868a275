"""Training data: frames, RGB flow and packed neighbour masks of one split, augmented consistently (method §3, §6).

A sample is addressed by a `SampleKey` (frame row in the index, seed, iteration, slot in the global batch):
its augmentation draws come from those numbers alone, so a frame is augmented the same way whichever
process, worker or per-rank batch size loads it. `IterationBatchSampler` cuts an endless, seeded stream of
aspect-ratio-grouped global batches into per-rank slices, so one process with batch 2b sees exactly the
frames and augmentations that two processes with batch b see together, and a resumed run continues the
same stream from its iteration count.

Augmentation order (all inputs alike): horizontal flip at the stored resolution (exact on the stride-4
grid when the width is a multiple of 4: `pipeline.affinity.hflip_packed`, `pipeline.flow_codec.hflip_flow_rgb`),
then resize of the short side to a size drawn from `min_sizes` with the long side capped at `max_size`
(image and flow bilinear, packed masks nearest on the grid: `pipeline.affinity.resize_packed`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import cv2
import h5py
import numpy as np
import torch
import zarr
from torch.utils.data import Dataset, Sampler

from model.batch import Batch
from pipeline.affinity import (frame_neighbour_valid, grid_shape, hflip_packed, open_affinity_store,
                                resize_packed, unpack_bits)
from pipeline.flow import open_recorded_flow_store
from pipeline.flow_codec import hflip_flow_rgb
from pipeline.stores import stored_frame
from pipeline.ytvis import read_frame

SIZE_DIVISIBILITY = 32  # padded batch sides are multiples of the coarsest backbone stride used by the FPN
MASK_STRIDE = 4  # the pair masks' grid

StoreKind = Literal["flow", "affinity"]


class SampleKey(NamedTuple):
    """Which frame to load and the numbers its augmentation draws are seeded from."""

    frame: int  # row of the index
    seed: int  # train.seed
    iteration: int  # 0-based training iteration
    slot: int  # position in the global batch


@dataclass
class Sample:
    """One augmented frame. h, w: the resized frame; (gh, gw) = (ceil(h/4), ceil(w/4)).

    image, flow: uint8 (h, w, 3) RGB; flow is None when flow images are not loaded.
    pair_color, pair_flow: packed uint8 (gh, gw) (bit k = neighbour k); pair_flow None when not loaded.
    boxes_xyxy: float32 (G, 4) in resized pixels, clipped to the frame, non-empty; classes: int64 (G,) in 0..K-1.
    """

    image: np.ndarray
    flow: np.ndarray | None
    pair_color: np.ndarray
    pair_flow: np.ndarray | None
    boxes_xyxy: np.ndarray
    classes: np.ndarray


class FlowFlipTable:
    """`pipeline.flow_codec.hflip_flow_rgb`, memoised per colour: the re-colouring is a function of each pixel's
    RGB alone, so a lazily filled 2^24-entry table (only touched pages take memory) turns it into a lookup.
    Same bytes as hflip_flow_rgb; about 20× faster once a video's colours are in the table."""

    def __init__(self) -> None:
        self._table: np.ndarray | None = None  # (2^24,) uint32: 0 = not computed, else 1 << 24 | flipped code

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Encoded flow (H, W, 3) uint8 -> the encoding of the mirrored flow (−u, v), columns reversed."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"FlowFlipTable: expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if self._table is None:
            self._table = np.zeros(1 << 24, dtype=np.uint32)
        # (H, W, 4) bytes B, G, R, 255 of the mirrored pixels = little-endian uint32 R << 16 | G << 8 | B | 255 << 24
        bgra = cv2.cvtColor(cv2.flip(rgb, 1), cv2.COLOR_RGB2BGRA)
        codes = bgra.view(np.uint32)[..., 0] & 0xFFFFFF  # (H, W)
        found = self._table[codes]
        missing = found == 0
        if missing.any():
            new = np.unique(codes[missing])  # (C,)
            colours = np.stack([new >> 16, (new >> 8) & 255, new & 255], axis=-1).astype(np.uint8)  # (C, 3)
            flipped = hflip_flow_rgb(colours[:, None, :])[:, 0].astype(np.uint32)  # (C, 1, 3): one column
            self._table[new] = (1 << 24) | (flipped[:, 0] << 16) | (flipped[:, 1] << 8) | flipped[:, 2]
            found = self._table[codes]
        # found as bytes B, G, R, 1 (little-endian) -> (H, W, 3) R, G, B
        return cv2.cvtColor(found.view(np.uint8).reshape(*found.shape, 4), cv2.COLOR_BGRA2RGB)


_FLIP_FLOW = FlowFlipTable()  # one per process (each loader worker fills its own)


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(h, w) with the short side `short` unless the long side would pass `max_size` (then long = max_size)."""
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def hflip_boxes(boxes_xyxy: np.ndarray, width: int) -> np.ndarray:
    """Boxes (G, 4) x1y1x2y2 of a frame `width` pixels wide, mirrored left-right: x1' = W − x2, x2' = W − x1."""
    out = boxes_xyxy.copy()
    out[:, 0] = width - boxes_xyxy[:, 2]
    out[:, 2] = width - boxes_xyxy[:, 0]
    return out


def resize_boxes(boxes_xyxy: np.ndarray, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Boxes (G, 4) scaled from an in_hw frame to out_hw, clipped to it."""
    sy, sx = out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]
    out = boxes_xyxy * np.array([sx, sy, sx, sy], dtype=np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, out_hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, out_hw[0])
    return out


def augment(image: np.ndarray, flow: np.ndarray | None, pair_color: np.ndarray, pair_flow: np.ndarray | None,
            boxes_xyxy: np.ndarray, flip: bool, out_hw: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray]:
    """Flip (if `flip`) then resize image/flow (H, W, 3) uint8, packed masks (ceil(H/4), ceil(W/4)), boxes (G, 4)."""
    height, width = image.shape[:2]
    if flip:
        image = cv2.flip(image, 1)                              # a contiguous mirror, not a negative-stride view
        flow = _FLIP_FLOW(flow) if flow is not None else None
        pair_color = hflip_packed(pair_color)
        pair_flow = hflip_packed(pair_flow) if pair_flow is not None else None
        boxes_xyxy = hflip_boxes(boxes_xyxy, width)
    if out_hw != (height, width):
        size = (out_hw[1], out_hw[0])  # cv2 takes (w, h)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        flow = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR) if flow is not None else None
        grid = grid_shape(*out_hw)
        pair_color = resize_packed(pair_color, grid)
        pair_flow = resize_packed(pair_flow, grid) if pair_flow is not None else None
    boxes_xyxy = resize_boxes(boxes_xyxy, (height, width), out_hw)
    return image, flow, pair_color, pair_flow, boxes_xyxy


class ShardStores:
    """The flow and affinity shard stores that a frame index (pipeline/index.py) points into: the one reader of
    stored frames, for training and evaluation. Stores are opened lazily, once per process (the object
    pickles), and checked: a flow store made with the index's flow.shard_size, an affinity store built for its
    shard from that flow store (pipeline.affinity.open_affinity_store). Each frame goes through
    pipeline.stores.stored_frame, so a missing or undecodable chunk is an error naming store, video and frame."""

    def __init__(self, index_path: str | os.PathLike, flow_dir: str | os.PathLike,
                 affinity_dir: str | os.PathLike | None):
        self.index_path, self.flow_dir = Path(index_path), Path(flow_dir)
        self.affinity_dir = Path(affinity_dir) if affinity_dir is not None else None
        with h5py.File(self.index_path, "r") as f:
            if "shard_size" not in f.attrs:
                raise KeyError(f"{self.index_path}: no shard_size attribute; rerun rule frame_index")
            self.shard_size = int(f.attrs["shard_size"])
        self._handles: dict | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        """Pickle without open stores; each worker opens its own."""
        return {**self.__dict__, "_handles": None, "_pid": -1}

    def _cache(self) -> dict:
        """This process's open groups and arrays."""
        if self._handles is None or self._pid != os.getpid():
            self._handles, self._pid = {"flow": {}, "affinity": {}, "arrays": {}}, os.getpid()
        return self._handles

    def _path(self, kind: StoreKind, shard: int) -> Path:
        """results/<kind>/shard_<shard>.zarr."""
        return (self.flow_dir if kind == "flow" else self.affinity_dir) / f"shard_{shard}.zarr"

    def _group(self, kind: StoreKind, shard: int) -> zarr.Group:
        """The checked flow or affinity store of shard `shard`, opened once per process."""
        groups = self._cache()[kind]
        if shard not in groups:
            path = self._path(kind, shard)
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: {kind} store of shard {shard} is missing; rerun rule {kind}")
            if kind == "flow":
                groups[shard] = open_recorded_flow_store(path, self.shard_size, f"the index {self.index_path}")
            else:
                flow_attrs = dict(self._group("flow", shard).attrs)
                groups[shard] = open_affinity_store(path, shard, flow_attrs)
        return groups[shard]

    def _array(self, kind: StoreKind, shard: int, video_id: int, name: str | None) -> zarr.Array:
        """Array of `video_id` in a shard store (`name`: 'color' or 'flow' inside an affinity video group),
        opened once per process (opening reads the array's metadata)."""
        arrays = self._cache()["arrays"]
        key = (kind, shard, video_id, name)
        if key not in arrays:
            group = self._group(kind, shard)
            try:
                node = group[str(video_id)]
                arrays[key] = node[name] if name else node
            except KeyError:
                raise KeyError(f"{self._path(kind, shard)}: no {name or 'flow'} array for video {video_id}; the "
                               f"{kind} store does not match the index {self.index_path}; rerun rules {kind} and "
                               f"frame_index") from None
        return arrays[key]

    def frame(self, kind: StoreKind, shard: int, video_id: int, t: int, name: str | None,
              shape: tuple[int, ...]) -> np.ndarray:
        """Frame t of a store array, checked against the shape the index expects: flow (H, W, 3) uint8 RGB
        (kind 'flow', name None) or packed masks (ceil(H/4), ceil(W/4)) uint8 (kind 'affinity', name
        'color' or 'flow')."""
        array = self._array(kind, shard, video_id, name)
        where = f"{self._path(kind, shard)}: video {video_id} {name or 'flow'}"
        if t >= array.shape[0] or tuple(array.shape[1:]) != shape:
            raise ValueError(f"{where} has shape {array.shape}, the index needs frame {t} of shape {shape}; "
                             f"rerun rule {kind}")
        return stored_frame(array, t, where, kind)


class FrameDataset(Dataset):
    """Frames of one split index (pipeline/index.py) with their RGB flow and packed neighbour masks.

    The h5 index and the Zarr stores (`ShardStores`) are opened lazily, once per worker process, so the object
    pickles.
    `load_flow`: read the flow image (the flow stream's input); `load_flow_pairs`: read the flow masks
    (the pairwise term's motion factor). What is not loaded becomes zeros (flow) or all-valid pairs
    (flow masks, so that B·M_color·M_flow reduces to B·M_color) in `collate`.
    """

    def __init__(self, index_path: str | os.PathLike, frames_dir: str | os.PathLike, flow_dir: str | os.PathLike,
                 affinity_dir: str | os.PathLike, min_sizes: tuple[int, ...], max_size: int, flip_prob: float,
                 load_flow: bool, load_flow_pairs: bool):
        self.index_path, self.frames_dir = Path(index_path), Path(frames_dir)
        self.flow_dir, self.affinity_dir = Path(flow_dir), Path(affinity_dir)
        self.min_sizes, self.max_size, self.flip_prob = tuple(min_sizes), max_size, flip_prob
        self.load_flow, self.load_flow_pairs = load_flow, load_flow_pairs
        with h5py.File(self.index_path, "r") as f:
            self.heights = f["height"][:]  # (F,) int32
            self.widths = f["width"][:]
            self.category_ids = f["category_ids"][:]  # (K,) int64, class c = category_ids[c]
        self._class_of_category = {int(c): i for i, c in enumerate(self.category_ids)}
        self.stores = ShardStores(self.index_path, self.flow_dir, self.affinity_dir)
        self._index: h5py.File | None = None
        self._pid = -1

    @staticmethod
    def categories(index_path: str | os.PathLike) -> tuple[list[int], list[str]]:
        """(category ids, names) of an index, sorted by id: contiguous class c is category id ids[c]."""
        with h5py.File(index_path, "r") as f:
            return [int(c) for c in f["category_ids"][:]], [n.decode() for n in f["category_names"][:]]

    def __len__(self) -> int:
        """Frames in the split."""
        return len(self.heights)

    def __getstate__(self) -> dict:
        """Pickle without the open index; each worker opens its own."""
        return {**self.__dict__, "_index": None, "_pid": -1}

    @property
    def aspect_groups(self) -> np.ndarray:
        """(F,) int: 0 for frames wider than tall (or square), 1 for taller than wide."""
        return (self.heights > self.widths).astype(np.int64)

    def _open_index(self) -> h5py.File:
        """This process's handle of the h5 index."""
        if self._index is None or self._pid != os.getpid():
            self._index, self._pid = h5py.File(self.index_path, "r"), os.getpid()
        return self._index

    def read(self, frame: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None,
                                         np.ndarray, np.ndarray]:
        """Un-augmented frame: image (H, W, 3), flow or None, packed colour/flow masks, boxes XYXY (G, 4), classes."""
        h5 = self._open_index()
        video_id, t = int(h5["video_id"][frame]), int(h5["frame_index"][frame])
        shard, height, width = int(h5["shard"][frame]), int(self.heights[frame]), int(self.widths[frame])
        image = read_frame(self.frames_dir / h5["file_name"][frame].decode(), video_id, t, height, width)
        grid = grid_shape(height, width)
        flow = self.stores.frame("flow", shard, video_id, t, None, (height, width, 3)) if self.load_flow else None
        pair_color = self.stores.frame("affinity", shard, video_id, t, "color", grid)
        pair_flow = self.stores.frame("affinity", shard, video_id, t, "flow", grid) if self.load_flow_pairs else None
        start, stop = h5["box_offsets"][frame:frame + 2]
        xywh = h5["boxes_xywh"][start:stop].reshape(-1, 4).astype(np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (G, 4) XYXY
        classes = np.array([self._class_of_category[int(c)] for c in h5["box_category_ids"][start:stop]],
                           dtype=np.int64)
        return image, flow, pair_color, pair_flow, boxes, classes

    def __getitem__(self, key: SampleKey) -> Sample:
        """The frame `key.frame` augmented by draws seeded from (seed, iteration, slot)."""
        rng = np.random.default_rng([key.seed, key.iteration, key.slot])
        flip = bool(rng.random() < self.flip_prob)
        short = int(rng.choice(self.min_sizes))
        image, flow, pair_color, pair_flow, boxes, classes = self.read(key.frame)
        out_hw = resized_shape(image.shape[0], image.shape[1], short, self.max_size)
        image, flow, pair_color, pair_flow, boxes = augment(image, flow, pair_color, pair_flow, boxes, flip, out_hw)
        keep = (boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5)
        return Sample(image, flow, pair_color, pair_flow, boxes[keep], classes[keep])


def pair_masks(packed: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bool (8, *out_hw): unpacked masks (gh, gw) AND-ed with the neighbour lying inside the (gh, gw) grid,
    zero-padded bottom/right; so no pair touches a cell outside the frame or in the padding."""
    gh, gw = packed.shape
    masks = unpack_bits(packed & frame_neighbour_valid(gh * MASK_STRIDE, gw * MASK_STRIDE, 0))  # (8, gh, gw)
    out = torch.zeros((masks.shape[0], *out_hw), dtype=torch.bool)
    out[:, :gh, :gw] = torch.from_numpy(masks)
    return out


def padded_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(H, W) of a batch of frames of `sizes` (h, w): the largest of each, rounded up to a multiple of 32."""
    height = math.ceil(max(h for h, _ in sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    width = math.ceil(max(w for _, w in sizes) / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    return height, width


def pad_images(images: list[np.ndarray], padded_hw: tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) of (h, w, 3) uint8 images placed top-left, zeros bottom/right; (H, W) = padded_hw.
    The one padder of training batches (collate) and inference batches (model.evaluate.pad_batch).
    channels_last: the tensor's memory is (N, H, W, 3) (torch.channels_last), so the images are copied row by
    row as they are, without the (h, w, 3) -> (3, h, w) transposition; same values."""
    if channels_last:
        out = torch.empty((len(images), *padded_hw, 3), dtype=torch.uint8)  # (N, H, W, 3)
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            out[i, :h, :w] = torch.from_numpy(image)
            out[i, h:] = 0
            out[i, :h, w:] = 0
        return out.permute(0, 3, 1, 2)                                 # (N, 3, H, W) view, channels_last strides
    out = torch.empty((len(images), 3, *padded_hw), dtype=torch.uint8)  # empty + zeroed padding: a zero fill
    for i, image in enumerate(images):                                # would cost as much as the copy
        h, w = image.shape[:2]
        out[i, :, :h, :w] = torch.from_numpy(image).permute(2, 0, 1)  # (h, w, 3) -> (3, h, w)
        out[i, :, h:, :] = 0
        out[i, :, :h, w:] = 0
    return out


def collate(samples: list[Sample], channels_last: bool = False) -> Batch:
    """Pad a list of samples to a common size (multiples of 32, bottom/right) into a `model.batch.Batch`;
    channels_last: images and flows in torch.channels_last memory (for a channels_last network: pad_images)."""
    sizes = [s.image.shape[:2] for s in samples]
    height, width = padded_size(sizes)
    n = len(samples)
    images = pad_images([s.image for s in samples], (height, width), channels_last)
    with_flow = samples[0].flow is not None
    if any((s.flow is not None) != with_flow for s in samples):
        raise ValueError("collate: some samples have flow images and some do not")
    # without flow images (BoxInst): one zero broadcast to (N, 3, H, W), no memory per pixel
    flows = pad_images([s.flow for s in samples], (height, width), channels_last) if with_flow else torch.zeros(
        (1, 1, 1, 1), dtype=torch.uint8).expand(n, 3, height, width)
    grid = (height // MASK_STRIDE, width // MASK_STRIDE)
    pair_color = torch.zeros((n, 8, *grid), dtype=torch.bool)
    pair_flow = torch.zeros((n, 8, *grid), dtype=torch.bool)
    for i, s in enumerate(samples):
        pair_color[i] = pair_masks(s.pair_color, grid)
        if s.pair_flow is not None:
            pair_flow[i] = pair_masks(s.pair_flow, grid)
        else:
            pair_flow[i] = pair_masks(np.full(s.pair_color.shape, 255, dtype=np.uint8), grid)
    return Batch(images=images, flows=flows, image_sizes=[tuple(hw) for hw in sizes],
                 boxes_xyxy=[torch.from_numpy(s.boxes_xyxy) for s in samples],
                 classes=[torch.from_numpy(s.classes) for s in samples],
                 pair_color=pair_color, pair_flow=pair_flow)


def grouped_batches(groups: np.ndarray, batch_size: int, seed: int):
    """Endless stream of global batches (lists of frame rows), each from one aspect group.

    Epoch e visits every frame once in the order of a permutation seeded by (seed, e); a frame joins its
    group's bucket, and a full bucket is emitted. Partial buckets carry over to the next epoch.
    """
    if len(groups) == 0:
        raise ValueError("the split index has no frames")
    buckets: dict[int, list[int]] = {}
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(groups))
        for frame, group in zip(order.tolist(), groups[order].tolist()):
            bucket = buckets.setdefault(group, [])
            bucket.append(frame)
            if len(bucket) == batch_size:
                yield bucket
                buckets[group] = []
        epoch += 1


class IterationBatchSampler(Sampler[list[SampleKey]]):
    """This rank's slice of global batches for iterations start_iter..iters−1 (for the DataLoader's batch_sampler).

    Global batch i is the same for any world size; rank r gets slots [r·b, (r+1)·b) with b = batch / world.
    """

    def __init__(self, groups: np.ndarray, global_batch: int, rank: int, world_size: int, iters: int, seed: int,
                 start_iter: int = 0):
        if global_batch % world_size:
            raise ValueError(f"train.batch_size {global_batch} is not divisible by the {world_size} processes")
        self.groups, self.global_batch, self.rank, self.world_size = groups, global_batch, rank, world_size
        self.iters, self.seed, self.start_iter = iters, seed, start_iter
        self.per_rank = global_batch // world_size

    def __len__(self) -> int:
        """Batches left to yield."""
        return max(self.iters - self.start_iter, 0)

    def __iter__(self):
        """Per-rank lists of SampleKey, one per remaining iteration."""
        stream = grouped_batches(self.groups, self.global_batch, self.seed)
        lo = self.rank * self.per_rank
        for iteration in range(self.iters):
            frames = next(stream)
            if iteration < self.start_iter:
                continue
            yield [SampleKey(frames[slot], self.seed, iteration, slot) for slot in range(lo, lo + self.per_rank)]


def worker_init(worker_id: int) -> None:
    """One OpenCV and one torch thread per loader worker (the workers are the parallelism)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
