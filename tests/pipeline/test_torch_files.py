"""Wrong torch files (GMA checkpoint, model.weights, final.pt) get an error naming the file and what it should be."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbone import ResNetBackbone
from model.evaluate import load_trained
from model.predict import load_checkpoint
from pipeline.gma import load_gma
from pipeline.gma_checkpoint import CheckpointUnavailable, fetch_checkpoint
from pipeline.torch_files import TorchFileError, describe_mismatch


def _truncated(path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # a download cut off half way


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("weights/readme.txt", "not a torch archive")


WRONG_FILES: dict[str, Callable[[Path], None]] = {
    "text": lambda p: p.write_text("hello world\n"),
    "empty": lambda p: p.write_bytes(b""),
    "zip that is not a torch file": _zip,
    "cut-off torch file": _truncated,
    "numpy arrays (refused by weights_only)": lambda p: torch.save({"conv1.weight": np.zeros(3)}, p),
    "a list of tensors": lambda p: torch.save([torch.zeros(1)], p),
    "numbers instead of tensors": lambda p: torch.save({"conv1.weight": 3, "conv1.bias": 4}, p),
    "another network's state dict": lambda p: torch.save({"conv1.weight": torch.zeros(2, 2)}, p),
    "a folder": lambda p: p.mkdir(),
}
LOADERS: dict[str, tuple[Callable[[Path], object], str]] = {
    # name: (load the file, what the message says the file should be)
    "GMA checkpoint": (load_gma, "expected a GMA checkpoint"),
    "model.weights": (lambda p: ResNetBackbone("resnet18", str(p)), "expected model.weights: a torchvision resnet18"),
    "evaluate --checkpoint": (lambda p: load_trained(p, "cpu"), "expected a mowis final checkpoint"),
    "predict --checkpoint": (lambda p: load_checkpoint(p, "cpu"), "expected a mowis final checkpoint"),
}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("kind", list(WRONG_FILES))
def test_wrong_file_names_the_file_and_what_was_expected(tmp_path: Path, loader: str, kind: str) -> None:
    path = tmp_path / "weights.pth"
    WRONG_FILES[kind](path)
    load, expected = LOADERS[loader]
    with pytest.raises((TorchFileError, FileNotFoundError)) as info:
        load(path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)


def test_unreadable_file_message_is_one_line_with_the_cause(tmp_path: Path) -> None:
    """torch's weights_only refusal runs to a page; the message keeps its first line and the error type."""
    path = tmp_path / "arrays.pt"
    torch.save({"w": np.zeros(3)}, path)
    with pytest.raises(TorchFileError) as info:
        load_gma(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a loadable PyTorch file (UnpicklingError: Weights only load failed")
    assert "\n" not in message and isinstance(info.value.__cause__, Exception)


def test_describe_mismatch_hand_worked() -> None:
    model = {"a": torch.zeros(2), "b": torch.zeros(3, 3), "c": torch.zeros(1)}
    found = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "d": torch.zeros(5)}
    assert describe_mismatch(model, found) == ("1 missing keys: c; 1 unexpected keys: d; "
                                               "1 wrongly shaped keys: b: file (3, 4), model (3, 3)")
    assert describe_mismatch(model, dict(model)) is None


def test_fetched_gma_checkpoint_that_is_a_text_file(tmp_path: Path) -> None:
    """An HTML error page saved as the checkpoint: CheckpointUnavailable naming the URL and the destination,
    nothing left at the destination."""
    page = tmp_path / "gma-sintel.pth"
    page.write_text("<html>404 Not Found</html>\n")
    dest = tmp_path / "weights" / "gma-sintel.pth"
    with pytest.raises(CheckpointUnavailable) as info:
        fetch_checkpoint(page.as_uri(), dest)
    message = str(info.value)
    assert page.as_uri() in message and str(dest.resolve()) in message and "not a loadable PyTorch file" in message
    assert list(dest.parent.iterdir()) == []
