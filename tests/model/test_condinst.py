"""model/condinst.py against hand-worked values and brute-force loops."""

from __future__ import annotations

import math
import pytest
import torch
import torch.nn.functional as F

from model.condinst import (
    DynamicMaskHead,
    MaskBranch,
    aligned_bilinear,
    box_masks_s4,
    instance_scores,
    relative_coords,
    sample_instances,
)
from model.losses import pairwise_loss, projection_loss


# ---------------------------------------------------------------- aligned_bilinear


def test_aligned_bilinear_hand_values() -> None:
    # Worked by hand from boxinst.md §5.2: pad right/bottom → [[0,1,1],[2,3,3],[2,3,3]];
    # align-corners resize to 5×5 (rows 0, .5, 1, 1.5, 2); pad left/top by 1; crop 4×4.
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.5, 1.0],
            [0.0, 0.0, 0.5, 1.0],
            [1.0, 1.0, 1.5, 2.0],
            [2.0, 2.0, 2.5, 3.0],
        ]
    ).view(1, 1, 4, 4)
    torch.testing.assert_close(aligned_bilinear(x, 2), expected)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_aligned_bilinear_size_and_alignment(factor: int) -> None:
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    y = aligned_bilinear(x, factor)
    assert y.shape == (2, 3, 5 * factor, 7 * factor)
    # output index factor·k + factor//2 carries input index k exactly
    idx_h = torch.arange(5) * factor + factor // 2
    idx_w = torch.arange(7) * factor + factor // 2
    torch.testing.assert_close(y[:, :, idx_h][:, :, :, idx_w], x)
    # factor 4: output row 4 sits halfway between input rows 0 and 1, output column 2 on input column 0
    if factor == 4:
        torch.testing.assert_close(y[:, :, 4, 2], (x[:, :, 0, 0] + x[:, :, 1, 0]) / 2)


# ---------------------------------------------------------------- mask branch


