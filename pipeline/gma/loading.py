"""Loading the released GMA checkpoints (gma-{chairs,things,sintel,kitti}.pth) strictly."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from .network import GMA

DATAPARALLEL_PREFIX = "module."
LISTED_PER_KIND = 10  # how many keys of each kind a mismatch error names


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes differ from the GMA module's; the message lists them."""


def strip_prefix(state: Mapping[str, Tensor], prefix: str = DATAPARALLEL_PREFIX) -> dict[str, Tensor]:
    """Drop `prefix` (DataParallel's `module.`) from every key that starts with it."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def describe_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    """Missing, unexpected and wrongly shaped keys (first ten of each plus counts), or None if they match."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [f"{key}: checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)}"
                   for key in expected
                   if key in found and tuple(found[key].shape) != tuple(expected[key].shape)]
    if not (missing or unexpected or wrong_shape):
        return None
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong_shape)):
        shown = ", ".join(items[:LISTED_PER_KIND])
        more = f", ... ({len(items) - LISTED_PER_KIND} more)" if len(items) > LISTED_PER_KIND else ""
        parts.append(f"{len(items)} {name} keys" + (f": {shown}{more}" if items else ""))
    return "; ".join(parts)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a GMA checkpoint with weights_only=True onto the CPU; keys returned without `module.`.

    Accepts the official flat state dict and a {"state_dict": ...} wrapper (ptlflow's layout).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GMA checkpoint {path} not found; the official weights (e.g. gma-sintel.pth) are in the "
            f"checkpoints/ folder of https://github.com/zacjiang/GMA")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a loadable PyTorch state dict ({type(err).__name__}: {err})") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    return strip_prefix(state)


def load_gma(path: str | os.PathLike, device: str | torch.device = "cpu") -> GMA:
    """Build GMA, load the checkpoint at `path` strictly, move it to `device` and set eval mode.

    Raises CheckpointMismatchError naming the file and the missing / unexpected / wrongly shaped keys.
    """
    state = read_state_dict(path)
    model = GMA()
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointMismatchError(f"{path}: not a GMA checkpoint for this network: {mismatch}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
