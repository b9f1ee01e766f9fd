"""The Lightning engine: the plain engine's two-phase training as a LightningModule, on one or several devices.

It adapts, never copies: the model is :func:`mltrain.model.build_model`, batches come from
:class:`~mltrain.data.module.Food11Data` and reach the model through
:func:`~mltrain.data.transforms.to_model_input`, and every metric name comes from :mod:`mltrain.metrics`.

* :mod:`.module` — the LightningModule and DataModule; they know nothing about where they run;
* :mod:`.callbacks` — two phases, best weights, early stopping, epoch seeding, checkpoints and MLflow;
* :mod:`.recipe` — the Trainer, given a strategy: Lightning's DDP here, Ray's in a Ray Train worker.

Several local devices mean DDP (gloo on CPUs, NCCL on GPUs) through Lightning's default launcher, which
starts ranks 1..N-1 by re-running the command that started rank 0. Rank 0 stays the original process, so
the MLflow run and its system metrics live in one process: one training, one run. The other ranks get a
NullLogger and never touch MLflow. Metrics are logged by the tracker from :class:`.callbacks.EpochEnd`
(not ``mlflow.pytorch.autolog``, which would log an epoch again after a restart and re-log params that a
resume may change), so a Lightning run has exactly the plain engine's params and metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.engines.common import EpochHook, FitResult
from mltrain.engines.lightning.recipe import LightningRecipe
from mltrain.tracking.runlog import RunLog

__all__ = ["LightningRecipe", "fit"]


def fit(
    config: TrainConfig,
    data: Food11Data,
    tracker: RunLog,
    checkpoint_dir: str | Path,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> FitResult:
    """Train, validate, early-stop and test one model with Lightning, logging through ``tracker``.

    Args:
        config: The resolved configuration (``devices``/``accelerator`` pick the processes).
        data: Food-11 data after ``setup()``.
        tracker: The run to log into (a NullLogger on ranks that do not log).
        checkpoint_dir: Where ``best.ckpt``, ``last.ckpt`` and ``checkpoint.pt`` are written.
        resume: A checkpoint from :func:`mltrain.engines.checkpoint.load_checkpoint`; training continues from
            ``last.ckpt`` in ``checkpoint_dir``.
        on_epoch_end: Called on every rank after each epoch with (epoch, metrics, checkpoint path).
        progress: Show a progress bar over batches (on a terminal).
    """
    recipe = LightningRecipe(config, data, tracker, Path(checkpoint_dir), progress, on_epoch_end, resume=resume)
    return recipe.run()
