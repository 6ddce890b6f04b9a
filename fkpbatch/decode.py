"""Decoding one image file with Pillow into an upright RGB picture, or a DecodeError that says why."""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: ~300 MB as RGB; more is almost surely a decompression bomb

# Truncated JPEGs: Pillow stops with an error by default (ImageFile.LOAD_TRUNCATED_IMAGES, which a
# library leaves as its caller set it) and so do we (docs/reliability.md, "Bad files"): a half-grey
# face never produces confident-looking keypoints.

# ISO base media "ftyp" brands (bytes 8-12 of the file): HEIC/HEIF is opened through pillow-heif, AVIF by
# Pillow itself (wheels of Pillow >= 11.3 are built with it).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")
_registered: bool | None = None
_register_lock = threading.Lock()


def register_codecs() -> bool:
    """Register the HEIC/HEIF opener of pi-heif (the decode-only build of pillow-heif) with Pillow,
    once per process; True if HEIC can be opened. Safe to call any number of times, from any thread.

    Only Pillow's plugin registry changes (the opener, save handler, extensions and MIME type of
    the "HEIF" format); no Pillow or pillow-heif option is touched. The decode functions call this
    themselves; call it before ``Image.open`` elsewhere to open HEIC files the same way."""
    global _registered
    if _registered is None:
        with _register_lock:
            if _registered is None:
                Image.init()  # Pillow's own plugins first, so they keep their turn before the HEIF opener
                _registered = _register_heif()
    return _registered


def _register_heif() -> bool:
    """pi-heif's opener; False when it is not installed or its native library fails to load."""
    try:
        import pi_heif
    except Exception:  # noqa: BLE001 - ImportError, or an OSError from its bundled libheif
        return False
    pi_heif.register_heif_opener()
    return True


def missing_codec(path: Path | str) -> str | None:
    """Why Pillow cannot open ``path`` when its content is HEIC/HEIF or AVIF and the codec is
    missing (naming the package that provides it); None when the file is neither or the codec is there."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    end = min(int.from_bytes(head[:4], "big"), len(head))  # major brand, minor version, compatible brands
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & set(_AVIF_BRANDS):
        from PIL import features

        if not features.check("avif"):
            return "AVIF needs Pillow built with AVIF support (Pillow >= 11.3 wheels): pip install -U pillow"
        return None
    if brands & set(_HEIF_BRANDS) and not register_codecs():
        return "HEIC/HEIF needs the pi-heif package: pip install pi-heif"
    return None


def open_image(path: Path | str) -> ImageFile.ImageFile:
    """``Image.open(path)`` (lazy: reads the header), but an image over Pillow's own decompression-bomb
    limit (twice ``PIL.Image.MAX_IMAGE_PIXELS`` is an error in Pillow) still opens: the caller
    checks the size against its own limit (``--max-pixels``), whatever its value. Decode with
    :func:`load_image`, which applies that limit. HEIC opens too (:func:`register_codecs`)."""
    register_codecs()
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        with pillow_bomb_check_off():
            return Image.open(path)


_bomb_check_off = threading.local()
_bomb_check_lock = threading.Lock()
_bomb_check_users = 0
_pillow_bomb_check = None


def _bomb_check_unless_off(*args, **kwargs):
    if getattr(_bomb_check_off, "on", False):
        return None
    return _pillow_bomb_check(*args, **kwargs)


@contextmanager
def pillow_bomb_check_off():
    """Pillow's decompression-bomb check skipped in this thread, in this block only; other threads
    keep it, and ``PIL.Image.MAX_IMAGE_PIXELS`` is never changed. Used when ``--max-pixels``, checked
    by :func:`load_reduced` before any pixel is decoded, allows more than Pillow's limit. (Pillow
    checks in ``Image.open`` and again in some decoders, TIFF tiles and GIF frames, through
    ``Image._decompression_bomb_check``: a wrapper that asks this thread is put there while a block
    runs and the original put back after the last one.)"""
    global _bomb_check_users, _pillow_bomb_check
    if not callable(getattr(Image, "_decompression_bomb_check", None)):  # another Pillow: its check stays
        yield
        return
    with _bomb_check_lock:
        if _bomb_check_users == 0:
            _pillow_bomb_check = Image._decompression_bomb_check
            Image._decompression_bomb_check = _bomb_check_unless_off
        _bomb_check_users += 1
    was_off = getattr(_bomb_check_off, "on", False)
    _bomb_check_off.on = True
    try:
        yield
    finally:
        _bomb_check_off.on = was_off
        with _bomb_check_lock:
            _bomb_check_users -= 1
            if _bomb_check_users == 0:
                Image._decompression_bomb_check = _pillow_bomb_check


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, check the declared size, apply EXIF orientation, take the first frame, convert to RGB.

    Handles L, LA, P (with transparency), RGBA, CMYK, I;16, 1-bit and animations; transparent
    areas become white (how viewers show them), 16-bit images are scaled to 8 bits. HEIC/HEIF opens
    through pillow-heif (:func:`register_codecs`) upright as its irot/imir boxes say (HEIF's
    orientation; iPhones write it, and the EXIF tag that repeats it is not applied twice); AVIF
    through Pillow (>= 11.3), with EXIF orientation applied as for a JPEG. A file whose codec is
    missing raises a DecodeError that names the package to install.
    """
    return load_reduced(path, max_pixels)[0]


def load_reduced(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`, but a JPEG whose longest side is at least twice ``min_side`` is decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's ``draft``: 3-10x less work) with its longest
    side still >= ``min_side``. Returns the picture and the upright size of the full-resolution image
    (what coordinates are reported in)."""
    register_codecs()
    try:
        try:
            return _decode(path, max_pixels, min_side)
        except Image.DecompressionBombError:  # over Pillow's own limit: --max-pixels decides, whatever its value
            with pillow_bomb_check_off():
                return _decode(path, max_pixels, min_side)
    except DecodeError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        hint = " (a broken symlink)" if Path(path).is_symlink() and not Path(path).exists() else ""
        raise DecodeError(f"cannot read: {exc.strerror}{hint}") from None
    except Image.DecompressionBombError as exc:  # only where Pillow's check cannot be skipped
        raise DecodeError(f"refused by Pillow's decompression-bomb check: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(missing_codec(path) or "not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError) as exc:  # RuntimeError: libheif's "other" errors
        raise DecodeError(f"cannot decode: {str(exc).strip()}") from None


def _decode(path: Path | str, max_pixels: int, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_reduced`'s work; Pillow's errors are left to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"image is {width}x{height} = {width * height:,} pixels, over --max-pixels "
                    f"{max_pixels:,} (raise it if this file is genuine)"
                )
            image.seek(0)
            if min_side and image.format == "JPEG" and max(width, height) >= 2 * min_side:
                ratio = min_side / max(width, height)
                image.draft(image.mode, (max(1, int(width * ratio + 1)), max(1, int(height * ratio + 1))))
            image.load()
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright), ((height, width) if turned else (width, height))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha composited on white; high bit depths scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # one band: getextrema() is (min, max), never a tuple per band
        scale = (
            1 / 256 if image.mode.startswith("I;16") or cast("tuple[float, float]", image.getextrema())[1] > 255 else 1
        )
        image = image.point(lambda value: value * scale).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image
