"""FCOS as CondInst uses it (method §4-6): head with controller, target assignment, losses, inference.

Laid out like torchvision's detection/fcos.py: towers and head, matching, losses, postprocess.
Shape letters: N images, L levels, M locations of all levels of one image (row-major per level, levels
p3..p7 concatenated), K classes, G boxes of one image, C controller parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

INF = float("inf")
# Size of interest per level p3..p7 (method §5): max(l, t, r, b) must lie in [lo, hi], both inclusive.
SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))
CENTER_RADIUS = 1.5  # centre-sampling radius in strides
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count: 32, halved until it divides `channels` with at least 2 channels a group."""
    groups = max_groups
    while groups > 1 and (channels % groups or channels // groups < 2):
        groups //= 2
    return groups


class Scale(nn.Module):
    """One learnable scalar (init 1.0) multiplying a level's box regression."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        """x * scale."""
        return x * self.scale


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    """num_convs x (conv3x3, GroupNorm, ReLU) at constant width."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1),
                   nn.GroupNorm(group_norm_groups(channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@dataclass
class HeadOutputs:
    """Per-level raw head outputs, each a list over levels of (N, *, h_l, w_l).

    cls_logits (N, K, h, w); box_ltrb (N, 4, h, w) >= 0 in stride units (l, t, r, b);
    ctr_logits (N, 1, h, w); controller (N, C, h, w) dynamic mask head parameters.
    """

    cls_logits: list[Tensor]
    box_ltrb: list[Tensor]
    ctr_logits: list[Tensor]
    controller: list[Tensor]


class FCOSHead(nn.Module):
    """FCOS head shared across levels: cls tower -> class logits; box tower -> ltrb, centerness, controller.

    Regression = ReLU(scale_l * pred) in stride units; cls bias = -log((1 - prior) / prior); box bias
    `box_bias_init` (1 stride a side, so no side starts dead under the ReLU).
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int, num_controller_params: int,
                 num_levels: int = 5, prior_prob: float = 0.01, box_bias_init: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs)
        self.box_tower = _tower(in_channels, num_convs)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctr_pred = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.controller = nn.Conv2d(in_channels, num_controller_params, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))
        # Deviation from AdelaiDet (bias 0): start every side at `box_bias_init` strides so ReLU(scale * pred)
        # is active at init; with bias 0 a side whose sign is negative at all positives never gets a gradient
        # (seen on small heads and flat synthetic images: one side stuck at 0 for the whole run).
        nn.init.constant_(self.box_pred.bias, box_bias_init)

    def forward(self, features: list[Tensor]) -> HeadOutputs:
        """features: per level (N, in_channels, h_l, w_l), p3 first -> HeadOutputs."""
        if len(features) != len(self.scales):
            raise ValueError(f"FCOSHead built for {len(self.scales)} levels, got {len(features)}")
        out = HeadOutputs([], [], [], [])
        for level, x in enumerate(features):
            cls_t = self.cls_tower(x)
            box_t = self.box_tower(x)
            out.cls_logits.append(self.cls_logits(cls_t))
            out.box_ltrb.append(F.relu(self.scales[level](self.box_pred(box_t))))
            out.ctr_logits.append(self.ctr_pred(box_t))
            out.controller.append(self.controller(box_t))
        return out


# ----------------------------------------------------------------------------------------------------
# Locations and flattening


def locations_per_level(shapes: list[tuple[int, int]], strides: list[int],
                        device: torch.device) -> list[Tensor]:
    """Per level (h*w, 2) float (x, y) = (s*j + s//2, s*i + s//2), row-major over (i, j)."""
    out = []
    for (h, w), s in zip(shapes, strides):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s + s // 2
        xs = torch.arange(w, device=device, dtype=torch.float32) * s + s // 2
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1))
    return out


def flatten_levels(per_level: list[Tensor]) -> Tensor:
    """Per level (N, C, h_l, w_l) -> (N, M, C), locations row-major within a level, levels concatenated."""
    # (N, C, h, w) -> (N, h*w, C) per level, then concatenated along locations
    return torch.cat([x.flatten(2).transpose(1, 2) for x in per_level], dim=1)


# ----------------------------------------------------------------------------------------------------
# Target assignment


@dataclass
class Targets:
    """FCOS targets for a batch: labels (N, M) int64 in 0..K (K = background); reg_ltrb (N, M, 4) float in
    stride units (meaningful at positives); gt_index (N, M) int64 index into that image's boxes, -1 at
    background."""

    labels: Tensor
    reg_ltrb: Tensor
    gt_index: Tensor


def assign_targets_per_image(locations: Tensor, strides: Tensor, size_ranges: Tensor, boxes_xyxy: Tensor,
                             classes: Tensor, num_classes: int,
                             radius: float = CENTER_RADIUS) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS matching for one image.

    locations (M, 2) (x, y) pixels; strides (M,) the stride of each location's level; size_ranges (M, 2)
    [lo, hi] of its level; boxes_xyxy (G, 4); classes (G,) in 0..K-1.
    A location is positive for box g when it lies strictly inside the centre region (box centre
    +- radius*stride, clipped to the box) and lo <= max(l, t, r, b) <= hi; among several such boxes the
    smallest area wins (first index on equal areas).
    Returns labels (M,) int64 (num_classes = background), reg_ltrb (M, 4) pixels, gt_index (M,) (-1 = none).
    """
    m = locations.shape[0]
    if boxes_xyxy.numel() == 0:
        return (torch.full((m,), num_classes, dtype=torch.long, device=locations.device),
                torch.zeros((m, 4), device=locations.device),
                torch.full((m,), -1, dtype=torch.long, device=locations.device))
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] != 4 or classes.shape != boxes_xyxy.shape[:1]:
        raise ValueError(f"expected boxes (G, 4) and classes (G,), got {tuple(boxes_xyxy.shape)} "
                         f"and {tuple(classes.shape)}")
    x = locations[:, 0:1]  # (M, 1)
    y = locations[:, 1:2]
    x0, y0, x1, y1 = (boxes_xyxy[:, k][None, :] for k in range(4))  # each (1, G)
    ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (M, G, 4)
    # centre region: centre +- radius * stride, clipped to the box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = strides[:, None].float() * radius  # (M, 1)
    sx0, sy0 = torch.maximum(cx - r, x0), torch.maximum(cy - r, y0)
    sx1, sy1 = torch.minimum(cx + r, x1), torch.minimum(cy + r, y1)
    in_centre = torch.stack([x - sx0, y - sy0, sx1 - x, sy1 - y], dim=2).min(dim=2).values > 0  # (M, G)
    max_side = ltrb.max(dim=2).values  # (M, G)
    cared = (max_side >= size_ranges[:, 0:1]) & (max_side <= size_ranges[:, 1:2])
    area = ((x1 - x0) * (y1 - y0)).expand(m, -1)  # (M, G)
    area = torch.where(in_centre & cared, area, torch.full_like(area, INF))
    min_area, gt_index = area.min(dim=1)  # argmin returns the first index on ties
    positive = min_area < INF
    labels = torch.where(positive, classes[gt_index], torch.full_like(gt_index, num_classes))
    reg = ltrb[torch.arange(m, device=locations.device), gt_index]  # (M, 4)
    gt_index = torch.where(positive, gt_index, torch.full_like(gt_index, -1))
    return labels, reg, gt_index


def assign_targets(locations: list[Tensor], strides: list[int], boxes_xyxy: list[Tensor],
                   classes: list[Tensor], num_classes: int,
                   size_ranges: tuple[tuple[float, float], ...] = SIZE_RANGES,
                   radius: float = CENTER_RADIUS) -> Targets:
    """FCOS targets for a batch; locations per level (h*w, 2); boxes/classes per image. reg in strides."""
    device = locations[0].device
    all_locations = torch.cat(locations)  # (M, 2)
    stride_per_loc = torch.cat([torch.full((len(loc),), float(s), device=device)
                                for loc, s in zip(locations, strides)])  # (M,)
    range_per_loc = torch.cat([torch.tensor(size_ranges[i], device=device).expand(len(loc), 2)
                               for i, loc in enumerate(locations)])  # (M, 2)
    labels, regs, gt_index = [], [], []
    for boxes, cls in zip(boxes_xyxy, classes):
        lab, reg, gi = assign_targets_per_image(all_locations, stride_per_loc, range_per_loc, boxes,
                                                cls, num_classes, radius)
        labels.append(lab)
        regs.append(reg / stride_per_loc[:, None])
        gt_index.append(gi)
    return Targets(torch.stack(labels), torch.stack(regs), torch.stack(gt_index))


# ----------------------------------------------------------------------------------------------------
# Losses


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over DDP ranks when a process group is initialised, else `x`."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


def centerness_target(reg_ltrb: Tensor) -> Tensor:
    """(P, 4) positive ltrb -> (P,) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    lr, tb = reg_ltrb[:, [0, 2]], reg_ltrb[:, [1, 3]]
    return torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values)
                      * (tb.min(dim=1).values / tb.max(dim=1).values))


