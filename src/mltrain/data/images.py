"""Decoding one image file the way every engine sees it: RGB, short side resized, centre-cropped."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Errors PIL raises for files that are not (complete) images: zero bytes, text, truncated JPEGs.
_BAD_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImageError(Exception):
    """A file that cannot be decoded as an image; the loader skips and counts it."""


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` as RGB (grayscale, RGBA and palette images are converted).

    Args:
        path: The image file.
        draft_size: Let the JPEG decoder downscale by a power of two while keeping both sides at
            least this many pixels, which makes decoding large photos several times cheaper.
    """
    try:
        with warnings.catch_warnings():
            # Palette images with transparency warn on conversion; dropping alpha is what we want.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()
                if image.mode == "P" and "transparency" in image.info:
                    return image.convert("RGBA").convert("RGB")
                return image.convert("RGB")
    except _BAD_IMAGE_ERRORS as exc:
        raise BadImageError(f"{path}: {type(exc).__name__}: {exc}") from None


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on a PIL image, in one place."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if (width, height) != new_size:
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    width, height = image.size
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def decode_square(path: str | Path, size: int, fast: bool = True) -> np.ndarray:
    """Decode ``path`` into a (size, size, 3) uint8 array; BadImageError when it is not an image."""
    image = open_rgb(path, draft_size=size if fast else None)
    return np.asarray(resize_center_crop(image, size), dtype=np.uint8)
