"""The Lightning callbacks that give the plain engine's two-phase training, its checkpoints and its logging.

They know nothing about where the trainer runs: the process's rank comes from the trainer, and MLflow is
reached through the logger handed in (a NullLogger on ranks that do not log).

* :class:`TwoPhaseFinetuning` (a ``BackboneFinetuning``) freezes the backbone for ``initial_epochs``, then
  adds it to the optimizer; phase 2 starts as in the plain engine: Adam state reset, head and backbone at
  ``fine_tune_lr``.
* :class:`BestCheckpoint` (a ``ModelCheckpoint``) keeps the fine-tuning weights with the lowest val_loss and
  :class:`FineTuneEarlyStopping` stops after ``patience`` fine-tuning epochs without a lower one; like the
  plain engine, both ignore phase 1.
* :class:`EpochSeed` reseeds every process from (seed, epoch, rank) when an epoch starts.
* :class:`EpochMetrics` adds ``epoch_time``, ``trainable_params`` and ``data_wait_fraction`` to what the steps
  log; :class:`EpochEnd` then writes ``last.ckpt`` and ``checkpoint.pt``, logs the epoch to MLflow (after
  the checkpoint: a stop between the two is repaired from the checkpoint's history on resume), prints the
  epoch line and calls the epoch hook.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, Callback, Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.profilers import Profiler

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.data.sampling import seed_epoch
from mltrain.engines.checkpoint import CHECKPOINT_FILE, TrainState, save_checkpoint
from mltrain.engines.common import DataWaitAdvice, EpochHook, format_epoch, phase_of, weights_copy
from mltrain.engines.lightning.module import classifier
from mltrain.internals.lightning import is_batch_fetch
from mltrain.model import count_trainable, set_backbone_trainable
from mltrain.tracking.runlog import RunLog

BEST_CHECKPOINT = "best"
"""File stem of the best fine-tuning weights (``best.ckpt``)."""
LAST_CHECKPOINT = "last.ckpt"
"""Lightning's full training state after the latest epoch; a resume continues from it."""


def _constant(_epoch: int) -> float:
    return 1.0


class TwoPhaseFinetuning(BackboneFinetuning):
    """Backbone frozen for ``initial_epochs``; then head and backbone train at ``fine_tune_lr``.

    Differences from Lightning's BackboneFinetuning, each to match the plain engine:

    * freezing uses :func:`mltrain.model.set_backbone_trainable`, so BatchNorm statistics keep updating in
      phase 1 and ``trainable_params`` is the head alone;
    * at the switch the head's lr becomes ``fine_tune_lr`` too and Adam's moments are reset: the plain engine
      starts phase 2 with a fresh Adam over everything;
    * the backbone is frozen in ``on_fit_start``, after DDP has wrapped the model: DDP only synchronises
      parameters that require gradients when it is built, so a backbone frozen earlier would never have its
      gradients averaged across processes after unfreezing.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(
            unfreeze_backbone_at_epoch=config.initial_epochs,
            lambda_func=_constant,
            backbone_initial_lr=config.fine_tune_lr,
            should_align=False,
            train_bn=True,
        )
        self.fine_tune_lr = config.fine_tune_lr

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Nothing here: BaseFinetuning would freeze before DDP wraps the model (see the class docstring)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.freeze_before_training(pl_module)
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        # A training resumed in phase 2 has unfrozen before (its restored state holds the backbone lr).
        set_backbone_trainable(classifier(pl_module), self.previous_backbone_lr is not None)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        super().finetune_function(pl_module, epoch, optimizer)
        if epoch == self.unfreeze_backbone_at_epoch:
            optimizer.param_groups[0]["lr"] = self.fine_tune_lr
            optimizer.state.clear()  # Adam starts afresh for every parameter, as a new optimizer would


class _FineTuneOnly:
    """Mixin: the callback acts only from ``start_epoch`` on, i.e. in the fine-tuning phase."""

    start_epoch: int

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_train_epoch_end(trainer, pl_module)  # type: ignore[misc]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_validation_end(trainer, pl_module)  # type: ignore[misc]


class FineTuneEarlyStopping(_FineTuneOnly, EarlyStopping):
    """EarlyStopping on val_loss that counts fine-tuning epochs only, as the plain engine does.

    Args:
        start_epoch: The first fine-tuning epoch (``initial_epochs``).
        patience: Fine-tuning epochs without a lower val_loss before stopping.
    """

    def __init__(self, start_epoch: int, patience: int) -> None:
        super().__init__(monitor=metrics.VAL_LOSS, mode="min", patience=patience)
        self.start_epoch = start_epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The configured patience wins over the checkpointed one: a resume may raise it to train on.
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience
        if self.wait_count < patience:
            self.stopped_epoch = 0

    @property
    def stopped(self) -> bool:
        """True once the fine-tuning epochs without improvement reached the patience."""
        return self.stopped_epoch > 0


class BestCheckpoint(_FineTuneOnly, ModelCheckpoint):
    """``best.ckpt``: the fine-tuning weights with the lowest val_loss, and the epoch that reached it.

    Args:
        dirpath: Folder for the checkpoint.
        start_epoch: The first fine-tuning epoch (``initial_epochs``); earlier epochs never count as best.
    """

    def __init__(self, dirpath: Path, start_epoch: int) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=BEST_CHECKPOINT,
            monitor=metrics.VAL_LOSS,
            mode="min",
            save_top_k=1,
            enable_version_counter=False,  # overwrite best.ckpt on each improvement
        )
        self.start_epoch = start_epoch
        self.best_epoch = -1
        self._trainer: pl.Trainer | None = None
        self._score_seen: float | None = None  # the best score best_epoch belongs to

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def best_val_loss(self) -> float:
        """The lowest fine-tuning val_loss, NaN when no fine-tuning epoch ran."""
        return float(self.best_model_score) if self.best_model_score is not None else math.nan

    def state_dict(self) -> dict[str, Any]:
        # Called as a checkpoint is written. ModelCheckpoint sets a new best score and then writes best.ckpt, so the
        # first state taken after the score changed is best.ckpt's, in this epoch: the file must hold its epoch,
        # because trainer.test(ckpt_path=best) restores callback state from that very file.
        score = self.best_val_loss()
        if self._trainer is not None and not math.isnan(score) and score != self._score_seen:
            self.best_epoch, self._score_seen = self._trainer.current_epoch, score
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The checkpoint folder may have moved (copied to another machine, handed back by Ray): its files are
        # now in this callback's folder.
        from mltrain.internals.lightning import relocated_checkpoint_state

        moved = relocated_checkpoint_state(state_dict, self.dirpath) if self.dirpath is not None else state_dict
        super().load_state_dict(moved)
        self.best_epoch = state_dict.get("best_epoch", -1)
        self._score_seen = self.best_val_loss()


class EpochSeed(Callback):
    """Reseeds this process from (seed, epoch, rank) as each epoch starts: dropout is the same after a restart.

    Args:
        seed: The training seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_epoch(self.seed, trainer.current_epoch, trainer.global_rank)


