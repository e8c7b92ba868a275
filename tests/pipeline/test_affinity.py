"""Tests of pipeline/affinity.py: Lab, neighbour similarity, bit packing, validity, flip and resize."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import affinity as aff
from pipeline.io import params_from_json

from damage import corrupt_shard_chunk, damage_frame, drop_shard_chunk, leftovers, set_store_attribute
from manifests import write_test_manifest

REPO = Path(__file__).resolve().parents[2]


def blocky_frame(height: int, width: int, seed: int, block: int = 20) -> np.ndarray:
    """uint8 (H, W, 3): flat colour blocks plus mild noise, so masks are neither all set nor all clear."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (math.ceil(height / block), math.ceil(width / block), 3))
    frame = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:height, :width]
    return np.clip(frame + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)


def brute_similarity(features: np.ndarray, theta: float) -> np.ndarray:
    """Double loop over cells and neighbours, float64: exp(−‖f_i − f_k‖ / θ), 0 outside the frame."""
    _, height, width = features.shape
    out = np.zeros((8, height, width))
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    for y in range(height):
        for x in range(width):
            for k, (dy, dx) in enumerate(offsets):
                ny, nx = y + dy, x + dx
                if 0 <= ny < height and 0 <= nx < width:
                    d = math.sqrt(sum((float(features[c, y, x]) - float(features[c, ny, nx])) ** 2
                                      for c in range(features.shape[0])))
                    out[k, y, x] = math.exp(-d / theta)
    return out


def test_neighbour_offsets_row_major_without_centre():
    assert aff.NEIGHBOUR_OFFSETS == ((-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2))
    assert aff.HFLIP_NEIGHBOURS == (2, 1, 0, 4, 3, 7, 6, 5)


def packed_similar(similarity: np.ndarray, tau: float) -> np.ndarray:
    """Pack [similarity (8, H, W) ≥ τ] into uint8 (H, W) by a loop over the bits."""
    packed = np.zeros(similarity.shape[1:], np.uint8)
    for k in range(8):
        packed |= ((similarity[k] >= tau) << k).astype(np.uint8)
    return packed


@pytest.mark.parametrize("channels,height,width", [(3, 7, 9), (1, 3, 2), (2, 1, 5)])
def test_neighbour_masks_equal_double_loop(channels, height, width):
    rng = np.random.default_rng(height * 10 + width)
    features = rng.normal(0, 1.5, (channels, height, width)).astype(np.float32)
    all_valid = np.full((height, width), 0xFF, np.uint8)
    brute = brute_similarity(features, 0.7)
    inside = packed_similar(brute_similarity(np.zeros_like(features), 0.7), 0.5)  # bit k: neighbour in the frame
    got = aff.neighbour_masks(features, theta=0.7, tau=0.5, valid_neighbours=all_valid)
    assert got.dtype == np.uint8 and got.shape == (height, width)
    assert np.array_equal(got, packed_similar(brute, 0.5) & inside)
    assert np.array_equal(aff.neighbour_masks(features, 0.7, 0.5, np.zeros_like(all_valid)), np.zeros_like(got))


def float32_similar(squared: np.ndarray, theta: float, tau: float) -> np.ndarray:
    """The similarity test in float32, as the stage computed it before pair_threshold: exp(−√s / θ) ≥ τ."""
    distance = np.sqrt(squared.astype(np.float32))
    return np.exp(-distance / np.float32(theta)) >= np.float32(tau)


@pytest.mark.parametrize("theta,tau", [(2.0, 0.3), (0.5, 0.6), (1.0, 1.0), (3.0, 1e-6), (0.01, 0.999)])
def test_pair_threshold_is_the_float32_boundary(theta, tau):
    limit = aff.pair_threshold(theta, tau)
    assert limit.dtype == np.float32
    around = limit.view(np.int32) + np.arange(-3000, 3001, dtype=np.int32)   # consecutive float32 around it
    squared = np.concatenate([around.view(np.float32), np.float32([0.0, 1e-30, limit * 2, 1e30])])
    squared = squared[squared >= 0]
    assert np.array_equal(squared <= limit, float32_similar(squared, theta, tau))
    assert float32_similar(np.float32([limit] * 8), theta, tau).all()
    assert not float32_similar(np.nextafter(np.float32([limit] * 8), np.float32(np.inf)), theta, tau).any()
    assert aff.pair_threshold(1.0, 0.0) == np.inf                  # τ = 0: every pair is similar


