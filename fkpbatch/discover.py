"""Finding the input files: paths and folders (recursive, hidden files skipped, symlink loops
broken) or a list file, in a deterministic sorted order. Whether a file is an image is decided by
its content later, in the workers, so listing 100,000 files stays fast."""

from __future__ import annotations

import os
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


@dataclass
class Discovery:
    files: list[InputFile] = field(default_factory=list)
    hidden: int = 0


def display_name(path: str) -> str:
    """A printable, valid-UTF-8 POSIX name; undecodable bytes in file names become \\xNN escapes."""
    text = path.replace(os.sep, "/") if os.sep != "/" else path
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _walk(root: Path, recursive: bool, found: Discovery) -> None:
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, names in os.walk(root, followlinks=True):
        try:
            stat = os.stat(directory)
        except OSError:
            subdirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # a symlink loop: this folder was walked already
            subdirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        hidden = [d for d in subdirs if d.startswith(".")]
        found.hidden += len(hidden)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
        for name in names:
            if name.startswith("."):
                found.hidden += 1
                continue
            path = Path(directory) / name
            relative = Path(root.resolve().name) / path.relative_to(root)
            found.files.append(InputFile(path, display_name(str(path)), path.suffix.lower() not in IMAGE_SUFFIXES, display_name(str(relative))))


def read_list(list_file: str) -> list[Path]:
    """One path per line (``-`` = stdin); blank lines and ``#`` comments ignored."""
    try:
        text = sys.stdin.read() if list_file == "-" else Path(list_file).read_text()
    except OSError as exc:
        raise UsageError(f"--from-list {list_file}: cannot read ({exc.strerror})") from None
    return [Path(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def discover(paths: list[Path], *, recursive: bool = True, from_list: str | None = None) -> Discovery:
    """Expand files and folders into a sorted list of input files; a missing path is a UsageError."""
    paths = list(paths) + (read_list(from_list) if from_list else [])
    if not paths:
        raise UsageError("no input: give image files or folders, or --from-list FILE")
    found = Discovery()
    for path in paths:
        if path.is_dir():
            _walk(path, recursive, found)
        elif path.exists() or path.is_symlink():
            found.files.append(InputFile(path, display_name(str(path)), False, display_name(str(path))))
        else:
            raise UsageError(f"{display_name(str(path))}: no such file or folder")
    unique = {f.name: f for f in found.files}
    found.files = sorted(unique.values(), key=lambda f: f.name)
    return found
