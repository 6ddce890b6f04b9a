"""The scale of the ``quality`` column for one model, and what the false-face rule drops: the
figures of benchmarks/RESULTS.md ("Quality scale") and the model card, reproducible for any weights.

    python benchmarks/quality_scale.py [--model fast|accurate | --weights FILE] [--json OUT]

(the results of a release: ``--json benchmarks/results/<version>/quality_<model>.json``)

faces15: every 14th image in name order (198 video frames, one main face each: the largest face of
an image is its main face). photos: the shared unlabeled photos with default options, and again
with ``--unsure-score 0`` (every detection kept) to list the doubtful detections the default run
dropped (detector score under --unsure-score and quality under 0.2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import fkpbatch

REPO = Path(__file__).resolve().parents[1]


def summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    if not len(values):
        return {"faces": 0}
    low, p1, median, p99, high = np.percentile(values, [0, 1, 50, 99, 100])
    return {
        "faces": int(len(values)),
        "min": round(low, 3),
        "p1": round(p1, 3),
        "median": round(median, 3),
        "p99": round(p99, 3),
        "max": round(high, 3),
    }


def main_faces(frame):
    """(quality of each image's largest face, quality of the other faces)."""
    faces = frame[frame["status"] == "ok"]
    largest = faces.groupby("image")["box_w"].transform("max") == faces["box_w"]
    return faces[largest]["quality"].tolist(), faces[~largest]["quality"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    common = dict(model=args.model, weights=args.weights)
    frames = sorted((args.data / "faces15" / "images").glob("*.jpg"))[::14]
    report: dict = {"weights": str(args.weights or args.model or "fast")}
    main, others = main_faces(fkpbatch.predict(frames, **common))
    report["faces15"] = {"images": len(frames), "main_faces": summary(main), "other_faces": summary(others)}
    photos = args.data / "photos"
    default = fkpbatch.predict(photos, **common)
    every = fkpbatch.predict(photos, unsure_score=0.0, **common)
    kept = default[default["status"] == "ok"]
    key = ["image", "box_x", "box_y"]
    dropped = every[every["status"] == "ok"].merge(kept[key], on=key, how="left", indicator=True)
    dropped = dropped[dropped["_merge"] == "left_only"]
    report["photos"] = {
        "images": int(default["image"].nunique()),
        "faces": summary(kept["quality"]),
        "faces_under_0.3": int((kept["quality"] < 0.3).sum()),
        "dropped_as_doubtful": [
            {"image": Path(r.image).name, "score": round(r.score, 3), "quality": round(r.quality, 3)}
            for r in dropped.itertuples()
        ],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
