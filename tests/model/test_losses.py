"""model/losses.py against brute-force loops and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import NEIGHBOUR_OFFSETS, pairwise_loss, pairwise_nll, projection_loss


def brute_projection(logits: torch.Tensor, boxes: torch.Tensor) -> float:
    """Projection term by explicit loops over instances, columns and rows (float64)."""
    n, _, h, w = logits.shape
    total = 0.0
    for k in range(n):
        m = [[1.0 / (1.0 + math.exp(-float(logits[k, 0, i, j]))) for j in range(w)] for i in range(h)]
        b = [[float(boxes[k, 0, i, j]) for j in range(w)] for i in range(h)]
        per_instance = 0.0
        for a, g in (
            ([max(m[i][j] for i in range(h)) for j in range(w)], [max(b[i][j] for i in range(h)) for j in range(w)]),
            ([max(m[i][j] for j in range(w)) for i in range(h)], [max(b[i][j] for j in range(w)) for i in range(h)]),
        ):
            inter = sum(x * y for x, y in zip(a, g))
            denom = sum(x * x for x in a) + sum(y * y for y in g) + 1e-5
            per_instance += 1.0 - 2.0 * inter / denom
        total += per_instance
    return total / n


def brute_nll(logits: torch.Tensor) -> torch.Tensor:
    """−log(m_i m_k + (1−m_i)(1−m_k)) by loops over every cell and neighbour, float64; 0 out of frame."""
    n, _, h, w = logits.shape
    m = torch.sigmoid(logits.double())
    out = torch.zeros(n, 8, h, w, dtype=torch.float64)
    for b in range(n):
        for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
            for i in range(h):
                for j in range(w):
                    y, x = i + dy, j + dx
                    if 0 <= y < h and 0 <= x < w:
                        pi, pk = m[b, 0, i, j], m[b, 0, y, x]
                        out[b, k, i, j] = -torch.log(pi * pk + (1 - pi) * (1 - pk))
    return out


def test_neighbour_order_is_row_major_without_centre() -> None:
    # the order the affinity stores' bits follow (pipeline.affinity, re-exported here)
    assert NEIGHBOUR_OFFSETS == ((-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2), (2, -2), (2, 0), (2, 2))


def test_projection_loss_matches_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 6, 7, generator=gen) * 3
    boxes = torch.zeros(3, 1, 6, 7)
    boxes[0, 0, 1:4, 2:6] = 1
    boxes[1, 0, 0:6, 0:1] = 1
    boxes[2, 0, 5, 6] = 1
    got = projection_loss(logits, boxes)
    assert got.shape == ()
    assert got.item() == pytest.approx(brute_projection(logits, boxes), rel=1e-5)


def test_projection_loss_hand_value() -> None:
    # Hard-thresholded prediction equal to the box: both dice terms vanish (up to the 1e-5 eps).
    boxes = torch.zeros(1, 1, 4, 5)
    boxes[0, 0, 1:3, 1:4] = 1
    logits = (boxes * 2 - 1) * 50.0
    assert projection_loss(logits, boxes).item() == pytest.approx(0.0, abs=1e-5)
    # m = 0.5 everywhere, box covering cols 0..1 of 4 and all 2 rows:
    # x: a = (.5,.5,.5,.5), g = (1,1,0,0): 1 − 2·1 / (1 + 2) = 1/3; y: a = (.5,.5), g = (1,1): 1 − 2/(0.5+2) = 0.2
    boxes = torch.zeros(1, 1, 2, 4)
    boxes[0, 0, :, :2] = 1
    got = projection_loss(torch.zeros(1, 1, 2, 4), boxes).item()
    assert got == pytest.approx(1 / 3 + 0.2, abs=1e-5)


@pytest.mark.parametrize("h, w", [(5, 6), (1, 1), (2, 3), (3, 1), (1, 5)])
def test_pairwise_nll_matches_loops(h: int, w: int) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, h, w, generator=gen) * 4
    got = pairwise_nll(logits)
    assert got.shape == (2, 8, h, w)
    torch.testing.assert_close(got.double(), brute_nll(logits), rtol=1e-5, atol=1e-6)


def test_pairwise_nll_is_ln2_at_zero_logits_and_zero_out_of_frame() -> None:
    nll = pairwise_nll(torch.zeros(1, 1, 5, 5))
    # cell (2, 2) has every neighbour in frame; cell (0, 0) has only (0,2), (2,0), (2,2) (k = 4, 6, 7)
    torch.testing.assert_close(nll[0, :, 2, 2], torch.full((8,), math.log(2.0)))
    expected = torch.tensor([0, 0, 0, 0, 1, 0, 1, 1], dtype=torch.float32) * math.log(2.0)
    torch.testing.assert_close(nll[0, :, 0, 0], expected)


def brute_pairwise(logits: torch.Tensor, boxes: torch.Tensor, pair: torch.Tensor) -> float:
    """Σ w·nll / max(Σ w, 1) with w = box(centre)·pair, by loops."""
    nll = brute_nll(logits)
    num, den = 0.0, 0.0
    n, k, h, w = pair.shape
    for b in range(n):
        for e in range(k):
            for i in range(h):
                for j in range(w):
                    weight = float(boxes[b, 0, i, j]) * float(pair[b, e, i, j])
                    num += weight * float(nll[b, e, i, j])
                    den += weight
    return num / max(den, 1.0)


def test_pairwise_loss_matches_loops() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 6, 5, generator=gen) * 2
    boxes = torch.zeros(2, 1, 6, 5)
    boxes[0, 0, 1:5, 1:4] = 1
    boxes[1, 0, 0:3, 2:5] = 1
    pair = torch.rand(2, 8, 6, 5, generator=gen) > 0.4
    got = pairwise_loss(logits, boxes, pair)
    assert got.item() == pytest.approx(brute_pairwise(logits, boxes, pair), rel=1e-5)


def test_pairwise_loss_normaliser_clamped_to_one() -> None:
    # one weighted edge: loss = its nll / max(1, 1); zero weight: 0 / 1 = 0
    logits = torch.zeros(1, 1, 5, 5)
    boxes = torch.zeros(1, 1, 5, 5)
    boxes[0, 0, 2, 2] = 1
    pair = torch.zeros(1, 8, 5, 5, dtype=torch.bool)
    assert pairwise_loss(logits, boxes, pair).item() == 0.0
    pair[0, 3, 2, 2] = True
    assert pairwise_loss(logits, boxes, pair).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_edges_outside_box_or_masked_carry_no_weight() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 1, 6, 6, generator=gen, requires_grad=True)
    boxes = torch.zeros(1, 1, 6, 6)
    boxes[0, 0, 2:4, 2:4] = 1
    pair = torch.ones(1, 8, 6, 6)
    pair[0, :, 2, 2] = 0  # a box cell whose edges are all masked
    base = pairwise_loss(logits, boxes, pair)
    # changing the logit of a cell that is outside the box, masked out as centre, and not the neighbour
    # of any weighted edge must not change the loss
    (grad,) = torch.autograd.grad(base, logits)
    weighted_neighbours = {(i + dy, j + dx) for i, j in ((2, 3), (3, 2), (3, 3)) for dy, dx in NEIGHBOUR_OFFSETS}
    for i in range(6):
        for j in range(6):
            touched = (i, j) in weighted_neighbours or (i, j) in {(2, 3), (3, 2), (3, 3)}
            if not touched:
                assert grad[0, 0, i, j].item() == 0.0, (i, j)
    assert grad[0, 0, 3, 3].item() != 0.0
    # pair_mask 0 everywhere gives exactly zero; box mask 0 everywhere too
    assert pairwise_loss(logits, boxes, torch.zeros_like(pair)).item() == 0.0
    assert pairwise_loss(logits, torch.zeros_like(boxes), pair).item() == 0.0


def test_large_logits_finite_values_and_gradients() -> None:
    logits = torch.tensor([[-1e4, 1e4, 30.0], [80.0, -80.0, 0.0], [1e4, 1e4, -1e4]]).view(1, 1, 3, 3)
    logits = torch.cat([logits, logits.flip(-1)]).requires_grad_(True)
    boxes = torch.ones(2, 1, 3, 3)
    pair = torch.ones(2, 8, 3, 3)
    loss = pairwise_loss(logits, boxes, pair) + projection_loss(logits, boxes)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    # (0,0)->(2,0) (k = 6) joins logits −1e4 and +1e4: about 1e4 nats, not inf;
    # (0,0)->(0,2) (k = 4) joins −1e4 and 30: −log σ(−30) ≈ 30
    nll = pairwise_nll(logits.detach())
    assert nll[0, 6, 0, 0].item() == pytest.approx(1e4, rel=1e-4)
    assert nll[0, 4, 0, 0].item() == pytest.approx(30.0, rel=1e-4)
