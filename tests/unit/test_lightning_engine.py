"""The Lightning engine in-process on one CPU, without training: steps, the two phases' callbacks, interrupts.

Its trainings (phases, early stopping, resuming): tests/integration/test_lightning_engine.py.
"""

import signal
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mltrain import env, metrics
from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.data.transforms import to_model_input
from mltrain.engines.lightning import callbacks, recipe
from mltrain.engines.lightning.module import Food11Module
from mltrain.errors import TrainingInterrupted
from mltrain.model import count_trainable

TINY = {
    "initial_epochs": 1,
    "total_epochs": 2,
    "pretrained": False,
    "image_size": 64,
    "batch_size": 16,
    "engine": "lightning",
}
HEAD_ONLY = 1280 * 11 + 11  # MobileNetV2's last_channel x 11 classes + bias


def test_steps_log_the_shared_metrics_over_the_shared_data_path(tiny_data: Path) -> None:
    config = TrainConfig(**TINY)
    data = Food11Data(tiny_data, config, progress=False).setup()
    module = Food11Module(config)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    validated = trainer.validate(module, dataloaders=data.val_dataloader(), verbose=False)[0]
    tested = trainer.test(module, dataloaders=data.test_dataloader(), verbose=False)[0]
    assert set(validated) == {metrics.VAL_LOSS, metrics.VAL_ACCURACY}
    assert set(tested) == {metrics.TEST_LOSS, metrics.TEST_ACCURACY}

    # the same numbers the plain engine's data path and model give: per-sample means over the split
    module.model.eval()
    losses, correct, seen = [], 0, 0
    with torch.no_grad():
        for images, labels in data.val_dataloader():
            logits = module.model(to_model_input(images, torch.device("cpu")))
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
    assert validated[metrics.VAL_LOSS] == pytest.approx(float(sum(losses)) / seen, rel=1e-5)
    assert validated[metrics.VAL_ACCURACY] == pytest.approx(correct / seen)


def test_backbone_is_frozen_only_after_ddp_wraps_the_model() -> None:
    # DDP registers the parameters that require gradients when it is built (between setup and on_fit_start);
    # a backbone frozen in setup would never have its gradients averaged after unfreezing.
    config = TrainConfig(**TINY)
    module = Food11Module(config)
    finetuning = callbacks.TwoPhaseFinetuning(config)
    trainer = SimpleNamespace(optimizers=[])
    finetuning.setup(trainer, module, "fit")
    assert count_trainable(module.model) > HEAD_ONLY
    finetuning.on_fit_start(trainer, module)
    assert count_trainable(module.model) == HEAD_ONLY


@pytest.mark.parametrize("callback", [ModelCheckpoint, EarlyStopping])
def test_best_checkpoint_and_early_stopping_ignore_the_head_phase(
    callback: type, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []
    for hook in ("on_train_epoch_end", "on_validation_end"):
        monkeypatch.setattr(callback, hook, lambda self, trainer, module, hook=hook: calls.append(hook))
    fine_tune_only = (
        callbacks.BestCheckpoint(tmp_path, start_epoch=2)
        if callback is ModelCheckpoint
        else callbacks.FineTuneEarlyStopping(2, patience=1)
    )
    for epoch in range(4):
        trainer = SimpleNamespace(current_epoch=epoch)
        fine_tune_only.on_validation_end(trainer, None)
        if callback is EarlyStopping:
            fine_tune_only.on_train_epoch_end(trainer, None)
    assert len(calls) == (2 if callback is ModelCheckpoint else 4)  # epochs 2 and 3 only


class _Launcher:
    def __init__(self, procs: list) -> None:
        self.procs = procs

    def kill(self, signum: int) -> None:
        for proc in self.procs:
            proc.send_signal(signum)


class _Trainer:
    def __init__(self, interrupted: bool, procs: list | None = None) -> None:
        self.interrupted = interrupted
        self.strategy = SimpleNamespace(launcher=_Launcher(procs) if procs is not None else None)


def test_interrupts_lightning_swallows_are_given_back() -> None:
    def exits() -> None:
        raise SystemExit(1)  # what Lightning does after catching Ctrl+C

    previous = signal.getsignal(signal.SIGINT)

    def exits_ignoring_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise SystemExit(1)

    with pytest.raises(KeyboardInterrupt):
        recipe._call(_Trainer(interrupted=True), exits_ignoring_sigint)
    assert signal.getsignal(signal.SIGINT) is previous  # Ctrl+C works again afterwards
    with pytest.raises(SystemExit):
        recipe._call(_Trainer(interrupted=False), exits)

    def sigterm() -> None:
        raise SIGTERMException

    with pytest.raises(TrainingInterrupted):
        recipe._call(_Trainer(interrupted=True), sigterm)


def test_only_rank_zero_counts_as_the_lead(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env.is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env.is_rank_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's ddp launcher re-running the command as rank 1
    assert not env.is_rank_zero()
