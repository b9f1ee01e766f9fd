"""The Lightning engine trained in-process on one CPU: the two phases, early stopping, interrupts and resuming."""

import shutil
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.engines import lightning as engine
from mltrain.engines import torch_engine
from mltrain.engines.checkpoint import load_checkpoint
from mltrain.engines.lightning import callbacks, recipe
from mltrain.engines.lightning.module import Food11Module
from mltrain.model import count_trainable
from mltrain.tracking import NullLogger
from mltrain.training import run as training  # where the run is finalized
from mltrain.training import train
from tests.helpers import metric_steps, metric_values, stop_after_saves
from tests.unit.test_lightning_engine import HEAD_ONLY, TINY, _Trainer

pytestmark = pytest.mark.integration


class _PhaseRecorder(Callback):
    """What each epoch trained: trainable parameters, learning rates, whether Adam started afresh."""

    def __init__(self) -> None:
        self.trainable: list[int] = []
        self.lrs: list[list[float]] = []
        self.adam_state_at_start: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.adam_state_at_start.append(len(trainer.optimizers[0].state))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainable.append(count_trainable(pl_module.model))
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def test_backbone_frozen_in_phase_one_then_trained_at_fine_tune_lr(tiny_data: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**TINY, "lr": 1e-3, "fine_tune_lr": 1e-4})
    data = Food11Data(tiny_data, config, progress=False).setup()
    recipe_ = engine.LightningRecipe(config, data, NullLogger(), tmp_path, False, None)
    recorder = _PhaseRecorder()
    recipe_.trainer.callbacks.append(recorder)  # after TwoPhaseFinetuning: sees each epoch as it trains

    result = recipe_.run()

    full = sum(p.numel() for p in recipe_.module.model.parameters())
    assert recorder.trainable == [HEAD_ONLY, full]
    assert recorder.lrs == [[1e-3], [1e-4, 1e-4]]  # head alone at lr; then head and backbone at fine_tune_lr
    assert recorder.adam_state_at_start[1] == 0  # phase 2 starts with fresh Adam moments, as the plain engine
    assert result.epochs_run == 2 and result.best_epoch == 1 and not result.stopped_early
    assert {p.name for p in tmp_path.iterdir()} >= {"best.ckpt", "last.ckpt", "checkpoint.pt"}


def test_reproduces_the_plain_engine_when_nothing_is_random(tiny_data: Path, tmp_path: Path) -> None:
    # No dropout, no augmentation: both engines see the same batches in the same order, so the same model,
    # data path and two-phase optimisation must give the same numbers, epoch by epoch.
    no_randomness = {
        "dropout_probability": 0.0,
        "random_horizontal_flip": 0.0,
        "random_rotation": 0.0,
        "color_jitter_brightness": 0.0,
        "color_jitter_contrast": 0.0,
        "color_jitter_saturation": 0.0,
        "color_jitter_hue": 0.0,
    }
    config = TrainConfig(**{**TINY, **no_randomness, "lr": 1e-3, "fine_tune_lr": 1e-4})
    data = Food11Data(tiny_data, config, progress=False).setup()
    epochs: dict[str, list[dict[str, float]]] = {"torch": [], "lightning": []}
    results = {}
    for name, fit in (("torch", torch_engine.fit), ("lightning", engine.fit)):
        results[name] = fit(
            config.with_overrides(engine=name),
            data,
            NullLogger(),
            tmp_path / name,
            on_epoch_end=lambda epoch, values, path, name=name: epochs[name].append(values),
            progress=False,
        )
    for key in (metrics.TRAIN_LOSS, metrics.TRAIN_ACCURACY, metrics.VAL_LOSS, metrics.VAL_ACCURACY):
        expected = [values[key] for values in epochs["torch"]]
        assert [values[key] for values in epochs["lightning"]] == pytest.approx(expected, rel=1e-4), key
    trainable = [values[metrics.TRAINABLE_PARAMS] for values in epochs["lightning"]]
    assert trainable == [values[metrics.TRAINABLE_PARAMS] for values in epochs["torch"]]
    assert results["lightning"].test_loss == pytest.approx(results["torch"].test_loss, rel=1e-4)
    assert results["lightning"].best_epoch == results["torch"].best_epoch == 1


