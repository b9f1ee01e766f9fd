"""A small synthetic Food-11 look-alike whose classes a model can learn, for demos and tests."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mltrain.data.layout import CLASS_NAMES, SPLITS, class_dir_name, count_per_class
from mltrain.errors import DataError


def parse_image_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"512x384"`` -> (512, 384); ``"96"`` or 96 -> (96, 96)."""
    if isinstance(text, tuple):
        width, height = text
    elif isinstance(text, int):
        width = height = text
    else:
        parts = str(text).lower().split("x")
        try:
            width, height = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
        except ValueError:
            width = height = 0
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise DataError(f"image size {text!r} must be WIDTHxHEIGHT or one number, each 8..4096 pixels")
    return width, height


def synthesize(
    dest: str | os.PathLike[str],
    per_class: int = 40,
    image_size: str | int | tuple[int, int] = (512, 384),
    seed: int = 0,
    eval_per_class: int | None = None,
) -> dict[str, list[int]]:
    """Write JPEGs in the Food-11 layout and return the count per split and class.

    Each class has its own hue and shape (neighbouring hues get different shapes, so colour
    jitter alone cannot confuse them); position, size, background and noise vary per image.

    Args:
        dest: Folder to create; existing files with the same names are overwritten.
        per_class: Training images per class.
        image_size: ``WIDTHxHEIGHT`` of every image.
        seed: Seed; the same seed writes the same files.
        eval_per_class: Validation and evaluation images per class (default ``max(2, per_class // 4)``).
    """
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    width, height = parse_image_size(image_size)
    held_out = eval_per_class if eval_per_class is not None else max(2, per_class // 4)
    rng = np.random.default_rng(seed)
    root = Path(dest)
    for split in SPLITS:
        count = per_class if split == "training" else held_out
        for label in range(len(CLASS_NAMES)):
            folder = root / split / class_dir_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = _draw(label, width, height, rng)
                image.save(folder / f"{label}_{index}.jpg", quality=90)
    return count_per_class(root)


def _draw(label: int, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    hue = label / len(CLASS_NAMES)
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.9))
    background = tuple(int(v) for v in rng.integers(20, 90, size=3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    size = int(min(width, height) * rng.uniform(0.35, 0.6))
    cx = int(rng.uniform(size / 2, width - size / 2))
    cy = int(rng.uniform(size / 2, height - size / 2))
    box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
    shape = label % 3
    if shape == 0:
        draw.ellipse(box, fill=colour)
    elif shape == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    pixels = np.asarray(image, dtype=np.int16)
    noise = rng.normal(0, 12, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
