"""What a user would pick instead of fkpbatch, run the way fkpbatch runs, for side-by-side figures.

    python benchmarks/baselines.py dlib DIR_OR_- -o out.csv        # dlib HOG detector + 68-point predictor
    python benchmarks/baselines.py mediapipe DIR_OR_- -o out.csv   # mediapipe face mesh (refined, 478 points)

Needs a Python with `dlib-bin face_recognition_models` (the 68-point predictor ships in that wheel)
or `mediapipe==0.10.14` (face mesh model inside the wheel); neither is a dependency of fkpbatch.
Reads the image list from a folder or from stdin ('-'), writes fkpbatch's CSV layout (image, face,
status, the 30 Kaggle columns and, for dlib, p0_x..p67_y), so benchmarks/accuracy.py --command can
score it like `fkpbatch predict`, and prints images/s of the whole single-process run.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the baseline's Python lacks fkpbatch
from fkpbatch.keypoints import KAGGLE_POINTS  # noqa: E402  (names only: imports no torch)

# The 15 Kaggle points as means of source-point indices. iBUG 68: exactly how faces15 and helen_train
# derive their Kaggle columns. Face mesh: the nearest mesh vertices (an approximate convention).
FROM_IBUG = (
    (42, 43, 44, 45, 46, 47),
    (36, 37, 38, 39, 40, 41),
    (42,),
    (45,),
    (39,),
    (36,),
    (22,),
    (26,),
    (21,),
    (17,),
    (30,),
    (54,),
    (48,),
    (51,),
    (57,),
)
FROM_MESH = (
    (473,),
    (468,),
    (362,),
    (263,),
    (133,),
    (33,),
    (336, 285),
    (300, 276),
    (107, 55),
    (70, 46),
    (1,),
    (291,),
    (61,),
    (0,),
    (17,),
)


def dlib_faces():
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def run(rgb: np.ndarray) -> list[np.ndarray]:
        gray = np.ascontiguousarray(rgb.mean(2).astype(np.uint8))
        rects = detector(gray, 1)  # upsample once, as dlib's examples do, to find faces of ~40 px
        return [np.array([(p.x + 0.5, p.y + 0.5) for p in predictor(gray, r).parts()], float) for r in rects]

    return run, FROM_IBUG


def mediapipe_faces():
    import mediapipe as mp

    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=10, refine_landmarks=True)

    def run(rgb: np.ndarray) -> list[np.ndarray]:
        found = mesh.process(rgb).multi_face_landmarks or []
        size = np.array([rgb.shape[1], rgb.shape[0]], float)
        return [np.array([(p.x, p.y) for p in face.landmark]) * size for face in found]

    return run, FROM_MESH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=("dlib", "mediapipe"))
    parser.add_argument("input", help="folder of images, or - for a list of paths on stdin")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    files = (
        [line.strip() for line in sys.stdin if line.strip()]
        if args.input == "-"
        else sorted(map(str, Path(args.input).iterdir()))
    )
    run, mapping = dlib_faces() if args.tool == "dlib" else mediapipe_faces()
    kaggle = [f"{n}_{a}" for n in KAGGLE_POINTS for a in "xy"]
    ibug = [f"p{i}_{a}" for i in range(68) for a in "xy"] if args.tool == "dlib" else []
    started = time.perf_counter()
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "face", "status", "quality", *kaggle, *ibug])
        for name in files:
            faces = run(np.asarray(Image.open(name).convert("RGB")))
            if not faces:
                writer.writerow([name, "", "no_face", "", *[""] * (len(kaggle) + len(ibug))])
            for index, points in enumerate(faces):
                fifteen = np.stack([points[list(group)].mean(0) for group in mapping])
                extra = points.reshape(-1).round(3).tolist() if ibug else []
                writer.writerow([name, index, "ok", "", *fifteen.reshape(-1).round(3).tolist(), *extra])
    seconds = time.perf_counter() - started
    print(
        f"{args.tool}: {len(files)} images in {seconds:.1f} s = {len(files) / seconds:.1f} images/s (one process)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
