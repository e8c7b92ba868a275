"""All-pairs correlation pyramid and its local lookup (RAFT/GMA), always in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def coords_grid(batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """Pixel coordinates (B, 2, H, W) float32; channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, 2, height, width).contiguous()


def bilinear_sample(image: Tensor, xy: Tensor) -> Tensor:
    """Sample image (N, C, H, W) at pixel coordinates xy (N, h, w, 2) as (x, y); zeros outside.

    Pixel centres sit on integers (grid_sample with align_corners=True). Returns (N, C, h, w).
    """
    height, width = image.shape[-2:]
    x_norm = 2.0 * xy[..., 0] / (width - 1) - 1.0
    y_norm = 2.0 * xy[..., 1] / (height - 1) - 1.0
    grid = torch.stack([x_norm, y_norm], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


class CorrPyramid:
    """Correlation volume of fmap1 against fmap2 plus `num_levels - 1` 2x2-average-pooled copies.

    Built once per image pair; called with coordinates it returns the (2r+1)^2 values around each
    point at every level. Level l is h2/2^l x w2/2^l (floored), so the padded input must be at least
    8 * 2^num_levels pixels on each side for the coarsest level to be 2x2 (see `GMA.min_size`).
    """

    def __init__(self, fmap1: Tensor, fmap2: Tensor, num_levels: int, radius: int) -> None:
        """fmap1, fmap2: (B, D, h, w). Computed in float32 whatever their dtype."""
        self.num_levels = num_levels
        self.radius = radius
        self.channels = num_levels * (2 * radius + 1) ** 2
        batch, dim, height, width = fmap1.shape
        f1 = fmap1.float().reshape(batch, dim, height * width)
        f2 = fmap2.float().reshape(batch, dim, height * width)
        corr = torch.matmul(f1.transpose(1, 2), f2) / dim**0.5  # (B, hw, hw): image-1 pixel, image-2 pixel
        corr = corr.reshape(batch * height * width, 1, height, width)  # image-1 pixel as batch, image-2 grid
        self.levels: list[Tensor] = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.levels.append(corr)
        side = 2 * radius + 1
        steps = torch.arange(-radius, radius + 1, device=fmap1.device, dtype=torch.float32)
        # Window offsets (side, side, 2) as (dx, dy): dx varies along the first axis, dy along the
        # second, so the flattened channel a*side + b samples (x + a - r, y + b - r) as in RAFT.
        dx, dy = torch.meshgrid(steps, steps, indexing="ij")
        self.offsets = torch.stack([dx, dy], dim=-1).reshape(1, side, side, 2)

    def __call__(self, coords: Tensor) -> Tensor:
        """coords (B, 2, h, w) as (x, y) in level-0 pixels -> (B, num_levels*(2r+1)^2, h, w) float32.

        Channel l*(2r+1)^2 + a*(2r+1) + b holds level l at (x/2^l + a - r, y/2^l + b - r).
        """
        batch, _, height, width = coords.shape
        centres = coords.float().permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        per_level = []
        for level, corr in enumerate(self.levels):
            window = centres / 2**level + self.offsets  # (B*h*w, side, side, 2)
            sampled = bilinear_sample(corr, window)  # (B*h*w, 1, side, side)
            per_level.append(sampled.reshape(batch, height, width, -1))
        out = torch.cat(per_level, dim=-1)  # (B, h, w, levels*side^2)
        return out.permute(0, 3, 1, 2).contiguous()
