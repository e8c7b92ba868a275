"""GMA's recurrent update: motion encoder, global aggregation, separable ConvGRU, flow and mask heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Aggregate


class MotionEncoder(nn.Module):
    """Encodes correlation features and the current flow into `out_channels` motion features.

    The last two output channels are the raw flow itself: out = [relu(conv([cor, flo])), flow].
    """

    def __init__(self, corr_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(192 + 64, out_channels - 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        """flow (B, 2, h, w), corr (B, corr_channels, h, w) -> (B, out_channels, h, w)."""
        cor = self.relu(self.convc2(self.relu(self.convc1(corr))))
        flo = self.relu(self.convf2(self.relu(self.convf1(flow))))
        out = self.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)  # cat promotes: float32 under autocast


class SepConvGRU(nn.Module):
    """ConvGRU run twice per step: a 1x5 (horizontal) pass, then a 5x1 (vertical) pass, same input."""

    def __init__(self, hidden_dim: int, input_dim: int) -> None:
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(channels, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(channels, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _gru_step(h: Tensor, x: Tensor, convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d) -> Tensor:
        """One GRU update: z, r gates; q candidate; h <- (1 - z) h + z q."""
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        """h (B, hidden_dim, h, w), x (B, input_dim, h, w) -> new h (B, hidden_dim, h, w)."""
        h = self._gru_step(h, x, self.convz1, self.convr1, self.convq1)
        return self._gru_step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    """Two 3x3 convs: hidden state -> flow update (B, 2, h, w) in 1/8-resolution pixels."""

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_channels, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, h, w) -> (B, 2, h, w)."""
        return self.conv2(self.relu(self.conv1(x)))


class GMAUpdateBlock(nn.Module):
    """One refinement step: motion features, their global aggregate, GRU, flow update and upsampling mask.

    Attribute order (encoder, gru, flow_head, mask, aggregator) matches the checkpoints' key order.
    The GRU input is [context, motion, aggregated motion], each `hidden_dim` channels.
    """

    MASK_SCALE = 0.25  # the mask logits are scaled by 1/4, as in RAFT

    def __init__(self, hidden_dim: int, context_dim: int, corr_channels: int, num_heads: int,
                 upsample_factor: int) -> None:
        super().__init__()
        motion_dim = hidden_dim
        self.encoder = MotionEncoder(corr_channels, motion_dim)
        self.gru = SepConvGRU(hidden_dim, context_dim + 2 * motion_dim)
        self.flow_head = FlowHead(hidden_dim, 256)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden_dim, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 9 * upsample_factor**2, 1))
        self.aggregator = Aggregate(motion_dim, num_heads, head_dim=motion_dim)

    def forward(self, hidden: Tensor, context: Tensor, corr: Tensor, flow: Tensor,
                attention: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hidden, context (B, hidden_dim/context_dim, h, w); corr (B, corr_channels, h, w); flow (B, 2, h, w);
        attention (B, heads, h*w, h*w). Returns (hidden, mask (B, 9*f^2, h, w), delta_flow (B, 2, h, w))."""
        motion = self.encoder(flow, corr)
        motion_global = self.aggregator(attention, motion)
        hidden = self.gru(hidden, torch.cat([context, motion, motion_global], dim=1))
        delta_flow = self.flow_head(hidden)
        mask = self.MASK_SCALE * self.mask(hidden)
        return hidden, mask, delta_flow
