"""model/data.py: augmentation consistency, collate, the iteration sampler (DDP slices, grouping, resume)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from model.data import (FrameDataset, IterationBatchSampler, Sample, SampleKey, ShardStores, augment, collate,
                        grouped_batches, resized_shape)
from pipeline.affinity import frame_masks, grid_shape, resize_packed, unpack_bits
from pipeline.flow_codec import MAX_FLIP_ERROR, flow_to_rgb
from pipeline.synthetic import video_name

from conftest import AFFINITY, BAD_ROW, FLOW_DAMAGE, FRAME_DAMAGE, PAIRS_DAMAGE, damaged_copy


def _dataset(tiny: dict, min_sizes=(64,), max_size=64, flip_prob=0.5, flow=True) -> FrameDataset:
    return FrameDataset(tiny["index"], tiny["frames"], tiny["flow"], tiny["affinity"], min_sizes, max_size,
                        flip_prob, load_flow=flow, load_flow_pairs=flow)


def _ground_truth(tiny: dict, frame: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The float flow (H, W, 2) of row `frame` and the instance masks (H, W) visible in it, from the json."""
    train = json.loads((tiny["root"] / "train.json").read_text())
    rows = [(v["id"], t) for v in sorted(train["videos"], key=lambda v: v["id"]) for t in range(len(v["file_names"]))]
    vid, t = rows[frame]
    gt = np.load(tiny["root"] / "flow_gt" / f"{video_name(vid)}.npy")
    flow = gt[t] if t < len(gt) else -gt[-1]
    masks = [mask_utils.decode(a["segmentations"][t]).astype(bool) for a in sorted(train["annotations"],
             key=lambda a: a["id"]) if a["video_id"] == vid and a["segmentations"][t] is not None]
    return flow, masks


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """XYXY pixel-edge box of a bool mask (H, W)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@pytest.mark.parametrize("frame", [0, 4, 11])
def test_flipped_sample_equals_the_flipped_frame(tiny_data: dict, frame: int) -> None:
    """Image, masks, flow and boxes of a flipped sample equal what the stages compute from the mirrored
    frame: colour masks bit for bit, flow within the codec's bound, boxes from the mirrored instance masks."""
    data = _dataset(tiny_data)
    image, flow, pair_color, pair_flow, boxes, _ = data.read(frame)
    a_image, a_flow, a_color, a_flow_pairs, a_boxes = augment(image, flow, pair_color, pair_flow, boxes, True,
                                                              image.shape[:2])
    mirrored = image[:, ::-1]
    assert np.array_equal(a_image, mirrored)
    gt_flow, gt_masks = _ground_truth(tiny_data, frame)
    mirrored_flow = gt_flow[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)  # (−u, v), columns reversed
    expected_flow = flow_to_rgb(np.ascontiguousarray(mirrored_flow))
    assert np.abs(a_flow.astype(int) - expected_flow.astype(int)).max() <= MAX_FLIP_ERROR + 1
    color, flow_pairs = frame_masks(np.ascontiguousarray(mirrored), expected_flow, AFFINITY)
    assert np.array_equal(a_color, color)
    disagree = (unpack_bits(a_flow_pairs) != unpack_bits(flow_pairs)).mean()
    assert disagree < 0.02  # pairs near τ_flow may move with the ≤ 3-level colour error of the flip
    expected_boxes = np.stack([_tight_box(m[:, ::-1]) for m in gt_masks])
    assert np.allclose(np.sort(a_boxes, axis=0), np.sort(expected_boxes, axis=0))


