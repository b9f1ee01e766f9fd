"""The data a run trained on, as an MLflow dataset input (``mlflow.data``): the UI's Dataset column and lineage.

One input per run: the data folder's name, its fingerprint as the digest (it changes when any file of any
split changes, see :attr:`mltrain.data.module.Food11Data.fingerprint`), the folder as a local source, and
as profile the usable images per split and class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.data.dataset import Dataset

from mltrain.data.layout import CLASS_NAMES
from mltrain.internals.mlflow import local_dataset_source

CONTEXT = "training"
"""The input's ``mlflow.data.context`` tag (the profile covers all three splits: the run used each)."""
DIGEST_LENGTH = 16
"""Hex digits of the fingerprint kept as the digest (MLflow stores at most 36; the profile has all 64)."""


class Food11Dataset(Dataset):
    """A Food-11 folder as MLflow sees it: metadata only, the images stay where they are.

    Args:
        root: The data folder.
        fingerprint: Its fingerprint (hex).
        class_counts: Usable images per class (in :data:`CLASS_NAMES` order) for each split.
        skipped: Files that were not usable images.
    """

    def __init__(self, root: Path, fingerprint: str, class_counts: dict[str, list[int]], skipped: int = 0) -> None:
        self._fingerprint = fingerprint
        self._class_counts = class_counts
        self._skipped = skipped
        super().__init__(source=local_dataset_source(root), name=root.name, digest=fingerprint[:DIGEST_LENGTH])

    def _compute_digest(self) -> str:  # MLflow's abstract hook for subclasses; unused: the digest is always given
        return self._fingerprint[:DIGEST_LENGTH]

    @property
    def profile(self) -> dict[str, Any]:
        splits = {
            split: {"images": sum(counts), "per_class": dict(zip(CLASS_NAMES, counts, strict=True))}
            for split, counts in self._class_counts.items()
        }
        return {
            "images": sum(split["images"] for split in splits.values()),
            "classes": len(CLASS_NAMES),
            "splits": splits,
            "skipped_images": self._skipped,
            "fingerprint": self._fingerprint,
        }

    @property
    def schema(self) -> None:
        return None

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def food11_dataset(data: Any) -> Food11Dataset:
    """The MLflow dataset of a :class:`~mltrain.data.module.Food11Data` after ``setup()``."""
    return Food11Dataset(Path(data.root), data.fingerprint, data.class_counts(), data.skipped_images)