def reference_masks(features: np.ndarray, theta: float, tau: float, valid: np.ndarray) -> np.ndarray:
    """The masks as the stage computed them before pair_threshold (float32 similarity maps, then ≥ τ, & valid),
    features (C, H, W) in any memory layout, valid (8, H, W) bool."""
    _, height, width = features.shape
    similarity = np.zeros((8, height, width), dtype=np.float32)
    for k in range(4, 8):
        dy, dx = aff.NEIGHBOUR_OFFSETS[k]
        ys, ys_n = aff._overlap(dy, height)
        xs, xs_n = aff._overlap(dx, width)
        diff = features[:, ys, xs] - features[:, ys_n, xs_n]
        values = np.exp(-np.sqrt(np.einsum("chw,chw->hw", diff, diff)) / np.float32(theta))
        similarity[k, ys, xs] = values
        similarity[7 - k, ys_n, xs_n] = values
    return aff.pack_bits((similarity >= np.float32(tau)) & valid)


def test_masks_bit_identical_to_float32_similarity_route():
    """Thresholding squared distances gives the bits of the float32 exp route, also for pairs whose squared
    distance is within a few ulps of the boundary (crafted), on frames of several sizes (both modalities)."""
    limit = aff.pair_threshold(2.0, 0.3)
    steps = np.arange(-600, 600, dtype=np.int32)
    near = (np.sqrt(np.float32(limit)).view(np.int32) + steps).view(np.float32)  # distances around √limit
    features = np.zeros((3, 1200, 3), np.float32)                    # column 0 and 2 pair at dx = 2
    features[1, :, 2] = near
    features[0, :, 0] = np.float32(0.25) * (steps % 3)              # a second channel moves some pairs
    valid = np.ones((8, 1200, 3), bool)
    got = aff.neighbour_masks(features, 2.0, 0.3, aff.pack_bits(valid))
    assert np.array_equal(got, reference_masks(features, 2.0, 0.3, valid))
    assert 0 < (got[:, 0] >> 4 & 1).sum() < 1200                      # both sides of the boundary are present
    params = aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=10)
    for seed, (height, width) in enumerate([(360, 640), (45, 50), (37, 92)]):
        frame, flow = blocky_frame(height, width, seed, block=7), blocky_frame(height, width, seed + 9, block=5)
        valid = aff.neighbour_valid(aff.valid_cells(height, width, 10))
        lab = aff.rgb_to_lab(aff.pool_rgb_uint8(frame)).transpose(2, 0, 1)       # (3, h, w) view, as before
        unit = aff.pool_unit(flow).transpose(2, 0, 1)
        color, flow_m = aff.frame_masks(frame, flow, params)
        assert np.array_equal(color, reference_masks(lab, 2.0, 0.3, valid))
        assert np.array_equal(flow_m, reference_masks(unit, 0.5, 0.6, valid))


def test_pack_unpack_round_trip_and_bit_order():
    rng = np.random.default_rng(1)
    mask = rng.random((2, 3, 8, 5, 7)) < 0.5
    packed = aff.pack_bits(mask)
    assert packed.dtype == np.uint8 and packed.shape == (2, 3, 5, 7)
    assert np.array_equal(aff.unpack_bits(packed), mask)
    every_byte = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(aff.pack_bits(aff.unpack_bits(every_byte)), every_byte)
    for k in range(8):
        one = np.zeros((8, 2, 3), dtype=bool)
        one[k, 1, 2] = True
        assert aff.pack_bits(one)[1, 2] == 1 << k and aff.pack_bits(one).sum() == 1 << k
    # 0b1010_0101 = neighbours 0, 2, 5, 7 (the four diagonals)
    assert aff.unpack_bits(np.array([[0b10100101]], np.uint8))[:, 0, 0].tolist() == [
        True, False, True, False, False, True, False, True]


# (R, G, B) -> (L, a, b), worked out from the formulas of rgb_to_lab's docstring by hand (scalar Python):
# white: linear 1 -> XYZ = row sums of the sRGB matrix (0.950456, 1.0, 1.088754) / white, cube roots.
# black: every f = 16/116, L = 116·16/116 − 16 = 0. grey 10: 10/255 < 0.04045 and Y < 0.008856, so both
# linear branches: L = 116 · 7.787 · (10/255/12.92) = 2.7417.
HAND_LAB = [
    ((255, 255, 255), (100.0, -0.002455, 0.004653)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.240588, 80.092308, 67.202751)),
    ((0, 0, 255), (32.295673, 79.185591, -107.857300)),
    ((128, 128, 128), (53.585013, -0.001473, 0.002791)),
    ((10, 10, 10), (2.741735, -0.000174, 0.000330)),
]


