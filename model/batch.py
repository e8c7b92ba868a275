"""The training batch: what model/data.py collates and what model/network.py consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """One padded batch of N frames (H, W multiples of 32; padding is zero and bottom/right).

    images: (N, 3, H, W) uint8 RGB (the model converts to float and applies ImageNet normalisation, so the
        loader and the host-to-device copy move a quarter of the bytes).
    flows: (N, 3, H, W) uint8 RGB-encoded flow (pipeline.flow_codec); zeros for BoxInst.
    image_sizes: per image (h, w) of the resized frame before padding.
    boxes_xyxy: per image (G_i, 4) float32 boxes in padded-input pixels, x1 < x2, y1 < y2.
    classes: per image (G_i,) int64 contiguous class indices 0..K-1.
    pair_color, pair_flow: (N, 8, H/4, W/4) bool neighbour masks on the stride-4 grid, neighbour order
        pipeline.affinity.NEIGHBOUR_OFFSETS, already zero at invalid cells (borders, bottom rows, padding).
    """

    images: Tensor
    flows: Tensor
    image_sizes: list[tuple[int, int]]
    boxes_xyxy: list[Tensor]
    classes: list[Tensor]
    pair_color: Tensor
    pair_flow: Tensor

    def pin_memory(self) -> "Batch":
        """The same batch in page-locked memory (DataLoader(pin_memory=True) calls this in its pin thread)."""
        return Batch(images=self.images.pin_memory(), flows=self.flows.pin_memory(),
                     image_sizes=list(self.image_sizes), boxes_xyxy=[b.pin_memory() for b in self.boxes_xyxy],
                     classes=[c.pin_memory() for c in self.classes], pair_color=self.pair_color.pin_memory(),
                     pair_flow=self.pair_flow.pin_memory())

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with every tensor on `device`."""
        return Batch(
            images=self.images.to(device, non_blocking=True),
            flows=self.flows.to(device, non_blocking=True),
            image_sizes=list(self.image_sizes),
            boxes_xyxy=[b.to(device, non_blocking=True) for b in self.boxes_xyxy],
            classes=[c.to(device, non_blocking=True) for c in self.classes],
            pair_color=self.pair_color.to(device, non_blocking=True),
            pair_flow=self.pair_flow.to(device, non_blocking=True),
        )
