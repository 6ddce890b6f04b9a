"""What can be predicted: paths and folders (as :class:`~fkpbatch.discover.InputFile` s) and
in-memory pictures (PIL images, numpy arrays), and how each is decoded for the detector."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .decode import load_reduced, to_rgb
from .discover import InputFile, discover
from .errors import DecodeError, UsageError

PathLike = Union[str, "os.PathLike[str]"]


def input_files(items: Iterable[InputFile | PathLike], *, recursive: bool = True) -> list[InputFile]:
    """Paths as :class:`InputFile` s, in the given order: a folder becomes its files (sorted, as
    ``fkpbatch predict`` walks it); a missing path is a UsageError. InputFiles pass unchanged."""
    files: list[InputFile] = []
    for item in items:
        if isinstance(item, InputFile):
            files.append(item)
        elif isinstance(item, (str, os.PathLike)):
            # as the CLI finds it: a folder walked, a FIFO or device never opened, a missing path refused
            files.extend(discover([Path(item)], recursive=recursive).files)
        else:
            raise UsageError(f"expected a file path (str or Path), not {type(item).__name__}")
    return files


class InMemoryImage:
    """An in-memory picture as a prediction input: upright RGB pixels and the name its rows get."""

    skip_if_not_image = False

    def __init__(self, image, name: str):
        self.image, self.name = to_pil_image(image), name

    @property
    def path(self) -> None:
        """No file behind it (for code that reads ``item.path``)."""
        return None


def to_pil_image(image) -> Image.Image:
    """A PIL image (EXIF orientation applied, any mode) or an HxW / HxWx3 (RGB) / HxWx4 (RGBA)
    uint8 numpy array as an upright RGB PIL image; anything else is a UsageError."""
    if isinstance(image, Image.Image):
        if min(image.size) == 0:
            raise UsageError(f"a PIL image of {image.width}x{image.height} pixels has no pixels")
        return to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise UsageError(
                f"an image array must be uint8 HxW, HxWx3 (RGB) or HxWx4 (RGBA), "
                f"not {image.dtype} {'x'.join(map(str, image.shape))}"
            )
        if min(image.shape[:2]) == 0:
            raise UsageError(f"an image array of shape {'x'.join(map(str, image.shape))} has no pixels")
        return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise UsageError(f"expected a PIL image or a numpy uint8 array, not {type(image).__name__}")


def load_item(item: InputFile | InMemoryImage, max_pixels: int, min_side: int | None = None):
    """(the upright RGB picture of an input, its full size): a file is decoded at reduced scale when
    the detector needs no more (:func:`decode.load_reduced`); an in-memory picture is used as it is."""
    if isinstance(item, InMemoryImage):
        width, height = item.image.size
        if width * height > max_pixels:
            raise DecodeError(f"image is {width}x{height} = {width * height:,} pixels, over max_pixels {max_pixels:,}")
        return item.image, item.image.size
    return load_reduced(item.path, max_pixels, min_side)