def test_early_stopping_and_best_weights_count_fine_tuning_epochs_only(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scripted val_loss: the head epoch is the lowest, but only fine-tuning epochs may be best or stale.
    val_losses = [0.5, 0.9, 1.0, 0.1]

    def validation_step(self, batch, batch_idx):
        value = torch.tensor(val_losses[self.current_epoch])
        self.log_dict({metrics.VAL_LOSS: value, metrics.VAL_ACCURACY: value}, on_epoch=True, batch_size=1)

    monkeypatch.setattr(Food11Module, "validation_step", validation_step)
    config = TrainConfig(**{**TINY, "total_epochs": 4, "patience": 1})
    data = Food11Data(tiny_data, config, progress=False).setup()
    result = engine.fit(config, data, NullLogger(), tmp_path, progress=False)
    assert result.stopped_early and result.epochs_run == 3  # epoch 2 without a lower val_loss; 3 never ran
    assert result.best_epoch == 1 and result.best_val_loss == pytest.approx(0.9)


def test_after_an_interrupt_the_other_ranks_are_stopped_and_the_watcher_has_nothing_left() -> None:
    import subprocess
    import sys

    ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    trainer = _Trainer(interrupted=True, procs=list(ranks))

    def lightning_after_ctrl_c() -> None:
        raise SystemExit(1)

    with pytest.raises(KeyboardInterrupt):
        recipe._call(trainer, lightning_after_ctrl_c)
    assert [rank.poll() for rank in ranks] == [-signal.SIGKILL, -signal.SIGKILL]
    assert trainer.strategy.launcher.procs == []  # Lightning's watcher thread reads this list


def test_interrupted_training_resumes_exactly_from_a_copied_folder(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(TrainConfig(**{**TINY, "total_epochs": 4}), data_dir=tiny_data, progress=False)

    real_save = callbacks.save_checkpoint
    saved = stop_after_saves(monkeypatch, callbacks)  # right after epoch 1's checkpoints, before MLflow got it
    real_finalize = training.finalize_run  # as after a kill -9: nothing runs after the checkpoint write
    monkeypatch.setattr(training, "finalize_run", lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**TINY, "total_epochs": 3}), data_dir=tiny_data, progress=False)
    run_id = saved[0].parent.name
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert metric_steps(run_id, metrics.VAL_LOSS) == [0]

    monkeypatch.setattr(callbacks, "save_checkpoint", real_save)
    monkeypatch.setattr(training, "finalize_run", real_finalize)
    copy = tmp_path / "moved"
    shutil.copytree(saved[0].parent, copy)  # another place (another machine, or Ray's storage)
    resumed = train(resume=copy, overrides={"total_epochs": 4}, progress=False)
    assert resumed.run_id == run_id and resumed.epochs_run == 4
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in metrics.EPOCH_METRICS:
        assert metric_steps(run_id, key) == [0, 1, 2, 3], key
    assert metric_steps(run_id, metrics.TEST_ACCURACY) == [3]
    assert run.data.tags["mltrain.resume.1"] == "total_epochs: 3 -> 4"
    by_step = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, metrics.TRAINABLE_PARAMS)}
    assert by_step[0] == HEAD_ONLY and by_step[3] > 2_000_000  # resumed in phase 2: the backbone trains
    assert run.data.tags["mltrain.best_model_uri"] == resumed.model_uri
    for key in (metrics.TRAIN_LOSS, metrics.VAL_LOSS):
        assert metric_values(run_id, key) == pytest.approx(metric_values(reference.run_id, key), rel=1e-5), key
    state = load_checkpoint(copy)["state"]
    assert state.finished and state.next_epoch == 4 and (copy / "last.ckpt").is_file()
