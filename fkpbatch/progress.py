"""Progress on stderr: a live bar on a terminal, plain lines in logs (Slurm, nohup, CI).

A log gets one line at a steady pace (every ``interval`` seconds, and at each tenth of the work),
``label: done/total unit (percent), rate unit/s, ETA h:mm:ss``, never wrapped and never redrawn.

Nothing written to stderr can stop a run: :data:`STDERR` drops a message it cannot write (a full
disk under ``2> log.txt``, ``2>/dev/full``, a closed terminal) and lets the work go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

DEFAULT_INTERVAL = 10.0  # seconds between two progress lines in a log


class _Stderr:
    """``sys.stderr`` as it is at each call (tests and callers swap it), except that a write or
    flush that fails (OSError; ValueError: closed) is dropped: logging never costs the output."""

    @staticmethod
    def _stream():
        stream = sys.stderr
        return getattr(stream, "rich_proxied_file", stream)  # under a rich live display: the real one

    def write(self, text: str) -> int:
        try:
            stream = self._stream()
            if stream is not None:
                stream.write(text)
        except (OSError, ValueError):
            pass
        return len(text)

    def flush(self) -> None:
        try:
            stream = self._stream()
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return bool(self._stream().isatty())
        except (AttributeError, OSError, ValueError):
            return False

    def __getattr__(self, name: str):
        if name.startswith("rich_"):  # never handed over to rich: it would bypass this wrapper
            raise AttributeError(name)
        return getattr(self._stream(), name)


STDERR: TextIO = _Stderr()  # type: ignore[assignment]


def say(message: str, stream: TextIO | None = None) -> None:
    """One whole line on stderr (no markup, no wrapping, flushed at once); a line that cannot be
    written is dropped."""
    stream = stream or STDERR
    try:
        stream.write(message.rstrip("\n") + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def duration(seconds: float) -> str:
    """``0:01:05`` style; ``?`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """Progress as plain lines; ``start(total)`` then ``advance(n)`` as work finishes."""

    def __init__(
        self,
        label: str,
        unit: str = "images",
        *,
        interval: float = DEFAULT_INTERVAL,
        steps: int = 10,
        write: Callable[[str], None] = say,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.unit, self.interval, self.steps = label, unit, interval, steps
        self.write, self.clock = write, clock
        self.total: int | None = None
        self.done = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = self.clock()
        self.step = 0  # tenths of the work already reported

    def advance(self, n: int = 1) -> None:
        if self.total is None or n <= 0:
            return
        self.done += n
        now = self.clock()
        step = self.done * self.steps // self.total if self.total else self.steps
        if now - self.last >= self.interval or step > self.step:
            self.step, self.last = step, now
            self.write(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        total = self.total or 0
        percent = 100.0 * self.done / total if total else 100.0
        eta = (total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.label}: {self.done}/{total} {self.unit} ({percent:.0f} %), {rate:.1f} {self.unit}/s, "
            f"elapsed {duration(elapsed)}, ETA {duration(eta)}"
        )


class BarProgress:
    """A transient rich progress bar on a terminal, with :class:`LineProgress`'s interface."""

    def __init__(self, label: str, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(label, total=None)

    def __enter__(self) -> BarProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


class NoProgress(LineProgress):
    """``--quiet``: nothing."""

    def __init__(self):
        super().__init__("", write=lambda line: None)

    def advance(self, n: int = 1) -> None:
        return None


def progress_for(label: str, *, quiet: bool, terminal: bool, console=None, unit: str = "images"):
    """The progress display for a command: none with ``--quiet``, a bar on a terminal, else lines."""
    if quiet:
        return NoProgress()
    if terminal:
        return BarProgress(label, console)
    return LineProgress(label, unit)
