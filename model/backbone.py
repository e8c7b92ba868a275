"""Shared ResNet backbone (method §4): torchvision ResNet with frozen BN returning C3-C5."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal
from urllib.error import URLError

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from pipeline.torch_files import TorchFileError, describe_mismatch, read_state_dict

Depth = Literal["resnet18", "resnet34", "resnet50", "resnet101"]

# ImageNet statistics for RGB in [0, 255] (torchvision's weights were trained with these on [0, 1]).
IMAGENET_MEAN_255 = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD_255 = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

_BUILDERS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
}

# C3, C4, C5 channels: BasicBlock nets (18/34) vs Bottleneck nets (50/101).
_OUT_CHANNELS = {"resnet18": (128, 256, 512), "resnet34": (128, 256, 512),
                 "resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048)}


def imagenet_cache_path(depth: Depth) -> Path:
    """Where torchvision's weights API looks for (and downloads) the ImageNet file of `depth`."""
    weights = _BUILDERS[depth][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _imagenet_state_dict(depth: Depth) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's weights API (cache first, download when online)."""
    weights = _BUILDERS[depth][1]
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except (URLError, OSError, RuntimeError) as err:
        path = imagenet_cache_path(depth)
        raise FileNotFoundError(
            f"model.weights = imagenet: could not load {weights.url} ({err}); on an offline machine put "
            f"the file at {path} (or set model.weights to a local path, or null)") from err


def _expected(depth: Depth) -> str:
    """What a model.weights file must hold, for error messages."""
    return (f"model.weights: a torchvision {depth} state dict (torch.save(torchvision.models.{depth}(weights=...)"
            f".state_dict(), path)), 'imagenet' or null")


def check_and_load(net: nn.Module, state: dict[str, Tensor], where: str, expected: str) -> None:
    """Load `state` into `net` exactly (fc.* and num_batches_tracked ignored); a mismatch raises TorchFileError
    listing the missing, unexpected and wrongly shaped keys, `where` (the source) and `expected`."""
    def kept(key: str) -> bool:
        return not key.startswith("fc.") and not key.endswith("num_batches_tracked")

    own = {k: v for k, v in net.state_dict().items() if kept(k)}
    given = {k: v for k, v in state.items() if kept(k)}
    mismatch = describe_mismatch(own, given)
    if mismatch is not None:
        raise TorchFileError(f"{where}: state dict does not match the backbone: {mismatch}; expected {expected}")
    net.load_state_dict(given, strict=False)  # strictness checked above; fc.* and counters were dropped


SCRATCH_GROUPS = 32  # GroupNorm groups of a backbone trained from scratch (every ResNet width divides by 32)


class ResNetBackbone(nn.Module):
    """torchvision ResNet returning C3, C4, C5.

    weights: "imagenet" (torchvision's weights API) or a local state-dict file: FrozenBatchNorm2d, stem and
    layer1 frozen (method §4). None: trained from scratch (the synthetic demo; no ImageNet offline), where
    frozen random filters and identity-statistics BN would be meaningless, so every layer trains and the
    norm layers are GroupNorm(32), independent of the batch size and of the number of DDP processes.
    Input of `forward`: (N, 3, H, W) float, already normalised by `normalize`. Output: C3 (N, c3, H/8, W/8),
    C4 (N, c4, H/16, W/16), C5 (N, c5, H/32, W/32) with (c3, c4, c5) = `out_channels`.
    """

    def __init__(self, depth: Depth, weights: str | None):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"model.backbone: {depth!r} is not one of {sorted(_BUILDERS)}")
        pretrained = weights is not None
        norm = FrozenBatchNorm2d if pretrained else functools.partial(nn.GroupNorm, SCRATCH_GROUPS)
        net = _BUILDERS[depth][0](weights=None, norm_layer=norm)
        if weights == "imagenet":
            check_and_load(net, _imagenet_state_dict(depth), f"torchvision {depth} ImageNet weights",
                           _expected(depth))
        elif weights is not None:
            check_and_load(net, read_state_dict(weights, _expected(depth)), weights, _expected(depth))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for frozen in (self.stem, self.layer1) if pretrained else ():
            for p in frozen.parameters():
                p.requires_grad_(False)
        self.out_channels: tuple[int, int, int] = _OUT_CHANNELS[depth]
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1), persistent=False)

    def normalize(self, rgb_255: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """(N, 3, H, W) RGB in [0, 255] -> ImageNet-normalised; the bottom/right padding is set to 0 after."""
        if rgb_255.dim() != 4 or rgb_255.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB, got {tuple(rgb_255.shape)}")
        x = (rgb_255 - self.pixel_mean) / self.pixel_std
        valid = torch.zeros_like(x[:, :1])
        for i, (h, w) in enumerate(image_sizes):
            valid[i, :, :h, :w] = 1.0
        return x * valid

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 3, H, W) normalised -> C3 (stride 8), C4 (stride 16), C5 (stride 32)."""
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5
