"""Annotated copies of the inputs: boxes and keypoints (subject's left in red, right in green),
mirrored under ``--annotate DIR``; never written outside it, over an input or (without
``--overwrite``) over any existing file."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from PIL import ImageDraw

from .decode import load_image
from .engine import ImageResult
from .errors import FkpError
from .fileio import atomic_write, same_file

LEFT, RIGHT, CENTRE, BOX = (230, 40, 40), (40, 200, 40), (255, 210, 0), (0, 160, 255)
_SAVE_AS_IS = {".jpg", ".jpeg", ".png"}


def annotation_path(name: str, root: Path) -> Path | None:
    """Where the annotated copy of an input goes: its folder-relative layout inside ``root``.
    Absolute parts and ``..`` are dropped; None if the result would still leave ``root``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", "..", ".", "")]
    if not parts:
        return None
    target = root.joinpath(*parts)
    if target.suffix.lower() not in _SAVE_AS_IS:
        target = target.with_name(target.name + ".png")
    resolved_root = root.resolve()
    try:
        target.resolve().relative_to(resolved_root)
    except ValueError:
        return None
    return target


def draw_result(result: ImageResult, keypoints: tuple[str, ...], root: Path, drawn: set[str] | None = None, *,
                overwrite: bool = False, inputs=(), quiet_if_exists: bool = False) -> str | None:
    """Write the annotated picture of ``result`` with the keypoints named in ``drawn`` (default
    all); returns a warning instead of raising. An existing file is replaced only with
    ``overwrite``, and never when it is one of ``inputs`` (``os.stat`` results are looked up in it:
    device and inode, so hard links count); the file is written through a new temporary file."""
    target = annotation_path(result.source.relative or result.image, root)
    if target is None:
        return f"{result.image}: annotated copy would land outside {root}; not written"
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and (existing in inputs or same_file(target, result.source.path)):
        return f"{result.image}: annotated copy {target} would overwrite the input; not written"
    if os.path.lexists(target) and not overwrite:
        return None if quiet_if_exists else f"{result.image}: {target} exists; not replaced (pass --overwrite)"
    image = load_image(result.source.path)
    draw = ImageDraw.Draw(image)
    radius = max(2.0, max(image.size) / 250)
    for face in result.faces:
        x, y, w, h = face.box.as_list()
        draw.rectangle([x, y, x + w, y + h], outline=BOX, width=max(1, round(radius / 1.5)))
        for name, (px, py) in zip(keypoints, face.keypoints):
            if drawn is not None and name not in drawn:
                continue
            colour = LEFT if "left" in name else RIGHT if "right" in name else CENTRE
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, overwrite=overwrite) as handle:
            image.save(handle, format="JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=92)
    except (OSError, FkpError) as exc:
        return f"{result.image}: annotated copy not written ({exc})"
    return None
