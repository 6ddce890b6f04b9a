"""Splitting one run over a job array (``--shard K/N``) and merging the shard outputs back.

Each ``predict --shard K/N -o FILE`` records ``K/N`` among the run parameters of its sidecar
(``FILE.fkpbatch.json``), so ``merge --check`` knows how many shards the run had from the shards
themselves, even when whole shard outputs are missing (a job that never ran)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

from .discover import InputFile
from .errors import OutputError, UsageError
from .fileio import check_target, stream_kind, write_bytes_atomic
from .resume import (
    JSON_KEYS,
    SIDECAR_SUFFIX,
    STATUSES,
    OutputLock,
    check_folder,
    describe_differences,
    read_regular,
    read_sidecar,
    record_ends,
    sidecar_path,
    write_sidecar,
)
from .writers import csv_text, unprotect


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N (K is the 0-based index, as Slurm's SLURM_ARRAY_TASK_ID)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes K/N, e.g. 0/4, not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text}: need 0 <= K < N")
    return index, count


def shard_of(name: str, count: int) -> int:
    """A file's shard depends on its own name only, so adding files elsewhere moves nothing."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big") % count


def select_shard(files: list[InputFile], index: int, count: int) -> list[InputFile]:
    return [f for f in files if shard_of(f.name, count) == index]


# The columns every fkpbatch CSV starts with (and JSON keys): a file without them is not a shard output.
_FIRST_COLUMNS = ["image", "face", "status", "error"]


def _read_output(path: Path) -> tuple[list[str] | None, list, str, dict | None, str | None]:
    """(CSV header or None, records, format, sidecar or None, image left out) of one shard output.
    A torn last record is ignored; so is the last image of a run that did not end cleanly (its
    sidecar says so), which may lack faces: merge reports it, --resume on that shard redoes it.
    A file that is not fkpbatch output (empty without a sidecar, other columns, JSON lines where
    CSV is expected, rows of another shape) is a UsageError naming the file and why."""
    record = read_sidecar(path)
    suffix = path.suffix.lower().lstrip(".")
    fmt = record["params"].get("format") if record else suffix if suffix in ("json", "jsonl") else "csv"
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"{path}: merge combines CSV or JSONL outputs, not {fmt}")
    try:
        data = read_regular(path, "a shard output")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data and record is None:
        raise UsageError(f"{path}: an empty file, not an fkpbatch output")
    try:
        if fmt == "jsonl":  # split on line feeds only: JSON escapes CR and LF, not U+2028 or U+0085
            end = data.rfind(b"\n") + 1
            objects = [json.loads(line.decode("utf-8")) for line in data[:end].split(b"\n")[:-1]]
            for number, obj in enumerate(objects, start=1):
                if not isinstance(obj, dict) or set(obj) != JSON_KEYS or obj["status"] not in STATUSES:
                    raise UsageError(f"{path}: line {number} is not an fkpbatch image record")
                if not isinstance(obj["image"], str):
                    raise UsageError(f"{path}: line {number} is not an fkpbatch image record")
            return None, objects, fmt, record, None
        ends = record_ends(data)  # a CR or LF inside a quoted name is not the end of a record
        rows = list(csv.reader(io.StringIO(data[: ends[-1]].decode("utf-8") if ends else "", newline="")))
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError
        raise UsageError(f"{path}: not an fkpbatch {fmt} output ({str(exc).splitlines()[0][:120]})") from None
    except csv.Error as exc:
        raise UsageError(f"{path}: not an fkpbatch CSV output ({exc})") from None
    header, rows, dropped = (rows[0] if rows else None), rows[1:], None
    expected = record.get("columns") if record is not None else None
    if header is None:
        if data:  # bytes but no complete line
            raise UsageError(f"{path}: not an fkpbatch CSV output (no complete header line)")
        header = expected if isinstance(expected, list) else None  # created, then the run died: no rows
    elif header[:4] != _FIRST_COLUMNS or "quality" not in header or (expected and header != expected):
        why = "JSON lines, not CSV" if data.lstrip().startswith(b"{") else f"its header starts {','.join(header[:4])!r}"
        raise UsageError(f"{path}: not an fkpbatch CSV output ({why})")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header) or not row[1].isdigit() or row[2] not in STATUSES:
            raise UsageError(f"{path}: record {number} is not an fkpbatch row ({len(row)} fields)")
    if record is not None and record.get("clean_bytes") != len(data) and rows:
        dropped = rows[-1][0]
        while rows and rows[-1][0] == dropped:
            rows.pop()
    return header, rows, fmt, record, dropped