def test_rgb_to_lab_hand_values():
    rgb = np.array([[c for c, _ in HAND_LAB]], dtype=np.uint8)       # (1, 6, 3)
    lab = aff.rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == (1, 6, 3)
    np.testing.assert_allclose(lab[0], np.array([v for _, v in HAND_LAB]), atol=1e-3)


def test_rgb_to_lab_matches_skimage():
    color = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    np.testing.assert_allclose(aff.rgb_to_lab(rgb), color.rgb2lab(rgb), atol=1e-4)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1)  # every (R, G)
    for blue in (0, 37, 128, 255):
        every = np.concatenate([grid, np.full((256, 256, 1), blue)], -1).astype(np.uint8)
        np.testing.assert_allclose(aff.rgb_to_lab(every), color.rgb2lab(every), atol=1e-4)


def test_rgb_to_lab_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        aff.rgb_to_lab(np.zeros((2, 2, 3), np.float32))


@pytest.mark.parametrize("height,width", [(8, 12), (10, 13), (1, 1)])
def test_pooling_equals_loop_and_truncates(height, width):
    rng = np.random.default_rng(height + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    got_u8, got_unit = aff.pool_rgb_uint8(image), aff.pool_unit(image)
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    assert got_u8.shape == got_unit.shape == (h, w, 3)
    for r in range(h):
        for c in range(w):
            cell = image[4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1, 3).astype(np.float64)
            assert np.array_equal(got_u8[r, c], np.floor(cell.mean(0)))
            np.testing.assert_allclose(got_unit[r, c], cell.mean(0) / 255, rtol=1e-6)
    cell = np.full((4, 4, 3), 127, np.uint8)
    cell[0, :3] = 128                                               # mean 127.1875 -> 127 (truncated)
    assert aff.pool_rgb_uint8(cell)[0, 0].tolist() == [127, 127, 127]
    sums, counts = aff.pool_sum_counts(np.full((height, width, 3), 255, np.uint8))  # the largest sums: no carry
    assert sums.shape == (3, h, w) and np.array_equal(sums, np.broadcast_to(255 * counts, (3, h, w)))
    with pytest.raises(ValueError, match="expects \\(H, W, 3\\)"):
        aff.pool_sum_counts(np.zeros((8, 8, 4), np.uint8))


def brute_masks(image: np.ndarray, theta: float, tau: float, bottom_rows: int, lab: bool) -> np.ndarray:
    """The packed masks by loops: pool per cell, per-pair similarity, sample-point validity, bit sum."""
    height, width = image.shape[:2]
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    feats = np.zeros((h, w, 3))
    for r in range(h):
        for c in range(w):
            mean = image[4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1, 3).astype(np.float64).mean(0)
            feats[r, c] = aff.rgb_to_lab(np.floor(mean).astype(np.uint8)[None, None])[0, 0] if lab else mean / 255
    out = np.zeros((h, w), np.uint8)
    for r in range(h):
        for c in range(w):
            for k, (dy, dx) in enumerate(aff.NEIGHBOUR_OFFSETS):
                nr, nc = r + dy, c + dx
                if not (0 <= nr < h and 0 <= nc < w):
                    continue
                if not (4 * nr + 2 < height - bottom_rows and 4 * nc + 2 < width):
                    continue
                if math.exp(-np.linalg.norm(feats[r, c] - feats[nr, nc]) / theta) >= tau:
                    out[r, c] |= 1 << k
    return out


@pytest.mark.parametrize("height,width", [(48, 64), (45, 50)])
def test_frame_masks_equal_brute_force(height, width):
    frame = blocky_frame(height, width, seed=3)
    flow = blocky_frame(height, width, seed=4)
    params = aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=10)
    color, flow_m = aff.frame_masks(frame, flow, params)
    assert color.shape == flow_m.shape == (math.ceil(height / 4), math.ceil(width / 4))
    assert np.array_equal(color, brute_masks(frame, 2.0, 0.3, 10, lab=True))
    assert np.array_equal(flow_m, brute_masks(flow, 0.5, 0.6, 10, lab=False))
    for packed in (color, flow_m):                                  # masks are informative, not trivial
        assert 0.1 < aff.unpack_bits(packed).mean() < 0.9


