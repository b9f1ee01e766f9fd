"""Per-class results of the test evaluation: which classes fail, and what they are taken for.

Every engine counts the test predictions into a confusion matrix (rows: true class, columns: predicted
class), each test image exactly once whatever the number of processes (see ``FitResult.confusion``). The
process that owns the run turns it into per-class numbers and files with :func:`record_class_report`:

* metrics ``test_class_accuracy/<class>`` at the test step (comparable across runs: ``mltrain compare``);
* ``per_class.json``, an MLflow table: images, correct, precision, recall (= accuracy) and F1 per class;
* ``confusion_matrix.png`` (class names on both axes) and ``confusion_matrix.json`` (the counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mltrain import metrics
from mltrain.data.layout import CLASS_NAMES
from mltrain.tracking.runlog import RunLog


@dataclass
class ClassReport:
    """Per-class numbers derived from a confusion matrix (rows: true class, columns: predicted class)."""

    confusion: np.ndarray
    class_names: Sequence[str] = CLASS_NAMES

    @classmethod
    def from_counts(cls, counts: Sequence[Sequence[int]]) -> ClassReport:
        matrix = np.asarray(counts, dtype=np.int64)
        if matrix.shape != (len(CLASS_NAMES), len(CLASS_NAMES)):
            raise ValueError(f"expected an {len(CLASS_NAMES)}x{len(CLASS_NAMES)} confusion matrix, got {matrix.shape}")
        return cls(matrix)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def support(self) -> np.ndarray:
        """Test images per true class."""
        return self.confusion.sum(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return np.diag(self.confusion)

    @property
    def recall(self) -> np.ndarray:
        """Per class: the share of its images predicted right (its accuracy); NaN without images."""
        return _ratio(self.correct, self.support)

    @property
    def precision(self) -> np.ndarray:
        """Per class: the share of the predictions of it that were right; NaN when never predicted."""
        return _ratio(self.correct, self.confusion.sum(axis=0))

    @property
    def f1(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 2 * self.precision * self.recall / (self.precision + self.recall)

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum() / max(self.total, 1))

    def class_accuracy(self) -> dict[str, float]:
        """``test_class_accuracy/<class>`` -> value, for the classes that have test images."""
        return {
            metrics.class_accuracy_key(name): float(value)
            for name, value in zip(self.class_names, self.recall, strict=True)
            if not math.isnan(value)
        }

    def table(self) -> dict[str, list[Any]]:
        """Column name -> values, one row per class (what ``per_class.json`` holds)."""
        return {
            "class": list(self.class_names),
            "images": self.support.tolist(),
            "correct": self.correct.tolist(),
            "precision": _rounded(self.precision),
            "recall (accuracy)": _rounded(self.recall),
            "f1": _rounded(self.f1),
            "most often taken for": [self._top_confusion(row) for row in range(len(self.class_names))],
        }

    def weakest(self, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` classes with the lowest accuracy (among those with test images), lowest first."""
        ranked = sorted(
            (value, name) for name, value in zip(self.class_names, self.recall, strict=True) if not math.isnan(value)
        )
        return [(name, float(value)) for value, name in ranked[:count]]

    def text(self) -> str:
        """The matrix as a text table (true class per row, predicted class per column, by index)."""
        width = max(3, len(str(int(self.confusion.max(initial=0)))))
        header = " " * 18 + " ".join(f"{index:>{width}}" for index in range(len(self.class_names))) + "  accuracy"
        lines = [header]
        for index, (name, row) in enumerate(zip(self.class_names, self.confusion, strict=True)):
            accuracy = self.recall[index]
            cells = " ".join(f"{int(count):>{width}}" for count in row)
            shown = "—" if math.isnan(accuracy) else f"{accuracy:.2f}"
            lines.append(f"{index:>2} {name[:15]:<15}{cells}  {shown:>8}")
        return "\n".join(lines)

    def figure(self) -> Any:
        """A matplotlib Figure: counts in the cells, colours by the share of each true class (row)."""
        from matplotlib.figure import Figure

        count = len(self.class_names)
        shares = self.confusion / np.maximum(self.support[:, None], 1)
        figure = Figure(figsize=(9.5, 8), dpi=100, layout="constrained")
        ax = figure.subplots()
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(count), labels=self.class_names, rotation=45, ha="right")
        ax.set_yticks(range(count), labels=self.class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        for row in range(count):
            for column in range(count):
                value = int(self.confusion[row, column])
                if value:
                    color = "white" if shares[row, column] > 0.5 else "black"
                    ax.text(column, row, str(value), ha="center", va="center", color=color, fontsize=9)
        figure.colorbar(image, ax=ax, label="share of the true class")
        ax.set_title(f"test confusion matrix: {self.total} images, accuracy {self.accuracy:.3f}")
        return figure

    def _top_confusion(self, row: int) -> str:
        others = [(int(count), column) for column, count in enumerate(self.confusion[row]) if column != row and count]
        if not others:
            return ""
        count, column = max(others)
        return f"{self.class_names[column]} ({count})"


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 4) for v in values]


def record_class_report(tracker: RunLog, confusion: Sequence[Sequence[int]], step: int) -> ClassReport:
    """Log the per-class metrics, table and pictures of a test evaluation into the tracker's run.

    Args:
        tracker: The run's logger.
        confusion: The test confusion matrix (rows: true class).
        step: The step of the test metrics (the last epoch).
    """
    report = ClassReport.from_counts(confusion)
    tracker.log_metrics(report.class_accuracy(), step=step)
    tracker.log_table(report.table(), metrics.PER_CLASS_TABLE)
    counts = {
        "classes": list(report.class_names),
        "rows": "true class",
        "columns": "predicted class",
        "counts": report.confusion.tolist(),
    }
    tracker.log_text(json.dumps(counts, indent=1), metrics.CONFUSION_MATRIX_JSON)
    tracker.log_figure(report.figure(), metrics.CONFUSION_MATRIX_PNG)
    return report
