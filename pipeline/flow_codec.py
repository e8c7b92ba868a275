"""Optical flow as an RGB image: the Middlebury/Baker colour wheel of GMA's flow_viz (method §2).

Encoding, per frame: (u, v) is divided by (max radius + 1e-5), so every radius is < 1; the hue comes from
the angle, a = atan2(-v, -u) / pi mapped to a fractional wheel index fk = (a + 1) / 2 * 54, and the
colour fades to white as the radius goes to 0. The arithmetic follows the official
`core/utils/flow_viz.py` step by step (float32 flow, float64 wheel), so the bytes are identical.

Decoding is lossy: the absolute scale is gone (per-frame normalisation) and each channel is floored to
uint8. The flow stores keep each frame's divisor (`flow_scale`) beside the colours, so `rgb_to_flow`
recovers pixels: the radius to within ~1/255 of the frame's largest flow, the direction to a wheel step. `hflip_flow_rgb` decodes each pixel to the centre of the set of normalised flows that encode to
its colour, mirrors it to (-u, v) and encodes it again; see its docstring for the error bound.
"""

from __future__ import annotations

import numpy as np

# Segment lengths of the wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red.
SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))
NUM_COLS = sum(n for _, n in SEGMENTS)  # 55 wheel entries; hue index fk spans [0, 54]
EPSILON = 1e-5  # added to the per-frame max radius
MAX_FLIP_ERROR = 4  # hflip_flow_rgb: uint8 levels outside the seam band (tested)
SEAM_BAND_DEG = 0.2  # hflip_flow_rgb: seam band half-width in degrees, times the normalised radius
# flow_to_rgb works through a frame in blocks of about this many pixels, so that its float64 temporaries
# (256 KiB each) stay in a core's cache: ~1.8x less CPU per 720p frame than whole-frame arrays (measured)
BLOCK_PIXELS = 1 << 15


def make_colorwheel() -> np.ndarray:
    """The (55, 3) float64 wheel, columns R, G, B in [0, 255]; one channel ramps per segment."""
    wheel = np.zeros((NUM_COLS, 3), np.float64)
    start = 0
    # (channel held at 255, channel that ramps, ramp up or down) per segment, in wheel order
    layout = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True), (0, 2, False))
    for (_, n), (full, ramp, rising) in zip(SEGMENTS, layout):
        steps = np.floor(255 * np.arange(n) / n)
        wheel[start:start + n, full] = 255
        wheel[start:start + n, ramp] = steps if rising else 255 - steps
        start += n
    return wheel


WHEEL = make_colorwheel()
_WHEEL_UNIT = np.ascontiguousarray(WHEEL.T / 255.0)  # (3, 55): wheel[k, c] / 255.0 at [c, k]


def _hue_index(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fractional wheel index fk in [0, 54] of normalised flow (u, v), same dtype; keeps atan2's signed zeros."""
    a = np.arctan2(-v, -u) / np.pi
    return (a + 1) / 2 * (NUM_COLS - 1)


def _colors(fk: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colour of hue index fk (...) and radius rad (...), as flow_viz's flow_uv_to_colors.

    The same float64 operations per element as the official code: col = (1 - f) wheel[k0] / 255 +
    f wheel[k1] / 255, then 1 - rad (1 - col) (towards white at small radius; a radius > 1, reachable only
    by float rounding, gives 0.75 col instead), floored to uint8. Done per channel, in place, for speed."""
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == NUM_COLS] = 0
    f = fk - k0  # float64
    g = 1 - f
    outside = ~(rad <= 1)
    any_outside = bool(outside.any())
    out = np.empty(fk.shape + (3,), np.uint8)
    for channel in range(3):
        col = _WHEEL_UNIT[channel][k0]
        col *= g
        col1 = _WHEEL_UNIT[channel][k1]
        col1 *= f
        col += col1  # (1 - f) col0 + f col1
        faded = np.subtract(1, col)
        faded *= rad
        np.subtract(1, faded, out=faded)  # 1 - rad (1 - col)
        if any_outside:
            faded[outside] = col[outside] * 0.75
        faded *= 255
        np.floor(faded, out=faded)
        out[..., channel] = faded
    return out


def flow_scale(flow: np.ndarray) -> np.floating:
    """The per-frame divisor of flow_to_rgb: max radius of (H, W, 2) flow + 1e-5, in the flow's dtype."""
    return np.max(np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1]))) + EPSILON


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    """Encode flow (H, W, 2) float (u right, v down, pixels) as (H, W, 3) uint8 RGB (method §2).

    Normalised per frame by the maximum radius + 1e-5; all-zero flow is white. Computed in the flow's
    float dtype (float32 in this project) exactly as the official flow_viz.flow_to_image, in blocks of rows
    (BLOCK_PIXELS) after the frame's scale."""
    return encode_flow(flow)[0]