def test_borders_and_bottom_rows_give_no_pairs():
    # A uniform frame makes every similarity 1, so the set bits are exactly the valid neighbours.
    frame = np.full((40, 48, 3), 90, np.uint8)                       # grid 10×12
    color = aff.color_masks(frame, theta=2.0, tau=0.3, bottom_rows=10)
    # Valid rows: sample 4r+2 < 40−10 -> r ≤ 6. Top-left cell: only (0,2), (2,0), (2,2) -> bits 4, 6, 7.
    assert color[0, 0] == (1 << 4) | (1 << 6) | (1 << 7)
    # Interior cell two rows above the invalid band: all 8 neighbours.
    assert color[4, 5] == 0xFF
    # Row 5: its neighbours at dy = +2 are in row 7, invalid -> bits 5, 6, 7 clear.
    assert color[5, 5] == 0xFF & ~((1 << 5) | (1 << 6) | (1 << 7))
    # Bottom-right cell (9, 11): (−2,−2), (−2,0) valid (row 7 is invalid, row 7 = 9−2) -> no pairs at all.
    assert color[9, 11] == 0
    bits = aff.unpack_bits(color)                                    # (8, 10, 12)
    for k, (dy, dx) in enumerate(aff.NEIGHBOUR_OFFSETS):
        rows = np.arange(10)[:, None] + dy
        cols = np.arange(12)[None, :] + dx
        expected = (rows >= 0) & (rows <= 6) & (cols >= 0) & (cols < 12)
        assert np.array_equal(bits[k], expected), k
    # τ = 0 accepts every similarity, still no pair leaves the frame or lands in the bottom rows.
    noisy = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert np.array_equal(aff.flow_masks(noisy, theta=0.5, tau=0.0, bottom_rows=10), color)
    # Partial cells: W = 45 -> 12 columns, the last one samples column 46 ≥ 45 and is never a neighbour.
    partial = aff.unpack_bits(aff.color_masks(np.full((40, 45, 3), 90, np.uint8), 2.0, 0.3, 0))
    assert not partial[[2, 4, 7], :, 9].any() and partial[[2, 4, 7], :, 8].any()


def test_bottom_rows_scale_with_frame():
    # 10 rows of 360 invalidate grid rows whose sample 4r+2 ≥ 350: rows 87..89 of 90.
    valid = aff.valid_cells(360, 640, 10)
    assert valid.shape == (90, 160)
    assert valid[:87].all() and not valid[87:].any()
    assert aff.valid_cells(360, 640, 0).all()


def test_flip_consistency_colour_bit_for_bit():
    frame = blocky_frame(44, 56, seed=6)
    masks = aff.color_masks(frame, 2.0, 0.3, bottom_rows=10)
    flipped = aff.color_masks(np.ascontiguousarray(frame[:, ::-1]), 2.0, 0.3, bottom_rows=10)
    assert not np.array_equal(flipped, masks)                         # the flip is not trivial here
    assert np.array_equal(aff.hflip_packed(masks), flipped)
    assert np.array_equal(aff.hflip_packed(flipped), masks)          # involution


def test_flip_consistency_symmetric_flow_bit_for_bit():
    # Vertical motion (u = 0) is its own mirror (−u, v), so the flipped flow image is the mirrored image.
    flow_rgb = blocky_frame(44, 56, seed=7)
    masks = aff.flow_masks(flow_rgb, 0.5, 0.6, bottom_rows=10)
    flipped = aff.flow_masks(np.ascontiguousarray(flow_rgb[:, ::-1]), 0.5, 0.6, bottom_rows=10)
    assert not np.array_equal(flipped, masks)
    assert np.array_equal(aff.hflip_packed(masks), flipped)


