"""``train()``: the Python API behind ``mltrain train`` — data, MLflow run, engine, summary."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mltrain
from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.errors import TrainingInterrupted


@dataclass
class TrainResult:
    """A finished training: where it was logged and how well the model did."""

    run_id: str | None
    experiment: str
    tracking_uri: str
    test_accuracy: float
    test_loss: float
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    model_uri: str | None
    checkpoint: Path
    skipped_images: int
    wall_seconds: float

    def summary(self) -> str:
        """A few lines for people: run, accuracy, model location, how to look at it."""
        if self.run_id is None:  # a DDP worker (rank > 0); rank 0 prints the run
            return "worker process finished; rank 0 logged the run"
        ui = (
            "mltrain ui"
            if self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri
            else None
        )
        lines = [
            f"run {self.run_id} in experiment '{self.experiment}' FINISHED after {self.epochs_run} epoch(s)"
            f"{' (early stop)' if self.stopped_early else ''} in {self.wall_seconds:.0f}s",
            f"test_accuracy {self.test_accuracy:.4f}  test_loss {self.test_loss:.4f}  "
            f"best val_loss {self.best_val_loss:.4f}  skipped images {self.skipped_images}",
            f"model:      {self.model_uri}",
            f"checkpoint: {self.checkpoint}",
            f"tracking:   {self.tracking_uri}",
            f"open the UI: {ui}" if ui else f"open the UI: {self.tracking_uri}",
        ]
        return "\n".join(lines)


def train(
    config: TrainConfig | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    experiment: str = metrics.EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a Food-11 classifier and track it in MLflow.

    Args:
        config: The configuration; default: the lab's defaults (or, when resuming, the checkpoint's).
        data_dir: Food-11 folder; default ``FOOD11_DATA_DIR`` or ``./Food-11``.
        experiment: MLflow experiment name.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        run_name: Name for a new run.
        resume: A checkpoint file or folder (``<output_dir>/<run_id>``) to continue, in its own run.
        progress: Show progress bars.
    """
    import mlflow

    from mltrain.data.module import Food11Data
    from mltrain.engines import get_fit
    from mltrain.engines.checkpoint import load_checkpoint
    from mltrain.engines.common import is_rank_zero
    from mltrain.tracking import RunTracker, git_state, gpu_info_text

    started = time.perf_counter()
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if config is None:
        config = TrainConfig.from_mapping(checkpoint["state"].config) if checkpoint else TrainConfig()
    fit = get_fit(config.engine)
    # Data problems surface here, before any MLflow run exists.
    data = Food11Data(data_dir, config, progress=progress).setup()
    commit, dirty = git_state(Path.cwd())
    tags = {"mltrain.version": mltrain.__version__, "mltrain.engine": config.engine}
    if commit:
        tags.update({"mlflow.source.git.commit": commit, "mltrain.git_commit": commit, "mltrain.git_dirty": str(dirty)})
    tracker = RunTracker(
        experiment=experiment,
        tracking_uri=tracking_uri,
        run_id=checkpoint["state"].run_id if checkpoint else None,
        run_name=run_name,
        # A DDP worker re-runs this command (Lightning's launcher): only rank 0 may create or log the run.
        enabled=is_rank_zero(),
        tags=tags,
    )
    with _sigterm_as_exception(), tracker:
        run_dir = Path(config.output_dir) / str(tracker.run_id)
        if checkpoint is None and tracker.enabled:
            tracker.log_params(config.to_params())
            tracker.log_text(gpu_info_text(), metrics.GPU_INFO_ARTIFACT)
            tracker.log_artifact(config.save_yaml(run_dir / metrics.CONFIG_ARTIFACT))
            tracker.log_metrics({metrics.SKIPPED_IMAGES: data.skipped_images}, step=0)
        result = fit(config, data, tracker, run_dir, resume=checkpoint, progress=progress)
    return TrainResult(
        run_id=tracker.run_id,
        experiment=experiment,
        tracking_uri=mlflow.get_tracking_uri(),
        test_accuracy=result.test_accuracy,
        test_loss=result.test_loss,
        best_val_loss=result.best_val_loss,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        model_uri=result.model_uri,
        checkpoint=result.checkpoint,
        skipped_images=data.skipped_images,
        wall_seconds=time.perf_counter() - started,
    )


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into TrainingInterrupted in the main thread, so the run ends KILLED, not RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
