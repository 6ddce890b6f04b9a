"""Finding the input files: paths and folders (recursive, hidden files skipped, symlink loops
broken) or a list file, in a deterministic sorted order. Whether a file is an image is decided by
its content later, in the workers, so listing 100,000 files stays fast.

Nothing is hidden and nothing can hang: a FIFO, socket or device is never opened (it becomes a
``skipped`` row, counted in the summary), and a folder or path that cannot be read becomes an
``error`` row (so ``--strict`` fails) instead of vanishing from the walk."""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

# Extensions that claim to be an image: such a file that does not decode is an error row; any other
# file that does not decode is skipped and counted (a README or CSV beside the photos).
IMAGE_SUFFIXES = frozenset(
    ".jpg .jpeg .jpe .jfif .png .gif .bmp .dib .tif .tiff .webp .ppm .pgm .pbm .pnm .ico .tga .heic .avif .jp2".split()
)


@dataclass(frozen=True)
class InputFile:
    path: Path
    name: str  # as written in the output: the path as given (folder as given + relative part), POSIX
    skip_if_not_image: bool  # found in a folder walk and not named like an image
    relative: str = ""  # where derived files (annotated copies) go: folder name + path inside it
    error: str = ""  # set: found but unusable (an unreadable folder, a symlink loop): an error row, never opened
    skip_reason: str = ""  # set: never opened (a FIFO, socket or device): a skipped row

    @property
    def usable(self) -> bool:
        """False when the file must not be opened (its row is decided at discovery)."""
        return not (self.error or self.skip_reason)


@dataclass
class Discovery:
    files: list[InputFile] = field(default_factory=list)
    hidden: int = 0


def display_name(path: str) -> str:
    """A printable, valid-UTF-8 POSIX name; undecodable bytes in file names become \\xNN escapes."""
    text = path.replace(os.sep, "/") if os.sep != "/" else path
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _special(path: Path, name: str, relative: str, skip: bool, mode: int) -> InputFile:
    return InputFile(path, name, skip, relative, skip_reason=f"not a regular file ({_kind(mode)}); not opened")


def _walk(root: Path, recursive: bool, found: Discovery) -> None:
    """Depth-first with ``os.scandir`` (its cached file types make the regular-file check free);
    folders already seen (device + inode) are not walked again, which breaks symlink loops."""
    seen: set[tuple[int, int]] = set()
    base = Path(root.resolve().name)
    stack = [root]
    while stack:
        directory = stack.pop()
        relative = display_name(str(base / directory.relative_to(root)))
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:  # a symlink loop: this folder was walked already
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            found.files.append(
                InputFile(
                    directory,
                    display_name(str(directory)),
                    False,
                    relative,
                    error=f"cannot read folder: {exc.strerror or exc}",
                )
            )
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                found.hidden += 1
                continue
            path = directory / entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
                mode = None if is_dir or is_file else entry.stat().st_mode
            except OSError:  # a broken link or a loop: its row says why (load_image names it)
                is_dir, is_file, mode = False, True, None
            if is_dir:
                subdirs.append(path)
                continue
            name, rel = display_name(str(path)), display_name(str(base / path.relative_to(root)))
            skip = path.suffix.lower() not in IMAGE_SUFFIXES
            if mode is not None:
                found.files.append(_special(path, name, rel, skip, mode))
            else:
                found.files.append(InputFile(path, name, skip, rel))
        if recursive:
            stack.extend(reversed(subdirs))


def read_list(list_file: str) -> list[Path]:
    """One path per line (``-`` = stdin); blank lines and ``#`` comments ignored."""
    try:
        if list_file == "-":
            if sys.stdin is None:
                raise ValueError("standard input is closed")
            text = sys.stdin.read()
        else:
            text = Path(list_file).read_text()
    except OSError as exc:
        raise UsageError(f"--from-list {list_file}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, AttributeError) as exc:  # a closed stdin, or bytes that are not text
        raise UsageError(f"--from-list {list_file}: cannot read ({str(exc).splitlines()[0][:120]})") from None
    return [Path(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _given(path: Path, found: Discovery, recursive: bool) -> None:
    """One path named on the command line or in the list file."""
    name = display_name(str(path))
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            raise UsageError(f"{name}: no such file or folder") from None
        if exc.errno == errno.ENOENT:  # a broken link: its row names it
            found.files.append(InputFile(path, name, False, name))
            return
        reason = "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        found.files.append(InputFile(path, name, False, name, error=f"cannot read: {reason}"))
        return
    if stat.S_ISDIR(mode):
        _walk(path, recursive, found)
    elif stat.S_ISREG(mode):
        found.files.append(InputFile(path, name, False, name))
    else:
        found.files.append(_special(path, name, name, False, mode))


def discover(paths: list[Path], *, recursive: bool = True, from_list: str | None = None) -> Discovery:
    """Expand files and folders into a sorted list of input files; a missing path is a UsageError."""
    paths = list(paths) + (read_list(from_list) if from_list else [])
    if not paths:
        raise UsageError("no input: give image files or folders, or --from-list FILE")
    found = Discovery()
    for path in paths:
        _given(Path(path), found, recursive)
    unique = {f.name: f for f in found.files}
    found.files = sorted(unique.values(), key=lambda f: f.name)
    return found
