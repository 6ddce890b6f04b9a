"""Splitting one run over a job array (``--shard K/N``) and merging the shard outputs back.

Each ``predict --shard K/N -o FILE`` records its place in ``FILE.shard.json`` (``{"shard": K,
"shards": N}``) beside the output, so ``merge --check`` knows how many shards the run had from the
shards themselves, even when whole shard outputs are missing (a job that never ran)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

from .discover import InputFile
from .errors import UsageError


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


def _read_output(path: Path) -> tuple[list[str] | None, list, str]:
    """(CSV header or None, records, format) of one shard output; a torn last line is ignored."""
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if path.suffix.lower() == ".jsonl":
        return None, [json.loads(line) for line in text.splitlines() if line.strip()], "jsonl"
    rows = list(csv.reader(io.StringIO(text)))
    return (rows[0] if rows else None), rows[1:], "csv"


def record_path(output: Path) -> Path:
    """Where ``predict --shard K/N -o output`` records K and N."""
    return output.with_name(output.name + ".shard.json")


def record_shard(output: Path, index: int, count: int) -> None:
    """Write (atomically) the shard record beside a shard's output."""
    from .fileio import write_bytes_atomic

    write_bytes_atomic(record_path(output), json.dumps({"shard": index, "shards": count}) + "\n", overwrite=True,
                       inputs=[output])


def recorded_shards(outputs: list[Path]) -> int | None:
    """The shard count N recorded beside the outputs (None if none has a record); outputs of runs
    with different N, or two outputs of the same shard, are refused."""
    counts: dict[int, Path] = {}
    indexes: dict[int, Path] = {}
    for output in outputs:
        path = record_path(output)
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            index, count = int(record["shard"]), int(record["shards"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"{path}: damaged shard record; pass --shards N") from None
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
    from PIL import Image, UnidentifiedImageError

    names = []
    for item in files:
        if item.skip_reason:
            continue
        if item.skip_if_not_image and not item.error:
            try:
                with Image.open(item.path):
                    pass
            except UnidentifiedImageError:
                continue
            except OSError:
                pass  # unreadable: predict writes an error row for it
        names.append(item.name)
    return names


def merge_outputs(inputs: list[Path], out: Path, expected: list[str] | None = None, shards: int | None = None) -> dict:
    """Concatenate shard outputs sorted by image; refuse doubled images; with ``expected`` (all
    input names), report the missing ones by the shard (of ``shards``; default: one per input)
    that should have held them."""
    header, records, fmt = None, [], None
    for path in inputs:
        if not path.is_file():
            raise UsageError(f"{path}: no such shard output")
        head, rows, kind = _read_output(path)
        if fmt is not None and kind != fmt:
            raise UsageError(f"{path}: cannot merge {kind} with {fmt}")
        if header is not None and head is not None and head != header:
            raise UsageError(f"{path}: its columns differ from {inputs[0]}")
        header, fmt = header or head, kind
        records += [(path, r) for r in rows]
    image_of = (lambda r: r["image"]) if fmt == "jsonl" else (lambda r: r[0])
    key_of = (lambda r: (r["image"], "")) if fmt == "jsonl" else (lambda r: (r[0], r[1]))
    owners: dict[str, set[Path]] = {}
    keys = Counter(key_of(r) for _, r in records)
    for path, record in records:
        owners.setdefault(image_of(record), set()).add(path)
    doubled = sorted({n for n, paths in owners.items() if len(paths) > 1} | {k[0] for k, c in keys.items() if c > 1})
    if doubled:
        raise UsageError(f"{len(doubled)} image(s) appear more than once across the shard outputs, e.g. {doubled[0]}")
    records.sort(key=lambda pr: (image_of(pr[1]), int(pr[1][1]) if fmt == "csv" else 0))
    tmp = out.with_name(f".{out.name}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        if fmt == "csv":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(r for _, r in records)
        else:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for _, r in records)
    tmp.replace(out)
    missing = sorted(set(expected) - set(owners)) if expected is not None else []
    incomplete = Counter(shard_of(name, shards or len(inputs)) for name in missing)
    return {"images": len(owners), "rows": len(records), "missing": missing, "incomplete_shards": dict(sorted(incomplete.items()))}
