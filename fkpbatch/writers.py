"""Output: CSV rows per face, JSON/JSONL objects per image.

CSV and JSONL are created with their header through a temporary file (never a link, never over
an input) and then appended batch by batch, one write call per batch; a write that fails is cut
back to the last whole batch. JSON goes to a temporary file renamed into place when the run ends
or is interrupted. CSV text cells are made spreadsheet-safe (:func:`protect`) unless ``raw``."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from . import interrupts
from .errors import OutputError, PipeClosed, UsageError
from .fileio import atomic_write, open_stream, stream_kind, write_error
from .results import RowLayout

if TYPE_CHECKING:
    import pandas as pd

    from .results import ImageResult

FORMATS = ("csv", "json", "jsonl")
# A CSV cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP
# "CSV injection"); ' itself is included so that protect() can be undone exactly.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def protect(text: str) -> str:
    """Spreadsheet-safe text: a leading ``'`` before a cell that would start a formula (and
    before one that starts with ``'``, so that :func:`unprotect` is exact). Numbers stay numbers."""
    return "'" + text if text.startswith(FORMULA_START) else text


def unprotect(text: str) -> str:
    """The text :func:`protect` was given."""
    return text.removeprefix("'")


def _cell(value) -> str:
    if isinstance(value, str):  # quoted when it holds a comma, a quote, CR or LF (csv leaves CR bare)
        return '"' + value.replace('"', '""') + '"' if _NEEDS_QUOTES.search(value) else value
    return str(value)


def csv_text(rows: Iterable[list], *, safe: bool = False) -> str:
    """CSV lines (``\n``-terminated, RFC 4180 quoting); with ``safe``, text cells are protected."""
    if safe:
        rows = ([protect(v) if isinstance(v, str) else v for v in row] for row in rows)
    return "".join(",".join(map(_cell, row)) + "\n" for row in rows)


def infer_format(out: str, fmt: str | None) -> str:
    """``--format`` wins; otherwise the output's extension (.csv, .json, .jsonl); CSV on stdout
    and on a FIFO or device without one of these extensions (/dev/null, bash's ``>(cmd)``)."""
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    if out == "-":
        return "csv"
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS and stream_kind(out) is not None:
        return "csv"
    if suffix not in FORMATS:
        raise UsageError(
            f"-o {out}: unknown output extension {Path(out).suffix or '(none)'!r}; "
            "use .csv, .json or .jsonl, or give --format"
        )
    return suffix