class DataWaitTimer(Profiler):
    """Seconds spent waiting for batches: the profiler actions Lightning wraps each fetch in."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._started: dict[str, float] = {}

    def start(self, action_name: str) -> None:
        if is_batch_fetch(action_name):
            self._started[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        started = self._started.pop(action_name, None)
        if started is not None:
            self.seconds += time.perf_counter() - started


class EpochMetrics(Callback):
    """Adds epoch_time, trainable_params and data_wait_fraction to the epoch's metrics (averaged over processes).

    Args:
        timer: The trainer's profiler, counting batch-wait seconds.
    """

    def __init__(self, timer: DataWaitTimer) -> None:
        self.timer = timer
        self._started = 0.0
        self._waited = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        self._waited = self.timer.seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._started  # training and validation, as in the plain engine
        values = {
            metrics.EPOCH_TIME: elapsed,
            metrics.TRAINABLE_PARAMS: float(count_trainable(classifier(pl_module))),
            metrics.DATA_WAIT_FRACTION: (self.timer.seconds - self._waited) / max(elapsed, 1e-9),
            metrics.WORKERS: float(trainer.world_size),  # the same on every rank: the mean is the count
        }
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)


class EpochEnd(Checkpoint):
    """After each epoch: ``last.ckpt`` and ``checkpoint.pt``, then MLflow, the epoch line and the epoch hook.

    ``checkpoint.pt`` is what a resume reads first (config, run id, history, best weights); Lightning's own
    state continues from ``last.ckpt`` in the same folder. As a Checkpoint callback it runs after early
    stopping and the best checkpoint have seen the epoch.

    Args:
        dirpath: The training's checkpoint folder.
        config: The resolved configuration.
        tracker: The run's logger (a NullLogger on ranks that do not log).
        state: Progress restored from a checkpoint, or a fresh one.
        best_weights: The best weights restored from a checkpoint, if any.
        best: The best-checkpoint callback.
        stopper: The early-stopping callback.
        on_epoch_end: Called on every rank with (epoch, metrics, path of checkpoint.pt).
        advice: Checks each epoch's data wait on rank 0 (see :class:`~mltrain.engines.common.DataWaitAdvice`).
    """

    def __init__(
        self,
        dirpath: Path,
        config: TrainConfig,
        tracker: RunLog,
        state: TrainState,
        best_weights: dict[str, torch.Tensor] | None,
        best: BestCheckpoint,
        stopper: FineTuneEarlyStopping,
        on_epoch_end: EpochHook | None,
        advice: DataWaitAdvice | None = None,
    ) -> None:
        self.dirpath = dirpath
        self.config = config
        self.tracker = tracker
        self.state = state
        self.best_weights = best_weights
        self.best = best
        self.stopper = stopper
        self.on_epoch_end = on_epoch_end
        self.advice = advice

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # DDP workers of a new run do not know its id (nor the folder named after it): rank 0's folder counts.
        self.dirpath = Path(trainer.strategy.broadcast(str(self.dirpath)))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            self.tracker.training_started(trainer.current_epoch)  # the first batch is here

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        # Reading synchronised metrics is a collective: every rank reads them here, at the same point.
        values = {key: float(trainer.callback_metrics[key]) for key in metrics.EPOCH_METRICS}
        if self.best.best_epoch == epoch:
            self.best_weights = weights_copy(classifier(pl_module))
        self._update_state(epoch, values)
        trainer.save_checkpoint(self.dirpath / LAST_CHECKPOINT, weights_only=False)  # all ranks call; rank 0 writes
        index = self.dirpath / CHECKPOINT_FILE
        if trainer.is_global_zero:
            save_checkpoint(index, self.state, classifier(pl_module), None, self.best_weights)
            self.tracker.log_epoch(epoch, values)
            print(format_epoch(epoch, self.config.total_epochs, phase_of(self.config, epoch), values), flush=True)
            if self.advice is not None:
                self.advice.check(epoch, values)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, values, index)

    def _update_state(self, epoch: int, values: dict[str, float]) -> None:
        self.state.next_epoch = epoch + 1
        self.state.best_val_loss = self.best.best_val_loss() if self.best.best_model_path else math.inf
        self.state.best_epoch = self.best.best_epoch
        self.state.stale_epochs = int(self.stopper.wait_count)
        self.state.stopped_early = self.stopper.stopped
        self.state.history[epoch] = values