def ltrb_to_relative_xyxy(ltrb: Tensor) -> Tensor:
    """(P, 4) (l, t, r, b) -> (P, 4) box (-l, -t, r, b) around its location (for IoU, same units)."""
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def fcos_losses(cls_logits: Tensor, box_ltrb: Tensor, ctr_logits: Tensor,
                targets: Targets) -> dict[str, Tensor]:
    """FCOS losses (method §5). cls_logits (N, M, K); box_ltrb (N, M, 4) stride units; ctr_logits (N, M).

    loss_cls = focal(alpha .25, gamma 2) summed / num_pos; loss_box = sum (1 - GIoU) * ctr_target /
    sum ctr_target; loss_ctr = BCE(ctr) summed / num_pos; num_pos and sum ctr_target are averaged over
    DDP ranks and clamped to >= 1 and >= 1e-6. With no positives box and centerness terms are 0 but keep
    their graph.
    """
    num_classes = cls_logits.shape[-1]
    labels = targets.labels.reshape(-1)  # (N*M,)
    pos = labels != num_classes
    num_pos = reduce_mean(pos.sum().to(cls_logits.dtype)).clamp(min=1.0)
    onehot = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(cls_logits.dtype)  # background -> 0s
    loss_cls = sigmoid_focal_loss(cls_logits.reshape(-1, num_classes), onehot, alpha=FOCAL_ALPHA,
                                  gamma=FOCAL_GAMMA, reduction="sum") / num_pos
    pred_ltrb = box_ltrb.reshape(-1, 4)[pos]
    ctr_pred = ctr_logits.reshape(-1)[pos]
    target_ltrb = targets.reg_ltrb.reshape(-1, 4)[pos]
    ctr_target = centerness_target(target_ltrb)  # (P,)
    ctr_norm = reduce_mean(ctr_target.sum()).clamp(min=1e-6)
    if pos.any():
        giou = generalized_box_iou_loss(ltrb_to_relative_xyxy(pred_ltrb), ltrb_to_relative_xyxy(target_ltrb),
                                        reduction="none")
        loss_box = (giou * ctr_target).sum() / ctr_norm
        loss_ctr = F.binary_cross_entropy_with_logits(ctr_pred, ctr_target, reduction="sum") / num_pos
    else:
        loss_box = box_ltrb.sum() * 0.0
        loss_ctr = ctr_logits.sum() * 0.0
    return {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}


