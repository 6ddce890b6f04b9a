"""Accuracy on held-out faces, measured as a user gets it: `fkpbatch predict` with default options
on the raw image files, its CSV compared with the labels.

    python benchmarks/accuracy.py [--weights weights/fkpnet68.pt] [--json out.json]
    python benchmarks/accuracy.py --command 'python benchmarks/baselines.py dlib -'

A release's figures go to ``--json benchmarks/results/<version>/accuracy_<model>.json``.

Held-out = the images the shipped models' training put in validation: 10 % by a hash of the group
with seed 0, groups = whole persons for faces15, whole photos for helen_train and lfpw_train
(``--run RUN`` takes the split of another training run from its config.json). 15-point NME for
every set; 68-point NME (outer-eye-corner normalisation, as 300-W results are published) where the
predictions have p0_x..p67_y, and for HELEN + LFPW together ("300w"). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fkpbatch.datasets import split_by_group
from fkpbatch.evaluate import nearest_face
from fkpbatch.keypoints import IBUG_POINTS, KAGGLE_POINTS, coordinate_columns
from fkpbatch.metrics import failure_percent, nme_per_face, quality_vs_error

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"faces15": "faces15", "helen": "helen_train", "lfpw": "lfpw_train"}
# The split of the shipped models' training runs (see weights/README.md).
SHIPPED_SPLIT = {"val_split": 0.1, "group_by": r"^(?!image_)(.+)_[^_]+$", "seed": 0}


def held_out(data_root: Path, dataset: str, run: Path | None) -> pd.DataFrame:
    labels = pd.read_csv(data_root / dataset / "keypoints.csv")
    config = json.loads((run / "config.json").read_text()) if run else SHIPPED_SPLIT
    mask = split_by_group(labels["image"].tolist(), config["val_split"], config["group_by"], config["seed"])
    return labels[mask].reset_index(drop=True)


def predict_csv(files: list[Path], command: list[str]) -> tuple[pd.DataFrame, float]:
    """Run ``command`` (image paths on stdin, CSV to ``-o FILE``) and read its CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        started = time.perf_counter()
        subprocess.run([*command, "-o", str(out)], input="".join(f"{f}\n" for f in files), text=True, check=True)
        return pd.read_csv(out), time.perf_counter() - started


def score(labels: pd.DataFrame, predictions: pd.DataFrame, image_dir: Path) -> tuple[dict, np.ndarray | None]:
    """Figures of one dataset, and its per-face 68-point NME (None without 68-point predictions)."""
    names = (
        KAGGLE_POINTS + IBUG_POINTS
        if set(coordinate_columns(IBUG_POINTS)) <= set(predictions.columns)
        else KAGGLE_POINTS
    )
    columns = coordinate_columns(names)
    truth = labels[columns].to_numpy(float).reshape(len(labels), -1, 2)
    by_image = {name: group for name, group in predictions.groupby("image")}
    pred = np.full_like(truth, np.nan)
    quality = np.full(len(labels), np.nan)
    for i, name in enumerate(labels["image"]):
        group = by_image.get(str(image_dir / name))
        if group is None or (group["status"] != "ok").all():
            continue
        faces = group[columns].to_numpy(float).reshape(len(group), -1, 2)
        best = nearest_face(faces, truth[i], names)  # the labelled face
        pred[i] = faces[best]
        quality[i] = group["quality"].to_numpy(float)[best] if "quality" in group else np.nan
    found = np.isfinite(pred).all(axis=(1, 2))
    missed = int((~found).sum())
    kaggle = [names.index(n) for n in KAGGLE_POINTS]
    result = {
        "images": int(len(labels)),
        "not_found": missed,
        **_figures(pred[found][:, kaggle], truth[found][:, kaggle], KAGGLE_POINTS, missed),
    }
    result.update(
        quality_vs_error(quality[found], nme_per_face(pred[found][:, kaggle], truth[found][:, kaggle], KAGGLE_POINTS))
    )
    nme68 = None
    if names != KAGGLE_POINTS:
        ibug = [names.index(n) for n in IBUG_POINTS]
        nme68 = np.full(len(labels), np.inf)  # a face not found counts as a failure
        nme68[found] = nme_per_face(pred[found][:, ibug], truth[found][:, ibug], IBUG_POINTS)
        result["points68"] = _figures(pred[found][:, ibug], truth[found][:, ibug], IBUG_POINTS, missed)
    return _rounded(result), nme68


def _figures(pred: np.ndarray, truth: np.ndarray, names, missed: int) -> dict:
    nme = nme_per_face(pred, truth, names)
    return {
        "nme_percent": float(100 * nme.mean()),
        "nme_median_percent": float(100 * np.median(nme)),
        "failure_percent": failure_percent(nme, missed),
    }


def _rounded(data):
    if isinstance(data, dict):
        return {key: _rounded(value) for key, value in data.items()}
    return round(data, 3) if isinstance(data, float) else data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", type=Path, help="training run folder whose held-out split to use (default: the shipped models')"
    )
    parser.add_argument("--weights", type=Path, help="weights to test (default: predict's default)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--predict-args", default="", help="extra predict options, e.g. '--detect never'")
    parser.add_argument(
        "--command",
        help="score another tool instead: a command that reads image paths on stdin and "
        "writes predict's CSV to -o FILE, e.g. 'python benchmarks/baselines.py dlib -'",
    )
    args = parser.parse_args()
    command = (
        args.command.split()
        if args.command
        else [
            sys.executable,
            "-m",
            "fkpbatch",
            "predict",
            "--from-list",
            "-",
            "--quiet",
            "--points",
            "68",
            *args.predict_args.split(),
            *(["--weights", str(args.weights)] if args.weights else []),
        ]
    )
    report = {"command": " ".join(command), "split": str(args.run) if args.run else SHIPPED_SPLIT}
    manual = []  # per-face 68-point NME of the manually labelled 300-W faces (HELEN, LFPW)
    for key, dataset in DATASETS.items():
        labels = held_out(args.data, dataset, args.run)
        image_dir = args.data / dataset / "images"
        predictions, seconds = predict_csv([image_dir / n for n in labels["image"]], command)
        figures, nme68 = score(labels, predictions, image_dir)
        report[key] = {**figures, "seconds": round(seconds, 1)}
        if key != "faces15" and nme68 is not None:
            manual.append(nme68)
        print(f"{key:8s} {json.dumps(report[key])}")
    if manual:
        nme = np.concatenate(manual)
        found = np.isfinite(nme)
        report["300w"] = _rounded(
            {
                "faces": int(len(nme)),
                "not_found": int((~found).sum()),
                "nme68_percent": float(100 * nme[found].mean()),
                "failure68_percent": failure_percent(nme[found], int((~found).sum())),
            }
        )
        print(f"300w     {json.dumps(report['300w'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
