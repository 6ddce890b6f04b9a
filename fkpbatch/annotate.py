"""Annotated copies of the inputs: boxes labelled with the face's index (the CSV's ``face``) and
quality, keypoints (subject's left in red, right in green) sized to each face, mirrored under
``--annotate DIR``, never written outside it, over an input or (without ``--overwrite``) over any
existing file; and a contact sheet, ``DIR/index.html``, of the faces lowest quality first, to review the doubtful ones at a glance."""

from __future__ import annotations

import base64
import heapq
import html
import io
import os
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, ImageDraw, ImageFont

from .decode import DEFAULT_MAX_PIXELS, load_image
from .discover import real_name
from .errors import FkpError
from .fileio import atomic_write, same_file, write_bytes_atomic
from .results import FaceResult, ImageResult

LEFT, RIGHT, CENTRE, BOX = (230, 40, 40), (40, 200, 40), (255, 210, 0), (0, 160, 255)
_SAVE_AS_IS = {".jpg", ".jpeg", ".png"}
DOUBTFUL, LABEL_TEXT = (220, 30, 30), (255, 255, 255)
# Faces scoring under this are labelled in red: the shipped models score clear faces 0.36-0.58 and
# junk (a hand, a mask, a face seen from behind) under 0.05 (docs/outputs.md, "Quality").
DOUBTFUL_QUALITY = 0.3
SHEET_NAME = "index.html"


def annotation_path(name: str, root: Path) -> Path | None:
    """Where the annotated copy of an input goes: its folder-relative layout inside ``root``, under
    the input's own file name (``name`` is an output name: its ``\\xNN`` and ``\\\\`` escapes are
    undone). Absolute parts and ``..`` are dropped; None if the result would still leave ``root``."""
    parts = [p for p in PurePosixPath(real_name(name)).parts if p not in ("/", "..", ".", "")]
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


