"""GMA (Jiang et al., ICCV 2021): RAFT with a global motion aggregation step, checkpoint-compatible."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Attention
from .corr import CorrPyramid, coords_grid
from .extractor import BasicEncoder
from .update import GMAUpdateBlock

STRIDE = 8  # the encoders' total stride: flow is estimated at 1/8 resolution


def upsample_flow_convex(flow: Tensor, mask: Tensor, factor: int) -> Tensor:
    """Convex upsampling: each fine pixel is a softmax-weighted mix of the 3x3 coarse neighbours of its cell.

    flow (B, 2, h, w) in coarse pixels; mask (B, 9*factor^2, h, w) logits, channel k*factor^2 + a*factor + b
    for neighbour k = (dy+1)*3 + (dx+1) and sub-pixel (row a, column b). Neighbours outside the frame
    count as zero flow. Returns (B, 2, factor*h, factor*w) in fine pixels (the flow is scaled by factor).
    """
    batch, _, height, width = flow.shape
    # The logits are upcast before the softmax; the official code keeps autocast's fp16 here.
    weights = mask.float().reshape(batch, 1, 9, factor, factor, height, width).softmax(dim=2)
    # (B, 2*9, h*w) with channel c*9 + k -> (B, 2, 9, 1, 1, h, w)
    neighbours = F.unfold(factor * flow, kernel_size=3, padding=1)
    neighbours = neighbours.reshape(batch, 2, 9, 1, 1, height, width)
    up = (weights * neighbours).sum(dim=2)  # (B, 2, factor, factor, h, w): (a, b, y, x)
    up = up.permute(0, 1, 4, 2, 5, 3)  # -> (B, 2, h, a, w, b)
    return up.reshape(batch, 2, factor * height, factor * width)


class GMA(nn.Module):
    """GMA optical flow network; `load_state_dict` takes the official keys with `module.` stripped.

    Defaults are the released checkpoints' (content-only attention, 1 head). Derived sizes:
    corr channels = corr_levels * (2*corr_radius + 1)^2, upsampling mask = 9 * 8^2 channels,
    minimum padded side `min_size` = 8 * 2^corr_levels (coarsest correlation level at least 2x2).
    """

    def __init__(self, hidden_dim: int = 128, context_dim: int = 128, corr_levels: int = 4,
                 corr_radius: int = 4, num_heads: int = 1, max_pos: int = 160) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.context_dim = context_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.corr_channels = corr_levels * (2 * corr_radius + 1) ** 2
        self.min_size = STRIDE * 2**corr_levels
        self.fnet = BasicEncoder(256, norm="instance")
        self.cnet = BasicEncoder(hidden_dim + context_dim, norm="batch")
        self.update_block = GMAUpdateBlock(hidden_dim, context_dim, self.corr_channels, num_heads,
                                           upsample_factor=STRIDE)
        self.att = Attention(context_dim, num_heads, head_dim=context_dim, max_pos=max_pos)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError unless height and width are multiples of 8 and at least `min_size`."""
        if height % STRIDE or width % STRIDE or height < self.min_size or width < self.min_size:
            raise ValueError(
                f"GMA input must be H x W multiples of {STRIDE}, each at least {self.min_size} "
                f"(corr_levels={self.corr_levels}); got {height} x {width}. Pad with estimate_flow "
                f"or pipeline.gma.pad_amounts.")

    def forward(self, image1: Tensor, image2: Tensor, iters: int = 12, flow_init: Tensor | None = None,
                test_mode: bool = True, autocast_dtype: torch.dtype | None = None
                ) -> tuple[Tensor, Tensor] | list[Tensor]:
        """Flow from image1 to image2.

        image1, image2: (B, 3, H, W) float RGB in [0, 255], H and W multiples of 8 and >= `min_size`.
        flow_init: optional (B, 2, H/8, W/8) initial flow in 1/8-resolution pixels.
        autocast_dtype: run the encoders, attention and update block under autocast in this dtype
        (correlation, coordinates and upsampling stay float32); None runs everything in float32.
        test_mode=True returns (flow_low (B, 2, H/8, W/8) in 1/8-res pixels, flow_up (B, 2, H, W) in
        pixels) of the last iteration; otherwise the list of `iters` flow_up. Channel 0 is u (+x right),
        channel 1 is v (+y down); all outputs float32.
        """
        if image1.dim() != 4 or image1.shape[1] != 3 or image1.shape != image2.shape:
            raise ValueError(f"GMA expects two (B, 3, H, W) images of one shape; got "
                             f"{tuple(image1.shape)} and {tuple(image2.shape)}")
        if iters < 1:
            raise ValueError(f"GMA needs iters >= 1, got {iters}")
        batch, _, height, width = image1.shape
        self.check_input_size(height, width)
        image1 = (2 * (image1 / 255.0) - 1.0).contiguous()
        image2 = (2 * (image2 / 255.0) - 1.0).contiguous()
        device_type = image1.device.type

        with _maybe_autocast(device_type, autocast_dtype):
            fmaps = self.fnet(torch.cat([image1, image2], dim=0))  # (2B, 256, h, w)
        fmap1, fmap2 = fmaps.float().split(batch, dim=0)
        corr_fn = CorrPyramid(fmap1, fmap2, self.corr_levels, self.corr_radius)

        with _maybe_autocast(device_type, autocast_dtype):
            hidden, context = self.cnet(image1).split([self.hidden_dim, self.context_dim], dim=1)
            hidden = torch.tanh(hidden)
            context = torch.relu(context)
            attention = self.att(context)  # (B, heads, N, N), computed once per pair
        if autocast_dtype is not None:  # cast once here, not in every iteration's aggregation (N^2 per pair)
            attention = attention.to(autocast_dtype)

        coords0 = coords_grid(batch, height // STRIDE, width // STRIDE, image1.device)
        coords1 = coords0.clone()
        if flow_init is not None:
            coords1 = coords1 + flow_init.float()

        predictions: list[Tensor] = []
        for step in range(iters):
            coords1 = coords1.detach()
            corr = corr_fn(coords1)  # (B, corr_channels, h, w) float32
            flow = coords1 - coords0
            with _maybe_autocast(device_type, autocast_dtype):
                hidden, mask, delta_flow = self.update_block(hidden, context, corr, flow, attention)
            coords1 = coords1 + delta_flow.float()  # F(t+1) = F(t) + delta(t)
            if not test_mode or step == iters - 1:  # test mode needs only the last upsampled flow
                predictions.append(upsample_flow_convex(coords1 - coords0, mask, STRIDE))

        if test_mode:
            return coords1 - coords0, predictions[-1]
        return predictions


@contextlib.contextmanager
def _maybe_autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast(device_type, dtype) when dtype is given, otherwise nothing."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
