"""The trainer's log file (stderr is not a terminal under a rule's `log:`): one progress line per reporting
interval for 1,000 steps, not one per step, and small."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train import RunPaths, train
from pipeline.io import setup_logging
from test_ddp import ProbeNet, tiny_params


@pytest.mark.slow
def test_training_log_has_a_line_per_interval(tiny_data: dict, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """1,000 steps of a small net on the tiny data, a line every 50 steps: 21 progress lines, no '\\r'."""
    setup_logging()  # as model.train's CLI does: log records go to this test's stderr, not an earlier test's
    params = tiny_params(iters=1000, checkpoint_every=1000, warmup_iters=1, steps=[900], amp="fp32", batch_size=1,
                         base_batch=1, min_sizes=[32], max_size=64)
    paths = RunPaths(index=tiny_data["index"], frames=tiny_data["frames"], flow=tiny_data["flow"],
                     affinity=tiny_data["affinity"], out=tmp_path / "run", workers=0, log_every=50,
                     log_interval=0.0, device="cpu")
    train(paths, {"two_stream": True}, params, lambda model_params, classes: (ProbeNet(classes), True, True))
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("train: ")]
    assert "\r" not in err
    assert len(progress) == 1 + 1000 // 50, progress[:3]
    assert progress[-1].startswith("train: 1000/1000 (100%)")
    assert len(err) < 20_000, len(err)
