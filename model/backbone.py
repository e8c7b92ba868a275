"""Shared ResNet backbone (method §4): torchvision ResNet with frozen BN returning C3-C5."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.error import URLError

import torch
import torchvision
from torchvision.models import WeightsEnum
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
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

# C3, C4, C5 channels at torchvision's width 64: BasicBlock nets (18/34) vs Bottleneck nets (50/101).
_OUT_CHANNELS = {"resnet18": (128, 256, 512), "resnet34": (128, 256, 512),
                 "resnet50": (512, 1024, 2048), "resnet101": (512, 1024, 2048)}
# Block type and blocks per stage (layer1..layer4) of each depth, as torchvision builds them.
_BLOCKS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3)), "resnet101": (Bottleneck, (3, 4, 23, 3))}
TORCHVISION_WIDTH = 64  # channels of the stem and layer1 in torchvision's ResNets (and the ImageNet weights)


def imagenet_weights(depth: Depth) -> WeightsEnum:
    """torchvision's ImageNet weights entry of `depth` (its url and metadata, e.g. `meta["_ops"]`)."""
    return _BUILDERS[depth][1]


def imagenet_cache_path(depth: Depth) -> Path:
    """Where torchvision's weights API looks for (and downloads) the ImageNet file of `depth`."""
    weights = imagenet_weights(depth)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _imagenet_state_dict(depth: Depth) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's weights API (cache first, download when online)."""
    weights = imagenet_weights(depth)
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


SCRATCH_GROUPS = 32  # GroupNorm groups of a from-scratch backbone at width 64 (scaled with the width)


def narrow_resnet(depth: Depth, width: int, norm: Callable[[int], nn.Module]) -> nn.Module:
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1..layer4 of its own block classes) with
    `width` stem channels instead of 64: every stage is width/64 as wide, so the compute falls with the square
    of the width. Initialised as torchvision does (He normal, fan_out; norm weight 1, bias 0)."""
    block, counts = _BLOCKS[depth]
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1, net.relu, net.maxpool = norm(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
    in_ch = width
    for stage, count in enumerate(counts):
        planes, stride = width * 2 ** stage, 1 if stage == 0 else 2
        out_ch = planes * block.expansion
        blocks = []
        for i in range(count):
            down = None
            if i == 0 and (stride != 1 or in_ch != out_ch):
                down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))
            blocks.append(block(in_ch, planes, stride if i == 0 else 1, down, norm_layer=norm))
            in_ch = out_ch
        setattr(net, f"layer{stage + 1}", nn.Sequential(*blocks))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class ResNetBackbone(nn.Module):
    """torchvision ResNet returning C3, C4, C5.

    weights: "imagenet" (torchvision's weights API) or a local state-dict file: FrozenBatchNorm2d, stem and
    layer1 frozen (method §4). None: trained from scratch (the synthetic demo; no ImageNet offline), where
    frozen random filters and identity-statistics BN would be meaningless, so every layer trains and the
    norm layers are GroupNorm (32 groups at width 64, as many channels per group at other widths), independent
    of the batch size and of the number of DDP processes. `width` (from scratch only) narrows every stage by
    width/64 (`narrow_resnet`); 64 is torchvision's network. `load` False builds the pretrained layout without
    reading the weights (a trained model's own weights replace them: evaluate, predict).
    Input of `forward`: (N, 3, H, W) float, already normalised by `normalize`. Output: C3 (N, c3, H/8, W/8),
    C4 (N, c4, H/16, W/16), C5 (N, c5, H/32, W/32) with (c3, c4, c5) = `out_channels`.
    """

    def __init__(self, depth: Depth, weights: str | None, width: int = TORCHVISION_WIDTH, load: bool = True):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"model.backbone: {depth!r} is not one of {sorted(_BUILDERS)}")
        pretrained = weights is not None  # ModelParams checks that pretrained weights come with width 64
        norm = FrozenBatchNorm2d if pretrained else functools.partial(
            nn.GroupNorm, SCRATCH_GROUPS * width // TORCHVISION_WIDTH)
        if width == TORCHVISION_WIDTH:
            net = _BUILDERS[depth][0](weights=None, norm_layer=norm)
        else:
            net = narrow_resnet(depth, width, norm)
        if load and weights == "imagenet":
            check_and_load(net, _imagenet_state_dict(depth), f"torchvision {depth} ImageNet weights",
                           _expected(depth))
        elif load and weights is not None:
            check_and_load(net, read_state_dict(weights, _expected(depth)), weights, _expected(depth))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for frozen in (self.stem, self.layer1) if pretrained else ():
            for p in frozen.parameters():
                p.requires_grad_(False)
        self.out_channels: tuple[int, int, int] = tuple(c * width // TORCHVISION_WIDTH for c in _OUT_CHANNELS[depth])
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
