"""The Lightning engine: the plain engine's two-phase training as a LightningModule, on one or several devices.

It adapts, never copies: the model is :func:`mltrain.model.build_model`, batches come from
:class:`~mltrain.data.module.Food11Data` and reach the model through
:func:`~mltrain.data.transforms.to_model_input`, and every metric name comes from :mod:`mltrain.metrics`.
Lightning supplies the loop and these callbacks:

* :class:`TwoPhaseFinetuning` (a ``BackboneFinetuning``) freezes the backbone for ``initial_epochs``, then
  adds it to the optimizer. Phase 2 starts as in the plain engine: Adam state reset, head and backbone at
  ``fine_tune_lr``.
* :class:`BestCheckpoint` (a ``ModelCheckpoint``) keeps the fine-tuning weights with the lowest val_loss and
  :class:`FineTuneEarlyStopping` stops after ``patience`` fine-tuning epochs without a lower one; like the
  plain engine, both ignore phase 1.
* :class:`EpochMetrics` adds ``epoch_time``, ``trainable_params`` and ``data_wait_fraction`` to what the steps
  log; :class:`ResumePoint` writes ``last.ckpt`` (what ``--resume`` continues from) and mltrain's
  ``checkpoint.pt`` after every epoch.

Several devices mean DDP (gloo on CPUs, NCCL on GPUs) through Lightning's default launcher, which starts
ranks 1..N-1 by re-running the command that started rank 0. Rank 0 stays the original process, so the
MLflow run, ``mlflow.pytorch.autolog`` and system metrics all live in one process: one training, one run.
Workers get a disabled tracker (see :func:`mltrain.engines.common.is_rank_zero`) and never touch MLflow.

MLflow: autolog logs everything in ``trainer.callback_metrics`` once per epoch at step = epoch (0-based),
which is exactly the shared vocabulary, and ``test_loss``/``test_accuracy`` after testing, so a Lightning run
has the plain engine's metric keys, no more, no fewer. Its params are the plain engine's (the config) plus
autolog's own (:func:`autolog_param_keys`); the one key both log, ``lr``, has the same value. The best
checkpoint's weights are logged as ``food11`` at the end (the plain engine logs each improvement as it happens).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BackboneFinetuning, Callback, Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.profilers import Profiler
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from torch import nn
from torch.utils.data import DataLoader

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.data.transforms import to_model_input
from mltrain.engines.checkpoint import CHECKPOINT_FILE, TrainState, save_checkpoint
from mltrain.engines.common import (
    EpochHook,
    FitResult,
    autocast_dtype,
    format_epoch,
    keep_host_memory,
    phase_of,
    prepare_model,
    select_device,
)
from mltrain.errors import ConfigError, TrainingInterrupted
from mltrain.model import backbone, build_model, count_trainable, head, set_backbone_trainable
from mltrain.tracking import RunTracker

TRAIN, VAL, TEST = "train", "val", "test"
STAGE_METRICS = {
    TRAIN: (metrics.TRAIN_LOSS, metrics.TRAIN_ACCURACY),
    VAL: (metrics.VAL_LOSS, metrics.VAL_ACCURACY),
    TEST: (metrics.TEST_LOSS, metrics.TEST_ACCURACY),
}
BEST_CHECKPOINT = "best"
"""File stem of the best fine-tuning weights (``best.ckpt``)."""
LAST_CHECKPOINT = "last.ckpt"
"""Lightning's full training state after the latest epoch; ``--resume`` continues from it."""
_EARLY_STOPPING_PARAMS = ("monitor", "mode", "patience", "min_delta", "stopped_epoch")
_DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def fit(
    config: TrainConfig,
    data: Food11Data,
    tracker: RunTracker,
    checkpoint_dir: str | Path,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> FitResult:
    """Train, validate, early-stop and test one model with Lightning, logging through ``tracker``.

    Args:
        config: The resolved configuration (``devices``/``accelerator`` pick the processes).
        data: Food-11 data after ``setup()``.
        tracker: The run to log into (already started; a disabled tracker on ranks other than 0).
        checkpoint_dir: Where ``best.ckpt``, ``last.ckpt`` and ``checkpoint.pt`` are written.
        resume: A checkpoint from :func:`mltrain.engines.checkpoint.load_checkpoint`; training continues from
            ``last.ckpt`` in ``checkpoint_dir``.
        on_epoch_end: Called on every rank after each epoch with (epoch, metrics, checkpoint path).
        progress: Show a progress bar over batches (on a terminal).
    """
    return LightningRecipe(config, data, tracker, Path(checkpoint_dir), progress, on_epoch_end).run(resume)


class LightningRecipe:
    """setup (module, callbacks, trainer) -> fit -> test with the best weights -> log the model."""

    def __init__(
        self,
        config: TrainConfig,
        data: Food11Data,
        tracker: RunTracker,
        checkpoint_dir: Path,
        progress: bool,
        on_epoch_end: EpochHook | None,
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.checkpoint_dir = checkpoint_dir
        self.device = select_device(config)
        keep_host_memory(config)
        pl.seed_everything(config.seed, verbose=False)  # also seeds DistributedSampler shuffling on every rank
        self.module = Food11Module(config)
        self.datamodule = Food11DataModule(data)
        self.best = BestCheckpoint(checkpoint_dir, config.initial_epochs)
        self.stopper = FineTuneEarlyStopping(config.initial_epochs, patience=config.patience)
        self.timer = DataWaitTimer()
        callbacks = [
            TwoPhaseFinetuning(config),
            EpochMetrics(self.timer, config),
            self.stopper,
            self.best,  # the first checkpoint callback is what ckpt_path="best" refers to
            ResumePoint(checkpoint_dir, config, tracker.run_id, self.best, self.stopper, on_epoch_end),
        ]
        self.trainer = self._setup_trainer(callbacks, progress)

    def _setup_trainer(self, callbacks: list[Callback], progress: bool) -> pl.Trainer:
        processes = _process_count(self.config, self.device)
        try:
            return pl.Trainer(
                accelerator=_ACCELERATORS[self.device.type],
                devices=self.config.devices,
                strategy=_strategy(self.config, self.device, processes),
                precision=_precision(self.config, self.device),
                max_epochs=self.config.total_epochs,
                callbacks=callbacks,
                profiler=self.timer,
                logger=False,  # MLflow gets the metrics through autolog, into the tracker's run
                num_sanity_val_steps=0,  # a sanity pass would log val metrics before epoch 0
                enable_progress_bar=progress and sys.stderr.isatty(),
                enable_model_summary=False,  # autolog stores it as model_summary.txt
                default_root_dir=self.checkpoint_dir,
            )
        except MisconfigurationException as exc:
            raise ConfigError(
                f"lightning cannot train with accelerator={self.config.accelerator} devices={self.config.devices}: "
                f"{exc}"
            ) from None

    # --- the run ---------------------------------------------------------------------------------------
    def run(self, resume: dict[str, Any] | None = None) -> FitResult:
        resume_from = self._resume_path() if resume is not None else None
        with _autologging(_tracker_is_active(self.tracker)), _ddp_variables_restored(), warnings.catch_warnings():
            # The run folder already holds config.yaml (and checkpoint.pt when resuming): expected, not a problem.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            _call(self.trainer, self.trainer.fit, self.module, datamodule=self.datamodule, ckpt_path=resume_from)
            # Read now: testing from best.ckpt restores every callback's state as it was when that file was saved.
            result = self._fit_result()
            tested = _call(
                self.trainer,
                self.trainer.test,
                self.module,
                datamodule=self.datamodule,
                ckpt_path=self.best.best_model_path or None,  # none without a fine-tuning epoch: the final weights
                verbose=False,
            )
        result.test_loss = float(tested[0][metrics.TEST_LOSS])
        result.test_accuracy = float(tested[0][metrics.TEST_ACCURACY])
        if result.stopped_early and self.trainer.is_global_zero:
            print(f"early stopping: no lower val_loss for {self.config.patience} epoch(s)", flush=True)
        if self.trainer.is_global_zero:
            result.model_uri = self.tracker.log_model(
                self._plain_model(), self.config.image_size, step=max(result.best_epoch, 0)
            )
        return result

    def _resume_path(self) -> Path:
        last = self.checkpoint_dir / LAST_CHECKPOINT
        if not last.is_file():
            raise ConfigError(f"cannot resume: {last} does not exist (the lightning engine continues from it)")
        return last

    def _fit_result(self) -> FitResult:
        """What fitting produced; the test numbers and the model URI are filled in afterwards."""
        best_val_loss, best_epoch = self.best.best_val_loss(), self.best.best_epoch
        if not self.best.best_model_path:  # total_epochs == initial_epochs: the final weights are the model
            best_val_loss = float(self.trainer.callback_metrics.get(metrics.VAL_LOSS, math.nan))
            best_epoch = self.trainer.current_epoch - 1
        return FitResult(
            epochs_run=self.trainer.current_epoch,
            best_epoch=best_epoch,
            best_val_loss=best_val_loss,
            test_loss=math.nan,
            test_accuracy=math.nan,
            model_uri=None,
            stopped_early=self.stopper.stopped_epoch > 0,
            checkpoint=self.checkpoint_dir / CHECKPOINT_FILE,
        )

    def _plain_model(self) -> nn.Module:
        """The tested (best) weights in a fresh torchvision model: no compile wrapper, loadable anywhere."""
        model = build_model(self.config.with_overrides(pretrained=False))
        model.load_state_dict(self.module.model.state_dict())
        return model


# --- the model and the data -------------------------------------------------------------------------------
class Food11Module(pl.LightningModule):
    """The shared model and loss as a LightningModule; each step logs loss and accuracy per epoch.

    Args:
        config: The resolved configuration.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.model = prepare_model(config)  # the same initial weights as the plain engine
        if config.compile:
            self.model.compile()  # in place: checkpoints keep the plain module's parameter names
        self.criterion = nn.CrossEntropyLoss()

    @property
    def backbone(self) -> nn.Module:
        """What BackboneFinetuning freezes and unfreezes (a property, so it is not registered twice)."""
        return backbone(self.model)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Phase 1 as in the plain engine: Adam over the head at lr; TwoPhaseFinetuning adds the backbone.
        return torch.optim.Adam(head(self.model).parameters(), lr=self.config.lr)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, TRAIN)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, VAL)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, TEST)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(to_model_input(images, self.device, channels_last=self.config.channels_last))
        loss = self.criterion(logits.float(), labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        loss_name, accuracy_name = STAGE_METRICS[stage]
        # Per-sample means over the epoch (weighted by batch size), averaged over all processes.
        self.log_dict(
            {loss_name: loss, accuracy_name: accuracy},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=labels.shape[0],
        )
        return loss


class Food11DataModule(pl.LightningDataModule):
    """Food11Data's loaders as Lightning asks for them; under DDP Lightning adds a DistributedSampler."""

    def __init__(self, data: Food11Data) -> None:
        super().__init__()
        self.data = data

    def train_dataloader(self) -> DataLoader:
        return self.data.train_dataloader(self._device())

    def val_dataloader(self) -> DataLoader:
        return self.data.val_dataloader(self._device())

    def test_dataloader(self) -> DataLoader:
        return self.data.test_dataloader(self._device())

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device


# --- callbacks --------------------------------------------------------------------------------------------
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
        set_backbone_trainable(pl_module.model, self.previous_backbone_lr is not None)

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

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # Called for each new best only (top-1, no "last"). Set before saving: the saved state must hold it,
        # because trainer.test(ckpt_path=best) restores callback state from this very file.
        self.best_epoch = trainer.current_epoch
        super()._save_checkpoint(trainer, filepath)

    def best_val_loss(self) -> float:
        """The lowest fine-tuning val_loss, NaN when no fine-tuning epoch ran."""
        return float(self.best_model_score) if self.best_model_score is not None else math.nan

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch", -1)


class DataWaitTimer(Profiler):
    """Seconds spent waiting for batches: Lightning wraps each fetch in a ``..._next`` profiler action."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._started: dict[str, float] = {}

    def start(self, action_name: str) -> None:
        if action_name.endswith("_next"):
            self._started[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        started = self._started.pop(action_name, None)
        if started is not None:
            self.seconds += time.perf_counter() - started


class EpochMetrics(Callback):
    """Logs epoch_time, trainable_params and data_wait_fraction with the epoch's metrics; prints the epoch line.

    Args:
        timer: The trainer's profiler, counting batch-wait seconds.
        config: The resolved configuration.
    """

    def __init__(self, timer: DataWaitTimer, config: TrainConfig) -> None:
        self.timer = timer
        self.config = config
        self._started = 0.0
        self._waited = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        self._waited = self.timer.seconds

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._started  # training and validation, as in the plain engine
        values = {
            metrics.EPOCH_TIME: elapsed,
            metrics.TRAINABLE_PARAMS: float(count_trainable(pl_module.model)),
            metrics.DATA_WAIT_FRACTION: (self.timer.seconds - self._waited) / max(elapsed, 1e-9),
        }
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)
        # Computing synchronised metrics is a collective: every rank reads them here, at the same point,
        # before the readers that run on rank 0 only (autolog, this print).
        logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if trainer.is_global_zero:
            epoch = trainer.current_epoch
            print(format_epoch(epoch, self.config.total_epochs, phase_of(self.config, epoch), logged), flush=True)


class ResumePoint(Checkpoint):
    """After each epoch: ``last.ckpt`` (Lightning's state), mltrain's ``checkpoint.pt``, the epoch hook.

    ``checkpoint.pt`` is what ``mltrain train --resume <folder>`` reads first (config, run id); it holds the
    latest weights too. As a Checkpoint callback it runs after early stopping and the best checkpoint.

    Args:
        dirpath: The run's checkpoint folder.
        config: The resolved configuration.
        run_id: The MLflow run a resumed training re-attaches to.
        best: The best-checkpoint callback.
        stopper: The early-stopping callback.
        on_epoch_end: Called with (epoch, metrics, path of checkpoint.pt).
    """

    def __init__(
        self,
        dirpath: Path,
        config: TrainConfig,
        run_id: str | None,
        best: BestCheckpoint,
        stopper: EarlyStopping,
        on_epoch_end: EpochHook | None,
    ) -> None:
        self.dirpath = dirpath
        self.config = config
        self.run_id = run_id
        self.best = best
        self.stopper = stopper
        self.on_epoch_end = on_epoch_end

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Workers of a new run do not know its id (nor the folder named after it): rank 0's folder counts.
        self.dirpath = Path(trainer.strategy.broadcast(str(self.dirpath)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        trainer.save_checkpoint(self.dirpath / LAST_CHECKPOINT, weights_only=False)  # all ranks call; rank 0 writes
        index = self.dirpath / CHECKPOINT_FILE
        if trainer.is_global_zero:
            state = TrainState(
                next_epoch=epoch + 1,
                best_val_loss=self.best.best_val_loss() if self.best.best_model_path else math.inf,
                best_epoch=self.best.best_epoch,
                stale_epochs=int(self.stopper.wait_count),
                stopped_early=self.stopper.stopped_epoch > 0,
                run_id=self.run_id,
                config=self.config.model_dump(),
            )
            save_checkpoint(index, state, pl_module.model, None, None)
        if self.on_epoch_end is not None:
            values = {key: float(trainer.callback_metrics[key]) for key in metrics.EPOCH_METRICS}
            self.on_epoch_end(epoch, values, index)


# --- trainer settings ---------------------------------------------------------------------------------------
_ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}


def _process_count(config: TrainConfig, device: torch.device) -> int:
    if config.devices != "auto":
        return int(config.devices)
    return torch.cuda.device_count() if device.type == "cuda" else 1  # Lightning's "auto": all GPUs, one CPU


def _strategy(config: TrainConfig, device: torch.device, processes: int) -> str | DDPStrategy:
    if processes <= 1:
        return "auto"
    return DDPStrategy(
        process_group_backend="gloo" if device.type == "cpu" else None,  # None: NCCL on GPUs
        # The frozen backbone takes no part in phase 1's backward pass; DDP must be told to expect that.
        find_unused_parameters=config.initial_epochs > 0,
    )


def _precision(config: TrainConfig, device: torch.device) -> str:
    """The plain engine's choice (:func:`~mltrain.engines.common.autocast_dtype`) in Lightning's words."""
    dtype = autocast_dtype(config, device)
    if dtype is None:
        return "32-true"
    return "bf16-mixed" if dtype == torch.bfloat16 else "16-mixed"


def autolog_param_keys() -> frozenset[str]:
    """Params ``mlflow.pytorch.autolog`` may log besides the config: a Lightning run has these on top.

    ``epochs``, ``optimizer_name`` and the optimizer's defaults (Adam's ``lr``, ``betas``, ...); ``lr`` is a
    config key too, with the same value. Also EarlyStopping's settings, which autolog logs only for
    ``pytorch_lightning``'s class (MLflow 3.17 does not recognise ``lightning.pytorch``'s, so today it logs none
    of them, nor the early-stopping metrics); listed so that a newer MLflow does not break run comparisons.
    """
    adam = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return frozenset({"epochs", "optimizer_name", *adam.defaults, *_EARLY_STOPPING_PARAMS})


# --- MLflow and the process around the trainer --------------------------------------------------------------
def _tracker_is_active(tracker: RunTracker) -> bool:
    """Autolog only where the tracker logs (rank 0) and its run is the active one, so autolog writes into it."""
    if not getattr(tracker, "enabled", False) or tracker.run_id is None:
        return False
    import mlflow

    active = mlflow.active_run()
    return active is not None and active.info.run_id == tracker.run_id


@contextlib.contextmanager
def _autologging(enabled: bool) -> Iterator[None]:
    """``mlflow.pytorch.autolog`` for this training only (it patches Trainer.fit process-wide)."""
    if not enabled:
        yield
        return
    import mlflow

    # The tracker logs the one model (best weights, as food11); autolog's own model and checkpoints would
    # be second copies.
    mlflow.pytorch.autolog(log_models=False, checkpoint=False, log_every_n_epoch=1)
    try:
        yield
    finally:
        mlflow.pytorch.autolog(disable=True)


@contextlib.contextmanager
def _ddp_variables_restored() -> Iterator[None]:
    """Lightning's launcher exports LOCAL_RANK etc. in rank 0; left set, a later training would be a 'worker'."""
    saved = {name: os.environ.get(name) for name in _DDP_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _call(trainer: pl.Trainer, entry_point: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``trainer.fit``/``test``, giving back the interrupts Lightning turns into ``sys.exit(1)``.

    Lightning catches Ctrl+C, stops the other ranks and exits with status 1; the run must end KILLED and
    the CLI exit 130, as with the plain engine. It also ignores further Ctrl+C from then on.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        return entry_point(*args, **kwargs)
    except SIGTERMException as exc:
        raise TrainingInterrupted(signal.SIGTERM) from exc
    except SystemExit as exc:
        if trainer.interrupted:
            raise KeyboardInterrupt from exc
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
