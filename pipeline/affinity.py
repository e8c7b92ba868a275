"""Pairwise affinities (method §3): Lab-colour and flow neighbour masks on the stride-4 grid, bit-packed.

Conventions used throughout this module:
- The grid of a frame of H×W pixels has (ceil(H/4), ceil(W/4)) cells; cell (r, c) averages pixel rows
  4r..4r+3 and columns 4c..4c+3 that exist (a partial cell at the bottom or right edge averages only its
  own pixels). Its sample point, for validity, is pixel (4r+2, 4c+2), as AdelaiDet samples its masks at
  offset stride // 2 = 2.
- Neighbour k of cell (r, c) is cell (r + dy, c + dx) with (dy, dx) = NEIGHBOUR_OFFSETS[k]: the 3×3 kernel
  of dilation 2 in row-major order with the centre removed (BoxInst's "unfold without centre").
- A packed mask is uint8 (…, h, w) with bit k (value 1 << k) set iff the pair (cell, neighbour k) is
  similar and the neighbour is a valid cell. Invalid neighbours: outside the frame, or in the bottom
  `bottom_rows` pixel rows of the original frame (BoxInst removes them as unreliable; only the neighbour
  side is masked, as AdelaiDet does — the centre side is the trainer's box mask).

Colour: the pooled RGB is truncated to uint8 (AdelaiDet's `.byte()`) and converted to Lab; flow: the
pooled RGB-encoded flow is scaled to [0, 1]. M = [exp(−‖x_i − x_k‖₂ / θ) ≥ τ] per modality.

CLI (rule `affinity`), one shard of videos -> one Zarr v3 store (docs/design.md, "Stores"):
  python -m pipeline.affinity --root R --manifest results/manifest.json --shard K --flow results/flow/shard_K.zarr
    --params JSON --out results/affinity/shard_K.zarr --log-json logs/affinity/shard_K.json [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm
from zarr.codecs import ZstdCodec

from pipeline.flow import open_flow_store, recorded_params, remove_stale_temps
from pipeline.identity import DIGEST_ATTR, store_digest
from pipeline.io import atomic_dir, params_from_json, setup_logging, write_json_atomic
from pipeline.shards import videos_of_shard
from pipeline.stores import stored_frame
from pipeline.manifest import load_manifest
from pipeline.progress import progress_bar
from pipeline.ytvis import Video, YtvisDataset, read_frame

GRID_STRIDE = 4

NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0))
"""(dy, dx) on the stride-4 grid of neighbour k = 0..7: row-major {−2, 0, 2}² without the centre."""

HFLIP_NEIGHBOURS: tuple[int, ...] = tuple(NEIGHBOUR_OFFSETS.index((dy, -dx)) for dy, dx in NEIGHBOUR_OFFSETS)
"""Neighbour k of a mirrored grid is neighbour HFLIP_NEIGHBOURS[k] of the original: (dy, dx) -> (dy, −dx)."""

# Constants of skimage.color.rgb2lab (sRGB, D65, 2° observer), from the sRGB and CIE formulas.
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def _srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """Inverse sRGB companding of values in [0, 1]: ((v + 0.055) / 1.055)^2.4 above 0.04045, else v / 12.92."""
    return np.where(values > 0.04045, ((values + 0.055) / 1.055) ** 2.4, values / 12.92)


# (256,) float64: linear RGB of every uint8 level (uint8 input has only 256 values per channel).
_LINEAR_OF_UINT8 = _srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab of uint8 sRGB (H, W, 3), as skimage.color.rgb2lab computes it: float32 (H, W, 3), L in [0, 100].

    sRGB linearisation (threshold 0.04045), the sRGB→XYZ matrix, XYZ / D65 white (0.95047, 1, 1.08883),
    f(t) = t^(1/3) above 0.008856 else 7.787 t + 16/116; L = 116 f_y − 16, a = 500 (f_x − f_y),
    b = 200 (f_y − f_z). Computed in float64 and returned as float32 (a (H, W, 3) view of a channel-first array).
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_lab expects uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    linear = _LINEAR_OF_UINT8[rgb]                               # (H, W, 3) float64
    xyz = linear @ (_XYZ_FROM_RGB.T / _WHITE_D65)                # (H, W, 3), white-normalised
    f = np.cbrt(xyz)
    linear_part = xyz <= 0.008856                                # dark colours only: fix those few up
    f[linear_part] = 7.787 * xyz[linear_part] + 16.0 / 116.0
    fx, fy, fz = f.transpose(2, 0, 1)                            # (H, W) views
    lab = np.empty((3,) + rgb.shape[:2], dtype=np.float32)       # channel-first: what neighbour_masks reads
    lab[0] = 116.0 * fy - 16.0
    lab[1] = 500.0 * (fx - fy)
    lab[2] = 200.0 * (fy - fz)
    return lab.transpose(1, 2, 0)


def grid_shape(height: int, width: int) -> tuple[int, int]:
    """(h, w) = (ceil(H / 4), ceil(W / 4)) of the stride-4 grid of an H×W frame."""
    return math.ceil(height / GRID_STRIDE), math.ceil(width / GRID_STRIDE)


def pool_sum_counts(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell sums of a uint8 (H, W, 3) image over 4×4 cells, channel-first: uint16 (3, h, w), and pixel
    counts (h, w).

    Rows are summed as little-endian uint16 (h, 4w, 3). A cell's 4 pixels × 3 channels in such a row are then
    three uint64 words of four 16-bit lanes: w0 = (p0c0, p0c1, p0c2, p1c0), w1 = (p1c1, p1c2, p2c0, p2c1),
    w2 = (p2c2, p3c0, p3c1, p3c2). Shifting each lane onto its channel's lane (0, 1, 2) and adding gives the
    cell's three sums in one word: sums ≤ 16·255 < 2^16 never carry into the next lane; lane 3 collects
    leftovers (dropped), and what a shift pushes out of the word is dropped.
    """
    height, width, channels = image.shape
    if channels != 3:
        raise ValueError(f"pool_sum_counts expects (H, W, 3), got shape {image.shape}")
    h, w = grid_shape(height, width)
    if (height, width) != (h * GRID_STRIDE, w * GRID_STRIDE):       # partial cells: zero-pad to whole cells
        padded = np.zeros((h * GRID_STRIDE, w * GRID_STRIDE, channels), dtype=np.uint8)
        padded[:height, :width] = image
        image = padded
    rows = image[0::4].astype("<u2")                                 # (h, 4w, 3), sums ≤ 4·255
    rows += image[1::4]
    rows += image[2::4]
    rows += image[3::4]
    words = rows.reshape(h, 12 * w).view("<u8").reshape(h, w, 3)     # (h, w, 3 words of 4 lanes)
    w0, w1, w2 = words[..., 0], words[..., 1], words[..., 2]         # (h, w) each
    lanes = w0 + (w0 >> np.uint64(48))                               # c0: p0, p1 | c1: p0 | c2: p0
    lanes += w1 >> np.uint64(32)                                     # c0: p2 | c1: p2
    lanes += w1 << np.uint64(16)                                     # c1: p1 | c2: p1
    lanes += w2 >> np.uint64(16)                                     # c0: p3 | c1: p3 | c2: p3
    lanes += w2 << np.uint64(32)                                     # c2: p2
    sums = np.ascontiguousarray(lanes.view("<u2").reshape(h, w, 4)[..., :3].transpose(2, 0, 1))  # (3, h, w)
    row_counts = np.minimum(height - GRID_STRIDE * np.arange(h), GRID_STRIDE)
    col_counts = np.minimum(width - GRID_STRIDE * np.arange(w), GRID_STRIDE)
    counts = (row_counts[:, None] * col_counts[None, :]).astype(np.uint16)  # (h, w)
    return sums.astype(np.uint16, copy=False), counts


