"""Progress of long jobs: a live tqdm bar on a terminal, plain lines in a log file.

A terminal gets a bar that redraws at most every `TERMINAL_INTERVAL` seconds. A log file (a rule's `log:`,
where stderr is not a terminal) gets one whole line per report, `every` items apart and at most one per
`LOG_INTERVAL` seconds, plus the final state on close: the file grows by lines, never by carriage returns.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

TERMINAL_INTERVAL = 2.0  # seconds between redraws of a terminal bar
LOG_INTERVAL = 30.0      # seconds at least between two lines in a log file
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class LineProgress(tqdm):
    """tqdm that writes each report as a line of its own (for files), and its final state when closed."""

    _shown: float | None = None  # the count last written

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the current state (or `msg`) as one line; on close (msg '') the final state if not yet shown."""
        if msg == "":  # close() clears a bar this way: a file keeps its last line instead
            if self.n != self._shown:
                self._write(self.__str__())
            return False
        self._write(msg if msg is not None else self.__str__())
        return True

    def _write(self, line: str) -> None:
        """Append `line` and a newline to the stream."""
        self._shown = self.n
        self.fp.write(line.strip() + "\n")
        self.fp.flush()


def progress_bar(total: int | None, desc: str, unit: str = "it", every: int = 1, initial: int = 0,
                 file: IO[str] | None = None, disable: bool = False, interval: float = LOG_INTERVAL,
                 **kwargs: Any) -> tqdm:
    """A bar on a terminal; on a file, a line every `every` items and at most every `interval` seconds."""
    stream = file if file is not None else sys.stderr
    common = dict(total=total, desc=desc, unit=unit, initial=initial, file=stream, disable=disable, **kwargs)
    if stream.isatty():
        return tqdm(mininterval=TERMINAL_INTERVAL, dynamic_ncols=True, **common)
    return LineProgress(miniters=max(every, 1), mininterval=interval, leave=False, bar_format=LINE_FORMAT,
                        **common)
