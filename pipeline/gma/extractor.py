"""GMA's two convolutional encoders (feature `fnet`, context `cnet`): residual blocks, total stride 8."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

NormKind = Literal["instance", "batch"]


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """InstanceNorm2d (no affine, no running stats: no checkpoint keys) or BatchNorm2d (5 keys)."""
    match kind:
        case "instance":
            return nn.InstanceNorm2d(channels)
        case "batch":
            return nn.BatchNorm2d(channels)
    raise ValueError(f"norm kind must be 'instance' or 'batch', got {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convs with norm and ReLU plus a skip path; stride 2 adds a 1x1 conv + norm on the skip.

    With stride 2 the skip norm is one module registered twice, as `norm3` and `downsample.1`, so the
    state dict lists its tensors under both names, as the released checkpoints do.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormKind, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = make_norm(norm, out_channels)
        self.norm2 = make_norm(norm, out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1:
            self.norm3 = make_norm(norm, out_channels)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), self.norm3)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(skip + y)


class BasicEncoder(nn.Module):
    """conv7x7/2 -> norm -> ReLU -> 3 stages of 2 residual blocks (64, 96/2, 128/2) -> conv1x1 to `out_channels`.

    `norm1` is registered before `conv1` so that the state-dict order matches the checkpoints.
    """

    def __init__(self, out_channels: int, norm: NormKind) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, 64)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = self._stage(64, 64, norm, stride=1)
        self.layer2 = self._stage(64, 96, norm, stride=2)
        self.layer3 = self._stage(96, 128, norm, stride=2)
        self.conv2 = nn.Conv2d(128, out_channels, 1)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, norm: NormKind, stride: int) -> nn.Sequential:
        """Two residual blocks, the first one strided."""
        return nn.Sequential(ResidualBlock(in_channels, out_channels, norm, stride),
                             ResidualBlock(out_channels, out_channels, norm, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised to [-1, 1] -> (B, out_channels, H/8, W/8)."""
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)