def pool_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """4×4 average pool of uint8 (H, W, 3), truncated to uint8 as AdelaiDet's `.byte()`: (h, w, 3) uint8 (a view
    of a channel-first array)."""
    sums, counts = pool_sum_counts(image)
    if image.shape[0] % GRID_STRIDE == 0 and image.shape[1] % GRID_STRIDE == 0:
        return (sums >> 4).astype(np.uint8).transpose(1, 2, 0)       # whole cells: // 16, without a division
    return (sums // counts).astype(np.uint8).transpose(1, 2, 0)


def pool_unit(image: np.ndarray) -> np.ndarray:
    """4×4 average pool of uint8 (H, W, 3) scaled to [0, 1]: float32 (h, w, 3) = mean / 255 (a view of a
    channel-first array)."""
    sums, counts = pool_sum_counts(image)
    return (sums.astype(np.float32) / (counts.astype(np.float32) * np.float32(255.0))).transpose(1, 2, 0)


def _overlap(offset: int, size: int) -> tuple[slice, slice]:
    """Slices (centres, neighbours) along one axis of length `size` for a neighbour at `offset`."""
    return slice(max(0, -offset), size - max(0, offset)), slice(max(0, offset), size + min(0, offset))


@functools.lru_cache(maxsize=64)
def pair_threshold(theta: float, tau: float) -> np.float32:
    """The largest float32 squared distance s whose similarity passes: np.exp(−np.sqrt(s) / θ) ≥ τ in float32.

    The mask bit is [exp(−√s / θ) ≥ τ] with s = ‖Δf‖² in float32; √, ÷θ and the comparison are monotone and
    float32 exp is monotone near the threshold (checked: every float32 within 2^16 ulps of the answer is
    evaluated through the same numpy ops), so [s ≤ pair_threshold] gives the same bits without √, ÷, exp.
    Beyond 2^16 ulps of s the similarity differs from τ by ≥ 0.1 %, far more than float32 exp's error.
    """
    theta32, tau32 = np.float32(theta), np.float32(tau)

    def passes(s: np.ndarray) -> np.ndarray:                       # the float32 ops of the definition
        return np.exp(-np.sqrt(s) / theta32) >= tau32

    lo, hi = 0, 0x7F800000                                         # float32 bit patterns of 0 and +inf, ordered
    if passes(np.array([np.inf] * 16, dtype=np.float32))[0]:       # τ = 0: every pair passes
        return np.float32(np.inf)
    while hi - lo > 1:                                             # passes(lo) and not passes(hi)
        mid = (lo + hi) // 2
        if passes(np.full(16, mid, dtype=np.int32).view(np.float32))[0]:
            lo = mid
        else:
            hi = mid
    band = np.arange(max(lo - 2 ** 16, 0), min(lo + 2 ** 16, 0x7F800000) + 1, dtype=np.int32)
    if not np.array_equal(passes(band.view(np.float32)), band <= lo):
        raise RuntimeError(f"float32 exp is not monotone near the affinity threshold (θ={theta}, τ={tau}); "
                           f"cannot threshold on squared distances")
    return np.array(lo, dtype=np.int32).view(np.float32)[()]


def neighbour_masks(features: np.ndarray, theta: float, tau: float, valid_neighbours: np.ndarray) -> np.ndarray:
    """Packed uint8 (H, W): bit k = [exp(−‖f[:, y, x] − f[:, y+dy_k, x+dx_k]‖₂ / θ) ≥ τ] and neighbour k valid.

    features (C, H, W) float32; valid_neighbours (H, W) uint8, bit k set iff neighbour k is valid (and inside
    the frame; frame_neighbour_valid). Offsets k and 7 − k are opposite, so each pair's squared distance is
    computed once (for k ≥ 4) and its bit set on both ends; the similarity test is [s ≤ pair_threshold(θ, τ)].
    """
    if features.ndim != 3:
        raise ValueError(f"neighbour_masks expects features (C, H, W), got shape {features.shape}")
    if not theta > 0:
        raise ValueError(f"neighbour_masks: theta must be > 0, got {theta}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    _, height, width = features.shape
    limit = pair_threshold(float(theta), float(tau))
    count = len(NEIGHBOUR_OFFSETS)
    packed = np.zeros((height, width), dtype=np.uint8)
    for k in range(count // 2, count):
        dy, dx = NEIGHBOUR_OFFSETS[k]
        ys, ys_n = _overlap(dy, height)
        xs, xs_n = _overlap(dx, width)
        diff = features[:, ys, xs] - features[:, ys_n, xs_n]           # (C, h', w')
        similar = (np.einsum("chw,chw->hw", diff, diff) <= limit).view(np.uint8)  # (h', w') 0/1
        packed[ys, xs] |= similar << k                                 # pair (centre, centre + offset)
        packed[ys_n, xs_n] |= similar << (count - 1 - k)               # the same pair seen from the other end
    return packed & valid_neighbours


def valid_cells(height: int, width: int, bottom_rows: int) -> np.ndarray:
    """(h, w) bool grid of an H×W frame: cell (r, c) is valid iff its sample pixel (4r+2, 4c+2) lies in the
    frame above the bottom `bottom_rows` rows, i.e. 4r+2 < H − bottom_rows and 4c+2 < W."""
    if bottom_rows < 0:
        raise ValueError(f"bottom_rows must be ≥ 0, got {bottom_rows}")
    h, w = grid_shape(height, width)
    sample = GRID_STRIDE * np.arange(max(h, w)) + GRID_STRIDE // 2
    return (sample[:h, None] < height - bottom_rows) & (sample[None, :w] < width)


def neighbour_valid(valid: np.ndarray) -> np.ndarray:
    """(8, h, w) bool: neighbour k of each cell lies inside the grid and is a valid cell of `valid` (h, w)."""
    height, width = valid.shape
    out = np.zeros((len(NEIGHBOUR_OFFSETS), height, width), dtype=bool)
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        ys, ys_n = _overlap(dy, height)
        xs, xs_n = _overlap(dx, width)
        out[k, ys, xs] = valid[ys_n, xs_n]
    return out


@functools.lru_cache(maxsize=64)
def frame_neighbour_valid(height: int, width: int, bottom_rows: int) -> np.ndarray:
    """pack_bits(neighbour_valid(valid_cells(H, W, bottom_rows))), cached per frame size (read-only (h, w) uint8)."""
    out = pack_bits(neighbour_valid(valid_cells(height, width, bottom_rows)))
    out.flags.writeable = False
    return out


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Pack bool (…, 8, H, W) into uint8 (…, H, W) with bit k (value 1 << k) = mask[…, k, :, :]."""
    if mask.ndim < 3 or mask.shape[-3] != len(NEIGHBOUR_OFFSETS):
        raise ValueError(f"pack_bits expects (…, 8, H, W), got shape {mask.shape}")
    packed = mask[..., 0, :, :].astype(np.uint8)
    for k in range(1, len(NEIGHBOUR_OFFSETS)):
        packed |= mask[..., k, :, :].astype(np.uint8) << k
    return packed


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Unpack uint8 (…, H, W) into bool (…, 8, H, W), the inverse of pack_bits."""
    if packed.dtype != np.uint8 or packed.ndim < 2:
        raise ValueError(f"unpack_bits expects uint8 (…, H, W), got {packed.dtype} {packed.shape}")
    bits = np.unpackbits(packed[..., None, :, :], axis=-3, count=8, bitorder="little")  # (…, 8, H, W)
    return bits.view(bool)


# (256,) uint8: the packed byte of a mirrored cell, from the byte of the original cell.
_HFLIP_BYTE = pack_bits(unpack_bits(np.arange(256, dtype=np.uint8)[None, :])[list(HFLIP_NEIGHBOURS)])[0]


# (256,) int64: the number of set bits of each byte (pairs per cell).
_BITS_SET = unpack_bits(np.arange(256, dtype=np.uint8)[None, :]).sum(axis=0)[0].astype(np.int64)


def hflip_packed(packed: np.ndarray) -> np.ndarray:
    """Packed masks (…, h, w) of the horizontally flipped frame: mirror the columns, permute the bits.

    Bit k of output cell (r, c) is bit HFLIP_NEIGHBOURS[k] of input cell (r, w−1−c); an involution.
    Invariant: for a frame whose width is a multiple of 4 (so that 4×4 cells mirror onto cells),
    hflip_packed(color_masks(frame)) == color_masks(frame[:, ::-1]) bit for bit, and likewise for flow
    masks whenever the flipped flow image is the mirrored image (vertical motion). For general motion the
    flipped flow image re-colours (−u, v) (pipeline.flow_codec.hflip_flow_rgb), and the colour wheel is not
    mirror-symmetric in RGB distance, so recomputing would change a few percent of the pairs; flipping the
    stored masks keeps the motion similarity of each mirrored pixel pair, which is what the loss needs.
    """
    if packed.dtype != np.uint8 or packed.ndim < 2:
        raise ValueError(f"hflip_packed expects uint8 (…, h, w), got {packed.dtype} {packed.shape}")
    return _HFLIP_BYTE[packed[..., ::-1]]


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each of `size_out` cells, centre-aligned nearest: floor((i + 0.5) · in / out)."""
    return np.minimum(((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def resize_packed(packed: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Packed masks (…, h, w) resampled to (…, H', W') by centre-aligned nearest neighbour on the grid.

    Invariant: every output cell carries the byte of the input cell nearest to its centre
    (`nearest_indices`), bits unchanged; the bits still name grid neighbours at ±2 cells, which after a
    resize by s correspond to ±8/s original pixels — the approximation AdelaiDet makes too when it
    computes masks on the resized image. Bottom-row invalidity scales with the image; resizing to the
    input size is the identity.
    """
    if packed.dtype != np.uint8 or packed.ndim < 2:
        raise ValueError(f"resize_packed expects uint8 (…, h, w), got {packed.dtype} {packed.shape}")
    out_h, out_w = out_hw
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_packed: output size must be positive, got {out_hw}")
    rows = nearest_indices(packed.shape[-2], out_h)
    cols = nearest_indices(packed.shape[-1], out_w)
    return packed[..., rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class AffinityParams:
    """The `affinity` config section (method §3)."""

    theta_color: float  # θ_color of S_color = exp(−‖Δ Lab‖ / θ_color)
    tau_color: float  # τ_color: M_color = [S_color ≥ τ_color]
    theta_flow: float  # θ_flow of S_flow = exp(−‖Δ flow RGB/255‖ / θ_flow)
    tau_flow: float  # τ_flow: M_flow = [S_flow ≥ τ_flow]
    bottom_rows: int  # rows at the bottom of the original frame that are invalid neighbours

    def __post_init__(self) -> None:
        """Check types and ranges, naming the config field."""
        for name in ("theta_color", "tau_color", "theta_flow", "tau_flow"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"affinity.{name}: expected a number, got {value!r}")
        for name in ("theta_color", "theta_flow"):
            if not getattr(self, name) > 0:
                raise ValueError(f"affinity.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("tau_color", "tau_flow"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"affinity.{name}: must be in [0, 1], got {getattr(self, name)}")
        if isinstance(self.bottom_rows, bool) or not isinstance(self.bottom_rows, int) or self.bottom_rows < 0:
            raise ValueError(f"affinity.bottom_rows: expected an integer ≥ 0, got {self.bottom_rows!r}")


def color_masks(frame: np.ndarray, theta: float, tau: float, bottom_rows: int) -> np.ndarray:
    """Packed colour masks (h, w) uint8 of an RGB uint8 frame (H, W, 3): pool 4×4 (truncated), Lab, threshold."""
    lab = rgb_to_lab(pool_rgb_uint8(frame))                        # (h, w, 3)
    valid = frame_neighbour_valid(frame.shape[0], frame.shape[1], bottom_rows)
    return neighbour_masks(lab.transpose(2, 0, 1), theta, tau, valid)


def flow_masks(flow_rgb: np.ndarray, theta: float, tau: float, bottom_rows: int) -> np.ndarray:
    """Packed flow masks (h, w) uint8 of an RGB-encoded flow uint8 (H, W, 3): pool 4×4 to [0, 1], threshold."""
    unit = pool_unit(flow_rgb)                                     # (h, w, 3) in [0, 1]
    valid = frame_neighbour_valid(flow_rgb.shape[0], flow_rgb.shape[1], bottom_rows)
    return neighbour_masks(unit.transpose(2, 0, 1), theta, tau, valid)


def frame_masks(frame: np.ndarray, flow_rgb: np.ndarray, params: AffinityParams) -> tuple[np.ndarray, np.ndarray]:
    """(colour, flow) packed masks, each uint8 (ceil(H/4), ceil(W/4)), of one frame and its RGB flow (H, W, 3)."""
    if frame.shape != flow_rgb.shape or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame_masks: frame {frame.shape} and flow {flow_rgb.shape} must both be (H, W, 3)")
    return (color_masks(frame, params.theta_color, params.tau_color, params.bottom_rows),
            flow_masks(flow_rgb, params.theta_flow, params.tau_flow, params.bottom_rows))


# ---------------------------------------------------------------------------------------------------------
# The stage: one shard of videos, frames + flow store in, one Zarr v3 store of packed masks out.

def open_shard_flow(flow_store: Path, dataset: YtvisDataset, shard: int) -> tuple[zarr.Group, dict, list[Video]]:
    """The shard's flow store (Zarr group, read-only), its attributes and its videos (pipeline.ytvis.Video).

    The flow settings come from the store itself (this stage's params hold only the affinity section);
    pipeline.flow.open_flow_store then checks the store's format, that it holds exactly the videos of shard
    `shard` of `dataset` (videos sorted by id, flow.shard_size per shard), and that it is complete."""
    flow_params = recorded_params(flow_store)
    expected = videos_of_shard([v.id for v in dataset.videos], shard, flow_params.shard_size)
    group = open_flow_store(flow_store, flow_params, videos=expected)
    by_id = dataset.video_by_id
    return group, dict(group.attrs), [by_id[v] for v in expected]


class AffinityStoreMismatch(ValueError):
    """An affinity store that is not the one expected (another shard, flow store, grid or neighbour order)."""


def open_affinity_store(path: str | os.PathLike, shard: int, flow_attrs: dict) -> zarr.Group:
    """Affinity store of shard `shard`, opened read-only after checking that it was built for that shard from
    the flow store whose attributes are `flow_attrs`, on this code's grid and neighbour order."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"{path}: no affinity store here (run rule affinity for shard {shard})")
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    fix = f"; delete {path} and rerun rule affinity for shard {shard}"
    if attrs.get("shard") != shard:
        raise AffinityStoreMismatch(f"{path}: store of shard {attrs.get('shard')!r}, expected shard {shard}{fix}")
    if attrs.get("grid_stride") != GRID_STRIDE or attrs.get("neighbour_offsets") != [list(o) for o in
                                                                                       NEIGHBOUR_OFFSETS]:
        raise AffinityStoreMismatch(f"{path}: grid stride {attrs.get('grid_stride')!r} and neighbour order "
                                    f"{attrs.get('neighbour_offsets')!r}, this code uses {GRID_STRIDE} and "
                                    f"{[list(o) for o in NEIGHBOUR_OFFSETS]}{fix}")
    recorded = attrs.get("flow_store")
    if recorded != flow_attrs:
        keys = sorted(k for k in set(recorded or {}) | set(flow_attrs)
                      if (recorded or {}).get(k) != flow_attrs.get(k))
        raise AffinityStoreMismatch(f"{path}: built from another flow store than the one of shard {shard} "
                                    f"(attributes {keys} differ){fix}")
    return group


def video_masks(dataset: YtvisDataset, video: Video, flow_video: zarr.Array, flow_store: Path,
                params: AffinityParams, progress: tqdm, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """Packed (colour, flow) masks, each uint8 (T, ceil(H/4), ceil(W/4)), of every frame of one video, the
    frames spread over `pool`'s threads (JPEG decoding, Zstd and numpy release the GIL); flow_video: the
    video's (T, H, W, 3) uint8 array of the flow store at `flow_store`."""
    t_frames, height, width = video.length, video.height, video.width
    if tuple(flow_video.shape) != (t_frames, height, width, 3) or flow_video.dtype != np.uint8:
        raise ValueError(f"{flow_store}: flow of video {video.id}: expected uint8 {(t_frames, height, width, 3)} "
                         f"(T, H, W, 3) from train.json, found {flow_video.dtype} {tuple(flow_video.shape)}; "
                         f"rerun rule flow")

    def masks_of_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
        frame = read_frame(dataset.frame_path(video, t), video.id, t, height, width)
        flow_rgb = stored_frame(flow_video, t, f"{flow_store}: video {video.id} flow", "flow")
        return frame_masks(frame, flow_rgb, params)

    h, w = grid_shape(height, width)
    color = np.empty((t_frames, h, w), np.uint8)
    flow = np.empty((t_frames, h, w), np.uint8)
    for t, (color_t, flow_t) in enumerate(pool.map(masks_of_frame, range(t_frames))):
        color[t], flow[t] = color_t, flow_t
        progress.update(1)
    return color, flow


def write_video(group: zarr.Group, video_id: int, color: np.ndarray, flow: np.ndarray) -> None:
    """Arrays `color` and `flow` (T, h, w) uint8 under group str(video_id): chunk one frame, one shard per video."""
    sub = group.create_group(str(video_id))
    for name, data in (("color", color), ("flow", flow)):
        array = sub.create_array(name, shape=data.shape, dtype=np.uint8, chunks=(1,) + data.shape[1:],
                                 shards=data.shape, compressors=ZstdCodec(level=3), fill_value=0,
                                 config={"write_empty_chunks": True})  # readers take a missing chunk as an error
        array[...] = data


def run_shard(root: Path, manifest: Path, shard: int, flow_store: Path, params: AffinityParams,
              out: Path, threads: int = 1) -> dict:
    """Compute and write the affinity store of one shard (atomically), its content digest among the attributes
    (pipeline.identity.DIGEST_ATTR), frames computed on `threads` threads; returns the summary for the JSON log."""
    if threads < 1:
        raise ValueError(f"affinity: --threads must be ≥ 1, got {threads}")
    started = time.perf_counter()
    dataset = load_manifest(manifest, root)
    flow_group, flow_attrs, videos = open_shard_flow(flow_store, dataset, shard)
    attributes = {"params": dataclasses.asdict(params), "flow_store": flow_attrs, "shard": shard,
                  "videos": [v.id for v in videos], "grid_stride": GRID_STRIDE,
                  "neighbour_offsets": [list(o) for o in NEIGHBOUR_OFFSETS]}
    set_bits = {"color": 0, "flow": 0}
    cells = 0
    remove_stale_temps(Path(out))                                  # left by a killed earlier run
    with atomic_dir(out) as tmp, progress_bar(sum(v.length for v in videos), f"affinity shard {shard}",
                                              unit="frame") as progress, ThreadPoolExecutor(threads) as pool:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3, attributes=attributes)
        for video in videos:
            color, flow = video_masks(dataset, video, flow_group[str(video.id)], flow_store, params, progress, pool)
            write_video(group, video.id, color, flow)
            set_bits["color"] += int(_BITS_SET[color].sum())
            set_bits["flow"] += int(_BITS_SET[flow].sum())
            cells += color.size
        group.attrs.update({DIGEST_ATTR: store_digest(tmp)})
    seconds = time.perf_counter() - started
    frames = sum(v.length for v in videos)
    return {"shard": shard, "out": str(out), "videos": len(videos), "frames": frames, "threads": threads,
            "seconds": round(seconds, 3),
            "frames_per_s": round(frames / max(seconds, 1e-9), 2),
            "pair_fraction": {k: round(v / max(8 * cells, 1), 4) for k, v in set_bits.items()},
            "params": dataclasses.asdict(params)}


def main(argv: list[str] | None = None) -> None:
    """CLI: the affinity store of one shard (rule `affinity`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset folder (train.json + JPEGImages/)")
    parser.add_argument("--manifest", required=True, type=Path,
                        help="the dataset's manifest (rule manifest: results/manifest.json)")
    parser.add_argument("--shard", required=True, type=int, help="shard index k")
    parser.add_argument("--flow", required=True, type=Path, help="results/flow/shard_k.zarr")
    parser.add_argument("--params", required=True, help="the `affinity` config section as JSON")
    parser.add_argument("--out", required=True, type=Path, help="results/affinity/shard_k.zarr (replaced atomically)")
    parser.add_argument("--log-json", type=Path, help="per-shard summary (JSON)")
    parser.add_argument("--threads", type=int, default=1, help="threads computing frames (not params: no reruns)")
    args = parser.parse_args(argv)
    log = setup_logging()
    params = params_from_json(AffinityParams, args.params, "affinity (--params)")
    summary = run_shard(args.root, args.manifest, args.shard, args.flow, params, args.out, args.threads)
    log.info("affinity shard %d: %s", args.shard, json.dumps(summary))
    if args.log_json:
        write_json_atomic(args.log_json, summary)


if __name__ == "__main__":
    main()
