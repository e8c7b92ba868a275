"""FCOS head, matching, losses and inference (model/fcos.py) against hand-worked numbers and formulas."""

from __future__ import annotations

import math

import pytest
import torch

from model.fcos import (INF, SIZE_RANGES, FCOSHead, HeadOutputs, Targets, assign_targets,
                        assign_targets_per_image, centerness_target, fcos_losses, flatten_levels,
                        group_norm_groups, locations_per_level, postprocess)

STRIDES = [8, 16, 32, 64, 128]


def _grid(h: int, w: int, stride: int) -> torch.Tensor:
    return locations_per_level([(h, w)], [stride], torch.device("cpu"))[0]


def _single_level(boxes, classes, stride=8, size=(0.0, INF), hw=(32, 32), num_classes=3):
    loc = _grid(*hw, stride)
    m = len(loc)
    return loc, assign_targets_per_image(
        loc, torch.full((m,), float(stride)), torch.tensor(size).expand(m, 2),
        torch.tensor(boxes, dtype=torch.float32), torch.tensor(classes), num_classes)


def _positives(loc, labels, num_classes=3):
    return {tuple(int(v) for v in loc[i]) for i in torch.nonzero(labels != num_classes).flatten()}


def test_locations_row_major_at_half_stride():
    loc = _grid(2, 3, 8)
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_flatten_levels_order():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    b = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1) + 100
    flat = flatten_levels([a, b])
    assert flat.shape == (2, 5, 3)
    assert flat[1, 2].tolist() == a[1, :, 1, 0].tolist()  # location (i=1, j=0) of image 1
    assert flat[0, 4].tolist() == b[0, :, 0, 0].tolist()


def test_group_norm_groups():
    assert group_norm_groups(256) == 32
    assert group_norm_groups(64) == 32
    assert group_norm_groups(32) == 16
    assert group_norm_groups(48) == 16  # 32 does not divide 48; 16 does, 3 channels a group
    assert group_norm_groups(1) == 1


def test_centre_sampling_radius_is_strict():
    # box centre (96, 96), radius 1.5 * 8 = 12: region (84, 108) open, so 84 and 108 are outside
    loc, (labels, reg, gi) = _single_level([[0, 0, 192, 192]], [1])
    assert _positives(loc, labels) == {(92, 92), (92, 100), (100, 92), (100, 100)}
    assert set(labels[labels != 3].tolist()) == {1}
    i = [tuple(v) for v in loc.int().tolist()].index((92, 100))
    assert reg[i].tolist() == [92, 100, 100, 92]
    # centre (100, 100): region (88, 112) holds 92, 100, 108
    loc, (labels, _, _) = _single_level([[0, 0, 200, 200]], [0])
    assert _positives(loc, labels) == {(x, y) for x in (92, 100, 108) for y in (92, 100, 108)}


def test_centre_region_clipped_to_box():
    # narrow box: x region (5 - 12, 5 + 12) clipped to (0, 10) -> only x = 4
    loc, (labels, _, _) = _single_level([[0, 0, 10, 200]], [2])
    assert _positives(loc, labels) == {(4, 92), (4, 100), (4, 108)}


def test_size_ranges_per_level():
    # box (0, 0, 100, 100) on a 128x128 image, worked by hand:
    # p3 (s 8): region (38, 62): x, y in {44, 52, 60}; max(l,t,r,b) <= 60 <= 64 -> all 9 cared
    # p4 (s 16): region (26, 74): x, y in {40, 56, 72}; cared (64..128) only where x or y = 72
    # p5 (s 32): region (2, 98): x, y in {16, 48, 80}; max side <= 84 < 128 -> none
    shapes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    locs = locations_per_level(shapes, STRIDES, torch.device("cpu"))
    t = assign_targets(locs, STRIDES, [torch.tensor([[0.0, 0.0, 100.0, 100.0]])], [torch.tensor([0])], 3)
    labels = t.labels[0]
    sizes = [h * w for h, w in shapes]
    starts = [sum(sizes[:k]) for k in range(5)]
    per_level = [_positives(locs[k], labels[starts[k]:starts[k] + sizes[k]]) for k in range(5)]
    assert per_level[0] == {(x, y) for x in (44, 52, 60) for y in (44, 52, 60)}
    assert per_level[1] == {(72, 40), (72, 56), (72, 72), (40, 72), (56, 72)}
    assert per_level[2] == per_level[3] == per_level[4] == set()
    # regression targets are in stride units: p3 location (44, 44) -> (44, 44, 56, 56) / 8
    k = [tuple(v) for v in locs[0].int().tolist()].index((44, 44))
    assert t.reg_ltrb[0, k].tolist() == pytest.approx([5.5, 5.5, 7.0, 7.0])
    k = starts[1] + [tuple(v) for v in locs[1].int().tolist()].index((72, 72))
    assert t.reg_ltrb[0, k].tolist() == pytest.approx([4.5, 4.5, 1.75, 1.75])


