"""Feature pyramid over C3-C5 with P6/P7 from P5 (method §4; FCOS/CondInst layout)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def _xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's c2_xavier_fill: kaiming_uniform with a=1, bias 0."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """FPN over (C3, C4, C5): 1x1 laterals, top-down nearest x2 sums, 3x3 outputs; P6 = conv3x3 s2 (P5),
    P7 = conv3x3 s2 (ReLU(P6)).

    levels: the outputs to build, a subset of LEVELS in order (a stream that feeds only the mask branch
    builds only p3-p5, so every parameter it owns gets a gradient). Output: dict level -> (N, channels,
    H/stride, W/stride).
    """

    def __init__(self, in_channels: tuple[int, int, int], channels: int,
                 levels: tuple[str, ...] = LEVELS):
        super().__init__()
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise ValueError(f"FPN levels must be a non-empty subset of {LEVELS}, got {levels}")
        self.levels = tuple(lv for lv in LEVELS if lv in levels)
        top = max(LEVELS.index(lv) for lv in self.levels)
        bottom = min(LEVELS.index(lv) for lv in self.levels)
        # A lateral at C_k is needed for every output at or above k (top-down pathway); p6/p7 need p5.
        self.num_lateral = 3 - min(bottom, 2)
        first = 3 - self.num_lateral
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels[first:])
        self.output = nn.ModuleDict({lv: nn.Conv2d(channels, channels, 3, padding=1)
                                     for lv in ("p3", "p4", "p5")
                                     if lv in self.levels or (lv == "p5" and top >= 3)})
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if top >= 3 else None
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if top >= 4 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _xavier_fill(m)

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> dict[str, Tensor]:
        """C3 (N, c3, H/8, W/8), C4 (H/16), C5 (H/32) -> {level: (N, channels, H/s, W/s)}."""
        inputs = (c3, c4, c5)[3 - self.num_lateral:]
        names = ("p3", "p4", "p5")[3 - self.num_lateral:]
        merged: dict[str, Tensor] = {}
        running = None
        for name, x, lateral in reversed(list(zip(names, inputs, self.lateral))):
            lat = lateral(x)
            running = lat if running is None else lat + F.interpolate(running, size=lat.shape[-2:], mode="nearest")
            merged[name] = running
        out = {name: conv(merged[name]) for name, conv in self.output.items()}
        if self.p6 is not None:
            out["p6"] = self.p6(out["p5"])
        if self.p7 is not None:
            out["p7"] = self.p7(F.relu(out["p6"]))
        return {lv: out[lv] for lv in self.levels}