def test_flip_consistency_through_flow_codec():
    """The flipped flow image is pipeline.flow_codec.hflip_flow_rgb (mirrored, re-coloured as (−u, v)).

    Vertical motion (u = 0) is its own mirror, and at these radii the codec's uint8 round trip is exact, so
    the flipped flow image is the mirrored image and the masks must agree bit for bit. (For general motion
    they cannot: the colour wheel is not mirror-symmetric in RGB distance, so the trainer flips the stored
    masks with hflip_packed instead of recomputing them; see hflip_packed.)"""
    codec = pytest.importorskip("pipeline.flow_codec")
    rng = np.random.default_rng(8)
    v = np.repeat(np.repeat(rng.choice([-4.0, -2.0, 0.0, 2.0, 4.0], (3, 4)), 16, axis=0), 16, axis=1)
    rgb = codec.flow_to_rgb(np.stack([np.zeros_like(v), v], axis=-1).astype(np.float32))  # (48, 64, 3)
    flipped_rgb = codec.hflip_flow_rgb(rgb)
    assert np.array_equal(flipped_rgb, rgb[:, ::-1])                # the premise: symmetric by construction
    masks = aff.flow_masks(rgb, 0.5, 0.6, bottom_rows=10)
    flipped = aff.flow_masks(flipped_rgb, 0.5, 0.6, bottom_rows=10)
    assert not np.array_equal(flipped, masks) and 0.1 < aff.unpack_bits(masks).mean() < 0.9
    assert np.array_equal(aff.hflip_packed(masks), flipped)


def test_hflip_packed_permutes_bits():
    packed = np.zeros((2, 3), np.uint8)
    packed[0, 0] = 1 << 0                                            # (−2, −2) at the left edge
    packed[1, 1] = (1 << 3) | (1 << 6)                               # (0, −2) and (2, 0) in the middle
    flipped = aff.hflip_packed(packed)
    assert flipped[0, 2] == 1 << 2                                   # -> (−2, +2) at the right edge
    assert flipped[1, 1] == (1 << 4) | (1 << 6)                      # -> (0, +2); (2, 0) is unchanged
    assert flipped.sum() == (1 << 2) + (1 << 4) + (1 << 6)


def test_resize_packed_nearest():
    rng = np.random.default_rng(9)
    packed = rng.integers(0, 256, (3, 5, 6), dtype=np.uint8)
    assert np.array_equal(aff.resize_packed(packed, (5, 6)), packed)
    doubled = aff.resize_packed(packed, (10, 12))
    assert np.array_equal(doubled, np.repeat(np.repeat(packed, 2, axis=-2), 2, axis=-1))
    assert np.array_equal(aff.resize_packed(doubled, (5, 6)), packed)
    # 3 -> 2 samples centres 0.75, 2.25 -> 0, 2; 2 -> 3 samples 0.33, 1.0, 1.67 -> 0, 1, 1.
    row = np.array([[10, 20, 30]], np.uint8)
    assert aff.resize_packed(row, (1, 2)).tolist() == [[10, 30]]
    assert aff.resize_packed(np.array([[10, 20]], np.uint8), (1, 3)).tolist() == [[10, 20, 20]]
    # Bottom-row invalidity scales with the grid: a 90-row grid with 3 empty rows -> 180 rows with 6.
    valid_bytes = np.where(aff.valid_cells(360, 640, 10), 0xFF, 0).astype(np.uint8)
    assert (aff.resize_packed(valid_bytes, (180, 320))[174:] == 0).all()
    assert (aff.resize_packed(valid_bytes, (180, 320))[:174] == 0xFF).all()


def test_params_from_config_section_and_errors():
    section = yaml.safe_load((REPO / "config.yaml").read_text())["affinity"]
    params = params_from_json(aff.AffinityParams, json.dumps(section), "affinity")
    assert params == aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6,
                                        bottom_rows=10)
    with pytest.raises(ValueError, match="affinity.tau_flow"):
        aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=1.5, bottom_rows=10)
    with pytest.raises(ValueError, match="affinity.bottom_rows"):
        aff.AffinityParams(theta_color=2.0, tau_color=0.3, theta_flow=0.5, tau_flow=0.6, bottom_rows=2.5)
    with pytest.raises(ValueError, match="missing keys"):
        params_from_json(aff.AffinityParams, json.dumps({"theta_color": 2.0}), "affinity")


def write_flow_store(path: Path, root: Path, shard: int, shard_size: int, seed: int = 0) -> dict:
    """A flow store written with pipeline.flow's own writer, holding random RGB flow (T, H, W, 3) per video."""
    import zarr

    from pipeline import flow as flow_stage
    from pipeline.shards import videos_of_shard
    from pipeline.ytvis import load_ytvis

    section = yaml.safe_load((REPO / "config.yaml").read_text())["flow"] | {"shard_size": shard_size}
    params = flow_stage.FlowParams.from_json(json.dumps(section), "test flow section")
    dataset = load_ytvis(root)
    ids = videos_of_shard([v.id for v in dataset.videos], shard, shard_size)
    attrs = flow_stage.store_attributes(params, ids, checkpoint_sha256=None)
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=attrs)
    rng = np.random.default_rng(seed)
    for vid in ids:
        video = dataset.video_by_id[vid]
        flow_stage.write_video(group, vid, rng.integers(0, 256, (video.length, video.height, video.width, 3),
                                                        dtype=np.uint8))
    return attrs