def test_resize_keeps_boxes_and_masks_on_the_resized_frame(tiny_data: dict) -> None:
    """After resize: boxes are the scaled boxes (within a pixel of the resized masks' boxes), packed masks
    are the nearest resample on the new grid, image and flow have the new size."""
    data = _dataset(tiny_data)
    image, flow, pair_color, pair_flow, boxes, _ = data.read(3)
    out_hw = (96, 96)
    a_image, a_flow, a_color, _, a_boxes = augment(image, flow, pair_color, pair_flow, boxes, False, out_hw)
    assert a_image.shape == a_flow.shape == (96, 96, 3)
    assert np.array_equal(a_color, resize_packed(pair_color, grid_shape(96, 96)))
    _, gt_masks = _ground_truth(tiny_data, 3)
    import cv2
    resized = [cv2.resize(m.astype(np.uint8), (96, 96), interpolation=cv2.INTER_NEAREST) > 0 for m in gt_masks]
    expected = np.stack([_tight_box(m) for m in resized])
    assert np.abs(np.sort(a_boxes, axis=0) - np.sort(expected, axis=0)).max() <= 1.5


def test_getitem_draws_depend_only_on_the_key(tiny_data: dict) -> None:
    """The same key gives the same sample in another (unpickled) copy; flip draws follow flip_prob."""
    data = _dataset(tiny_data, min_sizes=(64, 96), max_size=128)
    copy = pickle.loads(pickle.dumps(data))
    key = SampleKey(frame=5, seed=3, iteration=7, slot=1)
    a, b = data[key], copy[key]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.pair_flow, b.pair_flow)
    assert np.array_equal(a.boxes_xyxy, b.boxes_xyxy)
    always = _dataset(tiny_data, flip_prob=1.0)
    image = always.read(5)[0]
    assert np.array_equal(always[key].image, image[:, ::-1])
    assert np.array_equal(_dataset(tiny_data, flip_prob=0.0)[key].image, image)


def test_resized_shape_caps_the_long_side() -> None:
    """Short side to `short` unless the long side would exceed max_size (detectron2's ResizeShortestEdge)."""
    assert resized_shape(720, 1280, 640, 1333) == (640, 1138)
    assert resized_shape(720, 1280, 800, 1333) == (750, 1333)
    assert resized_shape(1280, 720, 800, 1333) == (1333, 750)


def test_collate_pads_and_masks_invalid_pairs() -> None:
    """Padding to multiples of 32, zero-box images kept, no pair touches padding or leaves the frame."""
    rng = np.random.default_rng(0)
    a = Sample(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8), None, np.full((10, 18), 255, np.uint8), None,
               np.array([[1, 2, 30, 20]], np.float32), np.array([1]))
    b = Sample(rng.integers(0, 255, (33, 20, 3), dtype=np.uint8), None, np.full((9, 5), 255, np.uint8), None,
               np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    batch = collate([a, b])
    assert batch.images.shape == (2, 3, 64, 96) and batch.pair_color.shape == (2, 8, 16, 24)
    assert torch.equal(batch.images[0, :, :40, :70], torch.from_numpy(a.image).permute(2, 0, 1))
    assert batch.images.dtype == torch.uint8 and batch.flows.dtype == torch.uint8
    assert batch.images[0, :, 40:].abs().sum() == 0 and batch.images[0, :, :, 70:].abs().sum() == 0
    assert batch.flows.abs().sum() == 0
    assert batch.image_sizes == [(40, 70), (33, 20)]
    assert batch.boxes_xyxy[1].shape == (0, 4) and batch.classes[1].shape == (0,)
    # brute force: pair (y, x, k) is on iff the cell and its neighbour at ±2 cells lie in the image's grid
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    for i, (gh, gw) in enumerate([(10, 18), (9, 5)]):
        for k, (dy, dx) in enumerate(offsets):
            for y in range(16):
                for x in range(24):
                    inside = y < gh and x < gw and 0 <= y + dy < gh and 0 <= x + dx < gw
                    assert bool(batch.pair_color[i, k, y, x]) == inside
    assert torch.equal(batch.pair_flow, batch.pair_color)  # flow masks not loaded: all valid pairs


def test_sampler_two_ranks_see_the_one_process_batch() -> None:
    """Rank slices of world 2 concatenate to the world-1 batch, keys (and so augmentations) included."""
    groups = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1])
    one = list(IterationBatchSampler(groups, 4, 0, 1, iters=9, seed=5))
    r0 = list(IterationBatchSampler(groups, 4, 0, 2, iters=9, seed=5))
    r1 = list(IterationBatchSampler(groups, 4, 1, 2, iters=9, seed=5))
    assert len(one) == len(r0) == len(r1) == 9
    for full, a, b in zip(one, r0, r1):
        assert full == a + b
        assert len({groups[k.frame] for k in full}) == 1  # one aspect group per batch
    assert [k.iteration for k in one[3]] == [3] * 4 and [k.slot for k in r1[3]] == [2, 3]


