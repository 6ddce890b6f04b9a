"""Decoding one image file with Pillow into an upright RGB picture, or a DecodeError that says why."""

from __future__ import annotations

import os
import struct
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: ~300 MB as RGB; more is almost surely a decompression bomb

# Truncated JPEGs: Pillow stops with an error by default; we refuse them too (see README,
# "Bad files"), so a half-grey face never produces confident-looking keypoints.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# ISO base media "ftyp" brands (bytes 8-12 of the file): HEIC/HEIF is opened through pillow-heif, AVIF by
# Pillow itself (wheels of Pillow >= 11.3 are built with it).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")
_registered: bool | None = None
_register_lock = threading.Lock()


def register_codecs() -> bool:
    """Register the HEIC/HEIF opener of pillow-heif (or of its decode-only twin, pi-heif) with Pillow,
    once per process; True if HEIC can be opened. Safe to call any number of times, from any thread.

    Only Pillow's plugin registry changes (the opener, save handler, extensions and MIME type of
    the "HEIF" format); no Pillow or pillow-heif option is touched. The decode functions call this
    themselves; call it before ``Image.open`` elsewhere to open HEIC files the same way."""
    global _registered
    if _registered is None:
        with _register_lock:
            if _registered is None:
                Image.init()  # Pillow's own plugins first, so they keep their turn before the HEIF opener
                for module in ("pillow_heif", "pi_heif"):
                    try:
                        plugin = __import__(module)
                        plugin.register_heif_opener()
                    except Exception:  # not installed, or its native library fails to load
                        continue
                    _registered = True
                    break
                else:
                    _registered = False
    return _registered


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
        return "HEIC/HEIF needs the pillow-heif package: pip install pillow-heif"
    return None


def open_image(path: Path | str) -> ImageFile.ImageFile:
    """``Image.open(path)``, but an image over Pillow's own decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 2x of it is an error) still opens: the caller checks the size
    against its own limit (``--max-pixels``), whatever its value. Pillow's settings are not changed:
    only when Pillow refuses the file is it opened again, by the plugin that identifies it, as
    ``Image.open`` does but without that check."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        return _open_without_bomb_check(path)


def _open_without_bomb_check(path: Path | str) -> ImageFile.ImageFile:
    """The first of Pillow's registered openers that accepts the file, as ``Image.open`` tries them."""
    Image.init()
    file = open(path, "rb")
    try:
        prefix = file.read(16)
        for kind in Image.ID:
            factory, accept = Image.OPEN[kind]
            accepted = not accept or accept(prefix)
            if isinstance(accepted, str) or not accepted:
                continue
            file.seek(0)
            try:
                image = factory(file, os.fspath(path))
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
            image._exclusive_fp = True  # closing the image closes the file, as after Image.open
            return image
    except BaseException:
        file.close()
        raise
    file.close()
    raise UnidentifiedImageError(f"cannot identify image file {os.fspath(path)!r}")


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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(path) as image:
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
    except DecodeError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        hint = " (a broken symlink)" if Path(path).is_symlink() and not Path(path).exists() else ""
        raise DecodeError(f"cannot read: {exc.strerror}{hint}") from None
    except Image.DecompressionBombError as exc:  # a frame or tile Pillow checks while decoding (GIF, ICO)
        raise DecodeError(f"refused by Pillow's decompression-bomb check: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(missing_codec(path) or "not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError) as exc:  # RuntimeError: libheif's "other" errors
        raise DecodeError(f"cannot decode: {str(exc).strip()}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; alpha composited on white; high bit depths scaled to 8 bits."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        scale = 1 / 256 if image.mode.startswith("I;16") or image.getextrema()[1] > 255 else 1
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