def test_smallest_box_wins_and_equal_areas_take_first():
    loc, (labels, _, gi) = _single_level([[0, 0, 100, 100], [20, 20, 80, 80]], [0, 1])
    pos = labels != 3
    assert pos.sum() == 9 and (gi[pos] == 1).all() and (labels[pos] == 1).all()
    # equal areas: both boxes claim (52, 52); argmin keeps index 0
    loc, (labels, _, gi) = _single_level([[0, 0, 100, 100], [4, 4, 104, 104]], [0, 2])
    k = [tuple(v) for v in loc.int().tolist()].index((52, 52))
    assert gi[k] == 0 and labels[k] == 0


def _brute_force(loc, stride, rng, boxes, classes, num_classes):
    labels, gis = [], []
    for (x, y), s, (lo, hi) in zip(loc.tolist(), stride.tolist(), rng.tolist()):
        best, best_area = -1, INF
        for g, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 1.5 * s
            inside = (x > max(cx - r, x0) and x < min(cx + r, x1) and y > max(cy - r, y0)
                      and y < min(cy + r, y1))
            side = max(x - x0, y - y0, x1 - x, y1 - y)
            area = (x1 - x0) * (y1 - y0)
            if inside and lo <= side <= hi and area < best_area:
                best, best_area = g, area
        gis.append(best)
        labels.append(int(classes[best]) if best >= 0 else num_classes)
    return labels, gis


def test_matching_equals_brute_force_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    shapes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    locs = locations_per_level(shapes, STRIDES, torch.device("cpu"))
    all_loc = torch.cat(locs)
    stride = torch.cat([torch.full((len(l),), float(s)) for l, s in zip(locs, STRIDES)])
    rng = torch.cat([torch.tensor(SIZE_RANGES[k]).expand(len(l), 2) for k, l in enumerate(locs)])
    for _ in range(5):
        xy = torch.rand(6, 2, generator=gen) * torch.tensor([128.0, 96.0])
        wh = torch.rand(6, 2, generator=gen) * 120 + 4
        boxes = torch.cat([xy, xy + wh], dim=1)
        classes = torch.randint(0, 4, (6,), generator=gen)
        labels, _, gi = assign_targets_per_image(all_loc, stride, rng, boxes, classes, 4)
        want_labels, want_gi = _brute_force(all_loc, stride, rng, boxes, classes, 4)
        assert labels.tolist() == want_labels
        assert gi.tolist() == want_gi


def test_image_without_boxes_is_all_background():
    locs = locations_per_level([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)], STRIDES, torch.device("cpu"))
    t = assign_targets(locs, STRIDES, [torch.zeros((0, 4)), torch.tensor([[0.0, 0.0, 30.0, 30.0]])],
                       [torch.zeros((0,), dtype=torch.long), torch.tensor([1])], 2)
    assert (t.labels[0] == 2).all() and (t.gt_index[0] == -1).all()
    assert (t.labels[1] != 2).any()


def _targets(labels, reg):
    return Targets(torch.tensor([labels]), torch.tensor([reg], dtype=torch.float32),
                   torch.tensor([[0 if lab < 3 else -1 for lab in labels]]))


