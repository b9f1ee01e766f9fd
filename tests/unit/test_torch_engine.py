from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.engines import checkpoint as checkpoint_module
from mltrain.engines import torch_engine
from mltrain.training import train

TINY = {"initial_epochs": 1, "total_epochs": 2, "pretrained": False, "image_size": 64, "batch_size": 16}


def _history(run_id: str, key: str) -> list[int]:
    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


def test_train_api_end_to_end(tiny_data: Path) -> None:
    result = train(TrainConfig(**TINY), data_dir=tiny_data, progress=False)
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert result.epochs_run == 2
    assert 0.0 <= result.test_accuracy <= 1.0
    assert result.checkpoint.is_file()
    saved = TrainConfig.build(result.checkpoint.parent / "config.yaml")
    assert saved == TrainConfig(**TINY)  # the resolved config lives next to the checkpoint
    assert result.model_uri == run.data.tags["mltrain.best_model_uri"]
    assert f"run {result.run_id}" in result.summary() and "test_accuracy" in result.summary()


def test_interrupted_training_resumes_in_the_same_run(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = checkpoint_module.save_checkpoint
    calls = []

    def save_then_interrupt(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls.append(path)
        raise KeyboardInterrupt  # as if Ctrl+C arrived right after epoch 0's checkpoint

    monkeypatch.setattr(torch_engine, "save_checkpoint", save_then_interrupt)
    config = TrainConfig(**{**TINY, "total_epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        train(config, data_dir=tiny_data, progress=False)
    run_dir = calls[0].parent
    run_id = run_dir.name
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert _history(run_id, metrics.VAL_LOSS) == [0]

    monkeypatch.setattr(torch_engine, "save_checkpoint", real_save)
    resumed = train(data_dir=tiny_data, resume=run_dir, progress=False)
    assert resumed.run_id == run_id
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert _history(run_id, metrics.VAL_LOSS) == [0, 1, 2]
    assert _history(run_id, metrics.TEST_ACCURACY) == [0]


class _NoTracker:
    run_id = None

    def __init__(self) -> None:
        self.models: list[int] = []

    def log_model(self, model, image_size, step=None):
        self.models.append(step)
        return f"models:/m-{step}"


def test_early_stopping_and_best_model(tiny_data: Path, tmp_path: Path) -> None:
    from mltrain.data.module import Food11Data

    config = TrainConfig(**{**TINY, "total_epochs": 10, "patience": 2})
    data = Food11Data(tiny_data, config, progress=False).setup()
    tracker = _NoTracker()
    recipe = torch_engine.TorchRecipe(config, data, tracker, tmp_path, False, None)
    recipe._setup_phase(torch_engine.FINE_TUNE)
    for epoch, val_loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75, 0.76], start=1):
        recipe._track_best(epoch, val_loss)
    assert tracker.models == [1, 2, 4]  # logged whenever val_loss improved
    assert recipe.state.best_epoch == 4 and recipe.state.best_val_loss == 0.7
    assert recipe.state.stopped_early  # two epochs (5, 6) without improvement


def test_trainable_params_logged_per_phase(tiny_data: Path) -> None:
    result = train(TrainConfig(**TINY), data_dir=tiny_data, progress=False)
    history = MlflowClient().get_metric_history(result.run_id, metrics.TRAINABLE_PARAMS)
    by_step = {m.step: m.value for m in history}
    assert by_step[0] == 1280 * 11 + 11
    assert by_step[1] > 2_000_000
