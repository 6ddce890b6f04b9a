"""Output: CSV rows per face, JSON/JSONL objects per image. CSV and JSONL are appended batch by
batch with one write call each (a killed run leaves whole rows); JSON goes to a temporary file
that is renamed at the end. ``done_images`` reads an output back for ``--resume``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .results import ImageResult
from .errors import UsageError
from .keypoints import KAGGLE_POINTS, coordinate_columns

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "json", "jsonl")
BASE_COLUMNS = ["image", "face", "status", "error", "width", "height", "score", "box_x", "box_y", "box_w", "box_h"]


def columns_for(keypoints: tuple[str, ...], points: str = "15") -> list[str]:
    """The CSV header: base columns, the 30 Kaggle columns, quality, then p0_x..p67_y with 68 points."""
    extra = [n for n in keypoints if n not in KAGGLE_POINTS] if points == "68" else []
    return BASE_COLUMNS + coordinate_columns(KAGGLE_POINTS) + ["quality"] + coordinate_columns(extra)


def _number(value, digits: int = 2):
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), digits)


class RowLayout:
    """How results become CSV rows and JSON objects for one model and ``--points`` choice.

    Built once per run, so the column-to-keypoint lookup is not redone for every image.
    """

    def __init__(self, keypoints: tuple[str, ...], points: str = "15"):
        self.columns = columns_for(keypoints, points)
        position = {name: i for i, name in enumerate(keypoints)}
        # per column after the base ones: "quality", or the flat (x, y, x, y, ...) index, or None
        self._cells = [
            "quality" if c == "quality" else (2 * position[c[:-2]] + (c[-1] == "y") if c[:-2] in position else None)
            for c in self.columns[len(BASE_COLUMNS):]
        ]
        written = {c[:-2] for c in self.columns if c.endswith("_x")}
        self._json_points = [(n, i) for i, n in enumerate(keypoints) if n in written]

    def rows(self, result: ImageResult) -> list[list]:
        """One row per face (or one row for an image without faces), aligned with ``columns``."""
        head = [result.image, 0, result.status, result.error.replace("\n", " "), result.width or "", result.height or ""]
        if not result.faces:
            return [head + [""] * (len(self.columns) - len(head))]
        rows = []
        for index, face in enumerate(result.faces):
            flat = face.keypoints.reshape(-1)
            values = [_number(face.quality, 3) if cell == "quality" else ("" if cell is None else _number(flat[cell]))
                      for cell in self._cells]
            rows.append([result.image, index, result.status, "", result.width, result.height, _number(face.score, 4),
                         *(_number(v) for v in face.box.as_list()), *values])
        return rows

    def object(self, result: ImageResult) -> dict:
        """The JSON object of one image: ``{image, width, height, status, error, faces: [...]}``."""
        faces = []
        for face in result.faces:
            points = {n: [_number(face.keypoints[i, 0]), _number(face.keypoints[i, 1])] for n, i in self._json_points}
            faces.append({"box": [_number(v) for v in face.box.as_list()], "score": _number(face.score, 4),
                          "quality": _number(face.quality, 3), "keypoints": points})
        return {"image": result.image, "width": result.width, "height": result.height, "status": result.status,
                "error": result.error, "faces": faces}


def infer_format(out: str, fmt: str | None) -> str:
    """``--format`` wins; otherwise the output's extension; CSV for stdout and unknown extensions."""
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".")
    return suffix if out != "-" and suffix in FORMATS else "csv"


class ResultWriter:
    """Writes results in ``fmt`` to ``out`` (``-`` = stdout); use as a context manager."""

    def __init__(self, out: str, fmt: str, keypoints: tuple[str, ...], points: str = "15", *, append: bool = False):
        self.out, self.fmt = out, fmt
        self.layout = RowLayout(keypoints, points)
        self.path = None if out == "-" else Path(out)
        self.rows_written = 0
        self._first_json = True
        if self.path is None:
            sys.stdout.flush()
            self._stream = sys.stdout.buffer
        elif fmt == "json":
            self._tmp = self.path.with_name(f".{self.path.name}.partial")
            self._stream = open(self._tmp, "wb", buffering=0)
        else:
            self._stream = open(self.path, "ab" if append else "wb", buffering=0)
        has_header = append and self.path is not None and self.path.stat().st_size > 0
        if fmt == "csv" and not has_header:
            self._write(self._csv_text([self.layout.columns]))
        elif fmt == "json":
            self._write("[\n")

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:  # one write call almost always (unbuffered); loop only if the kernel takes less
            data = data[self._stream.write(data):]
        self._stream.flush()

    @staticmethod
    def _csv_text(rows: list[list]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def write(self, results: Iterable[ImageResult]) -> None:
        """Append one batch of results (skipped files are not written)."""
        results = [r for r in results if r.status != "skipped"]
        if not results:
            return
        if self.fmt == "csv":
            rows = [row for r in results for row in self.layout.rows(r)]
            self._write(self._csv_text(rows))
        else:
            lines = [json.dumps(self.layout.object(r), ensure_ascii=False) for r in results]
            if self.fmt == "jsonl":
                self._write("".join(line + "\n" for line in lines))
            else:
                self._write(("" if self._first_json else ",\n") + ",\n".join(lines))
                self._first_json = False
        self.rows_written += len(results)

    def close(self, complete: bool = True) -> None:
        if self.fmt == "json":
            self._write("\n]\n")
        if self.path is not None:
            self._stream.close()
            if self.fmt == "json" and complete:
                os.replace(self._tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close(complete=exc_type is None)


def done_images(path: Path, fmt: str) -> set[str]:
    """Images already in an output (for ``--resume``). A torn last line from a killed run is cut
    off first, so appending continues on a line boundary."""
    if fmt == "json":
        raise UsageError("--resume works with CSV and JSONL outputs (JSON is written whole at the end)")
    if not path.exists() or path.stat().st_size == 0:
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
        data = data[:end]
    text = data.decode("utf-8")
    if fmt == "jsonl":
        return {json.loads(line)["image"] for line in text.splitlines() if line.strip()}
    return {row["image"] for row in csv.DictReader(io.StringIO(text))}


def results_frame(results: Iterable[ImageResult], keypoints: tuple[str, ...], points: str = "15") -> pd.DataFrame:
    """Results as a DataFrame with exactly the CSV's columns and dtypes (for the Python API).
    pandas is imported here, not at the top: the CLI never needs it and it costs 0.6 s of start-up."""
    import pandas as pd

    layout = RowLayout(keypoints, points)
    rows = [row for r in results if r.status != "skipped" for row in layout.rows(r)]
    return pd.read_csv(io.StringIO(ResultWriter._csv_text([layout.columns] + rows)), keep_default_na=False, na_values=[""])
