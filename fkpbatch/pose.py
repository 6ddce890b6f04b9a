"""Head pose (yaw, pitch, roll in degrees) from 2D keypoints, fitted to a 3D mean face; numpy only.

Model: 68 points of MediaPipe's canonical face mesh (``mediapipe/modules/face_geometry/data/
canonical_face_model.obj``, google/mediapipe, Apache License 2.0; centimetres, x to the subject's
left, y up, z out of the face), one mesh vertex per iBUG point. The vertices were chosen once (for
this module) as the nearest vertex of the matching MediaPipe contour (face oval, brows, eyes, outer
and inner lips; nose: the mesh's midline and surface) to the mean near-frontal 68-point shape of the
HELEN + LFPW training labels; the choice is left/right symmetric. The 15 Kaggle points come from the
68 as the development data map them (README of the data: eye centres = mean of the six eye points,
corners 36/39/42/45, brow ends 17/21/22/26, nose tip 30, mouth corners 48/54, lip centres 51/57).

Camera: pinhole, focal length ``max(w, h)`` pixels, principal point at the image centre, no
distortion. Keypoints are 0-based pixel indices (pixel i's centre at i, as everywhere in fkpbatch).
The pose is the rotation and translation that minimise the squared reprojection error
(Levenberg-Marquardt on a rotation-vector update, started from a scaled-orthographic fit):
deterministic, about a millisecond per face.

Angles, in the subject's terms (the head frame is the camera frame for a face looking straight into
the camera; the rotation is ``Rz(roll) @ Rx(-pitch) @ Ry(-yaw)`` in camera axes x right, y down, z
forward, so roll is applied last, about the camera's axis):

- ``yaw`` > 0: the subject turns their head to their own left (the nose moves to the image's right).
- ``pitch`` > 0: the subject looks up (the nose moves up in the image).
- ``roll`` > 0: the subject tilts their head towards their own left shoulder (on the screen the face
  turns clockwise).

Consequences: mirroring a photo (and so swapping the left/right names) negates yaw and roll and keeps
pitch; turning a photo clockwise by d degrees about its centre adds d to roll.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .keypoints import IBUG_POINTS, KAGGLE_POINTS

__all__ = ["HeadPose", "MODEL_POINTS", "angles", "head_pose", "model_points", "rotation_from_angles", "solve_pose"]

# (x, y, z) of MediaPipe's canonical face mesh, one vertex per iBUG point p0..p67: the "v" lines of
# mediapipe/modules/face_geometry/data/canonical_face_model.obj (google/mediapipe, last changed in
# commit a908d668c730da128dfa8d9f6bd25d519d006692), Copyright 2020 The MediaPipe Authors, Apache
# License 2.0 (http://www.apache.org/licenses/LICENSE-2.0); the vertex number is 0-based.
_MEDIAPIPE_68 = (
    (-7.743095, 2.364999, -2.005167),  # p0: vertex 127
    (-7.664182, 0.673132, -2.435867),  # p1: vertex 234
    (-7.542244, -1.049282, -2.431321),  # p2: vertex 93
    (-7.270895, -2.890917, -2.252455),  # p3: vertex 132
    (-6.719682, -4.788645, -1.745401),  # p4: vertex 58
    (-5.085276, -7.178590, 0.714711),  # p5: vertex 136
    (-4.068926, -7.993109, 1.925119),  # p6: vertex 150
    (-2.308977, -8.974196, 3.609070),  # p7: vertex 176
    (0.000000, -9.403378, 4.264492),  # p8: vertex 152
    (2.308977, -8.974196, 3.609070),  # p9: vertex 400
    (4.068926, -7.993109, 1.925119),  # p10: vertex 379
    (5.085276, -7.178590, 0.714711),  # p11: vertex 365
    (6.719682, -4.788645, -1.745401),  # p12: vertex 288
    (7.270895, -2.890917, -2.252455),  # p13: vertex 361
    (7.542244, -1.049282, -2.431321),  # p14: vertex 323
    (7.664182, 0.673132, -2.435867),  # p15: vertex 454
    (7.743095, 2.364999, -2.005167),  # p16: vertex 356
    (-5.720968, 4.254584, 2.830852),  # p17: vertex 70
    (-4.985894, 4.802461, 3.751977),  # p18: vertex 63
    (-3.986562, 5.109487, 4.466315),  # p19: vertex 105
    (-2.644548, 4.524654, 4.921559),  # p20: vertex 65
    (-1.220941, 4.142165, 5.106035),  # p21: vertex 55
    (1.220941, 4.142165, 5.106035),  # p22: vertex 285
    (2.644548, 4.524654, 4.921559),  # p23: vertex 295
    (3.986562, 5.109487, 4.466315),  # p24: vertex 334
    (4.985894, 4.802461, 3.751977),  # p25: vertex 293
    (5.720968, 4.254584, 2.830852),  # p26: vertex 300
    (0.000000, 2.473255, 5.788627),  # p27: vertex 6
    (0.000000, 1.728369, 6.316750),  # p28: vertex 197
    (0.000000, 0.365669, 7.242870),  # p29: vertex 5
    (0.000000, -1.126865, 7.475604),  # p30: vertex 1
    (-1.405627, -1.714196, 5.241087),  # p31: vertex 98
    (-0.597442, -2.013686, 5.866456),  # p32: vertex 97
    (0.000000, -2.521945, 5.932265),  # p33: vertex 164
    (0.597442, -2.013686, 5.866456),  # p34: vertex 326
    (1.405627, -1.714196, 5.241087),  # p35: vertex 327
    (-4.445859, 2.663991, 3.173422),  # p36: vertex 33
    (-3.670075, 2.927714, 3.724325),  # p37: vertex 160
    (-2.724032, 2.961810, 3.871767),  # p38: vertex 158
    (-1.998311, 2.496547, 3.689148),  # p39: vertex 155
    (-2.724032, 2.315802, 3.777151),  # p40: vertex 153
    (-3.670075, 2.360153, 3.635230),  # p41: vertex 144
    (1.998311, 2.496547, 3.689148),  # p42: vertex 382
    (2.724032, 2.961810, 3.871767),  # p43: vertex 385
    (3.670075, 2.927714, 3.724325),  # p44: vertex 387
    (4.445859, 2.663991, 3.173422),  # p45: vertex 263
    (3.670075, 2.360153, 3.635230),  # p46: vertex 373
    (2.724032, 2.315802, 3.777151),  # p47: vertex 380
    (-2.456206, -4.342621, 4.283884),  # p48: vertex 61
    (-1.914910, -3.803146, 5.028930),  # p49: vertex 40
    (-0.711452, -3.329355, 5.877044),  # p50: vertex 37
    (0.000000, -3.406404, 5.979507),  # p51: vertex 0
    (0.711452, -3.329355, 5.877044),  # p52: vertex 267
    (1.914910, -3.803146, 5.028930),  # p53: vertex 270
    (2.456206, -4.342621, 4.283884),  # p54: vertex 291
    (1.838624, -4.828746, 4.823737),  # p55: vertex 321
    (0.699606, -5.291850, 5.448304),  # p56: vertex 314
    (0.000000, -5.365123, 5.535441),  # p57: vertex 17
    (-0.699606, -5.291850, 5.448304),  # p58: vertex 84
    (-1.838624, -4.828746, 4.823737),  # p59: vertex 91
    (-2.153084, -4.276322, 4.038093),  # p60: vertex 78
    (-0.533422, -3.993222, 5.138202),  # p61: vertex 82
    (0.000000, -3.994436, 5.219482),  # p62: vertex 13
    (0.533422, -3.993222, 5.138202),  # p63: vertex 312
    (2.153084, -4.276322, 4.038093),  # p64: vertex 308
    (0.583218, -4.517982, 5.339869),  # p65: vertex 317
    (0.000000, -4.542400, 5.404754),  # p66: vertex 14
    (-0.583218, -4.517982, 5.339869),  # p67: vertex 87
)


def _kaggle_from_ibug(ibug: np.ndarray) -> dict[str, np.ndarray]:
    """The 15 Kaggle points from the 68 iBUG points, as the development data derive them."""
    pick = {
        "left_eye_inner_corner": 42,
        "left_eye_outer_corner": 45,
        "right_eye_inner_corner": 39,
        "right_eye_outer_corner": 36,
        "left_eyebrow_inner_end": 22,
        "left_eyebrow_outer_end": 26,
        "right_eyebrow_inner_end": 21,
        "right_eyebrow_outer_end": 17,
        "nose_tip": 30,
        "mouth_left_corner": 54,
        "mouth_right_corner": 48,
        "mouth_center_top_lip": 51,
        "mouth_center_bottom_lip": 57,
    }
    points = {name: ibug[index] for name, index in pick.items()}
    points["left_eye_center"] = ibug[42:48].mean(axis=0)
    points["right_eye_center"] = ibug[36:42].mean(axis=0)
    return {name: points[name] for name in KAGGLE_POINTS}


def _build_model() -> dict[str, np.ndarray]:
    ibug = np.array(_MEDIAPIPE_68, dtype=np.float64) * (1.0, -1.0, -1.0)  # -> x right, y down, z into the scene
    ibug -= ibug.mean(axis=0)
    model = dict(zip(IBUG_POINTS, ibug))
    model.update(_kaggle_from_ibug(ibug))
    for point in model.values():
        point.flags.writeable = False
    return model


MODEL_POINTS: dict[str, np.ndarray] = _build_model()
"""3D position (centimetres; x to the image's right, y down, z away from the camera for a frontal
face) of every point name the pose understands: ``p0`` .. ``p67`` and the 15 Kaggle names."""


class HeadPose(NamedTuple):
    """Head pose in degrees (see the module's docstring for the signs)."""

    yaw: float
    pitch: float
    roll: float


def model_points(names: Sequence[str]) -> np.ndarray:
    """(K, 3) model positions of ``names`` (KeyError for a name the model does not have)."""
    return np.array([MODEL_POINTS[name] for name in names], dtype=np.float64)


def _rotation(vector: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vector -> 3x3 matrix."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    k = vector / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _weak_perspective(image: np.ndarray, model: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Scaled-orthographic start: R and t from the least-squares affine camera of the centred points.
    ``image`` is relative to the principal point; ``model`` is centred."""
    centre = image.mean(axis=0)
    affine, *_ = np.linalg.lstsq(model, image - centre, rcond=None)  # (3, 2): image ~ model @ affine
    a1, a2 = affine[:, 0], affine[:, 1]
    scale = float(np.linalg.norm(a1) + np.linalg.norm(a2)) / 2
    r1, r2 = a1 / np.linalg.norm(a1), a2 / np.linalg.norm(a2)
    rotation = _nearest_rotation(np.stack([r1, r2, np.cross(r1, r2)]))
    depth = focal / max(scale, 1e-12)
    translation = np.array([centre[0] * depth / focal, centre[1] * depth / focal, depth])
    return rotation, translation


def _refine(image, model, focal, rotation, translation, iterations=50):
    """Levenberg-Marquardt on the reprojection error; updates R <- exp([w]x) R, t <- t + dt."""
    damping = 1e-3

    def residuals(rotation, translation):
        camera = model @ rotation.T + translation
        projected = focal * camera[:, :2] / camera[:, 2:3]
        return camera, (projected - image).ravel()

    camera, error = residuals(rotation, translation)
    cost = float(error @ error)
    for _ in range(iterations):
        x, y, z = camera[:, 0], camera[:, 1], camera[:, 2]
        du = np.stack([focal / z, np.zeros_like(z), -focal * x / z**2], axis=1)  # d(u)/d(camera point)
        dv = np.stack([np.zeros_like(z), focal / z, -focal * y / z**2], axis=1)
        arm = camera - translation  # d(camera)/d(w) = -[arm]x
        jac_u = np.concatenate([np.cross(arm, du), du], axis=1)  # d/dw of du . (w x arm) = (arm x du) . w
        jac_v = np.concatenate([np.cross(arm, dv), dv], axis=1)
        jacobian = np.stack([jac_u, jac_v], axis=1).reshape(-1, 6)
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ error
        while True:
            step = -np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9), gradient)
            new_rotation = _rotation(step[:3]) @ rotation
            new_translation = translation + step[3:]
            new_camera, new_error = residuals(new_rotation, new_translation)
            new_cost = float(new_error @ new_error)
            if np.all(new_camera[:, 2] > 0) and new_cost <= cost:
                break
            damping *= 10
            if damping > 1e8:
                return rotation, translation
        converged = cost - new_cost <= 1e-12 * max(cost, 1e-12) or np.abs(step).max() < 1e-10
        rotation, translation, camera, error, cost = new_rotation, new_translation, new_camera, new_error, new_cost
        damping = max(damping / 10, 1e-7)
        if converged:
            break
    return rotation, translation


def angles(rotation: np.ndarray) -> HeadPose:
    """Yaw, pitch, roll (degrees) of a head rotation in camera axes (x right, y down, z forward)."""
    beta = np.arcsin(np.clip(rotation[2, 1], -1.0, 1.0))  # R = Rz(gamma) Rx(beta) Ry(alpha)
    alpha = np.arctan2(-rotation[2, 0], rotation[2, 2])
    gamma = np.arctan2(-rotation[0, 1], rotation[1, 1])
    return HeadPose(float(np.degrees(-alpha)), float(np.degrees(-beta)), float(np.degrees(gamma)))


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The inverse of :func:`angles`: the 3x3 head rotation for a pose in degrees."""
    alpha, beta, gamma = np.radians([-yaw, -pitch, roll])
    ca, sa, cb, sb, cg, sg = np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta), np.cos(gamma), np.sin(gamma)
    ry = np.array([[ca, 0, sa], [0, 1, 0], [-sa, 0, ca]])
    rx = np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    rz = np.array([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _camera(image_size: tuple[int, int]) -> tuple[float, np.ndarray]:
    """Focal length and principal point (in 0-based pixel indices) of the assumed camera."""
    width, height = image_size
    return float(max(width, height)), np.array([width / 2 - 0.5, height / 2 - 0.5])


def solve_pose(points, names, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3x3, camera axes) and translation (centimetres; of the model's origin, the mean of its
    68 points) that best reproject the model onto ``points``; the arguments are :func:`head_pose`'s.
    ValueError when there are too few usable points or they coincide or lie on a line."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    names = list(names)
    if len(names) != len(points):
        raise ValueError(f"{len(points)} points but {len(names)} names")
    finite = np.isfinite(points).all(axis=1)
    given = {name for name, ok in zip(names, finite) if ok}
    use = IBUG_POINTS if set(IBUG_POINTS) <= given else KAGGLE_POINTS
    rows = [i for i, (name, ok) in enumerate(zip(names, finite)) if ok and name in use]
    if len(rows) < 4:
        raise ValueError(
            "head pose needs at least 4 of the 15 Kaggle points or all 68 iBUG points, with finite coordinates"
        )
    focal, centre = _camera(image_size)
    image = points[rows] - centre
    if np.linalg.svd(image - image.mean(axis=0), compute_uv=False)[-1] < 1e-6:
        raise ValueError("the keypoints coincide or lie on a line: no head pose")
    model = model_points([names[i] for i in rows])
    model_centre = model.mean(axis=0)
    rotation, translation = _weak_perspective(image, model - model_centre, focal)
    rotation, translation = _refine(image, model - model_centre, focal, rotation, translation)
    return rotation, translation - rotation @ model_centre


def head_pose(points, names: Sequence[str], image_size: tuple[int, int]) -> HeadPose:
    """Yaw, pitch and roll in degrees of the face whose keypoints are ``points``.

    ``points``: (K, 2) x, y in 0-based pixels of the image (as fkpbatch reports them); ``names``:
    their K names as in :mod:`fkpbatch.keypoints` (``FaceResult.names``). All 68 iBUG points are used
    when given (finite), else the Kaggle points among them (at least 4); other names are ignored.
    ``image_size``: (width, height) of the image the points are in. Signs: see the module docstring.
    """
    rotation, _ = solve_pose(points, names, image_size)
    return angles(rotation)
