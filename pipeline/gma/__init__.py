"""GMA optical flow (Jiang et al., ICCV 2021) in plain PyTorch, key-compatible with the released checkpoints.

Contract: `GMA` (the module), `load_gma(path, device)` (strict, `module.` prefix handled) and
`estimate_flow(model, frames_t, frames_t1, iters, dtype, tf32)` ((B, H, W, 3) RGB frames -> (B, H, W, 2) flow).
"""

from .estimate import estimate_flow, pad_amounts, pad_images, resolve_autocast, tf32_allowed, unpad
from .loading import CheckpointMismatchError, load_gma, read_state_dict
from .network import GMA, upsample_flow_convex

__all__ = ["GMA", "CheckpointMismatchError", "estimate_flow", "load_gma", "pad_amounts", "pad_images",
           "read_state_dict", "resolve_autocast", "tf32_allowed", "unpad", "upsample_flow_convex"]
