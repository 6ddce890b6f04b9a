"""Pseudo-labels from a teacher model, for distilling it into a smaller one (offline distillation).

Writes a folder dataset (``OUT/keypoints.csv`` + ``OUT/images`` linking to the pictures) that
``fkpbatch train`` reads like any other:

- ``--fill CSV``: a labelled folder CSV whose empty cells (a point left unlabelled, or masked on
  purpose, e.g. faces15's automatic jaw line) get the teacher's prediction moved by ``--offset``
  (the CSV's own label offset, as ``train --label-offset`` gives it: faces15's 1,1), so that the
  whole row keeps one convention; labelled cells stay.
- ``--photos DIR``: unlabelled pictures; one row per face the teacher finds with quality >=
  ``--min-quality`` (the teacher's own detection and framing; every cell is the teacher's).

    python training/pseudo_labels.py runs/teacher --weights runs/accurate/last.pt \
        --fill runs/faces15_nojaw/keypoints.csv --offset 1,1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fkpbatch.engine import Predictor
from fkpbatch.keypoints import coordinate_columns
from fkpbatch.options import PredictOptions


def _face_rows(predictor: Predictor, paths: list[Path], options: PredictOptions) -> dict[Path, list]:
    """Each picture's faces (FaceResult s) as the teacher sees them, largest first."""
    found = {}
    for path, result in zip(paths, predictor.predict_paths(paths, options)):
        found[path] = sorted(result.faces, key=lambda f: -f.box.size)
    return found


def _link(images: Path, source: Path, name: str) -> None:
    target = images / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_symlink():
        target.symlink_to(source.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", required=True, type=Path, help="the teacher's checkpoint")
    parser.add_argument("--fill", type=Path, action="append", default=[], help="a labelled folder CSV to complete")
    parser.add_argument("--photos", type=Path, action="append", default=[], help="a folder of unlabelled pictures")
    parser.add_argument("--offset", default="0,0", help="DX,DY pixels added to the teacher's points in --fill CSVs")
    parser.add_argument("--min-quality", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    predictor = Predictor.load(args.weights, "cpu")
    columns = coordinate_columns(predictor.keypoints)
    options = PredictOptions(workers=args.workers, faces="largest")
    offset = np.tile(np.array([float(v) for v in args.offset.split(",")]), len(predictor.keypoints))
    images, rows = args.out / "images", []
    for csv in args.fill:
        table = pd.read_csv(csv)
        paths = [next(p for p in (csv.parent / n, csv.parent / "images" / n) if p.exists()) for n in table["image"]]
        faces = _face_rows(predictor, paths, options)
        for (_, row), path in zip(table.iterrows(), paths):
            values = row.reindex(["image", *columns])
            if faces[path]:
                teacher = faces[path][0].keypoints.reshape(-1) + offset
                values[columns] = np.where(values[columns].isna(), teacher, values[columns].astype(float))
            rows.append(values)
            _link(images, path, row["image"])
    for folder in args.photos:
        paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        everyone = PredictOptions(workers=args.workers)
        for path, result in zip(paths, predictor.predict_paths(paths, everyone)):
            for index, face in enumerate(result.faces):
                if face.quality is not None and face.quality >= args.min_quality:
                    name = f"{folder.name}_{path.stem}_{index}{path.suffix}"  # one group per face
                    rows.append(pd.Series([name, *face.keypoints.reshape(-1)], index=["image", *columns]))
                    _link(images, path, name)
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out / "keypoints.csv", index=False, float_format="%.2f")
    print(f"{args.out / 'keypoints.csv'}: {len(rows)} faces ({os.fspath(args.weights)} as the teacher)")


if __name__ == "__main__":
    main()
