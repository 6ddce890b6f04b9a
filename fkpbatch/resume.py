"""What makes an output trustworthy across runs: one writer at a time (:class:`OutputLock`), a
sidecar ``OUT.fkpbatch.json`` recording how the output was made and whether it ends on a whole
batch, and the checks ``--resume`` makes before it touches anything (:func:`open_existing`)."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputError
from .fileio import write_bytes_atomic
from .writers import unprotect

SIDECAR_SUFFIX = ".fkpbatch.json"
SIDECAR_KIND = "fkpbatch output"
# How names are written (the sidecar's "names"): after 0.3.0, a backslash in a file name is doubled, so
# that "\\xNN" only stands for a byte that is not UTF-8 (discover.display_name). Older sidecars lack it.
NAMES = "backslash-escaped"
STATUSES = frozenset({"ok", "no_face", "error"})
JSON_KEYS = frozenset({"image", "width", "height", "status", "error", "faces"})
# parameter -> how the user sets it, for the message when --resume finds another run's parameters
OPTION_OF = {
    "format": "--format",
    "points": "--points",
    "model": "--weights",
    "detect": "--detect",
    "faces": "--faces",
    "min_score": "--min-score",
    "min_face": "--min-face",
    "max_pixels": "--max-pixels",
    "passes": "--passes",
    "unsure_score": "--unsure-score",
    "unsure_quality": "unsure_quality (Python API)",
    "raw_names": "--raw-names",
    "shard": "--shard",
}


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR_SUFFIX)


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.fkpbatch.lock")


def check_folder(out: Path) -> None:
    """The output's folder exists and the output is not a folder (checked before locking)."""
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist")
    if out.is_dir():
        raise OutputError(f"{out} is a folder; -o takes a file name")


class OutputLock:
    """An exclusive lock on ``.OUT.fkpbatch.lock`` (a POSIX lock: released by the kernel when the
    process dies, even by SIGKILL; works on NFS with lockd). A second run on the same output gets
    an OutputError naming the first (pid, host, start time)."""

    def __init__(self, out: Path):
        self.out, self.path, self.fd = Path(out), lock_path(Path(out)), None
        self.warning = ""

    def __enter__(self) -> OutputLock:
        import fcntl

        for _ in range(20):  # another run may remove the lock file between our open and our lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot lock {self.out}: {self.path}: {exc.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "starting"
                    os.close(fd)
                    raise OutputError(
                        f"{self.out} is being written by another fkpbatch run ({holder}); "
                        "one output takes one run at a time"
                    ) from None
                os.close(fd)  # a file system without locks: go on, and say so
                self.warning = f"{self.out}: cannot lock ({exc.strerror}); make sure no other run writes it"
                return self
            try:
                now = os.stat(self.path, follow_symlinks=False)
            except OSError:
                now = None
            mine = os.fstat(fd)
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                self.fd = fd
                since = time.strftime("%Y-%m-%d %H:%M:%S")
                note = f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n".encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, note, 0)
                return self
            os.close(fd)
        raise OutputError(f"cannot lock {self.out}: {self.path} keeps changing")

    def __exit__(self, *_) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiting run then sees a new file and retries
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


class InputIdentities:
    """(device, inode) of the input files, collected once and only when first asked: an output
    or annotated copy is compared with the inputs by identity, so hard links and symlinks count."""

    def __init__(self, paths: Iterable[Path]):
        self._paths, self._ids = paths, None

    def __contains__(self, st: os.stat_result) -> bool:
        if self._ids is None:
            self._ids = set()
            for path in self._paths:
                try:
                    found = os.stat(path)
                except OSError:
                    continue
                self._ids.add((found.st_dev, found.st_ino))
        return (st.st_dev, st.st_ino) in self._ids


