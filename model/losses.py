"""BoxInst mask losses from box supervision: projection and (motion-aware) pairwise (method §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.affinity import NEIGHBOUR_OFFSETS  # bit order of the affinity stores: (dy, dx), row-major

DICE_EPS = 1.0e-5


def _check_mask_pair(mask_logits: Tensor, box_masks: Tensor, fn: str) -> None:
    """Raise ValueError unless mask_logits and box_masks are both (N, 1, H, W) of the same shape."""
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"{fn}: mask_logits must be (N, 1, H, W), got {tuple(mask_logits.shape)}")
    if box_masks.shape != mask_logits.shape:
        raise ValueError(
            f"{fn}: box_masks must match mask_logits {tuple(mask_logits.shape)}, got {tuple(box_masks.shape)}"
        )


def dice_loss(probs: Tensor, targets: Tensor) -> Tensor:
    """Per-row dice loss 1 − 2Σab / (Σa² + Σb² + 1e-5). probs, targets: (N, D) in [0, 1]. Returns (N,)."""
    inter = (probs * targets).sum(dim=1)
    denom = (probs * probs).sum(dim=1) + (targets * targets).sum(dim=1) + DICE_EPS
    return 1.0 - 2.0 * inter / denom


def projection_loss(mask_logits: Tensor, box_masks: Tensor) -> Tensor:
    """Projection term (method §5): dice(max_y m, max_y B) + dice(max_x m, max_x B), mean over instances.

    mask_logits: (N, 1, H, W) float logits on the stride-4 grid; m = sigmoid(mask_logits).
    box_masks: (N, 1, H, W) {0, 1} box masks on the same grid (model.condinst.box_masks_s4).
    Returns a scalar; with N = 0 a zero that stays connected to mask_logits' graph.
    """
    _check_mask_pair(mask_logits, box_masks, "projection_loss")
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    probs = mask_logits.sigmoid()
    targets = box_masks.to(probs.dtype)
    # max over rows -> (N, W); max over columns -> (N, H)
    loss_x = dice_loss(probs.amax(dim=(1, 2)), targets.amax(dim=(1, 2)))
    loss_y = dice_loss(probs.amax(dim=(1, 3)), targets.amax(dim=(1, 3)))
    return (loss_x + loss_y).mean()


def _overlap(offset: int, size: int) -> tuple[slice, slice]:
    """Along one axis of length `size`: the centre cells whose neighbour at `offset` is in frame, and
    those neighbours."""
    if abs(offset) >= size:
        return slice(0, 0), slice(0, 0)
    return slice(max(0, -offset), size - max(0, offset)), slice(max(0, offset), size + min(0, offset))


def pairwise_nll(mask_logits: Tensor) -> Tensor:
    """−log P(y_e = 1) for each cell and its 8 neighbours (paper eq. 1, method §5), in log space.

    P(same label) = m_i m_k + (1 − m_i)(1 − m_k), m = sigmoid(mask_logits), so
    log P = logaddexp(logσ(z_i) + logσ(z_k), logσ(−z_i) + logσ(−z_k)); finite for any finite logits.
    mask_logits: (N, 1, H, W). Returns (N, 8, H, W) ≥ 0, neighbours in NEIGHBOUR_OFFSETS order;
    exactly 0 where the neighbour lies outside the frame.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"pairwise_nll: mask_logits must be (N, 1, H, W), got {tuple(mask_logits.shape)}")
    _, _, h, w = mask_logits.shape
    log_fg = F.logsigmoid(mask_logits)[:, 0]  # (N, H, W) log m
    log_bg = F.logsigmoid(-mask_logits)[:, 0]  # (N, H, W) log (1 − m)
    per_neighbour: dict[int, Tensor] = {}
    # The edge (i, i + d) is the edge (j, j − d) seen from j = i + d: compute each undirected edge once.
    for k, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        opposite = NEIGHBOUR_OFFSETS.index((-dy, -dx))
        if opposite < k:
            continue
        rows_c, rows_n = _overlap(dy, h)
        cols_c, cols_n = _overlap(dx, w)
        log_same = torch.logaddexp(
            log_fg[:, rows_c, cols_c] + log_fg[:, rows_n, cols_n],
            log_bg[:, rows_c, cols_c] + log_bg[:, rows_n, cols_n],
        )  # (N, h', w') over in-frame edges
        # zero-pad back to (N, H, W): at the centre cells for k, at the neighbour cells for the opposite
        per_neighbour[k] = F.pad(-log_same, (cols_c.start, w - cols_c.stop, rows_c.start, h - rows_c.stop))
        per_neighbour[opposite] = F.pad(-log_same, (cols_n.start, w - cols_n.stop, rows_n.start, h - rows_n.stop))
    return torch.stack([per_neighbour[k] for k in range(len(NEIGHBOUR_OFFSETS))], dim=1)  # (N, 8, H, W)


def pairwise_loss(mask_logits: Tensor, box_masks: Tensor, pair_mask: Tensor) -> Tensor:
    """Motion-aware pairwise term (method §5, paper eq. 1-2): Σ w·nll / max(Σ w, 1).

    mask_logits, box_masks: (N, 1, H/4, W/4); box_masks in {0, 1}.
    pair_mask: (N, 8, H/4, W/4) in {0, 1} (bool or float), neighbours in NEIGHBOUR_OFFSETS order:
    M_color·M_flow, or M_color alone when flow_in_pairwise is off.
    w = box_mask(centre cell) · pair_mask. Returns a scalar without the warm-up factor
    min(step / warmup_steps, 1), which the caller applies.
    """
    _check_mask_pair(mask_logits, box_masks, "pairwise_loss")
    n, _, h, w = mask_logits.shape
    if pair_mask.shape != (n, len(NEIGHBOUR_OFFSETS), h, w):
        raise ValueError(
            f"pairwise_loss: pair_mask must be {(n, len(NEIGHBOUR_OFFSETS), h, w)} for mask_logits "
            f"{tuple(mask_logits.shape)}, got {tuple(pair_mask.shape)}"
        )
    nll = pairwise_nll(mask_logits)  # (N, 8, H, W)
    weights = box_masks.to(nll.dtype) * pair_mask.to(nll.dtype)  # (N, 1, H, W) * (N, 8, H, W)
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)