def test_losses_against_direct_formulas():
    torch.manual_seed(0)
    k = 3
    labels = [0, 3, 2, 3, 1]
    reg = [[1, 2, 3, 1], [0, 0, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0], [0.5, 1.5, 1.0, 4.0]]
    cls = torch.randn(1, 5, k)
    box = torch.rand(1, 5, 4) * 3 + 0.1
    ctr = torch.randn(1, 5)
    out = fcos_losses(cls, box, ctr, _targets(labels, reg))
    pos = [i for i, lab in enumerate(labels) if lab < k]
    num_pos = len(pos)
    # focal: sum over all (location, class) of -alpha_t (1 - p_t)^2 log p_t
    focal = 0.0
    for i, lab in enumerate(labels):
        for c in range(k):
            p = torch.sigmoid(cls[0, i, c]).item()
            t = 1.0 if lab == c else 0.0
            p_t = p if t else 1 - p
            a_t = 0.25 if t else 0.75
            focal += -a_t * (1 - p_t) ** 2 * math.log(p_t)
    assert out["loss_cls"].item() == pytest.approx(focal / num_pos, rel=1e-5)
    # GIoU weighted by centerness target
    num, den, bce = 0.0, 0.0, 0.0
    for i in pos:
        l, t, r, b = reg[i]
        pl, pt, pr, pb = box[0, i].tolist()
        c_t = math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))
        inter = (min(l, pl) + min(r, pr)) * (min(t, pt) + min(b, pb))
        union = (l + r) * (t + b) + (pl + pr) * (pt + pb) - inter
        hull = (max(l, pl) + max(r, pr)) * (max(t, pt) + max(b, pb))
        giou = inter / union - (hull - union) / hull
        num += (1 - giou) * c_t
        den += c_t
        q = torch.sigmoid(ctr[0, i]).item()
        bce += -(c_t * math.log(q) + (1 - c_t) * math.log(1 - q))
    assert out["loss_box"].item() == pytest.approx(num / den, rel=1e-4)
    assert out["loss_ctr"].item() == pytest.approx(bce / num_pos, rel=1e-5)


