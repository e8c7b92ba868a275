"""CondInst mask side (method §4-5): mask branch, dynamic mask head, instance sampling, box masks.

The controller conv that emits each instance's dynamic parameters lives on the FCOS box tower
(model/fcos.py); its output width is `DynamicMaskHead.num_params`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_OUT_STRIDE = 4  # stride of the mask logits and box masks w.r.t. the padded input (method §5)


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """Upsample by an integer factor keeping CondInst's "location = s·idx + s//2" alignment.

    x: (N, C, H, W) float. Returns (N, C, H·factor, W·factor): output index factor·k + factor//2 holds
    x[..., k] exactly; in between, bilinear interpolation; edges replicate. (boxinst.md §5.2)
    """
    if x.dim() != 4:
        raise ValueError(f"aligned_bilinear: x must be (N, C, H, W), got {tuple(x.shape)}")
    if factor < 1:
        raise ValueError(f"aligned_bilinear: factor must be a positive integer, got {factor}")
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")  # (N, C, H+1, W+1)
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    half = factor // 2
    x = F.pad(x, (half, 0, half, 0), mode="replicate")  # (N, C, fH+1+half, fW+1+half)
    return x[:, :, : factor * h, : factor * w]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3×3 (no bias, kaiming_uniform a=1) → BatchNorm2d → ReLU, as AdelaiDet's conv_block."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MaskBranch(nn.Module):
    """CondInst mask branch (method §4): FPN levels → mask features at stride 8.

    Each of the `num_levels` inputs (P3 first, then P4, P5, ...; each level half the size of the
    previous) is refined by conv3×3-BN-ReLU to `channels`, upsampled with aligned_bilinear to the first
    level's size and summed; then `num_convs` × conv3×3-BN-ReLU and a 1×1 conv to `out_channels`.
    """

    def __init__(
        self, in_channels: int, num_levels: int, channels: int = 128, out_channels: int = 8, num_convs: int = 4
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"MaskBranch: num_levels must be >= 1, got {num_levels}")
        self.num_levels = num_levels
        self.refine = nn.ModuleList(_conv_bn_relu(in_channels, channels) for _ in range(num_levels))
        tower: list[nn.Module] = [_conv_bn_relu(channels, channels) for _ in range(num_convs)]
        tower.append(nn.Conv2d(channels, out_channels, kernel_size=1))  # PyTorch default init
        self.tower = nn.Sequential(*tower)

    def forward(self, features_per_level: list[Tensor]) -> Tensor:
        """features_per_level: num_levels tensors (N, in_channels, H_l, W_l), P3 (stride 8) first.

        Returns mask features (N, out_channels, H_0, W_0) at the first level's stride.
        """
        if len(features_per_level) != self.num_levels:
            raise ValueError(f"MaskBranch: expected {self.num_levels} feature levels, got {len(features_per_level)}")
        x = self.refine[0](features_per_level[0])  # (N, channels, H_0, W_0)
        h0, w0 = x.shape[-2:]
        for level, (refine, feature) in enumerate(zip(self.refine[1:], features_per_level[1:]), start=1):
            h, w = feature.shape[-2:]
            factor = h0 // h
            if h * factor != h0 or w * factor != w0:
                raise ValueError(
                    f"MaskBranch: level {level} is {h}×{w}, not an integer fraction of level 0 ({h0}×{w0}); "
                    "pad the input to a multiple of the largest stride"
                )
            x = x + aligned_bilinear(refine(feature), factor)
        return self.tower(x)


def grid_locations(h: int, w: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Input-pixel centres of an h×w grid of the given stride: (h·w, 2) float (x, y), row-major,
    location (i, j) = (stride·j + stride//2, stride·i + stride//2)."""
    ys = torch.arange(h, dtype=torch.float32, device=device) * stride + stride // 2
    xs = torch.arange(w, dtype=torch.float32, device=device) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def relative_coords(
    locations_xy: Tensor, levels: Tensor, h: int, w: int, stride: int, sizes_of_interest: Tensor
) -> Tensor:
    """Relative coordinates (instance location − grid location) / soi[level] (method §4).

    locations_xy: (P, 2) float input pixels (x, y) of each instance's FCOS location; levels: (P,) int64
    FPN level index (0 = P3); sizes_of_interest: (L,) float. Returns (P, 2, h, w): channel 0 Δx,
    channel 1 Δy, on the stride-`stride` grid.
    """
    grid = grid_locations(h, w, stride, locations_xy.device)  # (h·w, 2)
    rel = locations_xy[:, None, :].float() - grid[None, :, :]  # (P, h·w, 2)
    rel = rel / sizes_of_interest.to(rel.device)[levels].float()[:, None, None]
    return rel.permute(0, 2, 1).reshape(-1, 2, h, w)  # (P, h·w, 2) -> (P, 2, h, w)


