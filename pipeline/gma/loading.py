"""Loading the released GMA checkpoints (gma-{chairs,things,sintel,kitti}.pth) strictly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from pipeline import torch_files

from .network import GMA

DATAPARALLEL_PREFIX = "module."
EXPECTED = ("a GMA checkpoint: the state dict of pipeline.gma.GMA, e.g. gma-sintel.pth from the checkpoints/ "
            "folder of https://github.com/zacjiang/GMA")


class CheckpointMismatchError(torch_files.TorchFileError):
    """A checkpoint whose keys or shapes differ from the GMA module's; the message lists them."""


def strip_prefix(state: Mapping[str, Tensor], prefix: str = DATAPARALLEL_PREFIX) -> dict[str, Tensor]:
    """Drop `prefix` (DataParallel's `module.`) from every key that starts with it."""
    return {key.removeprefix(prefix): value for key, value in state.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a GMA checkpoint with weights_only=True onto the CPU; keys returned without `module.`.

    Accepts the official flat state dict and a {"state_dict": ...} wrapper (ptlflow's layout). A missing file
    raises FileNotFoundError, any other wrong file TorchFileError (a ValueError), both naming it.
    """
    return strip_prefix(torch_files.read_state_dict(path, EXPECTED))


def load_gma(path: str | os.PathLike, device: str | torch.device = "cpu") -> GMA:
    """Build GMA, load the checkpoint at `path` strictly, move it to `device` and set eval mode.

    Raises CheckpointMismatchError naming the file and the missing / unexpected / wrongly shaped keys.
    """
    state = read_state_dict(path)
    model = GMA()
    mismatch = torch_files.describe_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointMismatchError(f"{Path(path)}: not a GMA checkpoint for this network: {mismatch}; "
                                      f"expected {EXPECTED}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
