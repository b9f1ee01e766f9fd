"""The Food-11 folder layout: three split folders, each with ``class_00`` … ``class_10``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mltrain.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "Bread",
    "Dairy product",
    "Dessert",
    "Egg",
    "Fried food",
    "Meat",
    "Noodles/Pasta",
    "Rice",
    "Seafood",
    "Soup",
    "Vegetable/Fruit",
)
SPLITS: tuple[str, ...] = ("training", "validation", "evaluation")


def class_dir_name(label: int) -> str:
    """Folder name of class ``label``: 3 -> ``class_03``."""
    return f"class_{label:02d}"


@dataclass(frozen=True)
class Sample:
    """One file of a split and its class index."""

    path: Path
    label: int


def check_layout(root: str | os.PathLike[str], splits: tuple[str, ...] = SPLITS) -> None:
    """Fail fast, naming what was expected and what was found, unless ``root`` is a Food-11 tree."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(
            f"data directory {base} does not exist; expected a folder with {', '.join(SPLITS)} "
            "(create one with `mltrain data prepare --dest DIR` or `mltrain data synth --dest DIR`, "
            "then pass --data DIR or set FOOD11_DATA_DIR)"
        )
    missing = [split for split in splits if not (base / split).is_dir()]
    if missing:
        found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            f"data directory {base} is missing split folder(s) {', '.join(missing)}; "
            f"expected {', '.join(splits)}, found {', '.join(found) or 'no folders'}"
        )
    expected = [class_dir_name(k) for k in range(len(CLASS_NAMES))]
    for split in splits:
        found = sorted(p.name for p in (base / split).iterdir() if p.is_dir() and not p.name.startswith("."))
        if found != expected:
            loose = sum(1 for p in (base / split).iterdir() if p.is_file())
            detail = f"found {len(found)} class folder(s)" + (f": {', '.join(found[:12])}" if found else "")
            if loose:
                detail += f" and {loose} loose file(s) (run `mltrain data prepare --dest {base}` to organise them)"
            raise DataError(
                f"{base / split} must hold exactly {len(expected)} class folders "
                f"{expected[0]} … {expected[-1]}; {detail}"
            )


def list_samples(root: str | os.PathLike[str], split: str) -> list[Sample]:
    """All image files of a split, sorted, with labels from their class folder."""
    samples: list[Sample] = []
    for label in range(len(CLASS_NAMES)):
        folder = Path(root) / split / class_dir_name(label)
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                samples.append(Sample(path, label))
    return samples


def count_per_class(root: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Number of files per class folder for each split that exists."""
    counts: dict[str, list[int]] = {}
    for split in SPLITS:
        split_dir = Path(root) / split
        if split_dir.is_dir():
            counts[split] = [
                sum(1 for p in (split_dir / class_dir_name(k)).glob("*") if p.is_file())
                if (split_dir / class_dir_name(k)).is_dir()
                else 0
                for k in range(len(CLASS_NAMES))
            ]
    return counts