def recorded_shards(outputs: list[Path]) -> int | None:
    """The shard count N that ``predict --shard K/N`` recorded in the outputs' sidecars (None if
    none records one); outputs of runs with different N, or two outputs of one shard, are refused."""
    counts: dict[int, Path] = {}
    indexes: dict[int, Path] = {}
    for output in outputs:
        record = read_sidecar(output)
        shard = record["params"].get("shard") if record else None
        if not shard:
            continue
        index, count = parse_shard(str(shard))
        if index in indexes:
            raise UsageError(f"{output} and {indexes[index]} are both shard {index}")
        indexes[index] = output
        counts.setdefault(count, output)
    if len(counts) > 1:
        (n1, a), (n2, b) = list(counts.items())[:2]
        raise UsageError(f"{a} is one of {n1} shards but {b} one of {n2}: outputs of different runs")
    return next(iter(counts), None)


def expected_outputs(files: list[InputFile]) -> list[str]:
    """The names a complete run writes rows for: not the FIFOs and other files predict never
    opens, and not the files found in a folder walk that predict skips as not images (checked
    by content, as predict does)."""
    from PIL import UnidentifiedImageError

    from .decode import open_image

    names = []
    for item in files:
        if item.skip_reason:
            continue
        if item.skip_if_not_image and not item.error:
            try:
                with open_image(item.path):
                    pass
            except UnidentifiedImageError:
                continue
            except Exception:  # noqa: BLE001 - unreadable or refused: predict writes an error row for it
                pass
        names.append(item.name)
    return names


def merge_outputs(
    inputs: list[Path],
    out: Path,
    expected: list[str] | None = None,
    *,
    overwrite: bool = False,
    shards: int | None = None,
) -> dict:
    """Concatenate shard outputs sorted by image; refuse doubled images and shards made with other
    options; with ``expected`` (all input names), report the missing ones by the shard (of
    ``shards``; default: one per input) that should have held them. ``out`` is written whole
    through a temporary file: never an input, never an existing file without ``overwrite``; a FIFO
    or device (/dev/stdout) is written into, without a lock or a sidecar.

    A shard without its sidecar cannot show which model and options made it: the report's
    ``warnings`` say so, and such shards must still agree in their columns (CSV) or keypoints
    and pose (JSONL) with the others."""
    inputs = [p for p in inputs if not p.name.endswith(SIDECAR_SUFFIX)]  # read with their output
    if not inputs:
        raise UsageError("no shard outputs to merge")
    for path in inputs:
        if not path.is_file():
            raise UsageError(f"{path}: no such shard output")
    if stream_kind(out) is not None:
        return _merge(inputs, out, expected, overwrite, shards)
    check_target(out, overwrite=True, stream=True)  # not /dev/stdout leading to a file: no lock in /dev
    check_folder(out)
    with OutputLock(out):
        return _merge(inputs, out, expected, overwrite, shards)


def _layouts(objects: list) -> set:
    """The keypoint names (and whether a pose) of the faces of JSONL records: one per model and --points."""
    found = set()
    for obj in objects:
        for face in obj.get("faces") or ():
            if isinstance(face, dict) and isinstance(face.get("keypoints"), dict):
                found.add((tuple(face["keypoints"]), "pose" in face))
    return found