def model_fingerprint(model, spec) -> str:
    """A short hash of the architecture description and every weight: same weights, same hash."""
    import torch

    digest = hashlib.sha256(repr(spec).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_sidecar(out: Path) -> dict | None:
    """The sidecar of ``out``, None if there is none."""
    path = sidecar_path(out)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("kind") != SIDECAR_KIND or not isinstance(record.get("params"), dict):
        raise OutputError(f"{path} is not an fkpbatch sidecar; {out} cannot be checked, so it is not continued")
    return record


def write_sidecar(
    out: Path, params: dict, columns: list[str], clean_bytes: int | None, *, names: str | None = NAMES
) -> None:
    """Record how ``out`` is made; ``clean_bytes``: its length when it ended on a whole batch
    (None while a run writes it, so that a killed run's last image is redone by --resume);
    ``names``: how its names are escaped (None: as up to 0.3.0, not recorded)."""
    from . import __version__

    record = {
        "kind": SIDECAR_KIND,
        "version": __version__,
        "params": params,
        "columns": columns,
        "clean_bytes": clean_bytes,
    }
    if names is not None:
        record["names"] = names
    write_bytes_atomic(sidecar_path(out), json.dumps(record, indent=1, ensure_ascii=False) + "\n", overwrite=True)


def describe_differences(recorded: dict, params: dict) -> str:
    parts = []
    for key in sorted(set(recorded) | set(params)):
        old, new = recorded.get(key), params.get(key)
        if old != new:
            option = OPTION_OF.get(key, key)
            parts.append(f"other weights ({option})" if key == "model" else f"{option} {old} (this run: {new})")
    return ", ".join(parts)


@dataclass
class Existing:
    """An existing output checked for --resume: what to keep and which images are done."""

    fd: int | None  # open for writing (CSV/JSONL); None for JSON, which is rewritten whole
    keep: int  # bytes to keep (a torn or possibly unfinished last image is cut)
    done: set[str] = field(default_factory=set)
    objects: list | None = None  # JSON: the images already written
    dropped: str | None = None  # the last image, cut because the previous run may have died inside it


def open_existing(out: Path, fmt: str, params: dict, columns: list[str], inputs, *, safe: bool) -> Existing | None:
    """For ``--resume``: None when ``out`` does not exist yet. Otherwise check, before anything is
    changed, that it is a regular file, not an input, was written by fkpbatch with these
    parameters (its sidecar) and holds this run's schema, whole rows, each image once; an
    OutputError (exit 2) leaves it byte for byte as it was."""
    try:
        fd = os.open(out, (os.O_RDONLY if fmt == "json" else os.O_RDWR) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{out} is a symbolic link; fkpbatch never writes through links") from None
        raise OutputError(f"cannot open {out}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{out} is not a regular file")
        if st in inputs:
            raise OutputError(f"{out} is one of the input files; choose another output")
        record = read_sidecar(out)
        if record is None:
            raise OutputError(
                f"{out} has no {sidecar_path(out).name} beside it: not an output of this fkpbatch version, "
                "so --resume leaves it alone; choose another -o"
            )
        differences = describe_differences(record["params"], params)
        if differences:
            raise OutputError(
                f"{out} was written with other options: {differences}; "
                "--resume needs the same ones (or choose another -o)"
            )
        data = _read_all(fd, st.st_size)
        clean = record.get("clean_bytes") == len(data)
        scan = {"csv": _scan_csv, "jsonl": _scan_jsonl, "json": _scan_json}[fmt]
        existing = scan(out, data, columns, safe=safe, clean=clean)
        if record.get("names") != NAMES and any("\\" in name for name in existing.done | {existing.dropped or ""}):
            raise OutputError(
                f"{out} was written by an older fkpbatch, which wrote a backslash in a file name as one \\ "
                "(now \\\\, so that \\xNN only means a byte): its names cannot be matched; choose another -o"
            )
    except BaseException:
        os.close(fd)
        raise
    if fmt == "json":
        os.close(fd)
    else:
        existing.fd = fd
    return existing


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, max(size - offset, 1 << 20), offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def record_ends(data: bytes) -> list[int]:
    """Byte offsets just after each CSV record (a newline outside quotes): a name holding a CR or
    LF is one quoted cell, never a record boundary."""
    ends, quoted = [], False
    for match in re.finditer(rb'["\n]', data):
        if match.group() == b'"':
            quoted = not quoted
        elif not quoted:
            ends.append(match.end())
    return ends


def _not_ours(out: Path, why: str) -> OutputError:
    return OutputError(f"{out} is not fkpbatch output as this run writes it ({why}); --resume leaves it alone")


def _scan_csv(out: Path, data: bytes, columns: list[str], *, safe: bool, clean: bool) -> Existing:
    ends = record_ends(data)
    if not ends:
        if data:
            raise _not_ours(out, "no complete header line")
        return Existing(None, 0)  # created, then emptied by a crash: start it again
    try:
        text = data[: ends[-1]].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_ours(out, f"bytes that are not UTF-8 at {exc.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    if header != columns:
        raise _not_ours(
            out,
            f"its header has {len(header)} columns, not this run's {len(columns)}"
            if len(header) != len(columns)
            else "its header is not this run's",
        )
    seen: set[str] = set()
    image, face, last_start, count = None, -1, 1, 1
    for count, row in enumerate(reader, start=2):
        if len(row) != len(columns):
            raise _not_ours(out, f"record {count} has {len(row)} fields, not {len(columns)}")
        if row[0] != image:
            if row[0] in seen:
                raise _not_ours(out, f"the rows of {row[0]!r} are not together (written twice?)")
            image, face, last_start = row[0], -1, count - 1
            seen.add(image)
        if row[1] != str(face + 1) or row[2] not in STATUSES:
            raise _not_ours(out, f"record {count}: face {row[1]!r}, status {row[2]!r}")
        face += 1
    if count != len(ends):
        raise _not_ours(out, "its quoting is not the one fkpbatch writes")
    existing = Existing(None, ends[-1], {unprotect(n) if safe else n for n in seen})
    if image is not None and not (clean and ends[-1] == len(data)):
        existing.keep = ends[last_start - 1]  # the last image may lack faces: redo it
        existing.dropped = unprotect(image) if safe else image
        existing.done.discard(existing.dropped)
    return existing


def _check_object(out: Path, obj, where: str, done: set[str]) -> str:
    if not isinstance(obj, dict) or set(obj) != JSON_KEYS or not isinstance(obj["image"], str):
        raise _not_ours(out, f"{where} is not an fkpbatch image object")
    if obj["image"] in done or obj["status"] not in STATUSES:
        raise _not_ours(
            out, f"{where}: {obj['image']!r} is there twice" if obj["image"] in done else f"{where}: status"
        )
    return obj["image"]


def _scan_jsonl(out: Path, data: bytes, columns: list[str], *, safe: bool, clean: bool) -> Existing:
    end = data.rfind(b"\n") + 1  # JSON escapes CR and LF in strings: only a line feed ends a record
    done: set[str] = set()
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
        except ValueError:
            raise _not_ours(out, f"line {number} is not JSON") from None
        done.add(_check_object(out, obj, f"line {number}", done))
    return Existing(None, end, done)


def _scan_json(out: Path, data: bytes, columns: list[str], *, safe: bool, clean: bool) -> Existing:
    try:
        objects = json.loads(data.decode("utf-8"))
    except ValueError:
        raise _not_ours(out, "not a JSON document") from None
    if not isinstance(objects, list):
        raise _not_ours(out, "not a JSON array")
    done: set[str] = set()
    for number, obj in enumerate(objects):
        done.add(_check_object(out, obj, f"item {number}", done))
    return Existing(None, 0, done, objects)
