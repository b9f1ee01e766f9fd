"""Hue shift for RGB PIL images through two lookup tables, bit-identical to torchvision's.

torchvision shifts hue on a PIL image by converting RGB -> HSV, adding a constant to H (mod 256)
and converting back. Both conversions are pure functions of one uint8 pixel, so each becomes one
table over all 2**24 pixel values, and the shift becomes two gathers and an add: ≈ 0.4 ms for a
224 px image against ≈ 1.6 ms for PIL's two conversions. That was most of the training
augmentation's CPU time, which on a small CPU is taken straight from the model's compute threads.

The tables (2 × 64 MB) are computed by PIL itself, so they cannot disagree with it, and are kept in
one file in the cache folder. Every process memory-maps that file read-only: loader processes,
Lightning ranks and Ray workers share one copy in the page cache, and a forked loader process does
not turn the tables into copy-on-write pages of the training process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mltrain.data.cache import reserve
from mltrain.errors import DataError
from mltrain.internals.torchvision import KernelOverride

log = logging.getLogger(__name__)

_VALUES = 1 << 24  # every 24-bit pixel value
_SIDE = 4096  # a 4096 x 4096 image holds each value once
_ROWS_PER_CHUNK = 256  # build in 1M-pixel pieces: little temporary memory
_LOW_BYTE, _HIGH_BYTES, _PIXEL = np.uint32(0xFF), np.uint32(0xFFFF00), np.uint32(0xFFFFFF)
_PROBE = np.arange(0, _VALUES, 4099, dtype=np.uint32)  # values re-checked against PIL on every load


def tables_path(cache_root: Path) -> Path:
    """The table file for the installed Pillow (its conversions define the tables)."""
    return cache_root / "hue-tables" / f"pillow-{PIL.__version__}.u32"


def ensure_hue_tables(cache_root: Path) -> Path | None:
    """The path of valid tables under ``cache_root``, built (≈ 1 s) when missing or damaged.

    None when the cache folder cannot be written: the hue step then falls back to PIL's conversions
    (same result, slower).
    """
    path = tables_path(cache_root)
    if _valid(path):
        return path
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _build(partial)
        partial.replace(path)  # atomic: a reader sees no file or a whole one
    except (OSError, DataError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("cannot write the hue tables to %s (%s); using PIL's slower hue conversion", path, exc)
        return None
    return path


def adjust_hue(image: Image.Image, hue_factor: float, tables: Path | None) -> Image.Image:
    """``torchvision.transforms.v2.functional.adjust_hue`` on a PIL image: same output, faster on RGB."""
    if tables is None or image.mode != "RGB" or sys.byteorder != "little" or not -0.5 <= hue_factor <= 0.5:
        return F.adjust_hue(image, hue_factor=hue_factor)  # also raises torchvision's own errors
    to_hsv, to_rgb = _load(tables)
    codes = np.frombuffer(image.tobytes("raw", "RGBX"), dtype=np.uint32) & _PIXEL
    hsv = to_hsv.take(codes)
    # torchvision adds np.int32(hue_factor * 255) cast to uint8 to H, wrapping; the same in integers.
    shift = np.uint32(int(hue_factor * 255) % 256)
    hsv = (hsv & _HIGH_BYTES) | ((hsv + shift) & _LOW_BYTE)
    return Image.frombytes("RGB", image.size, to_rgb.take(hsv), "raw", "RGBX")


class ColorJitter(KernelOverride, v2.ColorJitter):
    """torchvision's ColorJitter (same parameters, same random draws, same output) with a table-driven hue."""

    def __init__(self, *args: float, tables: Path | None = None, **kwargs: float) -> None:
        super().__init__(*args, **kwargs)
        self.tables = tables  # a path, not the arrays: the transform pickles small into spawned workers

    def override_kernel(self, functional: Callable[..., Any], inpt: Any) -> Callable[..., Any] | None:
        # torchvision's own transform() draws the order and factors; only the hue kernel of PIL images is
        # swapped, for this transform alone (see KernelOverride for why not register_kernel).
        if functional is F.adjust_hue and isinstance(inpt, Image.Image):
            return functools.partial(adjust_hue, tables=self.tables)
        return None


# --- the table file ---------------------------------------------------------------------------------------
def _pack(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> uint32 ``c0 | c1 << 8 | c2 << 16``, the tables' index and value format."""
    wide = pixels.astype(np.uint32)
    return wide[:, 0] | (wide[:, 1] << 8) | (wide[:, 2] << 16)


def _unpack(codes: np.ndarray) -> bytes:
    return codes.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def _convert(codes: np.ndarray, source: str, target: str) -> np.ndarray:
    """PIL's own conversion of the pixel values ``codes`` from mode ``source`` to ``target``, packed."""
    image = Image.frombytes(source, (len(codes), 1), _unpack(codes))
    return _pack(np.asarray(image.convert(target)).reshape(-1, 3))


def _build(path: Path) -> None:
    reserve(path, 2 * _VALUES * 4, "the hue tables")
    out = np.memmap(path, dtype="<u4", mode="r+", shape=(2, _VALUES))
    chunk = _SIDE * _ROWS_PER_CHUNK
    for start in range(0, _VALUES, chunk):
        codes = np.arange(start, start + chunk, dtype=np.uint32)
        out[0, start : start + chunk] = _convert(codes, "RGB", "HSV")
        out[1, start : start + chunk] = _convert(codes, "HSV", "RGB")
    out.flush()
    del out


def _valid(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size != 2 * _VALUES * 4:
        return False
    to_hsv, to_rgb = _open(path)
    good = np.array_equal(to_hsv[_PROBE], _convert(_PROBE, "RGB", "HSV")) and np.array_equal(
        to_rgb[_PROBE], _convert(_PROBE, "HSV", "RGB")
    )
    if not good:
        log.warning("hue tables %s do not match Pillow's conversions (damaged), rebuilding", path)
    return good


def _open(path: Path) -> tuple[np.ndarray, np.ndarray]:
    tables = np.memmap(path, dtype="<u4", mode="r", shape=(2, _VALUES))
    return tables[0], tables[1]


@functools.cache
def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The two tables, memory-mapped once per process."""
    return _open(path)