def test_mask_branch_shape_and_level_sum() -> None:
    torch.manual_seed(0)
    branch = MaskBranch(in_channels=6, num_levels=3, channels=5, out_channels=4, num_convs=2).eval()
    feats = [torch.randn(2, 6, 8 // 2**k, 12 // 2**k) for k in range(3)]
    out = branch(feats)
    assert out.shape == (2, 4, 8, 12)
    # recompute with functional ops: sum of refined levels (upsampled ×1, ×2, ×4), then the tower
    def refine(mod: torch.nn.Sequential, f: torch.Tensor) -> torch.Tensor:
        conv, bn = mod[0], mod[1]
        y = F.conv2d(f, conv.weight, padding=1)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        return F.relu(y * bn.weight[:, None, None] + bn.bias[:, None, None])

    x = sum(aligned_bilinear(refine(branch.refine[k], feats[k]), 2**k) for k in range(3))
    for mod in list(branch.tower)[:-1]:
        x = refine(mod, x)
    final = branch.tower[-1]
    torch.testing.assert_close(out, F.conv2d(x, final.weight, final.bias), rtol=1e-5, atol=1e-5)


def test_mask_branch_single_level_and_errors() -> None:
    branch = MaskBranch(in_channels=4, num_levels=1, channels=8, out_channels=3, num_convs=1)
    assert branch([torch.randn(1, 4, 5, 6)]).shape == (1, 3, 5, 6)
    with pytest.raises(ValueError, match="expected 1 feature levels"):
        branch([torch.randn(1, 4, 5, 6)] * 2)
    two = MaskBranch(in_channels=4, num_levels=2, channels=8, out_channels=3, num_convs=1)
    with pytest.raises(ValueError, match="level 1 is 3×3"):
        two([torch.randn(1, 4, 5, 6), torch.randn(1, 4, 3, 3)])


# ---------------------------------------------------------------- dynamic mask head


def test_num_params_is_233_for_boxinst() -> None:
    # weights 18·8 + 8·8 + 8·1 = 216, biases 8 + 8 + 1 = 17
    assert DynamicMaskHead(in_channels=16, channels=8, num_layers=3).num_params == 233
    assert DynamicMaskHead(in_channels=8, channels=8, num_layers=3).num_params == 169  # CondInst
    assert DynamicMaskHead(in_channels=16, channels=16, num_layers=3).num_params == 593  # mmdet's width


def test_relative_coords_order_and_scale() -> None:
    # instance at (x, y) = (100, 36) on level 1 (soi 128); stride-8 grid of 3×4
    soi = torch.tensor([64.0, 128.0, 256.0, 512.0, 1024.0])
    rel = relative_coords(torch.tensor([[100.0, 36.0], [4.0, 4.0]]), torch.tensor([1, 4]), 3, 4, 8, soi)
    assert rel.shape == (2, 2, 3, 4)
    for i in range(3):
        for j in range(4):
            gx, gy = 8 * j + 4, 8 * i + 4
            assert rel[0, 0, i, j].item() == pytest.approx((100 - gx) / 128)  # channel 0: Δx
            assert rel[0, 1, i, j].item() == pytest.approx((36 - gy) / 128)  # channel 1: Δy
            assert rel[1, 0, i, j].item() == pytest.approx((4 - gx) / 1024)  # P7: 2 × 512


def test_dynamic_head_parameter_layout_by_hand() -> None:
    # Instance 0: layer-1 unit 0 = relu(Δx), passed through unit 0 of layer 2 and the output layer,
    # plus output bias 0.5. Indices in the 233-vector: w1 (8,18) at 0..143 (w1[0, 0] = Δx weight at 0),
    # w2 (8,8) at 144..207, w3 (1,8) at 208..215, b1 216..223, b2 224..231, b3 232.
    head = DynamicMaskHead()
    params = torch.zeros(1, 233)
    params[0, 0] = 1.0
    params[0, 144] = 1.0
    params[0, 208] = 1.0
    params[0, 232] = 0.5
    feats = torch.randn(1, 16, 3, 4)
    loc = torch.tensor([[20.0, 12.0]])
    out = head(feats, params, torch.tensor([0]), loc, torch.tensor([0]))
    assert out.shape == (1, 1, 6, 8)
    s8 = out[:, :, 1::2, 1::2]  # stride-8 samples carried by aligned_bilinear
    for j in range(4):
        expected = max((20.0 - (8 * j + 4)) / 64, 0.0) + 0.5
        torch.testing.assert_close(s8[0, 0, :, j], torch.full((3,), expected))
    # a feature weight: w1[0, 2 + 5] (feature channel 5) at index 7 makes unit 0 read feat 5
    params = torch.zeros(1, 233)
    params[0, 7] = 1.0
    params[0, 144] = 1.0
    params[0, 208] = 1.0
    out = head(feats, params, torch.tensor([0]), loc, torch.tensor([0]))
    torch.testing.assert_close(out[0, 0, 1::2, 1::2], feats[0, 5].clamp(min=0))


def brute_dynamic_head(head: DynamicMaskHead, feats, params, im_inds, locs, levels) -> torch.Tensor:
    """Per instance: parse the vector with explicit offsets, loop over layers with F.conv2d 1×1."""
    soi = [64, 128, 256, 512, 1024]
    outs = []
    n, c, h, w = feats.shape
    dims = [c + 2, 8, 8, 1]
    for p in range(params.shape[0]):
        rel = torch.zeros(2, h, w)
        for i in range(h):
            for j in range(w):
                rel[0, i, j] = (locs[p, 0] - (8 * j + 4)) / soi[int(levels[p])]
                rel[1, i, j] = (locs[p, 1] - (8 * i + 4)) / soi[int(levels[p])]
        x = torch.cat([rel, feats[int(im_inds[p])]])[None]
        vec = params[p].tolist()
        offset = 0
        ws = []
        for k in range(3):
            size = dims[k + 1] * dims[k]
            ws.append(torch.tensor(vec[offset : offset + size]).view(dims[k + 1], dims[k], 1, 1))
            offset += size
        for k in range(3):
            b = torch.tensor(vec[offset : offset + dims[k + 1]])
            offset += dims[k + 1]
            x = F.conv2d(x, ws[k], b)
            if k < 2:
                x = F.relu(x)
        outs.append(x)
    return aligned_bilinear(torch.cat(outs), 2)


def test_dynamic_head_matches_loops() -> None:
    gen = torch.Generator().manual_seed(4)
    head = DynamicMaskHead()
    feats = torch.randn(2, 16, 4, 5, generator=gen)
    params = torch.randn(5, 233, generator=gen)
    im_inds = torch.tensor([0, 1, 1, 0, 1])
    locs = torch.rand(5, 2, generator=gen) * 40
    levels = torch.tensor([0, 1, 2, 3, 4])
    got = head(feats, params, im_inds, locs, levels)
    expected = brute_dynamic_head(head, feats, params, im_inds, locs, levels)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_dynamic_head_no_instances_still_touches_graph() -> None:
    head = DynamicMaskHead()
    feats = torch.randn(2, 16, 4, 5, requires_grad=True)
    params_all = torch.randn(7, 233, requires_grad=True)
    keep = torch.zeros(0, dtype=torch.long)
    logits = head(feats, params_all[keep], keep, torch.zeros(0, 2), keep)
    assert logits.shape == (0, 1, 8, 10)
    boxes = torch.zeros(0, 1, 8, 10)
    loss = projection_loss(logits, boxes) + pairwise_loss(logits, boxes, torch.zeros(0, 8, 8, 10))
    loss.backward()
    assert loss.item() == 0.0
    assert feats.grad is not None and params_all.grad is not None
    assert (feats.grad == 0).all() and (params_all.grad == 0).all()


def test_dynamic_head_rejects_wrong_sizes() -> None:
    head = DynamicMaskHead()
    with pytest.raises(ValueError, match=r"params must be \(P, 233\)"):
        head(torch.randn(1, 16, 2, 2), torch.randn(1, 232), torch.tensor([0]), torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="15 channels, expected 16"):
        head(torch.randn(1, 15, 2, 2), torch.randn(1, 233), torch.tensor([0]), torch.zeros(1, 2), torch.tensor([0]))


# ---------------------------------------------------------------- instance sampling


def brute_sample(gt_inds, im_inds, scores, max_per_image) -> list[int]:
    kept = []
    for img in sorted(set(im_inds.tolist())):
        members = [p for p in range(len(gt_inds)) if im_inds[p] == img]
        boxes = sorted({int(gt_inds[p]) for p in members})
        quota = max(max_per_image // len(boxes), 1)
        for g in boxes:
            of_box = [p for p in members if gt_inds[p] == g]
            of_box.sort(key=lambda p: (-float(scores[p]), p))
            kept.extend(of_box[:quota])
    return sorted(kept)


def test_sample_instances_hand_example() -> None:
    # image 0: boxes 0 and 1 -> K = 2, quota 4 // 2 = 2; image 1: box 2 alone -> quota 4
    gt = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2])
    im = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    sc = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.3, 0.8, 0.1, 0.7, 0.6])
    assert sample_instances(gt, im, sc, max_per_image=4).tolist() == [1, 2, 3, 4, 5, 7, 8]
    # K > max_per_image: every box keeps max(0, 1) = 1
    assert sample_instances(gt, im, sc, max_per_image=1).tolist() == [1, 3, 5]