def encode_flow(flow: np.ndarray) -> tuple[np.ndarray, np.floating]:
    """flow_to_rgb's (H, W, 3) uint8 colours of (H, W, 2) flow and the divisor it used (flow_scale)."""
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_rgb: expected flow of shape (H, W, 2), got {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"flow_to_rgb: expected a float array, got {flow.dtype}")
    if not np.isfinite(flow).all():
        raise ValueError(f"flow_to_rgb: flow has {int((~np.isfinite(flow)).sum())} non-finite values")
    scale = flow_scale(flow)
    out = np.empty(flow.shape[:2] + (3,), np.uint8)
    rows = max(1, BLOCK_PIXELS // max(1, flow.shape[1]))
    for top in range(0, flow.shape[0], rows):  # element-wise from here on: blocks of rows give the same bytes
        u = flow[top:top + rows, :, 0] / scale
        v = flow[top:top + rows, :, 1] / scale
        rad = np.sqrt(np.square(u) + np.square(v))
        out[top:top + rows] = _colors(_hue_index(u, v), rad)
    return out, scale


def _segment_tables() -> list[tuple[int, int, int, np.ndarray, np.ndarray]]:
    """Per segment: (channel at 255, ramping channel, other channel, hue nodes, ramp values / 255).

    Nodes run from the segment's first entry to the next segment's first entry (54 for the last, as fk
    never exceeds 54); the ramp values are strictly monotone, reversed where needed so they increase."""
    tables = []
    start = 0
    for _, n in SEGMENTS:
        end = min(start + n, NUM_COLS - 1)
        nodes = np.arange(start, end + 1, dtype=np.float64)
        colours = WHEEL[start:end + 1]
        full = int(np.argmax(colours.min(axis=0)))  # the channel held at 255
        ramp = int(np.argmax(np.ptp(colours, axis=0)))
        other = 3 - full - ramp
        values = colours[:, ramp] / 255.0
        if values[0] > values[-1]:
            nodes, values = nodes[::-1], values[::-1]
        tables.append((full, ramp, other, nodes, values))
        start += n
    return tables


_TABLES = _segment_tables()


def rgb_to_hue_radius(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode (..., 3) uint8 RGB to (fk, radius), each (...) float64: the centre of each colour's pre-image.

    The smallest channel is floor(255 (1 - r)); the ramping channel is floor(255 (1 - r (1 - w))) with w
    the wheel's interpolated value, inverted piecewise linearly to the hue index. White decodes to r = 0."""
    c = rgb.astype(np.float64)
    lo = c.min(axis=-1)
    radius = np.where(lo >= 255, 0.0, 1 - (lo + 0.5) / 255)
    fk = np.zeros(rgb.shape[:-1], np.float64)
    best = np.full(rgb.shape[:-1], np.inf)
    for full, ramp, other, nodes, values in _TABLES:
        # fit of this segment: the held channel should be 255 and the third channel the smallest
        misfit = (255 - c[..., full]) + (c[..., other] - lo)
        s = 1 - (c[..., ramp] + 0.5) / 255  # r (1 - w), centre of its quantisation interval
        w = np.clip(1 - s / np.maximum(radius, 1e-12), values[0], values[-1])
        candidate = np.interp(w, values, nodes)
        take = misfit < best
        fk = np.where(take, candidate, fk)
        best = np.where(take, misfit, best)
    return fk, radius


def hflip_flow_rgb(rgb: np.ndarray) -> np.ndarray:
    """Mirror encoded flow (..., H, W, 3) uint8 left-right and re-colour it to encode (-u, v).

    Mirroring keeps every radius (so the per-frame normalisation) and reflects the hue:
    fk -> 27 - fk for fk <= 27, 81 - fk above (atan2(y, -x) = +-pi - atan2(y, x)).
    Bound versus flow_to_rgb(mirrored flow), measured on a dense grid of flows
    (tests/pipeline/test_flow_codec.py): exact for white and the axis directions, within 1 level for
    ~97 % of pixels, within 2 for ~99.3 %, and at most MAX_FLIP_ERROR = 4 levels, except in the seam
    band: pixels whose mirrored flow points within SEAM_BAND_DEG / r degrees of +x (r = normalised
    radius), where flow_to_rgb itself jumps from (255, 0, 0) to (255, 0, 43); there the decoder may
    pick the other side. Exactness (or +-1) is impossible from uint8 alone: e.g. a red-yellow hue is
    known to 1/17 of a wheel step from G, its mirror lands in green-cyan where B moves 64 levels per
    step, so the pixels sharing one input colour spread over ~4 output levels."""
    if rgb.ndim < 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"hflip_flow_rgb: expected uint8 (..., H, W, 3), got {rgb.dtype} {rgb.shape}")
    mirrored = rgb[..., ::-1, :]  # (..., H, W, 3), columns reversed
    fk, radius = rgb_to_hue_radius(mirrored)
    fk_flipped = np.where(fk <= 27, 27 - fk, 81 - fk)
    return _colors(fk_flipped, radius)


def rgb_to_flow(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Decode (..., 3) uint8 RGB made by flow_to_rgb with divisor `scale` (flow_scale) to (..., 2) float64
    flow (u, v) in pixels: the centre of each colour's pre-image, times the scale."""
    fk, radius = rgb_to_hue_radius(rgb)
    angle = (fk / (NUM_COLS - 1) * 2 - 1) * np.pi  # atan2(-v, -u)
    return np.stack([-radius * np.cos(angle), -radius * np.sin(angle)], axis=-1) * scale
