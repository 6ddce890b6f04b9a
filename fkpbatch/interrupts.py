"""Ctrl-C (SIGINT) and SIGTERM, the signal schedulers send before killing a job, both stop a run
cleanly: inside :func:`handled` they become exceptions (``KeyboardInterrupt``, :class:`Terminated`),
and a signal that arrives while a batch is being written (:func:`deferred`) is raised only once
the write is over, so a batch is never half written nor written twice."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"installed": False, "critical": 0, "pending": None, "received": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C; the CLI exits 143 (128 + 15)."""


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum, _frame) -> None:
    _state["received"] = _state["received"] or signum
    if _state["critical"]:
        _state["pending"] = _state["pending"] or signum
        return
    raise _exception(signum)


def received() -> int | None:
    """The first signal caught inside :func:`handled`, or None."""
    return _state["received"]


@contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into exceptions for the duration of the block (main thread only;
    a signal the parent set to be ignored, e.g. SIGINT under ``nohup ... &``, stays ignored)."""
    if threading.current_thread() is not threading.main_thread() or _state["installed"]:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _handler)
    _state.update(installed=True, critical=0, pending=None, received=None)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _state.update(installed=False, critical=0, pending=None)


@contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a signal arriving inside is raised when the block ends without error."""
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
    if not _state["critical"] and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise _exception(signum)
