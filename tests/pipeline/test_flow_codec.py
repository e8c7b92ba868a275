"""Colour wheel encoding against hand-computed colours, and the horizontal flip of encoded flow."""

import numpy as np
import pytest

from pipeline.flow_codec import (MAX_FLIP_ERROR, SEAM_BAND_DEG, WHEEL, flow_to_rgb, hflip_flow_rgb,
                                 rgb_to_hue_radius)


def uniform(u: float, v: float, h: int = 2, w: int = 3) -> np.ndarray:
    """(h, w, 2) float32 field of one vector."""
    flow = np.empty((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = u, v
    return flow


def test_wheel_spot_values():
    # segment starts 0, 15, 21, 25, 36, 49 and the last entry: MR i=5 has B = 255 - floor(255*5/6) = 43
    expected = {0: (255, 0, 0), 14: (255, 238, 0), 15: (255, 255, 0), 21: (0, 255, 0),
                25: (0, 255, 255), 36: (0, 0, 255), 49: (255, 0, 255), 54: (255, 0, 43)}
    assert WHEEL.shape == (55, 3)
    for k, rgb in expected.items():
        assert tuple(WHEEL[k]) == rgb, k


@pytest.mark.parametrize("u, v, rgb", [
    # right, v=+0: atan2(-0, -u) = -pi -> fk 0 -> wheel[0]; r = 2/(2+1e-5): G = floor(255*(1-r)) = 0
    (2.0, 0.0, (255, 0, 0)),
    # right, v=-0: atan2(+0, -u) = +pi -> fk 54 -> wheel[54] = (255, 0, 43)
    (2.0, -0.0, (255, 0, 43)),
    # left: atan2(-0, +u) = -0 -> fk 27 = CB i=2: G = 255 - floor(255*2/11) = 209
    (-2.0, 0.0, (0, 209, 255)),
    # down (+v): atan2(-v, -0) = -pi/2 -> fk 13.5: G = (221 + 238)/2 = 229.5 -> 229
    (0.0, 2.0, (255, 229, 0)),
    # up (-v): atan2(+v, -0) = pi/2 -> fk 40.5: R = (floor(255*4/13) + floor(255*5/13))/2 = (78+98)/2 = 88
    (0.0, -2.0, (88, 0, 255)),
])
def test_axis_directions(u, v, rgb):
    out = flow_to_rgb(uniform(u, v))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert (out == np.array(rgb, np.uint8)).all()


def test_zero_flow_is_white():
    assert (flow_to_rgb(np.zeros((4, 5, 2), np.float32)) == 255).all()


def test_radius_fades_to_white():
    # max radius 1: the pixel at (0.5, 0) has r = 0.5/(1+1e-5); R = 255, G = B = floor(255*(1-r)) = 127
    flow = np.array([[[1.0, 0.0], [0.5, 0.0]]], np.float32)
    out = flow_to_rgb(flow)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 127, 127]


def test_normalised_per_frame():
    flow = np.random.default_rng(0).standard_normal((6, 7, 2)).astype(np.float32)
    assert np.array_equal(flow_to_rgb(flow), flow_to_rgb(flow * np.float32(8.0)))


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        flow_to_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        flow_to_rgb(np.full((2, 2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        hflip_flow_rgb(np.zeros((2, 2, 3), np.float32))


def test_decode_wheel_nodes():
    # colours of the wheel entries at radius ~1 decode to their integer hue index
    flows = []
    for k in range(55):
        a = k / 27 - 1  # fk = (a + 1) * 27
        theta = a * np.pi  # atan2(-v, -u) = theta
        flows.append((-np.cos(theta), -np.sin(theta)))
    flow = np.array([flows], np.float32)
    fk, radius = rgb_to_hue_radius(flow_to_rgb(flow))
    assert np.allclose(fk[0, 1:54], np.arange(1, 54), atol=0.05)
    assert np.all(radius > 0.99)


@pytest.mark.parametrize("u, v", [(2.0, 0.0), (-2.0, 0.0), (0.0, 2.0), (0.0, -2.0), (0.0, 0.0)])
def test_flip_exact_on_axes(u, v):
    out = hflip_flow_rgb(flow_to_rgb(uniform(u, v)))
    assert np.array_equal(out, flow_to_rgb(uniform(-u, v)))


def test_flip_mirrors_pixels_and_batches():
    # a (T, H, W, 3) stack: column x of the result comes from column W-1-x of the input
    flow = np.zeros((2, 3, 4, 2), np.float32)
    flow[0, 1, 0] = (3.0, 0.0)  # right, at the left edge
    flow[1, 2, 3] = (0.0, -3.0)  # up, at the right edge
    rgb = np.stack([flow_to_rgb(f) for f in flow])
    out = hflip_flow_rgb(rgb)
    assert out.shape == rgb.shape
    assert out[0, 1, 3].tolist() == [0, 209, 255]  # now pointing left, at the right edge
    assert out[1, 2, 0].tolist() == [88, 0, 255]  # still up, at the left edge
    assert (np.delete(out[0].reshape(-1, 3), 1 * 4 + 3, axis=0) == 255).all()


def test_flip_bound_on_dense_grid():
    # every direction and radius: compare with encoding the mirrored float flow
    g = np.linspace(-1, 1, 701, dtype=np.float32)
    flow = np.stack(np.meshgrid(g, g), -1)  # (701, 701, 2), max radius sqrt(2)
    mirrored = np.ascontiguousarray(flow[:, ::-1] * np.array([-1, 1], np.float32))
    expected = flow_to_rgb(mirrored).astype(int)
    got = hflip_flow_rgb(flow_to_rgb(flow)).astype(int)
    err = np.abs(got - expected).max(axis=-1)
    radius = np.hypot(mirrored[..., 0], mirrored[..., 1]) / np.sqrt(2)
    angle = np.degrees(np.abs(np.arctan2(mirrored[..., 1], mirrored[..., 0])))
    outside_seam = angle * radius > SEAM_BAND_DEG
    assert outside_seam.mean() > 0.99
    assert err[outside_seam].max() <= MAX_FLIP_ERROR
    assert (err[outside_seam] <= 1).mean() > 0.96
    assert (err[outside_seam] <= 2).mean() > 0.99
    # inside the band the error is the seam's jump (B 0 vs 43, faded by the radius), never more
    assert err.max() <= 43


def test_colours_equal_a_per_pixel_loop():
    # the vectorised colour step against the formula pixel by pixel, including the radius > 1 branch
    from pipeline.flow_codec import _colors
    rng = np.random.default_rng(7)
    fk = rng.uniform(0, 54, (12, 13)).astype(np.float32)
    fk[0, :3] = (0.0, 27.0, 54.0)
    rad = rng.uniform(0, 1.3, (12, 13)).astype(np.float32)
    out = _colors(fk, rad)
    for y, x in np.ndindex(fk.shape):
        k0 = int(np.floor(fk[y, x]))
        k1 = 0 if k0 + 1 == 55 else k0 + 1
        f = float(fk[y, x]) - k0
        r = float(rad[y, x])
        for c in range(3):
            col = (1 - f) * (WHEEL[k0, c] / 255.0) + f * (WHEEL[k1, c] / 255.0)
            col = 1 - r * (1 - col) if r <= 1 else col * 0.75
            assert out[y, x, c] == int(np.floor(255 * col)), (y, x, c)


def test_blocks_of_rows_give_the_whole_frame_bytes():
    # 100 x 700: blocks of 46 rows (BLOCK_PIXELS // 700), the last one ragged; the largest flow sits in the
    # last block, so a per-block normalisation would show. Reference: the same steps on the whole frame.
    from pipeline.flow_codec import BLOCK_PIXELS, _colors, _hue_index, flow_scale
    assert 2 < 100 / (BLOCK_PIXELS // 700) < 3
    rng = np.random.default_rng(11)
    flow = rng.normal(0, 3, (100, 700, 2)).astype(np.float32)
    flow[97, 5] = (40.0, -30.0)
    scale = flow_scale(flow)
    u, v = flow[..., 0] / scale, flow[..., 1] / scale
    whole = _colors(_hue_index(u, v), np.sqrt(np.square(u) + np.square(v)))
    np.testing.assert_array_equal(flow_to_rgb(flow), whole)
