"""Finding the input files: paths and folders (recursive, hidden files skipped, symlink loops
broken) or a list file, in a deterministic sorted order. Whether a file is an image is decided by
its content later, in the workers, so listing 100,000 files stays fast.

Nothing is hidden and nothing can hang: a FIFO, socket or device is never opened (it becomes a
``skipped`` row, counted in the summary), and a folder or path that cannot be read becomes an
``error`` row (so ``--strict`` fails) instead of vanishing from the walk."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .fileio import kind_of

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
    given: bool = False  # named on the command line or in the list, not found by a folder walk

    @property
    def usable(self) -> bool:
        """False when the file must not be opened (its row is decided at discovery)."""
        return not (self.error or self.skip_reason)


@dataclass
class Discovery:
    files: list[InputFile] = field(default_factory=list)
    hidden: int = 0


def display_name(path: str) -> str:
    """A printable, valid-UTF-8 POSIX name, reversible (:func:`real_name`): a byte of the file name
    that is not UTF-8 becomes ``\\xNN`` and a backslash is doubled, so ``\\xNN`` only ever means a
    byte and two different files never get the same name."""
    text = path.replace(os.sep, "/") if os.sep != "/" else path
    text = text.replace("\\", "\\\\")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file system gave (a str built in Python)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def real_name(name: str) -> str:
    """The file name (a ``str`` as :func:`os.fsdecode` gives it) that :func:`display_name` wrote as ``name``."""

    def byte(match: re.Match) -> str:
        code = match.group(1)
        if code == "\\":
            return "\\"
        value = int(code[1:], 16)
        return chr(value) if value < 0x80 else chr(0xDC00 + value)  # surrogateescape, as os.fsdecode

    return _ESCAPE.sub(byte, name)


def _special(path: Path, name: str, relative: str, skip: bool, mode: int) -> InputFile:
    return InputFile(
        path,
        name,
        skip,
        relative,
        skip_reason=f"not a regular file ({kind_of(mode) or 'not a regular file'}); not opened",
    )


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
    """The names in a list file (``-`` = stdin), each taken exactly as written: spaces, a leading
    ``#`` and any character but the separator are part of the name. Names are separated by NUL
    when the list holds one (``find -print0``), else by line feeds; a CR before the line feed is
    dropped (CRLF lists), as is the line feed or NUL after the last name. Empty names (blank lines)
    are ignored: no file has one. The bytes are file names, decoded as :func:`os.fsdecode` does,
    so a name that is not UTF-8 still finds its file."""
    try:
        if list_file == "-":
            if sys.stdin is None:
                raise ValueError("standard input is closed")
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else os.fsencode(sys.stdin.read())
        else:
            data = Path(list_file).read_bytes()
    except OSError as exc:
        raise UsageError(f"--from-list {list_file}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, AttributeError) as exc:  # a closed stdin
        raise UsageError(f"--from-list {list_file}: cannot read ({str(exc).splitlines()[0][:120]})") from None
    return [Path(name) for name in split_list(data)]


def split_list(data: bytes) -> list[str]:
    """The names of a list file's content (see :func:`read_list`), as :func:`os.fsdecode` strings."""
    if b"\0" in data:
        items = data.split(b"\0")
    else:
        items = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [os.fsdecode(item) for item in items if item]


def _shown(path: Path) -> str:
    """A name in a message: quoted when spaces at its ends or control characters would hide what it is."""
    name = display_name(str(path))
    return repr(name) if name != name.strip() or any(ord(c) < 32 or c == "\x7f" for c in name) else name


def _given(path: Path, found: Discovery, recursive: bool) -> None:
    """One path named on the command line or in the list file."""
    name = display_name(str(path))
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            raise UsageError(f"{_shown(path)}: no such file or folder") from None
        if exc.errno == errno.ENOENT:  # a broken link: its row names it
            found.files.append(InputFile(path, name, False, name))
            return
        reason = "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        found.files.append(InputFile(path, name, False, name, error=f"cannot read: {reason}"))
        return
    if stat.S_ISDIR(mode):
        _walk(path, recursive, found)
    elif stat.S_ISREG(mode):
        found.files.append(InputFile(path, name, False, name, given=True))
    else:
        found.files.append(_special(path, name, name, False, mode))


def discover(paths: list[Path], *, recursive: bool = True, from_list: str | None = None) -> Discovery:
    """Expand files and folders into a sorted list of input files; a missing path is a UsageError."""
    listed = read_list(from_list) if from_list else []
    if not paths and not listed:
        raise UsageError("no input: give image files or folders, or --from-list FILE")
    found = Discovery()
    for path in paths:
        _given(Path(path), found, recursive)
    for path in listed:
        try:
            _given(path, found, recursive)
        except UsageError as exc:
            raise UsageError(f"--from-list {from_list}: {exc}") from None
    unique = {f.name: f for f in found.files}
    found.files = sorted(unique.values(), key=lambda f: f.name)
    return found
