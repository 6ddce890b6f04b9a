"""``evaluate`` (accuracy of a checkpoint on labelled data, through the real predict pipeline) and
``submission`` (Kaggle's RowId,Location file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .datasets import KAGGLE_SIZE, _read_csv, is_kaggle_csv, load_folder_csv, load_kaggle_csv, split_by_group
from .discover import InputFile
from .engine import Predictor
from .errors import DataError, UsageError
from .fileio import atomic_write, check_target
from .keypoints import IBUG_POINTS, KAGGLE_POINTS, coordinate_columns, has_ibug68
from .metrics import summarize
from .options import PredictOptions
from .transforms import FRAMING_POINTS, Framing, box_from_points, crop_face, from_unit, to_uint8_tensor, whole_image_box

KAGGLE_FRAMING = Framing()


def _kaggle_predictions(predictor: Predictor, images) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the model on 96x96 Kaggle faces (the whole image is the face); pixels of the 96 frame."""
    preds, qualities = [], []
    box = whole_image_box(KAGGLE_SIZE, KAGGLE_SIZE)
    for start in range(0, len(images), 256):
        crops = torch.stack(
            [to_uint8_tensor(crop_face(im, box, predictor.spec.input_size)) for im in images[start : start + 256]]
        )
        unit, quality = predictor.predict_crops(crops)
        preds.append(from_unit(unit, box))
        qualities.append(quality)
    names = predictor.spec.keypoints
    pred = np.concatenate(preds) if preds else np.zeros((0, len(names), 2))
    return pred, (None if not qualities or qualities[0] is None else np.concatenate(qualities))


def nearest_face(faces: np.ndarray, label: np.ndarray, names) -> int:
    """Index of the predicted face (``faces``: F x K x 2) whose eye midpoint is nearest the
    labelled one (``label``: K x 2): the face a label belongs to in a photo with several."""
    eyes = [list(names).index("left_eye_center"), list(names).index("right_eye_center")]
    return int(np.argmin(np.linalg.norm(faces[:, eyes].mean(1) - label[eyes].mean(0), axis=1)))


