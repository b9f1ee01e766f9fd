"""What a finished training returns: where it was logged and how well the model did."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    """A finished training: where it was logged and how well the model did."""

    run_id: str | None
    experiment: str
    tracking_uri: str
    test_accuracy: float
    test_loss: float
    best_val_loss: float
    """The lowest validation loss of the fine-tuning phase (the epoch whose weights were kept and tested)."""
    epochs_run: int
    stopped_early: bool
    model_uri: str | None
    checkpoint: Path
    skipped_images: int
    wall_seconds: float
    class_accuracy: dict[str, float] = field(default_factory=dict)
    """Test accuracy of each class (its recall); NaN for a class without test images."""
    run_url: str | None = None
    """The run in the web app's model-training view, when the store has one reachable now (a tracking server,
    or a running ``mltrain ui``)."""

    def summary(self) -> str:
        """A few lines for people: run, accuracy, weakest classes, model location, how to look at it."""
        if self.run_id is None:  # a DDP worker (rank > 0); rank 0 prints the run
            return "worker process finished; rank 0 logged the run"
        lines = [
            f"run {self.run_id} in experiment '{self.experiment}' FINISHED after {self.epochs_run} epoch(s)"
            f"{' (early stop)' if self.stopped_early else ''} in {self.wall_seconds:.0f}s",
            f"test_accuracy {self.test_accuracy:.4f}  test_loss {self.test_loss:.4f}  "
            f"best fine-tune val_loss {self.best_val_loss:.4f}  skipped images {self.skipped_images}",
        ]
        weakest = sorted((value, name) for name, value in self.class_accuracy.items() if not math.isnan(value))[:3]
        if weakest:
            listed = ", ".join(f"{name} {value:.2f}" for value, name in weakest)
            lines.append(f"weakest classes: {listed} (per class: per_class.json, confusion_matrix.png)")
        lines += [
            f"model:      {self.model_uri}",
            f"checkpoint: {self.checkpoint}",
            f"tracking:   {self.tracking_uri}",
        ]
        if self.run_url:
            lines.append(f"the run:    {self.run_url}")
        elif self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
            lines.append("open the UI: mltrain ui")
        else:
            lines.append(f"open the UI: {self.tracking_uri}")
        return "\n".join(lines)
