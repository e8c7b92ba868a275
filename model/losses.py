"""BoxInst mask losses from box supervision: projection and (motion-aware) pairwise (method §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Neighbour k of a stride-4 grid cell (i, j) is (i + dy, j + dx): row-major {-2, 0, 2}^2 without the
# centre. This must equal pipeline.affinity.NEIGHBOUR_OFFSETS (the bit order of the affinity stores);
# tests/model/test_losses.py checks the two agree once that module exists.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)
)

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


def shift_to_neighbours(x: Tensor, fill: float) -> tuple[Tensor, Tensor]:
    """Value at each cell's 8 neighbours (NEIGHBOUR_OFFSETS order). x: (N, 1, H, W).

    Returns (values (N, 8, H, W), in_frame (1, 8, H, W) bool); out-of-frame neighbours read `fill`.
    """
    n, _, h, w = x.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in NEIGHBOUR_OFFSETS)
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)  # (N, 1, H+2p, W+2p)
    ones = F.pad(x.new_ones(1, 1, h, w, dtype=torch.bool), (pad, pad, pad, pad), value=False)
    values, in_frame = [], []
    for dy, dx in NEIGHBOUR_OFFSETS:
        rows, cols = slice(pad + dy, pad + dy + h), slice(pad + dx, pad + dx + w)
        values.append(padded[:, :, rows, cols])
        in_frame.append(ones[:, :, rows, cols])
    return torch.cat(values, dim=1), torch.cat(in_frame, dim=1)


def pairwise_nll(mask_logits: Tensor) -> Tensor:
    """−log P(y_e = 1) for each cell and its 8 neighbours (paper eq. 1, method §5), in log space.

    P(same label) = m_i m_k + (1 − m_i)(1 − m_k), m = sigmoid(mask_logits), so
    log P = logaddexp(logσ(z_i) + logσ(z_k), logσ(−z_i) + logσ(−z_k)); finite for any logits.
    mask_logits: (N, 1, H, W). Returns (N, 8, H, W) ≥ 0, neighbours in NEIGHBOUR_OFFSETS order;
    0 where the neighbour lies outside the frame.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"pairwise_nll: mask_logits must be (N, 1, H, W), got {tuple(mask_logits.shape)}")
    log_fg = F.logsigmoid(mask_logits)  # (N, 1, H, W) log m
    log_bg = F.logsigmoid(-mask_logits)  # (N, 1, H, W) log (1 − m)
    log_fg_nb, in_frame = shift_to_neighbours(log_fg, 0.0)  # (N, 8, H, W)
    log_bg_nb, _ = shift_to_neighbours(log_bg, 0.0)
    log_same = torch.logaddexp(log_fg + log_fg_nb, log_bg + log_bg_nb)  # (N, 8, H, W)
    return torch.where(in_frame, -log_same, torch.zeros_like(log_same))


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
