"""Keypoint names, their left/right mirror pairs, and the columns they become."""

from __future__ import annotations

KAGGLE_POINTS: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
IBUG_POINTS: tuple[str, ...] = tuple(f"p{i}" for i in range(68))

# iBUG 68-point mirror pairs (0-based): jaw, brows, nose, eyes, mouth.
_IBUG_MIRROR = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34)]
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)


def coordinate_columns(names: tuple[str, ...] | list[str]) -> list[str]:
    """``name_x, name_y`` for every keypoint, in order (the Kaggle column layout)."""
    return [f"{n}_{axis}" for n in names for axis in ("x", "y")]


def mirror_name(name: str) -> str:
    """The keypoint a horizontal flip turns ``name`` into (a flipped left eye is a right eye)."""
    if name in IBUG_POINTS:
        index = int(name[1:])
        for a, b in _IBUG_MIRROR:
            if index in (a, b):
                return f"p{a + b - index}"
        return name
    if "left" in name:
        return name.replace("left", "right")
    return name.replace("right", "left")


def flip_permutation(names: tuple[str, ...] | list[str]) -> list[int]:
    """Index permutation that re-labels keypoints after a horizontal flip."""
    position = {n: i for i, n in enumerate(names)}
    return [position[mirror_name(n)] for n in names]


def has_ibug68(names) -> bool:
    """Whether ``names`` hold the 68 iBUG points (what ``--points 68`` needs of a model or a CSV)."""
    return set(IBUG_POINTS) <= set(names)


def points_for(selection: str) -> tuple[str, ...]:
    """Keypoint names for ``--points 15`` or ``--points 68`` (68 = the 15 plus the iBUG points)."""
    if selection == "15":
        return KAGGLE_POINTS
    if selection == "68":
        return KAGGLE_POINTS + IBUG_POINTS
    raise ValueError(f"points must be '15' or '68', not {selection!r}")
