"""Annotated copies of the inputs: boxes and keypoints (subject's left in red, right in green),
mirrored under ``--annotate DIR`` and never written outside it or over an input."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from PIL import ImageDraw

from .decode import load_image
from .results import ImageResult

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


def draw_result(result: ImageResult, keypoints: tuple[str, ...], root: Path, drawn: set[str] | None = None) -> str | None:
    """Write the annotated picture of ``result`` with the keypoints named in ``drawn`` (default
    all); returns a warning instead of raising."""
    target = annotation_path(result.source.relative or result.image, root)
    if target is None:
        return f"{result.image}: annotated copy would land outside {root}; not written"
    if target.resolve() == result.source.path.resolve():
        return f"{result.image}: annotated copy would overwrite the input; not written"
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    image.save(tmp, format="JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=92)
    tmp.replace(target)
    return None
