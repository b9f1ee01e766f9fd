"""Assemble a Lightning Trainer for the two-phase training, run it, and test the best weights.

The recipe takes the strategy and plugins it is given — Lightning's own DDP for several local devices
(:func:`local_strategy`), Ray's when a Ray Train worker runs it — so one module, one set of callbacks and
one trainer set-up serve every place a training runs.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from mltrain import env, metrics
from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.engines.checkpoint import CHECKPOINT_FILE, TrainState, save_checkpoint
from mltrain.engines.common import (
    DataWaitAdvice,
    EpochHook,
    FitResult,
    autocast_dtype,
    keep_host_memory,
    select_device,
    weights_copy,
)
from mltrain.engines.lightning.callbacks import (
    LAST_CHECKPOINT,
    BestCheckpoint,
    DataWaitTimer,
    EpochEnd,
    EpochMetrics,
    EpochSeed,
    FineTuneEarlyStopping,
    TwoPhaseFinetuning,
)
from mltrain.engines.lightning.module import Food11DataModule, Food11Module
from mltrain.errors import ConfigError, TrainingInterrupted
from mltrain.internals.lightning import stop_local_ranks
from mltrain.tracking.runlog import RunLog

_DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "mps": "mps"}


class LightningRecipe:
    """setup (module, callbacks, trainer) -> fit -> test with the best weights.

    Args:
        config: The resolved configuration.
        data: Food-11 data after ``setup()``.
        tracker: The run's logger (a NullLogger on ranks that do not log).
        checkpoint_dir: The training's checkpoint folder (a resume continues from ``last.ckpt`` in it).
        progress: Show a progress bar (on a terminal).
        on_epoch_end: Called on every rank after each epoch with (epoch, metrics, checkpoint.pt path).
        resume: A checkpoint from :func:`~mltrain.engines.checkpoint.load_checkpoint` to continue from.
        strategy: The trainer's strategy; default: Lightning's DDP over ``config.devices`` local processes.
        plugins: Trainer plugins (e.g. Ray's cluster environment).
        devices: The trainer's ``devices``; default from the config.
        callbacks: More trainer callbacks (e.g. a launcher's), after the recipe's own.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Food11Data,
        tracker: RunLog,
        checkpoint_dir: Path,
        progress: bool = False,
        on_epoch_end: EpochHook | None = None,
        resume: dict[str, Any] | None = None,
        strategy: Strategy | str | None = None,
        plugins: Sequence[Any] = (),
        devices: int | str | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.device = select_device(config)
        keep_host_memory(config)
        torch.manual_seed(config.seed)
        self.module = Food11Module(config)
        self.datamodule = Food11DataModule(data)
        self.best = BestCheckpoint(checkpoint_dir, config.initial_epochs)
        self.stopper = FineTuneEarlyStopping(config.initial_epochs, patience=config.patience)
        state = resume["state"] if resume else TrainState()
        state.run_id, state.config = tracker.run_id or state.run_id, config.model_dump()
        state.data_dir = str(data.root.resolve())
        self.epoch_end = EpochEnd(
            checkpoint_dir,
            config,
            tracker,
            state,
            resume.get("best_weights") if resume else None,
            self.best,
            self.stopper,
            on_epoch_end,
            advice=DataWaitAdvice(config, tracker, self.device),
        )
        self.timer = DataWaitTimer()
        trainer_callbacks: list[Callback] = [
            TwoPhaseFinetuning(config),
            EpochSeed(config.seed),
            EpochMetrics(self.timer),
            self.stopper,
            self.best,  # the first checkpoint callback is what ckpt_path="best" refers to
            self.epoch_end,
            *callbacks,
        ]
        if strategy is None:
            strategy = local_strategy(config, self.device)
        self.trainer = self._setup_trainer(trainer_callbacks, progress, strategy, list(plugins), devices)

    def _setup_trainer(
        self, callbacks: list[Callback], progress: bool, strategy: Strategy | str, plugins: list[Any], devices: Any
    ) -> pl.Trainer:
        try:
            return pl.Trainer(
                accelerator=_ACCELERATORS[self.device.type],
                devices=self.config.devices if devices is None else devices,
                strategy=strategy,
                plugins=plugins or None,
                precision=_precision(self.config, self.device),
                max_epochs=self.config.total_epochs,
                callbacks=callbacks,
                profiler=self.timer,
                logger=False,  # MLflow gets the metrics through the tracker (EpochEnd), once per step
                use_distributed_sampler=False,  # Food11DataModule shards by rank itself (see its docstring)
                num_sanity_val_steps=0,  # a sanity pass would compute val metrics before epoch 0
                enable_progress_bar=progress and sys.stderr.isatty(),
                enable_model_summary=False,
                default_root_dir=self.checkpoint_dir,
            )
        except MisconfigurationException as exc:
            raise ConfigError(
                f"lightning cannot train with accelerator={self.config.accelerator} devices={self.config.devices}: "
                f"{exc}"
            ) from None

    # --- the run ---------------------------------------------------------------------------------------
    def run(self) -> FitResult:
        """Fit (continuing from ``last.ckpt`` when resuming), test the best weights, record the end."""
        resume_from = self._resume_path() if self.resume is not None else None
        if self.resume is not None:
            self.tracker.log_history(self.epoch_end.state.history)
        with _ddp_variables_restored(), warnings.catch_warnings():
            # The folder already holds config.yaml (and checkpoint.pt when resuming): expected, not a problem.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            _call(self.trainer, self.trainer.fit, self.module, datamodule=self.datamodule, ckpt_path=resume_from)
            # Read now: testing from best.ckpt restores every callback's state as it was when that file was saved.
            result = self._fit_result()
            latest = weights_copy(self.module.model)
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
        result.confusion = self.module.test_confusion
        if self.trainer.is_global_zero:
            self._record_end(result, latest)
        return result

    def _record_end(self, result: FitResult, latest: dict[str, torch.Tensor]) -> None:
        if result.stopped_early:
            print(f"early stopping: no lower val_loss for {self.config.patience} epoch(s)", flush=True)
        self.tracker.log_metrics(
            {metrics.TEST_LOSS: result.test_loss, metrics.TEST_ACCURACY: result.test_accuracy},
            step=max(result.epochs_run - 1, 0),
        )
        state = self.epoch_end.state
        state.finished = True
        save_checkpoint(self.checkpoint_dir / CHECKPOINT_FILE, state, latest, None, self.epoch_end.best_weights)

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
            stopped_early=self.stopper.stopped,
            checkpoint=self.checkpoint_dir / CHECKPOINT_FILE,
        )


# --- trainer settings ---------------------------------------------------------------------------------------
def process_count(config: TrainConfig, device: torch.device) -> int:
    """How many processes Lightning starts for ``config.devices`` on ``device``."""
    if config.devices != "auto":
        return int(config.devices)
    return torch.cuda.device_count() if device.type == "cuda" else 1  # Lightning's "auto": all GPUs, one CPU


def local_strategy(config: TrainConfig, device: torch.device) -> str | DDPStrategy:
    """One process, or Lightning's DDP over local devices (gloo on CPUs, NCCL on GPUs)."""
    if process_count(config, device) <= 1:
        return "auto"
    return DDPStrategy(
        process_group_backend="gloo" if device.type == "cpu" else None,  # None: NCCL on GPUs
        # The frozen backbone takes no part in phase 1's backward pass; DDP must be told to expect that.
        find_unused_parameters=config.initial_epochs > 0,
    )


def _precision(config: TrainConfig, device: torch.device) -> Literal["32-true", "bf16-mixed", "16-mixed"]:
    """The plain engine's choice (:func:`~mltrain.engines.common.autocast_dtype`) in Lightning's words."""
    dtype = autocast_dtype(config, device)
    if dtype is None:
        return "32-true"
    return "bf16-mixed" if dtype == torch.bfloat16 else "16-mixed"


# --- the process around the trainer ---------------------------------------------------------------------------
def _ddp_variables_restored() -> contextlib.AbstractContextManager:
    """Lightning's launcher exports LOCAL_RANK etc. in rank 0; left set, a later training would be a 'worker'."""
    return env.restored(*_DDP_VARIABLES)


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
        stop_local_ranks(trainer)
        raise TrainingInterrupted(signal.SIGTERM) from exc
    except SystemExit as exc:
        stop_local_ranks(trainer)
        if trainer.interrupted:
            raise KeyboardInterrupt from exc
        raise
    except BaseException:
        stop_local_ranks(trainer)
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
