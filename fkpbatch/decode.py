"""Decoding one image file with Pillow into an upright RGB picture, or a DecodeError that says why."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import DecodeError

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: ~300 MB as RGB; more is almost surely a decompression bomb

# Truncated JPEGs: Pillow stops with an error by default; we refuse them too (see README,
# "Bad files"), so a half-grey face never produces confident-looking keypoints.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, check the declared size, apply EXIF orientation, take the first frame, convert to RGB.

    Handles L, LA, P (with transparency), RGBA, CMYK, I;16, 1-bit and animations; transparent
    areas become white (how viewers show them), 16-bit images are scaled to 8 bits.
    """
    return load_reduced(path, max_pixels)[0]


def load_reduced(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`, but a JPEG whose longest side is at least twice ``min_side`` is decoded at
    1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, Pillow's ``draft``: 3-10x less work) with its longest
    side still >= ``min_side``. Returns the picture and the upright size of the full-resolution image
    (what coordinates are reported in)."""
    try:
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
    except DecodeError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        hint = " (a broken symlink)" if Path(path).is_symlink() and not Path(path).exists() else ""
        raise DecodeError(f"cannot read: {exc.strerror}{hint}") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError(f"cannot decode: {exc}") from None


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