def _merge(inputs: list[Path], out: Path, expected: list[str] | None, overwrite: bool, shards: int | None) -> dict:
    stream = stream_kind(out) is not None
    if os.path.lexists(out) and not overwrite and not stream:
        raise OutputError(f"{out} exists; pass --overwrite to replace it")
    header, records, fmt, dropped, warnings = None, [], None, [], []
    runs: list[tuple[Path, dict]] = []
    layout: tuple[Path, tuple] | None = None
    for path in inputs:
        head, rows, kind, record, left_out = _read_output(path)
        if fmt is not None and kind != fmt:
            raise UsageError(f"{path}: cannot merge {kind} with {fmt}")
        if header is not None and head is not None and head != header:
            raise UsageError(f"{path}: its columns differ from {inputs[0]}'s (another model, --points or --pose)")
        if record is not None:
            run = dict(record["params"], shard=None)
            if runs and run != runs[0][1]["params"]:
                raise UsageError(
                    f"{path} was made with other options than {runs[0][0]}: "
                    f"{describe_differences(runs[0][1]['params'], run)}"
                )
            runs.append((path, dict(record, params=run)))
        else:
            warnings.append(
                f"{path} has no {sidecar_path(path).name}: which model and options made it cannot be checked"
            )
        for found in _layouts(rows) if kind == "jsonl" else ():
            if layout is not None and found != layout[1]:
                raise UsageError(
                    f"{path}: its faces have other keypoints than {layout[0]}'s (another model, --points or --pose)"
                )
            layout = layout or (path, found)
        header, fmt = header or head, kind
        records += [(path, r) for r in rows]
        dropped += [(path, left_out)] if left_out is not None else []
    if fmt == "csv" and header is None:
        raise UsageError(f"{inputs[0]}: no header line in any shard output; nothing to merge")
    schemes = {record.get("names") for _, record in runs} | ({None} if len(runs) < len(inputs) else set())
    if len(schemes) > 1 and any("\\" in (r["image"] if fmt == "jsonl" else r[0]) for _, r in records):
        raise UsageError(
            "the shard outputs were written by fkpbatch versions that write a backslash in a file name "
            "differently (\\ up to 0.3.0, \\\\ since): rerun the older shards with this version"
        )
    suffix = out.suffix.lower().lstrip(".")
    if suffix in ("csv", "json", "jsonl") and suffix != fmt:
        raise UsageError(f"-o {out}: the shard outputs are {fmt}; name the merged file .{fmt}")
    raw = bool(runs and runs[0][1]["params"].get("raw_names"))
    name = (lambda r: r["image"]) if fmt == "jsonl" else (lambda r: r[0]) if raw else (lambda r: unprotect(r[0]))
    key_of = (lambda r: (r["image"], "")) if fmt == "jsonl" else (lambda r: (r[0], r[1]))
    owners: dict[str, set[Path]] = {}
    keys = Counter(key_of(r) for _, r in records)
    for path, record in records:
        owners.setdefault(name(record), set()).add(path)
    doubled = sorted({n for n, paths in owners.items() if len(paths) > 1} | {k[0] for k, c in keys.items() if c > 1})
    if doubled:
        raise UsageError(f"{len(doubled)} image(s) appear more than once across the shard outputs, e.g. {doubled[0]}")
    records.sort(key=lambda pr: (name(pr[1]), int(pr[1][1]) if fmt == "csv" else 0))
    if fmt == "csv":
        text = csv_text([header] + [r for _, r in records])  # cells as the shards wrote them
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in records)
    missing = sorted(set(expected) - set(owners)) if expected is not None else []
    if missing and shards is None:  # checked before anything is written: the fix is to rerun with --shards
        raise UsageError(
            f"{len(missing)} images not in any shard output (e.g. {missing[0]}), and the outputs do not record "
            "the shard count (no --shard in their sidecars); pass --shards N to name the incomplete shards"
        )
    write_bytes_atomic(out, text, overwrite=overwrite, inputs=inputs, stream=True)
    if runs and len(runs) == len(inputs) and not stream:  # an output of the same run: --resume continues it
        first = runs[0][1]
        size = len(text.encode("utf-8"))
        write_sidecar(out, first["params"], first.get("columns") or header, size, names=first.get("names"))
    incomplete = Counter(shard_of(name, shards) for name in missing)
    return {
        "images": len(owners),
        "rows": len(records),
        "missing": missing,
        "incomplete_shards": dict(sorted(incomplete.items())),
        "dropped": [(str(path), image) for path, image in dropped],
        "warnings": warnings,
    }
