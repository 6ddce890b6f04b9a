"""Writing files safely: every file the tool writes (outputs, annotated images, checkpoints, JSON
reports, ONNX models) goes through :func:`atomic_write`, so a crash never leaves half a file, a
symlink planted at a temporary name never redirects a write, and an input is never replaced.

A FIFO, socket or device is never replaced: a target the user named (``stream=True``: ``-o``,
``--json``, ``--onnx``) is opened and written into, like standard output (:func:`stream_kind`);
any other such file is refused."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import OutputError, PipeClosed

# Links that the system makes to streams: /dev/stdout, /dev/stderr, /dev/fd/N (bash's >(...)) and
# /proc/self/fd/N. Anywhere else a link is never followed (it is replaced, with --overwrite).
_SYSTEM_LINK_FOLDER = re.compile(r"/dev|/proc/(self|thread-self|\d+)(/task/\d+)?/fd")


def kind_of(mode: int) -> str | None:
    """'a FIFO', 'a socket', 'a character device' or 'a block device'; None for anything else."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return None


def stream_kind(path) -> str | None:
    """What kind of special file ``path`` is (see :func:`kind_of`), None when it is a regular file, a
    folder, missing, or a link outside /dev and /proc/PID/fd (never followed). Such a file is
    written into, never replaced: /dev/null, a FIFO, a terminal, /dev/stdout, bash's ``>(cmd)``."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not system_link(path):
                return None
            st = os.stat(path)
    except (OSError, ValueError):
        return None
    return kind_of(st.st_mode)


def system_link(path) -> bool:
    """True for a link the system made in /dev or /proc/PID/fd (/dev/stdout, /dev/fd/3)."""
    try:
        if not os.path.islink(path):
            return False
    except ValueError:
        return False
    return bool(_SYSTEM_LINK_FOLDER.fullmatch(os.path.realpath(os.path.dirname(os.path.abspath(path)))))


def open_stream(path, *, overwrite: bool = False) -> int:
    """A file descriptor open for writing on the special file ``path`` (:func:`stream_kind`): never
    created, never truncated, never replaced. A FIFO waits for its reader, as the shell's ``>``
    does. A block device holds data that writing destroys: it needs ``overwrite``."""
    kind = stream_kind(path)
    if kind == "a block device" and not overwrite:
        raise OutputError(f"{path} is a block device: writing to it destroys what it holds; pass --overwrite")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if kind is None or kind_of(os.fstat(fd).st_mode) != kind:  # replaced since it was looked at
        os.close(fd)
        raise OutputError(f"cannot write {path}: it changed while being opened; run again")
    return fd


def write_error(path, exc: OSError, hint: str = "") -> OutputError:
    """The error for a write to ``path`` that failed: a reader that went away (EPIPE) ends the
    output like a closed standard output does (:class:`PipeClosed`)."""
    if exc.errno == errno.EPIPE:
        return PipeClosed(f"{path}: the reader closed the pipe", stdout=False)
    return OutputError(f"cannot write {path}: {exc.strerror or exc}{hint}")


def same_file(a: Path, b: Path) -> bool:
    """True when both names lead to one file (device and inode: hard links and symlinks too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_target(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (), stream: bool = False) -> None:
    """Refuse, with one sentence, a target that cannot or must not be written. A FIFO, socket or
    device is written into when ``stream`` (a block device with ``overwrite`` only), else refused."""
    path = Path(path)
    kind = stream_kind(path)
    if kind is not None:
        if not stream:
            raise OutputError(f"{path} is {kind}, not a regular file; it is not replaced")
        if kind == "a block device" and not overwrite:
            raise OutputError(f"{path} is a block device: writing to it destroys what it holds; pass --overwrite")
        return
    if system_link(path):  # e.g. /dev/stdout when standard output is a file: never replace the link
        raise OutputError(f"{path} leads to a regular file through a system link; give that file's own name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist")
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if any(same_file(path, source) for source in inputs):
        raise OutputError(f"{path} is one of the inputs; choose another output")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")


@contextmanager
def atomic_write(
    path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (), mode: str = "wb", stream: bool = False
) -> Iterator[IO]:
    """Yield a new temporary file beside ``path`` (created exclusively by ``mkstemp``, never a
    link); when the block ends without an error it is flushed, synced and renamed over ``path``.
    On an error the temporary file is removed and ``path`` is left as it was. With ``stream``, a
    FIFO, socket or device at ``path`` is written into instead (:func:`open_stream`)."""
    path = Path(path)
    check_target(path, overwrite=overwrite, inputs=inputs, stream=stream)
    if stream and stream_kind(path) is not None:
        with _streamed(path, overwrite, mode) as handle:
            yield handle
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from the user's group
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def _streamed(path: Path, overwrite: bool, mode: str) -> Iterator[IO]:
    handle = os.fdopen(open_stream(path, overwrite=overwrite), mode)
    try:
        yield handle
        handle.flush()
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        try:
            handle.close()
        except OSError:
            pass


def write_bytes_atomic(path: Path, data: bytes | str, **options) -> None:
    """Write a whole file at once through :func:`atomic_write` (text is UTF-8)."""
    with atomic_write(path, **options) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's
    /proc/self/status); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