def test_cli_writes_shard_store(make_ytvis, tmp_path):
    import zarr

    from pipeline.ytvis import load_ytvis

    root = make_ytvis(videos=6, frames=3, height=26, width=32)      # 26 rows: a partial bottom cell
    flow_store = tmp_path / "flow" / "shard_1.zarr"
    flow_attrs = write_flow_store(flow_store, root, shard=1, shard_size=4)
    out = tmp_path / "affinity" / "shard_1.zarr"
    (tmp_path / "affinity" / ".shard_1.zarr.killed.tmp").mkdir(parents=True)  # left by a killed run
    (out / "stale").mkdir(parents=True)                              # an older store: replaced whole
    section = {"theta_color": 2.0, "tau_color": 0.3, "theta_flow": 0.5, "tau_flow": 0.6, "bottom_rows": 10}
    aff.main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--shard", "1",
              "--flow", str(flow_store), "--params", json.dumps(section), "--out", str(out),
              "--log-json", str(tmp_path / "log.json")])
    store = zarr.open_group(str(out), mode="r")
    dataset = load_ytvis(root)
    assert store.attrs["videos"] == flow_attrs["videos"] == [v.id for v in dataset.videos][4:]
    assert store.attrs["params"] == section and store.attrs["flow_store"] == flow_attrs
    flow_group = zarr.open_group(str(flow_store), mode="r")
    params = aff.AffinityParams(**section)
    set_bits = {"color": 0, "flow": 0}
    for vid in flow_attrs["videos"]:
        video = dataset.video_by_id[vid]
        color, flow = store[str(vid)]["color"][...], store[str(vid)]["flow"][...]
        assert color.shape == flow.shape == (3, 7, 8) and color.dtype == np.uint8
        for t in range(3):
            frame = aff.read_frame(dataset.frame_path(video, t), vid, t, 26, 32)
            want = aff.frame_masks(frame, flow_group[str(vid)][t], params)
            assert np.array_equal(color[t], want[0]) and np.array_equal(flow[t], want[1])
        set_bits["color"] += aff.unpack_bits(color).sum()
        set_bits["flow"] += aff.unpack_bits(flow).sum()
    summary = json.loads((tmp_path / "log.json").read_text())
    assert summary["frames"] == 6 and summary["videos"] == 2
    for name, count in set_bits.items():
        assert summary["pair_fraction"][name] == round(count / (8 * 6 * 7 * 8), 4)
    assert not (out / "stale").exists()
    assert [p.name for p in out.parent.iterdir()] == ["shard_1.zarr"]  # no temporary folder left


def test_pooled_job_writes_byte_identical_store(make_ytvis, tmp_path):
    root = make_ytvis(videos=6, frames=5, height=26, width=32)
    flow_store = tmp_path / "flow" / "shard_0.zarr"
    write_flow_store(flow_store, root, shard=0, shard_size=4)
    section = {"theta_color": 2.0, "tau_color": 0.3, "theta_flow": 0.5, "tau_flow": 0.6, "bottom_rows": 10}
    stores, manifest = {}, write_test_manifest(root)
    for threads in (1, 3):
        out = tmp_path / f"threads_{threads}" / "shard_0.zarr"
        aff.main(["--root", str(root), "--manifest", str(manifest), "--shard", "0",
                  "--flow", str(flow_store), "--params", json.dumps(section), "--out", str(out),
                  "--threads", str(threads), "--log-json", str(out.parent / "log.json")])
        stores[threads] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        assert json.loads((out.parent / "log.json").read_text())["threads"] == threads
    assert len(stores[1]) > 8 and stores[1] == stores[3]
    with pytest.raises(ValueError, match="--threads must be ≥ 1"):
        aff.run_shard(root, manifest, 0, flow_store, aff.AffinityParams(**section), tmp_path / "x", 0)


