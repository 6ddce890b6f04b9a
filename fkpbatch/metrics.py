"""Accuracy measures: RMSE in Kaggle 96-pixel units and NME normalised by the outer-eye-corner distance."""

from __future__ import annotations

import numpy as np
import pandas as pd

FAILURE_NME = 0.10
# The outer eye corners (300-W's "inter-ocular" normalisation), as Kaggle names or iBUG indices.
_OUTER_EYE_CORNERS = (("left_eye_outer_corner", "right_eye_outer_corner"), ("p45", "p36"))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean square over all labelled coordinates (NaN targets ignored), in the arrays' units."""
    diff = (np.asarray(pred) - np.asarray(target)) ** 2
    return float(np.sqrt(np.nanmean(diff))) if np.isfinite(diff).any() else float("nan")


def nme_per_face(pred: np.ndarray, target: np.ndarray, keypoints: tuple[str, ...] | list[str]) -> np.ndarray:
    """Mean point-to-point error per face / distance between the outer eye corners (NaN if unknown).

    ``pred``, ``target``: (N, K, 2) in the same pixel frame; ``keypoints`` name the K points and
    must include the outer eye corners (Kaggle names, or p36 and p45 of the 68 iBUG points).
    """
    left, right = _outer_corners(keypoints)
    norm = np.linalg.norm(target[:, left] - target[:, right], axis=-1)
    errors = np.linalg.norm(pred - target, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmean(errors, axis=1) / norm


def _outer_corners(keypoints) -> list[int]:
    names = list(keypoints)
    for pair in _OUTER_EYE_CORNERS:
        if set(pair) <= set(names):
            return [names.index(n) for n in pair]
    raise ValueError("NME needs the outer eye corners: left/right_eye_outer_corner or p45/p36")


def summarize(
    pred: np.ndarray,
    target: np.ndarray,
    keypoints,
    *,
    kaggle_scale: np.ndarray,
    missed: int = 0,
    quality: np.ndarray | None = None,
) -> dict:
    """RMSE (96-pixel Kaggle units: errors divided by ``kaggle_scale`` per face = box size / 96),
    NME %, failure rate % (``missed`` faces count as failures), per-keypoint mean error in the same
    Kaggle units, and with ``quality`` how well it ranks the errors."""
    scale = np.asarray(kaggle_scale, dtype=np.float64)[:, None, None]
    pred96, target96 = pred / scale, target / scale
    nme = nme_per_face(pred, target, keypoints)
    valid = nme[np.isfinite(nme)]
    per_point = np.nanmean(np.linalg.norm(pred96 - target96, axis=-1), axis=0)
    return {
        "faces": int(len(pred)),
        "rmse": rmse(pred96, target96),
        "nme_percent": float(100 * valid.mean()) if valid.size else float("nan"),
        "failure_percent": failure_percent(nme, missed),
        "per_keypoint": {name: float(e) for name, e in zip(keypoints, per_point)},
        **(quality_vs_error(quality, nme) if quality is not None else {}),
    }


def failure_percent(nme: np.ndarray, missed: int = 0) -> float:
    """Faces with NME > 10 % or not found at all, as a percentage of the faces that could be scored
    (NaN NME = labels without both outer eye corners) plus those not found."""
    nme = np.asarray(nme, float)
    nme = nme[np.isfinite(nme)]
    total = len(nme) + missed
    return float(100 * ((nme > FAILURE_NME).sum() + missed) / total) if total else float("nan")


def quality_vs_error(quality: np.ndarray, nme: np.ndarray) -> dict:
    """How well the quality score ranks faces by error: Spearman correlation (without scipy), and
    the mean NME % of the lowest-quality tenth versus the rest. Empty below three scored faces."""
    quality, nme = np.asarray(quality, float), np.asarray(nme, float)
    scored = np.isfinite(quality) & np.isfinite(nme)
    if scored.sum() < 3:
        return {}
    q, e = pd.Series(quality[scored]), pd.Series(nme[scored])
    low = q < q.quantile(0.1)
    return {
        "quality_vs_nme_spearman": float(q.rank().corr(e.rank())),
        "nme_percent_lowest_decile_quality": float(100 * e[low].mean()) if low.any() else float("nan"),
        "nme_percent_other_quality": float(100 * e[~low].mean()),
    }
