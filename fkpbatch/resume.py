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

from .discover import real_name
from .errors import OutputError
from .fileio import atomic_write, kind_of, write_bytes_atomic
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
    an OutputError naming the first (pid, host, start time).

    The lock file is created like the output, mode 0666 less the umask, so that whoever may write
    the output may lock it. One that a killed run left behind and this user cannot open for
    writing (another user's, made under a stricter umask or by fkpbatch <= 0.3) is replaced when
    nobody holds its lock: it carries nothing but the lock, and the kernel released that when its
    holder died. See :meth:`_replace_leftover` for the race with a live holder."""

    def __init__(self, out: Path):
        self.out, self.path = Path(out), lock_path(Path(out))
        self.fd: int | None = None
        self.warning = ""

    def __enter__(self) -> OutputLock:
        import fcntl

        for _ in range(20):  # another run may remove the lock file between our open and our lock
            fd = self._open()
            if fd is None:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    busy = self._busy(fd)
                    os.close(fd)
                    raise busy from None
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

    def _open(self) -> int | None:
        """The lock file open for writing, created if need be (None: it changed meanwhile, try again)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        self._check_regular(None)
        try:  # without O_CREAT first: fs.protected_regular refuses it on another user's file in /tmp
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            try:  # mode 0666: the kernel takes the umask off, as for the output
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return None
            except OSError as exc:
                raise OutputError(f"cannot lock {self.out}: {self.path}: {exc.strerror}") from None
        except (PermissionError, OSError) as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(f"cannot lock {self.out}: {self.path} is a symbolic link") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                self._replace_leftover(exc)
                return None
            raise OutputError(f"cannot lock {self.out}: {self.path}: {exc.strerror}") from None
        try:
            self._check_regular(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_regular(self, fd: int | None) -> None:
        """A FIFO or device at the lock's name is never opened (it could hang) nor used."""
        try:
            st = os.fstat(fd) if fd is not None else os.lstat(self.path)
        except FileNotFoundError:
            return
        kind = kind_of(st.st_mode)
        if kind is not None:
            raise OutputError(f"cannot lock {self.out}: {self.path} is {kind}, not a lock file; remove it")

    def _busy(self, fd: int) -> OutputError:
        try:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "starting"
        except OSError:
            holder = "unknown"
        return OutputError(
            f"{self.out} is being written by another fkpbatch run ({holder}); one output takes one run at a time"
        )

    def _replace_leftover(self, why: OSError) -> None:
        """A lock file this user may not write. If its lock is free, its holder is gone (the kernel
        drops a POSIX lock when the process dies): remove it, and the caller creates a new one.

        The race with a live holder: the file is opened read-only and read-locked (a shared lock
        needs read access only) before it is removed, and stays so until it is gone. While this
        shared lock is held, nobody can take the exclusive lock on that file, so a run of its owner
        that starts at the same moment fails to lock it and says the output is busy (a false
        alarm, never two writers); a run that opened it earlier and locks it after its removal
        finds, as every run does after locking, that the name no longer leads to its file, and
        tries again with the new one. What remains: two runs replacing the same leftover in the
        same microsecond while a third creates its lock between them; not guarded against."""
        import fcntl

        cannot = f"cannot lock {self.out}: {self.path} ({why.strerror})"
        try:
            old = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(
                f"{cannot} cannot be read either ({exc.strerror}): if no fkpbatch run writes {self.out}, remove it"
            ) from None
        try:
            self._check_regular(old)
            try:
                fcntl.lockf(old, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise self._busy(old) from None
                raise OutputError(
                    f"{cannot}: it cannot be checked ({exc.strerror}); remove it if no run writes {self.out}"
                ) from None
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                return None
            mine = os.fstat(old)
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                return None  # replaced meanwhile: look again
            try:
                os.unlink(self.path)  # left by a run that died: nobody holds its lock
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise OutputError(
                    f"{cannot} was left by a run that ended and cannot be replaced here ({exc.strerror}); "
                    "ask its owner to remove it"
                ) from None
            return None
        finally:
            os.close(old)  # releases the shared lock

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
        self._paths = paths
        self._ids: set[tuple[int, int]] | None = None

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


def read_regular(path: Path, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file: a FIFO or device is never opened for
    reading (it could wait forever), only named in an OutputError (``what``: what belongs there)."""
    kind = kind_of(os.stat(path).st_mode)  # FileNotFoundError: the caller's to handle
    if kind is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no wait, should it change now
        try:
            st = os.fstat(fd)
            kind = kind_of(st.st_mode)
            if kind is None:
                return _read_all(fd, st.st_size)
        finally:
            os.close(fd)
    raise OutputError(f"{path} is {kind}, not {what}; it is not read (remove it)")


def read_sidecar(out: Path) -> dict | None:
    """The sidecar of ``out``, None if there is none."""
    path = sidecar_path(out)
    try:
        record = json.loads(read_regular(path, f"the sidecar of {out}"))
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
    # images (of ``done``) whose row says ``error``: --resume predicts them again. CSV/JSONL: the
    # byte span of their rows, cut out of the file by :func:`drop_rows`; JSON: None.
    failed: dict[str, tuple[int, int] | None] = field(default_factory=dict)


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
    chunks: list[bytes] = []
    offset = 0
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
    failed: dict[str, tuple[int, int]] = {}
    image, face, last_start, count = None, -1, 1, 1
    for count, row in enumerate(reader, start=2):
        if len(row) != len(columns):
            raise _not_ours(out, f"record {count} has {len(row)} fields, not {len(columns)}")
        if row[0] != image:
            if row[0] in seen:
                raise _not_ours(out, f"the rows of {row[0]!r} are not together (written twice?)")
            image, face, last_start = row[0], -1, count - 1
            seen.add(image)
            if row[2] == "error":
                failed[image] = (ends[count - 2], ends[count - 1])  # record ``count`` (the header is 1)
        elif image in failed:
            failed[image] = (failed[image][0], ends[count - 1])
        if row[1] != str(face + 1) or row[2] not in STATUSES:
            raise _not_ours(out, f"record {count}: face {row[1]!r}, status {row[2]!r}")
        face += 1
    if count != len(ends):
        raise _not_ours(out, "its quoting is not the one fkpbatch writes")
    name = unprotect if safe else str
    existing = Existing(None, ends[-1], {name(n) for n in seen}, failed={name(n): v for n, v in failed.items()})
    if image is not None and not (clean and ends[-1] == len(data)):
        existing.keep = ends[last_start - 1]  # the last image may lack faces: redo it
        existing.dropped = name(image)
        existing.done.discard(existing.dropped)
        existing.failed.pop(existing.dropped, None)
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
    failed: dict[str, tuple[int, int] | None] = {}
    start = 0
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
        except ValueError:
            raise _not_ours(out, f"line {number} is not JSON") from None
        done.add(_check_object(out, obj, f"line {number}", done))
        if obj["status"] == "error":
            failed[obj["image"]] = (start, start + len(line) + 1)
        start += len(line) + 1
    return Existing(None, end, done, failed=failed)


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
    failed: dict[str, tuple[int, int] | None] = {obj["image"]: None for obj in objects if obj["status"] == "error"}
    return Existing(None, 0, done, objects, failed=failed)


@dataclass
class Matched:
    """How this run's inputs meet the rows of the output it continues (:func:`match_rows`)."""

    done: set[str]  # names of this run's inputs whose rows are there: not predicted again
    retried: set[str]  # names of this run's inputs whose rows say error: predicted again ...
    drop: set[str]  # ... and these rows (their names as the output writes them) removed first
    dropped_is_input: bool  # the image cut from the end of the output (Existing.dropped) is an input


def match_rows(existing: Existing, files, out: Path | str = "the output") -> Matched:
    """Which of ``files`` (InputFile) the output already holds. A row matches an input by its name
    or, when the output names it otherwise, by the directory entry both names lead to (the
    device and inode of the folder, and the file's name in it: :class:`EntryKeys`), so
    ``p/a.jpg``, ``./p/a.jpg``, ``/abs/p/a.jpg`` and a linked folder's ``q/a.jpg`` are one image;
    two hard links are two entries, two images, as in a fresh run. A row's relative name is taken
    from the current folder; when it cannot be found from there and an input of this run has the
    same file name, it may be that input, named from another folder: an OutputError says so
    rather than write it twice. An input whose rows all say ``error`` is retried; ``no_face`` rows
    are final."""
    names = {f.name for f in files}
    rows_of: dict[str, list[str]] = {f.name: [f.name] for f in files if f.name in existing.done}
    strays = sorted(existing.done - names)  # written under names no input has: maybe other spellings
    dropped = existing.dropped
    dropped_is_input = dropped is None or dropped in names
    if strays or not dropped_is_input:
        keys = EntryKeys()
        by_key: dict[tuple, list[str]] = {}
        lost: dict[str, str] = {}  # file name -> a row whose folder cannot be found from here
        for row in strays + ([] if dropped_is_input or dropped is None else [dropped]):
            key = keys(real_name(row))
            if key is not None:
                by_key.setdefault(key, []).append(row)
            elif row != dropped:  # (the dropped image's rows are cut: it cannot be written twice)
                lost.setdefault(os.path.basename(row), row)
        for item in files:
            for row in by_key.get(keys(os.fsdecode(item.path)), ()):
                if row == dropped:
                    dropped_is_input = True
                else:
                    rows_of.setdefault(item.name, []).append(row)
        for item in files:
            row = lost.get(os.path.basename(item.name))
            if row is not None and item.name not in rows_of:
                raise OutputError(
                    f"{out} names an image {row!r} and this run {item.name!r}, but {row!r} cannot be found from "
                    "this folder to tell whether they are one file: run from the folder the output was started "
                    "in (or write to another -o)"
                )
    done, retried, drop = set(), set(), set()
    for name, rows in rows_of.items():
        if all(row in existing.failed for row in rows):
            retried.add(name)
            drop.update(rows)
        else:
            done.add(name)
    return Matched(done, retried, drop, dropped_is_input)


class EntryKeys:
    """``(st_dev, st_ino, name)`` of a path's folder and its last part: the directory entry the
    path names, whichever way it is spelt; None when its folder cannot be reached. Folders are
    looked up once."""

    def __init__(self):
        self._folders: dict[str, tuple[int, int] | None] = {}

    def __call__(self, path: str) -> tuple | None:
        folder, name = os.path.split(path)
        folder = folder or "."
        if folder not in self._folders:
            try:
                st = os.stat(folder)
                self._folders[folder] = (st.st_dev, st.st_ino)
            except (OSError, ValueError):
                self._folders[folder] = None
        found = self._folders[folder]
        return None if found is None or name in ("", ".", "..") else (*found, name)


def drop_rows(out: Path, existing: Existing, rows: set[str]) -> None:
    """Remove the rows of the images ``rows`` (of ``existing.failed``) before they are predicted
    again: JSON from the objects it rewrites anyway; CSV/JSONL by rewriting the kept part of the
    file without them, atomically (a temporary file renamed over it, with its permissions), and
    continuing the new file."""
    if not rows:
        return
    if existing.objects is not None:
        existing.objects = [obj for obj in existing.objects if obj["image"] not in rows]
        return
    data = _read_all(existing.fd, existing.keep)[: existing.keep]
    parts, at = [], 0
    for start, end in sorted(existing.failed[row] for row in rows):
        parts.append(data[at:start])
        at = end
    parts.append(data[at:])
    kept = b"".join(parts)
    mode = stat.S_IMODE(os.fstat(existing.fd).st_mode)
    fd = None
    try:
        with atomic_write(out, overwrite=True) as handle:
            handle.write(kept)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            fd = os.dup(handle.fileno())
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    os.close(existing.fd)
    existing.fd, existing.keep = fd, len(kept)
    existing.done -= rows