def test_centerness_target_values():
    c = centerness_target(torch.tensor([[1.0, 2.0, 3.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    assert c.tolist() == pytest.approx([math.sqrt(1 / 3 * 1 / 2), 1.0])


def test_no_positive_losses_are_zero_but_connected():
    cls = torch.randn(1, 4, 2, requires_grad=True)
    box = torch.rand(1, 4, 4, requires_grad=True)
    ctr = torch.randn(1, 4, requires_grad=True)
    t = Targets(torch.full((1, 4), 2), torch.zeros(1, 4, 4), torch.full((1, 4), -1))
    out = fcos_losses(cls, box, ctr, t)
    assert out["loss_box"].item() == 0.0 and out["loss_ctr"].item() == 0.0
    # cls: focal over negatives only, normalised by max(num_pos, 1) = 1
    p = torch.sigmoid(cls)
    want = (-(0.75) * p ** 2 * torch.log(1 - p)).sum()
    assert out["loss_cls"].item() == pytest.approx(want.item(), rel=1e-5)
    sum(out.values()).backward()
    assert box.grad is not None and ctr.grad is not None and cls.grad is not None


def test_head_shapes_prior_and_relu():
    head = FCOSHead(in_channels=16, num_classes=3, num_convs=2, num_controller_params=233)
    feats = [torch.randn(2, 16, s, s) for s in (8, 4, 2, 1, 1)]
    out = head(feats)
    assert [tuple(x.shape) for x in out.cls_logits] == [(2, 3, s, s) for s in (8, 4, 2, 1, 1)]
    assert out.controller[0].shape == (2, 233, 8, 8) and out.ctr_logits[2].shape == (2, 1, 2, 2)
    assert head.cls_logits.bias[0].item() == pytest.approx(-math.log(99))
    assert all((x >= 0).all() for x in out.box_ltrb)
    assert head.cls_tower[1].num_groups == 8  # 16 channels -> 8 groups of 2


def _head_outputs(cls_logit, ctr_logit, ltrb, params):
    """One level, one image, from per-location lists."""
    h, w = 1, len(cls_logit)
    def img(vals, c):  # (h*w, c) -> (1, c, h, w)
        return torch.tensor(vals, dtype=torch.float32).t().reshape(1, c, h, w)
    return HeadOutputs([img(cls_logit, len(cls_logit[0]))], [img(ltrb, 4)], [img(ctr_logit, 1)],
                       [img(params, 1)])


def _logit(p):
    return math.log(p / (1 - p))


def test_postprocess_threshold_score_and_decode():
    # 3 locations (x = 4, 12, 20; y = 4) at stride 8, 2 classes, centerness 0.5 everywhere
    cls = [[_logit(0.8), _logit(0.05)], [_logit(0.09), _logit(0.3)], [_logit(0.5), _logit(0.2)]]
    ctr = [[0.0]] * 3
    ltrb = [[0.5, 0.5, 0.5, 0.5], [1.0, 0.25, 0.5, 2.0], [0.1, 0.1, 0.1, 0.1]]
    out = _head_outputs(cls, ctr, ltrb, [[1.0], [2.0], [3.0]])
    loc = _grid(1, 3, 8)
    det = postprocess(out, [loc], [8], score_thresh=0.05, nms_thresh=0.6, topk_per_level=100, max_dets=100)[0]
    # cls*ctr: 0.4, 0.025, 0.045, 0.15, 0.25, 0.1 -> kept 0.4, 0.15, 0.25, 0.1 (0.045 and 0.025 <= 0.05)
    got = sorted(zip(det.scores.tolist(), det.classes.tolist(), det.controller[:, 0].tolist()), reverse=True)
    want = sorted([(math.sqrt(0.4), 0, 1.0), (math.sqrt(0.25), 0, 3.0), (math.sqrt(0.15), 1, 2.0),
                   (math.sqrt(0.1), 1, 3.0)], reverse=True)
    # location 3's class-0 and class-1 boxes coincide but differ in class: both survive NMS
    assert [g[1:] for g in got] == [w[1:] for w in want]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], rel=1e-5)
    k = det.controller[:, 0].tolist().index(2.0)
    assert det.boxes_xyxy[k].tolist() == pytest.approx([12 - 8, 4 - 2, 12 + 4, 4 + 16])
    assert det.levels.tolist() == [0] * 4


def test_postprocess_topk_nms_and_max_dets():
    # 4 locations with the same box (0, 0, 16, 16)-ish overlapping heavily; one class
    cls = [[_logit(0.9)], [_logit(0.8)], [_logit(0.7)], [_logit(0.6)]]
    ctr = [[10.0]] * 4
    ltrb = [[2.0, 2.0, 2.0, 2.0]] * 4
    loc = torch.tensor([[16.0, 16.0], [17.0, 16.0], [100.0, 100.0], [101.0, 100.0]])
    out = _head_outputs(cls, ctr, ltrb, [[0.0], [1.0], [2.0], [3.0]])
    det = postprocess(out, [loc], [8], 0.05, 0.6, 100, 100)[0]
    assert det.controller[:, 0].tolist() == [0.0, 2.0]  # same-class overlaps suppressed
    det = postprocess(out, [loc], [8], 0.05, 0.6, 2, 100)[0]  # top-2 per level before NMS
    assert det.controller[:, 0].tolist() == [0.0]
    det = postprocess(out, [loc], [8], 0.05, 0.99, 100, 3)[0]  # no suppression, best 3 kept
    assert det.controller[:, 0].tolist() == [0.0, 1.0, 2.0]
    det = postprocess(out, [loc], [8], 0.95, 0.6, 100, 100)[0]
    assert det.scores.numel() == 0


def test_box_regression_alive_at_init_on_a_flat_image():
    # a flat input gives the same features everywhere; every side must still start > 0 (ReLU alive)
    torch.manual_seed(0)
    head = FCOSHead(in_channels=16, num_classes=2, num_convs=2, num_controller_params=8)
    out = head([torch.ones(1, 16, 4, 4) * 0.5 + 0.01 * torch.randn(1, 16, 4, 4)] + [torch.zeros(1, 16, 1, 1)] * 4)
    assert (out.box_ltrb[0] > 0).all()
    assert out.box_ltrb[0].mean().item() == pytest.approx(1.0, abs=0.2)
