"""Accuracy on held-out faces, measured as a user gets it: `fkpbatch predict` with default options
on the raw image files, its CSV compared with the labels.

    python benchmarks/accuracy.py --run runs/fkpnet68 [--weights weights/fkpnet68.pt] [--json out.json]
    python benchmarks/accuracy.py --run runs/fkpnet68 --command 'python benchmarks/baselines.py dlib -'

Held-out = the images the training run in --run put in validation (whole persons for faces15,
whole photos for helen_train). Prints a table and writes JSON.
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
from fkpbatch.keypoints import KAGGLE_POINTS, coordinate_columns
from fkpbatch.metrics import failure_percent, nme_per_face, quality_vs_error

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"faces15": "faces15", "helen": "helen_train"}


def held_out(data_root: Path, dataset: str, run: Path) -> pd.DataFrame:
    labels = pd.read_csv(data_root / dataset / "keypoints.csv")
    config = json.loads((run / "config.json").read_text())
    mask = split_by_group(labels["image"].tolist(), config["val_split"], config["group_by"], config["seed"])
    return labels[mask].reset_index(drop=True)


def predict_csv(files: list[Path], command: list[str]) -> tuple[pd.DataFrame, float]:
    """Run ``command`` (image paths on stdin, CSV to ``-o FILE``) and read its CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.csv"
        started = time.perf_counter()
        subprocess.run([*command, "-o", str(out)], input="".join(f"{f}\n" for f in files), text=True, check=True)
        return pd.read_csv(out), time.perf_counter() - started


def score(labels: pd.DataFrame, predictions: pd.DataFrame, image_dir: Path) -> dict:
    columns = coordinate_columns(KAGGLE_POINTS)
    truth = labels[columns].to_numpy(float).reshape(-1, 15, 2)
    by_image = {name: group for name, group in predictions.groupby("image")}
    pred = np.full_like(truth, np.nan)
    quality = np.full(len(labels), np.nan)
    for i, name in enumerate(labels["image"]):
        group = by_image.get(str(image_dir / name))
        if group is None or (group["status"] != "ok").all():
            continue
        faces = group[columns].to_numpy(float).reshape(-1, 15, 2)
        best = nearest_face(faces, truth[i], KAGGLE_POINTS)  # the labelled face
        pred[i], quality[i] = faces[best], group["quality"].to_numpy(float)[best]
    found = np.isfinite(pred).all(axis=(1, 2))
    nme = nme_per_face(pred[found], truth[found], KAGGLE_POINTS)
    result = {
        "images": int(len(labels)),
        "not_found": int((~found).sum()),
        "nme_percent": float(100 * nme.mean()),
        "nme_median_percent": float(100 * np.median(nme)),
        "failure_percent": failure_percent(nme, int((~found).sum())),
        **quality_vs_error(quality[found], nme),
    }
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="training run folder that defines the held-out split")
    parser.add_argument("--weights", type=Path, help="weights to test (default: predict's default)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--predict-args", default="", help="extra predict options, e.g. '--detect never'")
    parser.add_argument("--command", help="score another tool instead: a command that reads image paths on stdin and "
                        "writes predict's CSV to -o FILE, e.g. 'python benchmarks/baselines.py dlib -'")
    args = parser.parse_args()
    command = args.command.split() if args.command else [
        sys.executable, "-m", "fkpbatch", "predict", "--from-list", "-", "--quiet", *args.predict_args.split(),
        *(["--weights", str(args.weights)] if args.weights else []),
    ]
    report = {"command": " ".join(command), "run": str(args.run)}
    for key, dataset in DATASETS.items():
        labels = held_out(args.data, dataset, args.run)
        image_dir = args.data / dataset / "images"
        predictions, seconds = predict_csv([image_dir / n for n in labels["image"]], command)
        report[key] = {**score(labels, predictions, image_dir), "seconds": round(seconds, 1)}
        print(f"{key:8s} {json.dumps(report[key])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