def test_sampler_resumes_from_an_iteration_and_is_seeded() -> None:
    """start_iter=k yields exactly the tail of the full run; another seed gives another order."""
    groups = np.zeros(10, dtype=np.int64)
    full = list(IterationBatchSampler(groups, 2, 0, 1, iters=12, seed=1))
    assert list(IterationBatchSampler(groups, 2, 0, 1, iters=12, seed=1, start_iter=7)) == full[7:]
    assert list(IterationBatchSampler(groups, 2, 0, 1, iters=12, seed=2)) != full
    first_epoch = [k.frame for batch in full[:5] for k in batch]
    assert sorted(first_epoch) == list(range(10))  # one group: every frame once per epoch


def test_grouped_batches_carry_partial_buckets_over() -> None:
    """A group smaller than the batch still fills batches across epochs."""
    stream = grouped_batches(np.array([0, 0, 0, 1]), 3, seed=0)
    batches = [next(stream) for _ in range(4)]
    for batch in batches:
        assert len(batch) == 3 and (set(batch) <= {0, 1, 2} or set(batch) == {3})


def test_sampler_rejects_uneven_split() -> None:
    """A global batch that does not divide over the processes names the config field."""
    with pytest.raises(ValueError, match="train.batch_size"):
        IterationBatchSampler(np.zeros(4, np.int64), 3, 0, 2, iters=1, seed=0)


def test_flow_flip_table_equals_hflip_flow_rgb() -> None:
    """The memoised flip gives hflip_flow_rgb's bytes, on first use and from the table, for encoded flow and
    for arbitrary colours."""
    from model.data import FlowFlipTable
    from pipeline.flow_codec import hflip_flow_rgb
    yy, xx = np.mgrid[0:24, 0:40].astype(np.float32)
    encoded = flow_to_rgb(np.stack([np.sin(xx / 5) * 3, np.cos(yy / 4) * 2 - 1], -1).astype(np.float32))
    noise = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    table = FlowFlipTable()
    for rgb in (encoded, noise, encoded, noise):
        assert np.array_equal(table(rgb), hflip_flow_rgb(rgb))


@pytest.mark.parametrize("how", FRAME_DAMAGE + FLOW_DAMAGE + PAIRS_DAMAGE)
def test_bad_input_is_an_error_naming_file_or_store_video_and_frame(tiny_data: dict, tmp_path, how: str) -> None:
    """Every damaged input of frame BAD_ROW raises (never zeros) naming what is at fault; the other shard still
    reads. The loader writes nothing, so there is nothing to leave behind."""
    paths, expected = damaged_copy(tiny_data, tmp_path, how)
    data = _dataset(paths)
    with pytest.raises(ValueError) as err:
        data.read(BAD_ROW)
    assert expected in str(err.value)
    image, flow, pair_color, pair_flow, _, _ = data.read(0)  # shard 0, untouched
    assert image.shape == flow.shape == (64, 64, 3) and pair_color.shape == pair_flow.shape == (16, 16)