class DynamicMaskHead(nn.Module):
    """CondInst dynamic mask head (method §4): per-instance 1×1 convs on mask features + rel. coords.

    Layers: (in_channels + 2) → channels → ... → 1, `num_layers` in all, ReLU between. The controller
    vector of each instance holds all layers' weights (each row-major (out, in), input channels ordered
    [Δx, Δy, feat_0, ...]) and then all biases: 233 values for 16 channels, 3 layers of 8.
    soi: sizes of interest of P3..P6; P7 uses twice the last, so level l divides by 64·2^l by default.
    The module has no learnable parameters; the controller lives on the FCOS head.
    """

    def __init__(
        self,
        in_channels: int = 16,
        channels: int = 8,
        num_layers: int = 3,
        soi: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DynamicMaskHead: num_layers must be >= 1, got {num_layers}")
        self.in_channels = in_channels
        widths = [in_channels + 2] + [channels] * (num_layers - 1) + [1]
        self.layer_shapes: list[tuple[int, int]] = list(zip(widths[1:], widths[:-1]))  # (out, in) per layer
        self.num_params = sum(o * i for o, i in self.layer_shapes) + sum(o for o, _ in self.layer_shapes)
        self.register_buffer(
            "sizes_of_interest", torch.tensor([*soi, 2 * soi[-1]], dtype=torch.float32), persistent=False
        )

    def split_params(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """params: (P, num_params) → per layer weights (P, out, in) and biases (P, out, 1)."""
        weight_sizes = [o * i for o, i in self.layer_shapes]
        bias_sizes = [o for o, _ in self.layer_shapes]
        chunks = torch.split(params, weight_sizes + bias_sizes, dim=1)
        n = len(self.layer_shapes)
        weights = [c.reshape(-1, o, i) for c, (o, i) in zip(chunks[:n], self.layer_shapes)]  # (P, o·i) -> (P, o, i)
        biases = [c.reshape(-1, o, 1) for c, (o, _) in zip(chunks[n:], self.layer_shapes)]  # (P, o) -> (P, o, 1)
        return weights, biases

    def forward(
        self,
        mask_feats: Tensor,
        params: Tensor,
        im_inds: Tensor,
        locations_xy: Tensor,
        levels: Tensor,
        mask_feat_stride: int = 8,
    ) -> Tensor:
        """Mask logits of P instances.

        mask_feats: (N, in_channels, H/s, W/s) with s = mask_feat_stride; params: (P, num_params);
        im_inds: (P,) int64 image of each instance; locations_xy: (P, 2) its FCOS location (x, y) in input
        pixels; levels: (P,) int64 its FPN level (0 = P3).
        Returns (P, 1, H/4, W/4) float logits on the stride-4 grid (aligned_bilinear ×(s/4)).
        """
        n, c, h, w = mask_feats.shape
        p = params.shape[0]
        if c != self.in_channels:
            raise ValueError(f"DynamicMaskHead: mask_feats has {c} channels, expected {self.in_channels}")
        if params.dim() != 2 or params.shape[1] != self.num_params:
            raise ValueError(f"DynamicMaskHead: params must be (P, {self.num_params}), got {tuple(params.shape)}")
        if im_inds.shape != (p,) or levels.shape != (p,) or locations_xy.shape != (p, 2):
            raise ValueError(
                f"DynamicMaskHead: for P={p} expected im_inds ({p},), locations_xy ({p}, 2), levels ({p},); got "
                f"{tuple(im_inds.shape)}, {tuple(locations_xy.shape)}, {tuple(levels.shape)}"
            )
        if mask_feat_stride % MASK_OUT_STRIDE:
            raise ValueError(
                f"DynamicMaskHead: mask_feat_stride {mask_feat_stride} is not a multiple of {MASK_OUT_STRIDE}"
            )
        rel = relative_coords(locations_xy, levels, h, w, mask_feat_stride, self.sizes_of_interest)  # (P, 2, h, w)
        x = torch.cat([rel.to(mask_feats.dtype), mask_feats[im_inds]], dim=1)  # (P, c+2, h, w)
        x = x.reshape(p, c + 2, h * w)  # (P, c+2, h, w) -> (P, c+2, h·w)
        weights, biases = self.split_params(params)
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            x = torch.baddbmm(bias, weight, x)  # (P, out, in) @ (P, in, h·w) + (P, out, 1) -> (P, out, h·w)
            if layer < len(weights) - 1:
                x = F.relu(x)
        logits = x.reshape(p, 1, h, w)  # (P, 1, h·w) -> (P, 1, h, w)
        return aligned_bilinear(logits, mask_feat_stride // MASK_OUT_STRIDE)


def instance_scores(cls_logits: Tensor, ctr_logits: Tensor) -> Tensor:
    """Ranking score sigmoid(max class logit) · sigmoid(centerness) (method §5).

    cls_logits: (P, K) over all classes; ctr_logits: (P,). Returns (P,) in [0, 1].
    """
    return cls_logits.amax(dim=1).sigmoid() * ctr_logits.sigmoid()


def sample_instances(gt_inds: Tensor, im_inds: Tensor, scores: Tensor, max_per_image: int = 64) -> Tensor:
    """Which FCOS positives get a mask loss (method §5, boxinst.md §5.4).

    gt_inds: (P,) int64 assigned box of each positive; im_inds: (P,) int64 its image; scores: (P,)
    from `instance_scores`. Per image with K distinct boxes among its positives, each box keeps its
    top max(max_per_image // K, 1) positives by score (ties keep the lower index).
    Returns (S,) int64 indices into P, ascending.
    """
    p = gt_inds.shape[0]
    if im_inds.shape != (p,) or scores.shape != (p,):
        raise ValueError(
            f"sample_instances: gt_inds, im_inds, scores must all be (P,), got "
            f"{tuple(gt_inds.shape)}, {tuple(im_inds.shape)}, {tuple(scores.shape)}"
        )
    if p == 0:
        return torch.zeros(0, dtype=torch.long, device=gt_inds.device)
    pairs, group = torch.unique(torch.stack([im_inds, gt_inds], dim=1), dim=0, return_inverse=True)  # (G, 2), (P,)
    _, image_of_group, boxes_per_image = torch.unique(pairs[:, 0], return_inverse=True, return_counts=True)
    keep_per_group = (max_per_image // boxes_per_image[image_of_group]).clamp(min=1)  # (G,)
    # order by group, then score descending, then index
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # (P,)
    group_sizes = torch.bincount(group, minlength=pairs.shape[0])  # (G,)
    group_starts = torch.cumsum(group_sizes, dim=0) - group_sizes  # (G,)
    rank = torch.arange(p, device=gt_inds.device) - group_starts[group[order]]  # rank within its group
    kept = order[rank < keep_per_group[group[order]]]
    return torch.sort(kept).values


def box_masks_s4(boxes_xyxy: Tensor, h4: int, w4: int) -> Tensor:
    """Box masks B on the stride-4 grid (method §5, boxinst.md §6.3).

    As AdelaiDet: the full-resolution mask is 1 on rows int(y0)..int(y1) and columns int(x0)..int(x1)
    inclusive (coordinates clamped at 0 first), sampled at pixels 4·idx + 2.
    boxes_xyxy: (P, 4) float input pixels. Returns (P, 1, h4, w4) float32 in {0, 1}.
    """
    if boxes_xyxy.dim() != 2 or boxes_xyxy.shape[1] != 4:
        raise ValueError(f"box_masks_s4: boxes_xyxy must be (P, 4), got {tuple(boxes_xyxy.shape)}")
    bounds = boxes_xyxy.detach().float().clamp(min=0).floor()  # int() of non-negative numbers
    offset = MASK_OUT_STRIDE // 2
    ys = torch.arange(h4, device=boxes_xyxy.device, dtype=torch.float32) * MASK_OUT_STRIDE + offset  # (h4,)
    xs = torch.arange(w4, device=boxes_xyxy.device, dtype=torch.float32) * MASK_OUT_STRIDE + offset  # (w4,)
    in_rows = (ys[None, :] >= bounds[:, 1:2]) & (ys[None, :] <= bounds[:, 3:4])  # (P, h4)
    in_cols = (xs[None, :] >= bounds[:, 0:1]) & (xs[None, :] <= bounds[:, 2:3])  # (P, w4)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1).float()  # (P, 1, h4, w4)
