"""Ctrl-C (SIGINT), SIGTERM (what schedulers send before killing a job) and SIGHUP (a closed
terminal or ssh session) all stop a run cleanly: inside :func:`handled`, which only the CLI's entry
point enters, they become exceptions (``KeyboardInterrupt``, :class:`Terminated`), and a signal that
arrives while a batch is being written (:func:`deferred`) is raised only once the write is over, so
a batch is never half written nor written twice. Outside :func:`handled` (a library call) nothing
here touches the process: no handler is installed and :func:`deferred` does nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_state = {"installed": False, "critical": 0, "pending": None, "received": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C; the CLI exits 128 + ``signum``."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def _exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _handler(signum, _frame) -> None:
    _state["received"] = _state["received"] or signum
    if _state["critical"]:
        _state["pending"] = _state["pending"] or signum
        return
    raise _exception(signum)


def terminated() -> Terminated | None:
    """A :class:`Terminated` for the stop signal caught inside :func:`handled` (not Ctrl-C), or None."""
    signum = _state["received"]
    return None if signum in (None, signal.SIGINT) else Terminated(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Turn the stop signals into exceptions for the duration of the block (main thread only; a
    signal the parent set to be ignored, e.g. SIGINT under ``nohup ... &``, stays ignored)."""
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
        _state.update(installed=False, critical=0, pending=None, received=None)


@contextmanager
def deferred() -> Iterator[None]:
    """A critical section: a signal arriving inside is raised when the block ends without error."""
    if not _state["installed"]:
        yield
        return
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
    if not _state["critical"] and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise _exception(signum)
