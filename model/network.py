"""Two-stream CondInst/BoxInst (method §4-5): shared ResNet, one FPN per stream, fused FCOS and mask inputs.

Stream wiring, by switch (`two_stream` false = BoxInst: the flow is never read):
- detection features F_det^l = fuse(F_img^l, F_flow^l) (sum | max) when `motion_for_detection`, else F_img^l;
- mask features F_mask = fuse(mask_img, mask_flow) (concat | sum | max) when `motion_for_mask`, else mask_img;
  without motion for the mask, the appearance branch alone outputs the width the fusion would have given
  (2 C_mask = 16 for concat), so the dynamic head keeps its capacity and Table 2's "w/o motion for
  segmentation" row measures motion, not a smaller head (`ModelParams.mask_head_channels`);
- pairwise weights use M_color * M_flow when `flow_in_pairwise`, else M_color.
The flow FPN is built only with the levels something reads, and the flow mask branch only when
`motion_for_mask`, so every parameter gets a gradient (DDP) and none leaks into an unused stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbone import TORCHVISION_WIDTH, Depth, ResNetBackbone
from model.batch import Batch
from model.condinst import (MASK_OUT_STRIDE, DynamicMaskHead, MaskBranch, aligned_bilinear, box_masks_s4,
                            instance_scores, sample_instances)
from model.fcos import (FCOSHead, HeadOutputs, assign_targets, fcos_losses, flatten_levels, reduce_mean,
                        locations_per_level, postprocess)
from model.fpn import FPN, LEVELS, STRIDES
from model.losses import pairwise_loss, projection_loss
from pipeline.field_types import check_field_types

MASK_HEAD_CHANNELS = 8  # dynamic mask head: 3 layers of 8 channels (method §4)
MASK_HEAD_LAYERS = 3
MASK_INSTANCES_PER_IMAGE = 64  # top max(64 // K, 1) positives per box get a mask loss (method §5)


@dataclass(frozen=True)
class ModelParams:
    """The `model` config section (config.yaml); built once from the rule's JSON. No defaults."""

    backbone: Depth  # resnet18 | resnet34 | resnet50 | resnet101
    weights: str | None  # "imagenet" | path to a torchvision ResNet state dict | None
    backbone_width: int  # stem/layer1 channels: 64 = torchvision's ResNet; narrower only from scratch
    fpn_channels: int  # 256 in the paper
    mask_branch_channels: int  # 128 in CondInst
    mask_channels: int  # C_mask per stream (8; 16 after concat)
    mask_in_features: tuple[str, ...]  # FPN levels the mask branch reads, consecutive, e.g. (p3, p4, p5)
    head_convs: int  # convs per FCOS tower (4)
    two_stream: bool  # false = BoxInst baseline: no flow anywhere
    motion_for_detection: bool
    motion_for_mask: bool
    flow_in_pairwise: bool
    det_fusion: Literal["sum", "max"]
    mask_fusion: Literal["concat", "sum", "max"]
    pairwise_warmup: int  # iterations of the pairwise warm-up min(step / warmup, 1); 0 = none

    def __post_init__(self) -> None:
        """Field types are checked first (a bool is not an int, the string "false" is not a bool), then values;
        errors name the config field."""
        check_field_types(self, "model")
        object.__setattr__(self, "mask_in_features", tuple(self.mask_in_features))
        feats = self.mask_in_features
        idx = [LEVELS.index(f) if f in LEVELS else -1 for f in feats]
        if not feats or -1 in idx or idx != list(range(idx[0], idx[0] + len(idx))) or idx[-1] > 2:
            raise ValueError(f"model.mask_in_features: expected consecutive levels of p3, p4, p5 in order, "
                             f"got {list(feats)}")
        for name in ("fpn_channels", "mask_branch_channels", "mask_channels", "head_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.pairwise_warmup < 0:
            raise ValueError(f"model.pairwise_warmup: expected >= 0, got {self.pairwise_warmup}")
        if self.backbone_width < 2 or self.backbone_width % 2 or self.backbone_width > TORCHVISION_WIDTH:
            raise ValueError(f"model.backbone_width: expected an even number in 2..{TORCHVISION_WIDTH}, "
                             f"got {self.backbone_width}")
        if self.weights is not None and self.backbone_width != TORCHVISION_WIDTH:
            raise ValueError(f"model.backbone_width: pretrained weights ({self.weights}) need width "
                             f"{TORCHVISION_WIDTH}, got {self.backbone_width}; a narrower backbone trains from "
                             f"scratch (weights null)")

    @property
    def flow_for_detection(self) -> bool:
        """The flow FPN feeds the FCOS head."""
        return self.two_stream and self.motion_for_detection

    @property
    def flow_for_mask(self) -> bool:
        """The flow stream has its own mask branch, fused into the dynamic head's input."""
        return self.two_stream and self.motion_for_mask

    @property
    def mask_head_channels(self) -> int:
        """Input channels of the dynamic mask head (coordinates aside): C_mask, doubled by a two-stream concat,
        whether or not motion feeds it."""
        return self.mask_channels * (2 if self.two_stream and self.mask_fusion == "concat" else 1)

    @property
    def flow_pairwise(self) -> bool:
        """Pairwise edges need flow similarity as well as colour."""
        return self.two_stream and self.flow_in_pairwise

    @classmethod
    def field_names(cls) -> list[str]:
        """Config keys of the `model` section."""
        return [f.name for f in dataclasses.fields(cls)]


@dataclass
class Detections:
    """One image's predictions at its output (original) size.

    boxes_xyxy (D, 4) float pixels clipped to the image; scores (D,) sqrt(cls*ctr) descending; classes (D,)
    int64 in 0..K-1; masks (D, H_out, W_out) bool.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    classes: Tensor
    masks: Tensor


def fuse_detection(img: Tensor, flow: Tensor, mode: Literal["sum", "max"]) -> Tensor:
    """F_det = F_img + F_flow, or their element-wise max (method §4). Same shapes in and out."""
    match mode:
        case "sum":
            return img + flow
        case "max":
            return torch.maximum(img, flow)
    raise ValueError(f"det_fusion: unknown mode {mode!r}")


def fuse_mask(img: Tensor, flow: Tensor, mode: Literal["concat", "sum", "max"]) -> Tensor:
    """(N, C, h, w) x 2 -> (N, 2C, h, w) for concat (image channels first), else (N, C, h, w)."""
    match mode:
        case "concat":
            return torch.cat([img, flow], dim=1)
        case "sum":
            return img + flow
        case "max":
            return torch.maximum(img, flow)
    raise ValueError(f"mask_fusion: unknown mode {mode!r}")


def pairwise_warmup_factor(step: int, warmup: int) -> float:
    """min(step / warmup, 1); 1 when warmup is 0."""
    return 1.0 if warmup <= 0 else min(step / warmup, 1.0)


class TwoStreamCondInst(nn.Module):
    """Two-stream CondInst with BoxInst losses.

    Inputs (training, `forward`) are a `model.batch.Batch`: images and flows (N, 3, H, W) RGB in [0, 255],
    H and W multiples of 32. `predict` returns per image `Detections` at `output_sizes`.
    """

    def __init__(self, params: ModelParams, num_classes: int, load_weights: bool = True):
        """`load_weights` False: the backbone's pretrained weights (model.weights) are not read, for a network
        whose trained weights are loaded next (evaluate, predict, figures)."""
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.params = params
        self.num_classes = num_classes
        self.strides = [STRIDES[lv] for lv in LEVELS]
        self.mask_levels = params.mask_in_features
        self.mask_stride = STRIDES[params.mask_in_features[0]]
        ch = params.fpn_channels
        self.backbone = ResNetBackbone(params.backbone, params.weights, params.backbone_width, load_weights)
        self.fpn_image = FPN(self.backbone.out_channels, ch, LEVELS)
        flow_levels = (LEVELS if params.flow_for_detection else ()) + \
            (self.mask_levels if params.flow_for_mask else ())
        self.fpn_flow = FPN(self.backbone.out_channels, ch, flow_levels) if flow_levels else None

        def mask_branch(out_channels: int) -> MaskBranch:
            return MaskBranch(ch, len(self.mask_levels), params.mask_branch_channels, out_channels)

        # with the flow branch fused in, each stream gives C_mask; alone, appearance gives the head's full width
        self.mask_branch_image = mask_branch(params.mask_channels if params.flow_for_mask
                                             else params.mask_head_channels)
        self.mask_branch_flow = mask_branch(params.mask_channels) if params.flow_for_mask else None
        self.mask_head = DynamicMaskHead(in_channels=params.mask_head_channels,
                                         channels=MASK_HEAD_CHANNELS, num_layers=MASK_HEAD_LAYERS)
        self.fcos_head = FCOSHead(ch, num_classes, params.head_convs, self.mask_head.num_params,
                                  num_levels=len(LEVELS))

    # ------------------------------------------------------------------------------------------------
    # features

    def _features(self, images: Tensor, flows: Tensor | None,
                  image_sizes: list[tuple[int, int]]) -> tuple[HeadOutputs, Tensor]:
        """Images, flows (N, 3, H, W) RGB [0, 255] -> FCOS head outputs and fused mask features
        (N, C_mask_in, H/s, W/s), s = mask stride (8 for p3)."""
        n, _, h, w = images.shape
        if images.dim() != 4 or images.shape[1] != 3 or h % 32 or w % 32:
            raise ValueError(f"images must be (N, 3, H, W) with H, W multiples of 32, got {tuple(images.shape)}")
        if len(image_sizes) != n:
            raise ValueError(f"{len(image_sizes)} image_sizes for {n} images")
        x = self.backbone.normalize(images, image_sizes)
        if self.fpn_flow is not None:
            if flows is None or flows.shape != images.shape:
                got = None if flows is None else tuple(flows.shape)
                raise ValueError(f"flows must match images {tuple(images.shape)}, got {got}")
            x = torch.cat([x, self.backbone.normalize(flows, image_sizes)])  # (2N, 3, H, W): one backbone pass
        c3, c4, c5 = self.backbone(x)
        feats_image = self.fpn_image(c3[:n], c4[:n], c5[:n])
        feats_flow = self.fpn_flow(c3[n:], c4[n:], c5[n:]) if self.fpn_flow is not None else {}
        if self.params.flow_for_detection:
            det = [fuse_detection(feats_image[lv], feats_flow[lv], self.params.det_fusion) for lv in LEVELS]
        else:
            det = [feats_image[lv] for lv in LEVELS]
        head = self.fcos_head(det)
        mask_feats = self.mask_branch_image([feats_image[lv] for lv in self.mask_levels])
        if self.mask_branch_flow is not None:
            mask_flow = self.mask_branch_flow([feats_flow[lv] for lv in self.mask_levels])
            mask_feats = fuse_mask(mask_feats, mask_flow, self.params.mask_fusion)
        return head, mask_feats

    # ------------------------------------------------------------------------------------------------
    # training

    def forward(self, batch: Batch, step: int) -> dict[str, Tensor]:
        """Named scalar losses: loss_cls, loss_box, loss_ctr, loss_proj, loss_pairwise (warm-up applied)."""
        flows = batch.flows if self.fpn_flow is not None else None
        head, mask_feats = self._features(batch.images, flows, batch.image_sizes)
        n = batch.images.shape[0]
        shapes = [tuple(x.shape[-2:]) for x in head.cls_logits]
        locations = locations_per_level(shapes, self.strides, batch.images.device)
        targets = assign_targets(locations, self.strides, batch.boxes_xyxy, batch.classes, self.num_classes)
        # losses in float32 also under autocast
        cls_flat = flatten_levels(head.cls_logits).float()  # (N, M, K)
        ctr_flat = flatten_levels(head.ctr_logits).squeeze(2).float()  # (N, M, 1) -> (N, M)
        losses = fcos_losses(cls_flat, flatten_levels(head.box_ltrb).float(), ctr_flat, targets)
        controller_flat = flatten_levels(head.controller)  # (N, M, C)

        pos_img, pos_loc = torch.nonzero(targets.labels != self.num_classes, as_tuple=True)  # (P,), (P,)
        if pos_img.numel() == 0:
            # no box anywhere: zero mask losses that still reach the mask branches and the controller
            zero = mask_feats.float().sum() * 0.0 + controller_flat.float().sum() * 0.0
            reduce_mean(zero.detach()), reduce_mean(zero.detach())  # the other ranks' count all-reduces
            losses["loss_proj"] = zero
            losses["loss_pairwise"] = zero.clone()
            return losses
        gt_local = targets.gt_index[pos_img, pos_loc]  # (P,) index into that image's boxes
        offsets = torch.tensor([0] + [len(b) for b in batch.boxes_xyxy], device=pos_img.device).cumsum(0)
        gt_global = offsets[pos_img] + gt_local
        scores = instance_scores(cls_flat[pos_img, pos_loc], ctr_flat[pos_img, pos_loc])
        keep = sample_instances(gt_global, pos_img, scores, MASK_INSTANCES_PER_IMAGE)  # (S,)
        img_k, loc_k, gt_k = pos_img[keep], pos_loc[keep], gt_global[keep]
        all_locations = torch.cat(locations)  # (M, 2)
        level_of_loc = torch.cat([torch.full((len(l),), k, device=pos_img.device)
                                  for k, l in enumerate(locations)])  # (M,)
        mask_logits = self.mask_head(mask_feats, controller_flat[img_k, loc_k], img_k, all_locations[loc_k],
                                     level_of_loc[loc_k], self.mask_stride).float()  # (S, 1, H/4, W/4)
        h4, w4 = mask_logits.shape[-2:]
        boxes = torch.cat(batch.boxes_xyxy)[gt_k]  # (S, 4)
        box_masks = box_masks_s4(boxes, h4, w4)  # (S, 1, H/4, W/4)
        pair = batch.pair_color
        if pair.shape != (n, 8, h4, w4):
            raise ValueError(f"batch.pair_color must be {(n, 8, h4, w4)} for images "
                             f"{tuple(batch.images.shape)}, got {tuple(pair.shape)}")
        if self.params.flow_pairwise:
            if batch.pair_flow.shape != pair.shape:
                raise ValueError(f"batch.pair_flow must be {tuple(pair.shape)}, got {tuple(batch.pair_flow.shape)}")
            pair = pair & batch.pair_flow
        # Both mask terms are normalised by counts averaged over DDP ranks (like FCOS's num_pos), so that P
        # processes with batch b train like one process with batch P·b: instances for the projection term,
        # edge weights Σw for the pairwise term (method §5).
        instances = mask_logits.new_tensor(float(len(keep)))
        losses["loss_proj"] = projection_loss(mask_logits, box_masks) * instances / reduce_mean(instances)
        edges = (box_masks * pair[img_k]).sum().clamp(min=1.0).detach()  # Σw of this rank, as pairwise_loss
        warm = pairwise_warmup_factor(step, self.params.pairwise_warmup)
        losses["loss_pairwise"] = (pairwise_loss(mask_logits, box_masks, pair[img_k]) * edges
                                   / reduce_mean(edges).clamp(min=1.0) * warm)
        return losses

    # ------------------------------------------------------------------------------------------------
    # inference

    @torch.no_grad()
    def predict(self, images: Tensor, flows: Tensor | None, image_sizes: list[tuple[int, int]],
                output_sizes: list[tuple[int, int]], score_thresh: float, nms_thresh: float,
                topk_per_level: int, max_dets: int, mask_thresh: float) -> list[Detections]:
        """Detections per image (method §6 inference). images, flows (N, 3, H, W) RGB [0, 255] (flows may be
        None for BoxInst); image_sizes (h, w) of the resized frames inside the padding; output_sizes (h, w)
        to report boxes and masks at. Call `eval()` first (BatchNorm in the mask branch)."""
        if self.training:
            raise RuntimeError("TwoStreamCondInst.predict: call model.eval() first")
        if len(output_sizes) != images.shape[0]:
            raise ValueError(f"{len(output_sizes)} output_sizes for {images.shape[0]} images")
        head, mask_feats = self._features(images, flows if self.fpn_flow is not None else None, image_sizes)
        shapes = [tuple(x.shape[-2:]) for x in head.cls_logits]
        locations = locations_per_level(shapes, self.strides, images.device)
        candidates = postprocess(head, locations, self.strides, score_thresh, nms_thresh, topk_per_level,
                                 max_dets)
        results = []
        for i, (cand, (h, w), (out_h, out_w)) in enumerate(zip(candidates, image_sizes, output_sizes)):
            d = cand.scores.numel()
            im = torch.full((d,), i, dtype=torch.long, device=images.device)
            logits = self.mask_head(mask_feats, cand.controller, im, cand.locations, cand.levels,
                                    self.mask_stride)  # (D, 1, H/4, W/4)
            probs = aligned_bilinear(logits.sigmoid(), MASK_OUT_STRIDE)[:, :, :h, :w]  # (D, 1, h, w)
            if d:
                probs = F.interpolate(probs, size=(out_h, out_w), mode="bilinear", align_corners=False)
            else:
                probs = probs.new_zeros((0, 1, out_h, out_w))
            masks = probs[:, 0] > mask_thresh  # (D, out_h, out_w)
            scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h], device=images.device)
            boxes = cand.boxes_xyxy * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, out_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, out_h)
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            results.append(Detections(boxes[nonempty], cand.scores[nonempty], cand.classes[nonempty],
                                      masks[nonempty]))
        return results