# ----------------------------------------------------------------------------------------------------
# Inference


@dataclass
class Candidates:
    """One image's detections after NMS, in padded-input pixels (unclipped, as FCOS/CondInst do).

    boxes_xyxy (D, 4); scores (D,) sqrt(cls*ctr); classes (D,) int64; locations (D, 2) (x, y);
    levels (D,) int64 index into p3..p7; controller (D, C).
    """

    boxes_xyxy: Tensor
    scores: Tensor
    classes: Tensor
    locations: Tensor
    levels: Tensor
    controller: Tensor


def postprocess(outputs: HeadOutputs, locations: list[Tensor], strides: list[int], score_thresh: float,
                nms_thresh: float, topk_per_level: int, max_dets: int) -> list[Candidates]:
    """Per image: (location, class) pairs with cls*ctr > score_thresh, top-k per level by cls*ctr, boxes
    decoded as location -+ ltrb*stride, score sqrt(cls*ctr), class-aware NMS, best max_dets kept."""
    n = outputs.cls_logits[0].shape[0]
    results = []
    for i in range(n):
        boxes_all, scores_all, classes_all, locs_all, levels_all, params_all = [], [], [], [], [], []
        for level, (cls_l, box_l, ctr_l, par_l, loc_l) in enumerate(zip(
                outputs.cls_logits, outputs.box_ltrb, outputs.ctr_logits, outputs.controller, locations)):
            # (K, h, w) -> (h*w, K) etc.
            cls_prob = cls_l[i].flatten(1).t().sigmoid()
            ctr_prob = ctr_l[i].flatten(1).t().sigmoid()  # (h*w, 1)
            ltrb = box_l[i].flatten(1).t()  # (h*w, 4)
            params = par_l[i].flatten(1).t()  # (h*w, C)
            joint = (cls_prob * ctr_prob).flatten()  # (h*w*K,), index = loc * K + class
            cand = torch.nonzero(joint > score_thresh).squeeze(1)
            if cand.numel() > topk_per_level:
                cand = cand[joint[cand].topk(topk_per_level).indices]
            num_classes = cls_prob.shape[1]
            loc_idx, cls_idx = cand // num_classes, cand % num_classes
            xy = loc_l[loc_idx]
            d = ltrb[loc_idx] * strides[level]
            boxes_all.append(torch.stack([xy[:, 0] - d[:, 0], xy[:, 1] - d[:, 1],
                                          xy[:, 0] + d[:, 2], xy[:, 1] + d[:, 3]], dim=1))
            scores_all.append(joint[cand].sqrt())
            classes_all.append(cls_idx)
            locs_all.append(xy)
            levels_all.append(torch.full_like(cls_idx, level))
            params_all.append(params[loc_idx])
        boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
        keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_dets]  # sorted by score, descending
        results.append(Candidates(boxes[keep], scores[keep], classes[keep], torch.cat(locs_all)[keep],
                                  torch.cat(levels_all)[keep], torch.cat(params_all)[keep]))
    return results
