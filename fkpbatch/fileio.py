"""Writing files safely: every file the tool writes (outputs, annotated images, checkpoints, JSON
reports, ONNX models) goes through :func:`atomic_write`, so a crash never leaves half a file, a
symlink planted at a temporary name never redirects a write, and an input is never replaced."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import OutputError


def same_file(a: Path, b: Path) -> bool:
    """True when both names lead to one file (device and inode: hard links and symlinks too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_target(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = ()) -> None:
    """Refuse, with one sentence, a target that cannot or must not be written."""
    path = Path(path)
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
def atomic_write(path: Path, *, overwrite: bool = False, inputs: Iterable[Path] = (), mode: str = "wb") -> Iterator[IO]:
    """Yield a new temporary file beside ``path`` (created exclusively by ``mkstemp``, never a
    link); when the block ends without an error it is flushed, synced and renamed over ``path``.
    On an error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    check_target(path, overwrite=overwrite, inputs=inputs)
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