def test_cli_rejects_flow_store_of_another_shard(make_ytvis, tmp_path):
    root = make_ytvis(videos=6, frames=2)
    flow_store = tmp_path / "shard_0.zarr"
    write_flow_store(flow_store, root, shard=0, shard_size=4)
    out = tmp_path / "affinity" / "shard_1.zarr"
    section = {"theta_color": 2.0, "tau_color": 0.3, "theta_flow": 0.5, "tau_flow": 0.6, "bottom_rows": 10}
    with pytest.raises(ValueError, match="rerun rule flow for this shard"):
        aff.main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--shard", "1",
                  "--flow", str(flow_store), "--params", json.dumps(section), "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("how", ["truncated_jpeg", "wrong_size", "missing_chunk", "corrupt_chunk",
                                 "flow_store_of_another_shard", "flow_store_of_another_format"])
def test_bad_input_fails_the_job_naming_it_and_leaves_nothing(make_ytvis, tmp_path, how):
    root = make_ytvis(videos=6, frames=3)  # shard 1 of size 4: videos 129 and 136 (vid004ab, vid005ab)
    flow_store = tmp_path / "flow" / "shard_1.zarr"
    write_flow_store(flow_store, root, shard=0 if how == "flow_store_of_another_shard" else 1, shard_size=4)
    frame = root / "JPEGImages" / "vid005ab" / "00010.jpg"  # video 136 frame 2, after video 129 was computed
    expected = {"truncated_jpeg": f"{frame}: video 136 frame 2 is a truncated JPEG",
                "wrong_size": f"{frame}: video 136 frame 2 is 32x28, train.json says 32x24",
                "missing_chunk": f"{flow_store}: video 136 flow: frame 2: chunk 136/c/0/0/0/0 is missing",
                "corrupt_chunk": f"{flow_store}: video 136 flow: frame 2: chunk 136/c/0/0/0/0 cannot be decoded",
                "flow_store_of_another_shard": f"{flow_store}: holds videos [101, 108, 115, 122], expected [129, 136]",
                "flow_store_of_another_format": f"{flow_store}: store format 0, this code reads 2"}[how]
    if how in ("truncated_jpeg", "wrong_size"):
        damage_frame(frame, how)
    elif how in ("missing_chunk", "corrupt_chunk"):  # frame 2 inside the video's shard; frames 0, 1 still read
        (drop_shard_chunk if how == "missing_chunk" else corrupt_shard_chunk)(flow_store / "136", 2)
    elif how == "flow_store_of_another_format":
        set_store_attribute(flow_store, ("format",), 0)
    out = tmp_path / "affinity" / "shard_1.zarr"
    section = {"theta_color": 2.0, "tau_color": 0.3, "theta_flow": 0.5, "tau_flow": 0.6, "bottom_rows": 10}
    with pytest.raises(ValueError) as err:
        aff.main(["--root", str(root), "--manifest", str(write_test_manifest(root)), "--shard", "1",
                  "--flow", str(flow_store), "--params", json.dumps(section), "--out", str(out),
                  "--log-json", str(tmp_path / "affinity" / "shard_1.json")])
    assert expected in str(err.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    assert leftovers(tmp_path) == []


def test_stage_store_is_accepted_by_its_reader_and_other_stores_are_not(make_ytvis, tmp_path):
    root = make_ytvis(videos=6, frames=2)
    flow_store = tmp_path / "flow" / "shard_1.zarr"
    flow_attrs = write_flow_store(flow_store, root, shard=1, shard_size=4)
    out = tmp_path / "affinity" / "shard_1.zarr"
    aff.run_shard(root, write_test_manifest(root), 1, flow_store, aff.AffinityParams(2.0, 0.3, 0.5, 0.6, 10), out)
    assert aff.open_affinity_store(out, 1, flow_attrs).attrs["videos"] == [129, 136]
    with pytest.raises(aff.AffinityStoreMismatch, match=f"{out}: store of shard 1, expected shard 0"):
        aff.open_affinity_store(out, 0, flow_attrs)
    with pytest.raises(aff.AffinityStoreMismatch, match=r"built from another flow store .*\['params'\] differ"):
        aff.open_affinity_store(out, 1, flow_attrs | {"params": flow_attrs["params"] | {"estimator": "gma"}})
    set_store_attribute(out, ("neighbour_offsets",), [[0, 2]] * 8)
    with pytest.raises(aff.AffinityStoreMismatch, match="neighbour order"):
        aff.open_affinity_store(out, 1, flow_attrs)
