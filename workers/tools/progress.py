"""Progress of a CLI verb, through tqdm: a bar on a terminal, plain periodic lines anywhere else.

A CronJob's log or a pipe must never receive carriage returns or a redraw per update: there
tqdm's status goes through `PlainLines`, which turns each status into one line, drops repeats,
and tqdm's `mininterval` spaces them (one at the start, one per `interval`, one at the end).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} DONE after {elapsed}"  # DONE: what the count is


class PlainLines:
    """A file for tqdm that writes each status as one line with no carriage return, never twice in a row."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line and line != self._last:
            self._out.write(line + "\n")
            self._last = line
        return len(text)

    def flush(self) -> None:
        self._out.flush()


def _is_terminal(out: TextIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Counts towards an optional total; `update_to(n)` reports the count so far, `close()` the last line.

    `unit` names one item on the bar (`key`: "3.2key/s"); `done` says what the count is in plain lines
    (`keys rotated`: "rotating: 3/10 keys rotated after 00:04")."""

    def __init__(self, desc: str, total: int | None, *, unit: str, done: str, out: TextIO | None = None,
                 interval: float = 10.0) -> None:
        out = out if out is not None else sys.stderr
        if _is_terminal(out):
            self._bar = tqdm(desc=desc, total=total, unit=unit, file=out, leave=True)
        else:
            plain = PLAIN_FORMAT.replace("DONE", done.replace("{", "{{").replace("}", "}}"))
            self._bar = tqdm(desc=desc, total=total, unit=unit, file=PlainLines(out), leave=True, ascii=True,
                             mininterval=interval, maxinterval=interval, bar_format=plain)

    def update_to(self, done: int) -> None:
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