def _match_faces(results, labels: np.ndarray, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """For each labelled image, the predicted face nearest the labelled eyes (NaN if none found)."""
    pred = np.full_like(labels, np.nan)
    quality = np.full(len(labels), np.nan)
    missed = 0
    for i, result in enumerate(results):
        if not result.faces:
            missed += 1
            continue
        face = result.faces[nearest_face(np.stack([f.keypoints for f in result.faces]), labels[i], names)]
        pred[i] = face.keypoints
        quality[i] = np.nan if face.quality is None else face.quality
    return pred, quality, missed


def evaluate_checkpoint(
    predictor: Predictor,
    data: Path,
    *,
    holdout: Path | None = None,
    options: PredictOptions | None = None,
) -> dict:
    """Accuracy on ``data`` (Kaggle CSV, or folder CSV run through predict with ``options``).

    The figures are for the 15 Kaggle points; when both the model and a folder CSV have the 68 iBUG
    points, ``report["points68"]`` holds the same figures for those (NME normalised by the outer
    eye corners p36-p45, as 300-W results are published). ``holdout``: a training run folder; only
    the rows that run held out for validation are used.
    """
    names = predictor.spec.keypoints
    common = [n for n in KAGGLE_POINTS if n in names]
    with_68 = False
    if is_kaggle_csv(data):
        table = load_kaggle_csv(data)
        rows = _holdout_rows(table.names, holdout)
        pred, quality = _kaggle_predictions(predictor, [table.images[r] for r in rows])
        labels, scale, missed = _expand(table.points[rows], table.keypoints, names), np.ones(len(rows)), 0
    else:
        with_68 = has_ibug68(names) and set(coordinate_columns(IBUG_POINTS)) <= _columns(data)
        table = load_folder_csv(data, KAGGLE_POINTS + IBUG_POINTS if with_68 else KAGGLE_POINTS, decode=False)
        rows = _holdout_rows(table.names, holdout)
        files = [InputFile(table.paths[r], table.names[r], False) for r in rows]
        results = list(predictor.predict_paths(files, options or PredictOptions()))
        labels = _expand(table.points[rows], table.keypoints, names)
        pred, quality, missed = _match_faces(results, labels, names)
        framing_index = [names.index(n) for n in FRAMING_POINTS]
        scale = np.array([box_from_points(label[framing_index], KAGGLE_FRAMING).size / KAGGLE_SIZE for label in labels])
    if not len(rows):
        raise DataError(f"{data}: no labelled images to evaluate" + (f" held out by {holdout}" if holdout else ""))
    found = np.isfinite(pred).all(axis=(1, 2))

    def figures(points: list[str] | tuple[str, ...]) -> dict:
        index = [names.index(n) for n in points]
        return summarize(
            pred[found][:, index],
            labels[found][:, index],
            points,
            kaggle_scale=scale[found],
            missed=missed,
            quality=None if quality is None else quality[found],
        )

    report = {**figures(common), "data": str(data), "images": int(len(rows)), "missed": int(missed)}
    if with_68:
        report["points68"] = figures(IBUG_POINTS)
    return report


def _columns(path: Path) -> set[str]:
    return set(pd.read_csv(path, nrows=0).columns)


def _expand(labels: np.ndarray, label_names: tuple[str, ...], names: tuple[str, ...]) -> np.ndarray:
    """Labels laid out in the model's keypoint order ``names`` (NaN for points without a label)."""
    out = np.full((len(labels), len(names), 2), np.nan)
    for i, n in enumerate(label_names):
        if n in names:
            out[:, names.index(n)] = labels[:, i]
    return out


def _holdout_rows(image_names: list[str], run_dir: Path | None) -> np.ndarray:
    if run_dir is None:
        return np.arange(len(image_names))
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise UsageError(f"--holdout {run_dir}: no config.json (is it a training run folder?)")
    try:
        config = json.loads(config_path.read_text())
        mask = split_by_group(image_names, config["val_split"], config["group_by"], config["seed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--holdout {run_dir}: config.json is damaged ({type(exc).__name__}: {exc})") from None
    return np.flatnonzero(mask)


def write_submission(
    predictor: Predictor, test_csv: Path, lookup_csv: Path, out: Path, *, overwrite: bool = False, inputs=()
) -> int:
    """Kaggle's ``RowId,Location`` for every row of the lookup table, clipped to [0, 96]. ``out`` is
    written atomically; it must not exist (unless ``overwrite``) nor be the test CSV, the lookup
    table or one of ``inputs``."""
    inputs = [test_csv, lookup_csv, *inputs]
    check_target(out, overwrite=overwrite, inputs=inputs, stream=True)
    table = load_kaggle_csv(test_csv, with_labels=False)
    if not table.names:
        raise DataError(f"{test_csv}: no images (the CSV has no rows)")
    lookup = _read_csv(lookup_csv)
    missing = {"RowId", "ImageId", "FeatureName"} - set(lookup.columns)
    if missing:
        raise DataError(f"{lookup_csv}: missing columns {', '.join(sorted(missing))}")
    pred, _ = _kaggle_predictions(predictor, table.images)
    position = {name: i for i, name in enumerate(table.names)}
    names = predictor.spec.keypoints
    locations = []
    for line, (image_id, feature) in enumerate(zip(lookup["ImageId"], lookup["FeatureName"]), start=2):
        point, axis = str(feature)[:-2], str(feature)[-1]
        if str(image_id) not in position or point not in names or axis not in "xy":
            raise DataError(f"{lookup_csv}, line {line}: unknown ImageId {image_id} or FeatureName {feature}")
        locations.append(pred[position[str(image_id)], names.index(point), "xy".index(axis)])
    frame = pd.DataFrame({"RowId": lookup["RowId"], "Location": np.clip(locations, 0, KAGGLE_SIZE)})
    with atomic_write(out, overwrite=overwrite, inputs=inputs, mode="w", stream=True) as handle:
        frame.to_csv(handle, index=False)
    return len(frame)