def draw_result(
    result: ImageResult,
    keypoints: tuple[str, ...],
    root: Path,
    drawn: set[str] | None = None,
    *,
    sheet: ContactSheet | None = None,
    overwrite: bool = False,
    inputs=(),
    quiet_if_exists: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> str | None:
    """Write the annotated picture of ``result`` with the keypoints named in ``drawn`` (default
    all), and add its faces to ``sheet``; returns a warning instead of raising. An existing file
    is replaced only with ``overwrite``, and never when it is one of ``inputs`` (``os.stat``
    results are looked up in it: device and inode, so hard links count); the file is written
    through a new temporary file."""
    target = annotation_path(result.source.relative or result.image, root)
    if target is None:
        return f"{result.image}: annotated copy would land outside {root}; not written"
    refused = _refusal(result, target, "annotated copy", overwrite, inputs, quiet_if_exists)
    if refused is not None:
        return refused or None
    try:  # the file may have changed since it was predicted: a warning, never the end of the run
        image = load_image(result.source.path, max_pixels)
    except (OSError, FkpError) as exc:
        return f"{result.image}: annotated copy not written ({exc})"
    draw_faces(image, result.faces, keypoints, drawn)
    if sheet is not None:
        sheet.add(result, image, target)
    return _save(result, image, target, "annotated copy", overwrite)


def write_aligned(
    result: ImageResult,
    root: Path,
    size: int = 112,
    *,
    written: set[Path],
    overwrite: bool = False,
    inputs=(),
    quiet_if_exists: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[str]:
    """Write each face of ``result`` aligned (:func:`fkpbatch.align.align_face`, ``size`` px) as
    ``<image stem>_<face>.png`` in the input's folder layout under ``root``, by the rules of the
    annotated copies (inside ``root``, never over an input, an existing file only with
    ``overwrite``); ``written``: this run's files so far (two inputs that differ only by extension
    would share a name: the first keeps it). Returns warnings instead of raising."""
    from .align import align_face

    copy = annotation_path(result.source.relative or result.image, root)
    if copy is None:
        return [f"{result.image}: aligned faces would land outside {root}; not written"]
    stem = PurePosixPath(real_name(result.source.relative or result.image)).stem
    image, warnings = None, []
    for index, face in enumerate(result.faces):
        target = copy.with_name(f"{stem}_{index}.png")
        if target in written:
            warnings.append(f"{result.image}: {target} was written for another image of this run; not replaced")
            continue
        refused = _refusal(result, target, "aligned face", overwrite, inputs, quiet_if_exists)
        if refused is not None:
            warnings += [refused] if refused else []
            continue
        if image is None:
            try:
                image = load_image(result.source.path, max_pixels)
            except (OSError, FkpError) as exc:
                return warnings + [f"{result.image}: aligned faces not written ({exc})"]
        warning = _save(result, align_face(image, face, size), target, "aligned face", overwrite)
        written.add(target)
        warnings += [warning] if warning else []
    return warnings


def _refusal(result: ImageResult, target: Path, what: str, overwrite: bool, inputs, quiet_if_exists: bool):
    """Why ``target`` must not be written (a warning; "" to skip it quietly), or None to write it:
    never over an input (``os.stat`` identities in ``inputs``: hard links count), an existing file
    only with ``overwrite`` (quietly kept when resuming)."""
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and (existing in inputs or same_file(target, result.source.path)):
        return f"{result.image}: {what} {target} would overwrite the input; not written"
    if os.path.lexists(target) and not overwrite:
        return "" if quiet_if_exists else f"{result.image}: {target} exists; not replaced (pass --overwrite)"
    return None


def _save(result: ImageResult, image: Image.Image, target: Path, what: str, overwrite: bool) -> str | None:
    """Write ``image`` to ``target`` through a new temporary file (JPEG for .jpg/.jpeg, else PNG)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, overwrite=overwrite) as handle:
            image.save(handle, format="JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=92)
    except (OSError, FkpError) as exc:
        return f"{result.image}: {what} not written ({exc})"
    return None


def face_label(index: int, face: FaceResult) -> str:
    """The label drawn on a face's box: its index (the CSV's ``face``) and quality, e.g. ``1 q0.42``."""
    return f"{index}" if face.quality is None else f"{index} q{face.quality:.2f}"


def is_doubtful(face: FaceResult) -> bool:
    """True when the face's quality is under :data:`DOUBTFUL_QUALITY` (its label is drawn in red)."""
    return face.quality is not None and face.quality < DOUBTFUL_QUALITY


def draw_faces(
    image: Image.Image, faces: list[FaceResult], keypoints: tuple[str, ...] | None = None, drawn: set[str] | None = None
) -> Image.Image:
    """Draw each face's box, label (:func:`face_label`) and keypoints on ``image``, in place.

    Sizes follow each face, not the picture: a point's radius is 1/90 of the box side (1/150
    with the 68 points, so neighbouring points stay apart), the label's height about 1/10."""
    draw = ImageDraw.Draw(image)
    for index, face in enumerate(faces):
        x, y, w, h = face.box.as_list()
        names = keypoints or face.names
        shown = [(n, p) for n, p in zip(names, face.keypoints) if drawn is None or n in drawn]
        radius = max(1.0, w / (150 if len(shown) > 30 else 90))
        draw.rectangle([x, y, x + w, y + h], outline=BOX, width=max(1, round(w / 150)))
        for name, (px, py) in shown:
            colour = LEFT if "left" in name else RIGHT if "right" in name else CENTRE
            draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)
        colour = DOUBTFUL if is_doubtful(face) else BOX
        _label(draw, image.size, (x, y), face_label(index, face), max(10, round(w / 10)), colour)
    return image


def _label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    at: tuple[float, float],
    text: str,
    height: int,
    colour: tuple[int, int, int],
) -> None:
    """``text`` on a filled tag at the box's top-left corner (above it when there is room)."""
    font = _font(height)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, height // 6)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, at[0]), max(0.0, size[0] - tag_w))
    y = at[1] - tag_h if at[1] - tag_h >= 0 else max(0.0, at[1])
    draw.rectangle([x, y, x + tag_w, y + tag_h], fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=LABEL_TEXT, font=font)


def _font(height: int):
    try:
        return ImageFont.load_default(size=height)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@dataclass(order=True)
class SheetFace:
    """One face on the contact sheet: a JPEG thumbnail of its annotated box and where it came from."""

    sort_key: tuple
    image: str = field(compare=False)
    face: int = field(compare=False)
    quality: float | None = field(compare=False)
    thumbnail: bytes = field(compare=False, repr=False)
    link: str = field(compare=False, default="")


