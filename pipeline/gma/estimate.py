"""Flow for batches of frame pairs: pad to GMA's input contract, run the network, crop back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .network import GMA, STRIDE

AutocastName = Literal["float32", "bfloat16", "float16"]
_AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def padded_size(size: int, min_size: int) -> int:
    """Smallest multiple of 8 that is >= size and >= min_size (min_size is a multiple of 8)."""
    return max(-(-size // STRIDE) * STRIDE, min_size)


def pad_amounts(height: int, width: int, min_size: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding, split evenly with the extra pixel right/bottom.

    This is the official InputPadder's 'sintel' mode, extended so each padded side is >= min_size.
    """
    pad_h = padded_size(height, min_size) - height
    pad_w = padded_size(width, min_size) - width
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_images(images: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """(B, C, H, W) -> (B, C, H + top + bottom, W + left + right), edge pixels replicated."""
    return F.pad(images, pads, mode="replicate")


def unpad(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Crop the padding `pads` = (left, right, top, bottom) off the last two dimensions of x."""
    left, right, top, bottom = pads
    height, width = x.shape[-2:]
    return x[..., top:height - bottom, left:width - right]


def resolve_autocast(dtype: AutocastName | torch.dtype | None) -> torch.dtype | None:
    """Config name or torch dtype -> the autocast dtype, None for plain float32."""
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"flow.gma.dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    if dtype not in _AUTOCAST:
        raise ValueError(f"flow.gma.dtype must be one of {sorted(_AUTOCAST)}, got {dtype!r}")
    return _AUTOCAST[dtype]


@contextlib.contextmanager
def tf32_allowed(enabled: bool) -> Iterator[None]:
    """Within the block, CUDA matmuls and cuDNN convolutions may use TF32 (enabled) or run strict float32 (not);
    the previous settings are restored after. PyTorch's defaults differ (matmul off, cuDNN on): False makes the
    whole network strict float32. No effect on the CPU or inside a bfloat16/float16 autocast region's casts."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _frames_to_tensor(frames: np.ndarray | Tensor, name: str, device: torch.device) -> Tensor:
    """(B, H, W, 3) uint8 or float RGB in [0, 255] -> (B, 3, H, W) float32 on device."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name} must be (B, H, W, 3) RGB frames, got shape {tuple(frames.shape)}")
    tensor = torch.as_tensor(frames)
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float RGB in [0, 255], got dtype {tensor.dtype}")
    tensor = tensor.to(device=device).permute(0, 3, 1, 2).float()  # (B, H, W, 3) -> (B, 3, H, W)
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 255):
        raise ValueError(f"{name} values must lie in [0, 255], got [{tensor.min().item()}, "
                         f"{tensor.max().item()}]")
    return tensor


def estimate_flow(model: GMA, frames_t: np.ndarray | Tensor, frames_t1: np.ndarray | Tensor,
                  iters: int = 12, dtype: AutocastName | torch.dtype | None = None,
                  tf32: bool = False) -> np.ndarray | Tensor:
    """Forward flow F(t -> t+1) for a batch of frame pairs, at the frames' own resolution.

    frames_t, frames_t1: (B, H, W, 3) RGB, uint8 or float in [0, 255], numpy or torch (any H, W).
    Frames are padded (replicate, split evenly, each side to a multiple of 8 and >= model.min_size),
    run through `model` (which must be in eval mode) on its device, and the flow is cropped back.
    dtype: "float32" / None (plain), or "bfloat16" / "float16" autocast (meant for CUDA).
    tf32: let CUDA matmuls and convolutions use TF32 (`tf32_allowed`); False runs float32 strictly.
    Returns (B, H, W, 2) float32 flow in pixels, (u, v) = (+x right, +y down): a numpy array when
    frames_t is numpy, otherwise a tensor on the model's device.
    """
    if model.training:
        raise ValueError("estimate_flow needs the model in eval mode (cnet's BatchNorm must use running "
                         "statistics); call model.eval() or use load_gma")
    if tuple(frames_t.shape) != tuple(frames_t1.shape):
        raise ValueError(f"frames_t {tuple(frames_t.shape)} and frames_t1 {tuple(frames_t1.shape)} differ in shape")
    device = next(model.parameters()).device
    image1 = _frames_to_tensor(frames_t, "frames_t", device)
    image2 = _frames_to_tensor(frames_t1, "frames_t1", device)
    height, width = image1.shape[-2:]
    pads = pad_amounts(height, width, model.min_size)
    with torch.inference_mode(), tf32_allowed(tf32):
        _, flow_up = model(pad_images(image1, pads), pad_images(image2, pads), iters=iters,
                           test_mode=True, autocast_dtype=resolve_autocast(dtype))
        flow = unpad(flow_up, pads).permute(0, 2, 3, 1).float()  # (B, 2, H, W) -> (B, H, W, 2)
    if isinstance(frames_t, np.ndarray):
        return flow.cpu().numpy()
    return flow.contiguous()