class ResultWriter:
    """Writes results in ``fmt`` to ``out`` (``-`` = stdout); use as a context manager.

    A new file is created through :func:`fileio.atomic_write` (``overwrite`` may replace an
    existing one). A FIFO, socket or device is written into like stdout (:func:`fileio.open_stream`:
    never replaced, never truncated; a block device needs ``overwrite``). ``resume_fd``/``keep``: an open, checked existing CSV/JSONL output, cut to its
    first ``keep`` bytes and appended to; ``objects``: the images of an existing JSON output, kept
    in front. ``safe``: spreadsheet-safe CSV text cells. ``committed`` is the length of the file
    up to the last whole batch written.
    """

    def __init__(
        self,
        out: str,
        fmt: str,
        keypoints: tuple[str, ...],
        points: str = "15",
        *,
        overwrite: bool = False,
        resume_fd: int | None = None,
        keep: int = 0,
        objects: list | None = None,
        safe: bool = True,
        pose: bool = False,
    ):
        self.out, self.fmt, self.safe = out, fmt, safe
        self.layout = RowLayout(keypoints, points, pose)
        self.path = None if out == "-" else Path(out)
        # stdout, a FIFO or a device: written as a stream (nothing cut back, JSON closed at the end)
        self.stream = self.path is None or stream_kind(self.path) is not None
        self.rows_written = 0
        self.broken = False  # a write failed: nothing more is written
        self.clean = True  # the file ends on a whole batch
        self._first_json = True
        self._fd = None
        self._json = None
        if self.path is None:
            if sys.stdout is None:
                raise OutputError("standard output is closed; give -o FILE")
            sys.stdout.flush()
        elif self.stream:
            self._fd = open_stream(self.path, overwrite=overwrite)
        elif fmt == "json":
            # --resume rewrites the JSON it continues (objects); anything else needs --overwrite
            self._json = atomic_write(self.path, overwrite=overwrite or objects is not None)
            self._fd = self._json.__enter__().fileno()
        elif resume_fd is not None:
            os.ftruncate(resume_fd, keep)  # drop a torn or unfinished last image (checked by the caller)
            os.lseek(resume_fd, keep, os.SEEK_SET)
            self._fd = resume_fd
        else:
            with atomic_write(self.path, overwrite=overwrite) as handle:
                if fmt == "csv":
                    handle.write(csv_text([self.layout.columns]).encode("utf-8"))
                self._fd = os.dup(handle.fileno())
        self.committed = 0 if self.stream else os.lseek(self._fd, 0, os.SEEK_CUR)
        if fmt == "csv" and (self.stream or (resume_fd is not None and keep == 0)):
            self._write(csv_text([self.layout.columns]))
        elif fmt == "json":
            self._write("[\n")
            if objects:
                self._write_json([json.dumps(obj, ensure_ascii=False) for obj in objects])

    def _write(self, text: str) -> None:
        """One write call (unbuffered; loops only if the kernel takes less). On failure the file is
        cut back to the last whole batch and an OutputError says how to continue."""
        if self.broken:
            return
        data = memoryview(text.encode("utf-8"))
        try:
            with interrupts.deferred():  # Ctrl-C/SIGTERM wait until the batch is written and counted
                if self.path is None:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                    return
                while data:
                    data = data[os.write(self._fd, data) :]
                if not self.stream:
                    self.committed = os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError as exc:
            self.broken = True
            if not self.stream and self.fmt != "json":
                try:
                    os.ftruncate(self._fd, self.committed)
                except OSError:
                    self.clean = False
            if self.path is None:
                if exc.errno == errno.EPIPE:
                    raise PipeClosed("standard output: the reader closed the pipe") from None
                raise OutputError(f"cannot write stdout: {exc.strerror or exc}") from None
            hint = "" if self.stream or self.fmt == "json" else "; it holds whole images; continue with --resume"
            raise write_error(self.path, exc, hint) from None

    def _write_json(self, lines: list[str]) -> None:
        self._write(("" if self._first_json else ",\n") + ",\n".join(lines))
        self._first_json = False

    def write(self, results: Iterable[ImageResult]) -> None:
        """Append one batch of results (skipped files are not written) in one write call."""
        results = [r for r in results if r.status != "skipped"]
        if not results:
            return
        if self.fmt == "csv":
            text = csv_text((row for r in results for row in self.layout.rows(r)), safe=self.safe)
        else:
            lines = [json.dumps(self.layout.object(r), ensure_ascii=False) for r in results]
            text = "".join(line + "\n" for line in lines) if self.fmt == "jsonl" else None
        with interrupts.deferred():  # the batch is written and counted, or not at all
            if text is None:
                self._write_json(lines)
            else:
                self._write(text)
            self.rows_written += len(results)

    def close(self) -> None:
        """Finish the file: JSON is closed and renamed into place (unless a write failed, which
        leaves the previous output as it was); CSV/JSONL are synced to disk. On stdout, a FIFO or a
        device, JSON's array is closed too, so what a stopped run printed still parses."""
        if self.stream:
            try:
                if self.fmt == "json":
                    self._write("\n]\n")
            finally:
                if self.path is not None and self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            return
        if self.fmt == "json":
            self._write("\n]\n")
            failed = OutputError("a write failed") if self.broken else None
            self._json.__exit__(*((type(failed), failed, None) if failed else (None, None, None)))
            return
        try:
            os.fsync(self._fd)
        except OSError:
            self.clean = False
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def results_frame(
    results: Iterable[ImageResult], keypoints: tuple[str, ...], points: str = "15", pose: bool = False
) -> pd.DataFrame:
    """Results as a DataFrame with exactly the CSV's columns and dtypes (for the Python API).
    pandas is imported here, not at the top: the CLI never needs it and it costs 0.6 s of start-up."""
    import io

    import pandas as pd

    layout = RowLayout(keypoints, points, pose)
    rows = [row for r in results if r.status != "skipped" for row in layout.rows(r)]
    text = csv_text([layout.columns] + rows)
    return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
