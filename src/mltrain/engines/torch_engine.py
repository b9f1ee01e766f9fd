"""The plain PyTorch engine: two-phase transfer learning with early stopping, one device.

Phase 1 trains only the classifier head (backbone frozen) for ``initial_epochs`` at ``lr``; phase 2
unfreezes everything at ``fine_tune_lr`` until ``total_epochs`` or until ``patience`` epochs pass
without a lower val_loss. The best fine-tuning weights are kept, logged to MLflow each time they
improve, and used for the final test evaluation.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mltrain import metrics
from mltrain.config import NUM_CLASSES, TrainConfig
from mltrain.data.module import Food11Data
from mltrain.data.sampling import seed_epoch, set_loader_epoch
from mltrain.data.transforms import to_model_input
from mltrain.engines.checkpoint import CHECKPOINT_FILE, TrainState, save_checkpoint
from mltrain.engines.common import (
    FINE_TUNE,
    HEAD,
    DataWaitAdvice,
    EpochHook,
    EpochStats,
    FitResult,
    autocast,
    autocast_dtype,
    epoch_metrics,
    format_epoch,
    keep_host_memory,
    phase_of,
    prepare_model,
    select_device,
    timed_batches,
    weights_copy,
)
from mltrain.model import count_trainable, head, set_backbone_trainable
from mltrain.tracking.runlog import RunLog

log = logging.getLogger(__name__)


def fit(
    config: TrainConfig,
    data: Food11Data,
    tracker: RunLog,
    checkpoint_dir: str | Path,
    resume: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> FitResult:
    """Train, validate, early-stop and test one model, logging through ``tracker``.

    Args:
        config: The resolved configuration.
        data: Food-11 data after ``setup()``.
        tracker: The run to log into (a NullLogger on ranks that do not log).
        checkpoint_dir: Where ``checkpoint.pt`` is written after every epoch.
        resume: A checkpoint from :func:`mltrain.engines.checkpoint.load_checkpoint` to continue from: the
            next epoch runs exactly as it would have without the stop (same batches, augmentation, dropout).
        on_epoch_end: Called after each epoch with (epoch, metrics, checkpoint path), e.g. to report
            to Ray Train.
        progress: Show a progress bar over batches.
    """
    return TorchRecipe(config, data, tracker, Path(checkpoint_dir), progress, on_epoch_end).run(resume)


class TorchRecipe:
    """setup -> train/validate per epoch -> checkpoint -> test; each step a short method."""

    def __init__(
        self,
        config: TrainConfig,
        data: Food11Data,
        tracker: RunLog,
        checkpoint_dir: Path,
        progress: bool,
        on_epoch_end: EpochHook | None,
    ) -> None:
        self.config = config
        self.data = data
        self.tracker = tracker
        self.checkpoint_path = checkpoint_dir / CHECKPOINT_FILE
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.device = select_device(config)
        keep_host_memory(config)
        self.amp_dtype = autocast_dtype(config, self.device)
        self.model, self.step_model = self._setup_model()
        self.criterion = nn.CrossEntropyLoss()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_loader = data.train_dataloader(self.device)
        self.val_loader = data.val_dataloader(self.device)
        self.test_loader = data.test_dataloader(self.device)
        self.state = TrainState(run_id=tracker.run_id, config=config.model_dump(), data_dir=str(data.root.resolve()))
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.phase: str | None = None
        self.advice = DataWaitAdvice(config, tracker, self.device)

    # --- setup -------------------------------------------------------------------------------------------
    def _setup_model(self) -> tuple[nn.Module, Any]:
        model = prepare_model(self.config).to(self.device)
        # Checkpoints and MLflow get the plain module; steps may run through the compiled wrapper.
        step_model = torch.compile(model) if self.config.compile else model
        return model, step_model

    def _setup_phase(self, phase: str) -> None:
        """Freeze or unfreeze the backbone and give the phase its own Adam, as the lab does."""
        set_backbone_trainable(self.model, phase == FINE_TUNE)
        if phase == HEAD:
            self.optimizer = torch.optim.Adam(head(self.model).parameters(), lr=self.config.lr)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.fine_tune_lr)
        self.phase = phase

    def _restore(self, resume: dict[str, Any]) -> None:
        data_dir = self.state.data_dir
        self.state = resume["state"]
        self.state.run_id = self.tracker.run_id or self.state.run_id
        self.state.config, self.state.data_dir = self.config.model_dump(), data_dir
        # A larger patience on resume lets a training that stopped early go on.
        self.state.stopped_early = self.state.stale_epochs >= self.config.patience
        self.state.finished = False
        self.model.load_state_dict(resume["model"])
        self.best_weights = resume.get("best_weights")
        if self.state.next_epoch < self.config.total_epochs:
            self._setup_phase(self._phase_of(self.state.next_epoch))
            if resume.get("optimizer") is not None and self._phase_of(self.state.next_epoch - 1) == self.phase:
                self._optimizer().load_state_dict(resume["optimizer"])
        # Epochs the checkpoint finished but MLflow never received (killed between the two) are logged now.
        filled = self.tracker.log_history(self.state.history)
        if filled:
            log.info("logged epoch(s) %s from the checkpoint's history", filled)
        log.info("resuming at epoch %d from %s", self.state.next_epoch, self.checkpoint_path)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:  # pragma: no cover - every epoch's phase is set up before it runs
            raise RuntimeError("no training phase is set up")
        return self.optimizer

    def _phase_of(self, epoch: int) -> str:
        return phase_of(self.config, epoch)

    # --- the loop --------------------------------------------------------------------------------------
    def run(self, resume: dict[str, Any] | None = None) -> FitResult:
        if resume is not None:
            self._restore(resume)
        epoch = self.state.next_epoch
        while epoch < self.config.total_epochs and not self.state.stopped_early:
            if self._phase_of(epoch) != self.phase:
                self._setup_phase(self._phase_of(epoch))
            values = self._run_epoch(epoch)
            self._after_epoch(epoch, values)
            epoch += 1
        return self._finish()

    def _run_epoch(self, epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        train_stats = self._train_epoch(epoch)
        val_stats = self.evaluate(self.val_loader, "validate")
        return epoch_metrics(train_stats, val_stats, time.perf_counter() - started, count_trainable(self.model))

    def _train_epoch(self, epoch: int) -> EpochStats:
        # Everything random in this epoch derives from (seed, epoch): a resumed training repeats it exactly.
        seed_epoch(self.config.seed, epoch)
        set_loader_epoch(self.train_loader, epoch)
        self.model.train()
        stats = EpochStats()
        bar = tqdm(
            total=len(self.train_loader), desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=self._no_bar()
        )
        for step, (images, labels) in enumerate(timed_batches(self.train_loader, stats)):
            if step == 0:
                self.tracker.training_started(epoch)  # the first batch is here
            inputs = to_model_input(images, self.device, channels_last=self.config.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                logits = self.step_model(inputs)
                loss = self.criterion(logits, labels)
            optimizer = self._optimizer()
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            stats.update(loss, logits, labels)
            bar.update(1)
        bar.close()
        return stats

    @torch.inference_mode()
    def evaluate(self, loader: torch.utils.data.DataLoader, desc: str, classes: int = 0) -> EpochStats:
        """Loss and accuracy of the current weights over ``loader`` (eval mode, no autograd); with ``classes``,
        also the confusion matrix over that many classes."""
        self.model.eval()
        stats = EpochStats(classes=classes)
        for images, labels in timed_batches(tqdm(loader, desc=desc, leave=False, disable=self._no_bar()), stats):
            inputs = to_model_input(images, self.device, channels_last=self.config.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                logits = self.step_model(inputs)
                loss = self.criterion(logits.float(), labels)
            stats.update(loss, logits, labels)
        return stats

    def _after_epoch(self, epoch: int, values: dict[str, float]) -> None:
        if self.phase == FINE_TUNE:
            self._track_best(epoch, values[metrics.VAL_LOSS])
        self.state.next_epoch = epoch + 1
        self.state.history[epoch] = values
        # Checkpoint first, then MLflow: a stop between the two leaves the epoch in the checkpoint's history,
        # and the resumed training logs it from there (the logger skips steps the run already has).
        save_checkpoint(self.checkpoint_path, self.state, self.model, self.optimizer, self.best_weights)
        self.tracker.log_epoch(epoch, values)
        print(format_epoch(epoch, self.config.total_epochs, self.phase or "", values), flush=True)
        self.advice.check(epoch, values)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, values, self.checkpoint_path)

    def _track_best(self, epoch: int, val_loss: float) -> None:
        if val_loss < self.state.best_val_loss:
            self.state.best_val_loss = val_loss
            self.state.best_epoch = epoch
            self.state.stale_epochs = 0
            # Kept here and in checkpoint.pt: safe if the training dies. The MLflow model is made from them when
            # the training ends (any way it ends), off the training loop (see mltrain.training.finalize_run).
            self.best_weights = weights_copy(self.model)
            return
        self.state.stale_epochs += 1
        if self.state.stale_epochs >= self.config.patience:
            self.state.stopped_early = True
            print(f"early stopping: no lower val_loss for {self.config.patience} epoch(s)", flush=True)

    def _finish(self) -> FitResult:
        # The checkpoint keeps the latest weights (a later resume continues from them); the test uses the best.
        latest = weights_copy(self.model)
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        else:
            # No fine-tuning epoch ran (total_epochs == initial_epochs): the final weights are the model.
            self.state.best_val_loss = self.evaluate(self.val_loader, "validate").loss
            self.state.best_epoch = self.state.next_epoch - 1
        test = self.evaluate(self.test_loader, "test", classes=NUM_CLASSES)
        # At the last epoch's step: a run extended later gets its new test numbers at a new step.
        self.tracker.log_metrics(
            {metrics.TEST_LOSS: test.loss, metrics.TEST_ACCURACY: test.accuracy}, step=max(self.state.next_epoch - 1, 0)
        )
        self.state.finished = True
        save_checkpoint(self.checkpoint_path, self.state, latest, self.optimizer, self.best_weights)
        return FitResult(
            epochs_run=self.state.next_epoch,
            best_epoch=self.state.best_epoch,
            best_val_loss=self.state.best_val_loss if math.isfinite(self.state.best_val_loss) else float("nan"),
            test_loss=test.loss,
            test_accuracy=test.accuracy,
            stopped_early=self.state.stopped_early,
            checkpoint=self.checkpoint_path,
            confusion=test.confusion(),
        )

    def _no_bar(self) -> bool | None:
        return None if self.progress else True  # None: tqdm shows the bar only on a terminal
