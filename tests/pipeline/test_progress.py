"""Progress reporting: a log file gets one line per reporting interval, never a carriage-return bar."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from pipeline.progress import LineProgress, progress_bar


def run_bar(steps: int, every: int, interval: float) -> str:
    """What `steps` updates (with a loss postfix each, as the trainer sets it) write to a non-terminal stream."""
    stream = io.StringIO()
    bar = progress_bar(steps, "train", every=every, file=stream, interval=interval)
    for step in range(steps):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
    bar.close()
    return stream.getvalue()


@pytest.mark.parametrize("steps, every", [(1000, 20), (1000, 7), (10, 20)])
def test_file_gets_a_line_per_interval_and_the_final_state(steps: int, every: int) -> None:
    """One line at the start, one every `every` steps, and the final state once: ceil-free count by hand."""
    text = run_bar(steps, every, interval=0.0)
    lines = text.splitlines()
    assert "\r" not in text
    expected = 1 + steps // every + (steps % every != 0)
    assert len(lines) == expected, lines[:5]
    assert lines[0].startswith("train: 0/") and lines[-1].startswith(f"train: {steps}/{steps} (100%)")
    assert len(text) < 100 * expected  # 1,000 steps at every=20: about 5 KB, not a line per step


def test_time_throttle_keeps_a_fast_loop_to_first_and_last_line() -> None:
    """With LOG_INTERVAL-like throttling, 1,000 quick steps write the start and the end only."""
    lines = run_bar(1000, 20, interval=3600.0).splitlines()
    assert [line.split(" (")[0] for line in lines] == ["train: 0/1000", "train: 1000/1000"]


def test_terminal_gets_a_live_bar() -> None:
    """A stream that is a terminal gets tqdm's bar, throttled to a redraw every few seconds."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    bar = progress_bar(10, "train", file=Terminal())
    assert type(bar) is tqdm and not isinstance(bar, LineProgress) and bar.mininterval >= 1.0
    bar.close()
