"""Reading files written by torch.save (state dicts, checkpoints) without trusting them.

Every read is `torch.load(..., weights_only=True)` onto the CPU: no pickled code runs. Whatever is wrong
with a file (missing, a folder, text, a zip that is not a torch archive, a cut-off download, pickled
objects other than tensors and containers, a mapping of something other than tensors, the keys or shapes of
another network), the error names the file and what it should have held: FileNotFoundError for a missing
file, TorchFileError (a ValueError) for everything else, never a bare KeyError or UnpicklingError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

LISTED_PER_KIND = 10  # how many keys of each kind a mismatch message names


class TorchFileError(ValueError):
    """A file that is not the torch file it should be; the message names the file and what was expected."""


def _first_line(err: BaseException, limit: int = 200) -> str:
    """`TypeName: first line of the message`, cut to `limit` characters (torch's messages run to pages)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_torch_file(path: str | os.PathLike, expected: str) -> Any:
    """What torch.save wrote to `path`, read with weights_only=True onto the CPU. `expected` says what the
    file should be (e.g. "a torchvision ResNet state dict"); every error names the file and it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({'a folder' if path.is_dir() else 'missing'}); "
                                f"expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises whatever its unpickler meets in foreign bytes: KeyError for
        # text, RuntimeError for a zip without data.pkl or a cut-off file, EOFError, UnpicklingError, ...
        raise TorchFileError(f"{path}: not a loadable PyTorch file ({_first_line(err)}); expected {expected}") \
            from err


def as_state_dict(obj: Any, path: str | os.PathLike, expected: str) -> dict[str, Tensor]:
    """`obj` (read from `path`) as a {parameter name: tensor} dict; a {"state_dict": ...} wrapper (PyTorch
    Lightning, ptlflow) is unwrapped. Anything else raises TorchFileError naming the file."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a mapping of parameter names to "
                             f"tensors; expected {expected}")
    wrong = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if wrong:
        key, value = wrong[0]
        raise TorchFileError(f"{path}: {len(wrong)} of {len(obj)} entries are not parameter name -> tensor "
                             f"(e.g. {str(key)[:80]!r} -> {type(value).__name__}); expected {expected}")
    return dict(obj)


def read_state_dict(path: str | os.PathLike, expected: str) -> dict[str, Tensor]:
    """The state dict saved at `path` (load_torch_file, then as_state_dict)."""
    return as_state_dict(load_torch_file(path, expected), path, expected)


def describe_mismatch(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str | None:
    """Missing, unexpected and wrongly shaped keys of `found` against `expected` (first ten of each plus
    counts), or None if they match."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [f"{key}: file {tuple(found[key].shape)}, model {tuple(expected[key].shape)}"
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