def test_sample_instances_matches_loops() -> None:
    gen = torch.Generator().manual_seed(5)
    p = 300
    im = torch.randint(0, 3, (p,), generator=gen)
    gt = im * 10 + torch.randint(0, 7, (p,), generator=gen)  # global box indices per image
    sc = torch.rand(p, generator=gen)
    for max_per_image in (64, 8, 3):
        assert sample_instances(gt, im, sc, max_per_image).tolist() == brute_sample(gt, im, sc, max_per_image)
    assert sample_instances(gt[:0], im[:0], sc[:0]).shape == (0,)


def test_instance_scores() -> None:
    cls = torch.tensor([[0.0, 2.0, -1.0], [-3.0, -4.0, -5.0]])
    ctr = torch.tensor([1.0, 0.0])
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([sig(2.0) * sig(1.0), sig(-3.0) * 0.5])
    torch.testing.assert_close(instance_scores(cls, ctr), expected)


# ---------------------------------------------------------------- box masks


def test_box_masks_s4_hand_example() -> None:
    # x0=5.5 x1=13.9 -> int columns 5..13: stride-4 samples at x = 2, 6, 10, 14 -> j = 1, 2
    # y0=2 y1=6 -> rows 2..6: samples at y = 2, 6, 10 -> i = 0, 1
    got = box_masks_s4(torch.tensor([[5.5, 2.0, 13.9, 6.0]]), 3, 4)
    expected = torch.zeros(1, 1, 3, 4)
    expected[0, 0, 0:2, 1:3] = 1
    torch.testing.assert_close(got, expected)


def test_box_masks_s4_matches_full_resolution_slicing() -> None:
    gen = torch.Generator().manual_seed(6)
    h, w = 40, 56
    xy0 = torch.rand(20, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
    xy1 = xy0 + torch.rand(20, 2, generator=gen) * 30 + 0.5
    boxes = torch.cat([xy0, xy1], dim=1)
    got = box_masks_s4(boxes, h // 4, w // 4)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        full = torch.zeros(h, w)
        full[int(y0) : int(y1 + 1), int(x0) : int(x1 + 1)] = 1
        torch.testing.assert_close(got[k, 0], full[2::4, 2::4])