def test_shard_stores_return_the_stored_bytes(tiny_data: dict) -> None:
    """ShardStores reads what zarr reads, for flow and both packed masks."""
    import zarr

    stores = ShardStores(tiny_data["index"], tiny_data["flow"], tiny_data["affinity"])
    flow = zarr.open_group(str(tiny_data["flow"] / "shard_1.zarr"), mode="r")["3"]
    pairs = zarr.open_group(str(tiny_data["affinity"] / "shard_1.zarr"), mode="r")["3"]
    for t in range(3):
        assert np.array_equal(stores.frame("flow", 1, 3, t, None, (64, 64, 3)), flow[t])
        for name in ("color", "flow"):
            assert np.array_equal(stores.frame("affinity", 1, 3, t, name, (16, 16)), pairs[name][t])
    with pytest.raises(ValueError, match=r"video 3 flow has shape \(3, 64, 64, 3\), the index needs frame 0 of "
                                         r"shape \(64, 65, 3\)"):
        stores.frame("flow", 1, 3, 0, None, (64, 65, 3))


def test_padder_places_images_top_left_on_zeros() -> None:
    """pad_images against a hand-built loop; padded_size rounds the largest side up to 32."""
    from model.data import pad_images, padded_size

    rng = np.random.default_rng(0)
    images = [rng.integers(1, 255, (40, 70, 3), dtype=np.uint8), rng.integers(1, 255, (33, 20, 3), dtype=np.uint8)]
    assert padded_size([(40, 70), (33, 20)]) == (64, 96) and padded_size([(32, 64)]) == (32, 64)
    out = pad_images(images, (64, 96))
    want = np.zeros((2, 3, 64, 96), np.uint8)
    for i, image in enumerate(images):
        for y in range(image.shape[0]):
            for x in range(image.shape[1]):
                want[i, :, y, x] = image[y, x]
    assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), want)


def test_samples_byte_identical_to_negative_stride_route(tiny_data: dict) -> None:
    """cv2.flip / cv2.cvtColor give the bytes of numpy's negative-stride flips and bit arithmetic: every sample
    (flipped or not, resized up and down) equals the route built from `image[:, ::-1]` copies."""
    import cv2

    from pipeline.affinity import hflip_packed
    from pipeline.flow_codec import hflip_flow_rgb

    data = _dataset(tiny_data, min_sizes=(48, 64, 96), max_size=128)
    flips = 0
    for i in range(12):
        key = SampleKey(frame=i, seed=1, iteration=i, slot=0)
        rng = np.random.default_rng([key.seed, key.iteration, key.slot])
        flip, short = bool(rng.random() < 0.5), int(rng.choice((48, 64, 96)))
        image, flow, color, flow_pairs, _, _ = data.read(i)
        if flip:
            image, flow = image[:, ::-1], hflip_flow_rgb(flow)
            color, flow_pairs = hflip_packed(color), hflip_packed(flow_pairs)
        out_hw = resized_shape(image.shape[0], image.shape[1], short, 128)
        if out_hw != image.shape[:2]:
            image = cv2.resize(np.ascontiguousarray(image), out_hw[::-1], interpolation=cv2.INTER_LINEAR)
            flow = cv2.resize(np.ascontiguousarray(flow), out_hw[::-1], interpolation=cv2.INTER_LINEAR)
            grid = grid_shape(*out_hw)
            color, flow_pairs = resize_packed(color, grid), resize_packed(flow_pairs, grid)
        sample = data[key]
        flips += flip
        for got, want in ((sample.image, image), (sample.flow, flow), (sample.pair_color, color),
                          (sample.pair_flow, flow_pairs)):
            assert got.dtype == want.dtype and got.tobytes() == np.ascontiguousarray(want).tobytes()
    assert 0 < flips < 12


def test_collate_channels_last_same_values_without_transposing() -> None:
    """collate(channels_last=True): the same values as the default batch, in channels_last memory."""
    rng = np.random.default_rng(1)
    samples = [Sample(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
                      rng.integers(0, 255, (-(-h // 4), -(-w // 4)), dtype=np.uint8), None,
                      np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)) for h, w in ((40, 70), (33, 20))]
    plain, last = collate(samples), collate(samples, channels_last=True)
    for a, b in ((plain.images, last.images), (plain.flows, last.flows)):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b)
    assert torch.equal(plain.pair_color, last.pair_color) and torch.equal(plain.pair_flow, last.pair_flow)