class ContactSheet:
    """The faces of a run, lowest quality first (faces without a quality last), as one HTML page.

    Memory stays bounded: only the ``limit`` lowest-quality faces keep their thumbnails (a heap),
    so a 100,000-image run adds a few megabytes."""

    def __init__(self, limit: int = 1000, thumb: int = 128):
        self.limit, self.thumb = limit, thumb
        self.faces_seen = 0
        self._heap: list[_Largest] = []  # the kept face with the largest key (highest quality) on top

    @staticmethod
    def sort_key(image: str, face: int, quality: float | None) -> tuple:
        """Lowest quality first; faces without a quality after all others; then by image and face."""
        return (quality is None, 0.0 if quality is None else quality, image, face)

    def add(self, result: ImageResult, annotated: Image.Image, target: Path | None = None) -> None:
        """Add the faces of ``result``, cut from its ``annotated`` picture (``target``: where that is written)."""
        for index, face in enumerate(result.faces):
            self.faces_seen += 1
            key = self.sort_key(result.image, index, face.quality)
            if len(self._heap) >= self.limit and key >= self._heap[0].entry.sort_key:
                continue
            x, y, w, h = face.box.as_list()
            crop = annotated.crop((round(x), round(y), round(x + w), round(y + h)))
            crop.thumbnail((self.thumb, self.thumb))
            buffer = io.BytesIO()
            crop.convert("RGB").save(buffer, format="JPEG", quality=85)
            link = "" if target is None else str(target)
            entry = SheetFace(key, result.image, index, face.quality, buffer.getvalue(), link)
            item = _Largest(entry)
            if len(self._heap) < self.limit:
                heapq.heappush(self._heap, item)
            else:
                heapq.heapreplace(self._heap, item)

    def faces(self) -> list[SheetFace]:
        """The kept faces, lowest quality first."""
        return sorted(item.entry for item in self._heap)

    def html(self, root: Path | None = None) -> str:
        """The page: a grid of thumbnails with index, quality and the image (linked to its annotated copy)."""
        tiles = []
        for entry in self.faces():
            link = entry.link
            if root is not None and link:
                try:
                    link = Path(link).resolve().relative_to(root.resolve()).as_posix()
                except ValueError:
                    link = ""
            quality = "no quality" if entry.quality is None else f"q {entry.quality:.3f}"
            css = ' class="doubtful"' if entry.quality is not None and entry.quality < DOUBTFUL_QUALITY else ""
            name = html.escape(entry.image)
            src = "data:image/jpeg;base64," + base64.b64encode(entry.thumbnail).decode("ascii")
            caption = f'<a href="{html.escape(sheet_href(link))}">{name}</a>' if link else name
            tiles.append(
                f'<figure{css}><img src="{src}" alt="{name} face {entry.face}">'
                f"<figcaption><b>{quality}</b> face {entry.face}<br>{caption}</figcaption></figure>"
            )
        shown = len(tiles)
        more = f" (the {shown} lowest-quality faces shown)" if shown < self.faces_seen else ""
        return (
            '<!doctype html>\n<html><head><meta charset="utf-8"><title>fkpbatch faces by quality</title><style>'
            "body{font:13px sans-serif;margin:1em}figure{display:inline-block;margin:4px;width:%dpx;vertical-align:top}"
            "img{display:block;width:%dpx;height:%dpx;object-fit:contain;background:#222}"
            "figcaption{overflow-wrap:anywhere}.doubtful figcaption b{color:#c00}"
            "</style></head><body>\n<h1>Faces by quality, lowest first</h1>\n<p>%d faces%s; quality under %.2f in red "
            "(see docs/outputs.md in fkpbatch's repository). Click a name for its annotated picture.</p>\n%s\n</body></html>\n"
        ) % (self.thumb, self.thumb, self.thumb, self.faces_seen, more, DOUBTFUL_QUALITY, "\n".join(tiles))

    def write(self, path: Path, *, inputs: Iterable[Path] = ()) -> None:
        """Write the page to ``path`` atomically (replacing an earlier sheet, never an input)."""
        write_bytes_atomic(path, self.html(path.parent), overwrite=True, inputs=inputs)

    def save(self, root: Path, *, inputs: Iterable[Path] = ()) -> list[str]:
        """Write ``root/index.html``; returns warnings instead of raising (none when written)."""
        try:
            self.write(Path(root) / SHEET_NAME, inputs=inputs)
        except FkpError as exc:
            return [f"contact sheet not written: {exc}"]
        return []


def sheet_href(relative: str) -> str:
    """A link to the file at ``relative`` (a POSIX path, as the file system names it) from the sheet's
    folder: every byte but letters, digits, ``/`` and ``-._~`` percent-encoded (``#``, ``?``, ``%``
    stay part of the name), and ``./`` in front, so that a name holding a colon is never read as a
    scheme (``javascript:...``)."""
    return "./" + urllib.parse.quote(os.fsencode(relative), safe="/")


class _Largest:
    """Heap item ordered in reverse, so ``heapq``'s smallest is the sheet's largest key (the best
    kept face, the first to drop)."""

    __slots__ = ("entry",)

    def __init__(self, entry: SheetFace):
        self.entry = entry

    def __lt__(self, other: _Largest) -> bool:
        return self.entry.sort_key > other.entry.sort_key
