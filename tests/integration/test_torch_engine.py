"""The torch engine trained end to end in-process: the Python API, resuming, extending a finished run."""

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.engines import torch_engine
from mltrain.engines.checkpoint import load_checkpoint
from mltrain.errors import ConfigError
from mltrain.tracking import RunSpec
from mltrain.training import TrainResult, plan_training, run_training, train
from mltrain.training import run as training  # where the run is finalized
from tests.helpers import metric_steps, metric_values, stop_after_saves
from tests.unit.test_torch_engine import TINY

pytestmark = pytest.mark.integration


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
    # Trainable parameters per phase, the head alone then the whole network (once test_trainable_params_logged_
    # per_phase, which trained this same config a second time only to read them).
    history = MlflowClient().get_metric_history(result.run_id, metrics.TRAINABLE_PARAMS)
    by_step = {m.step: m.value for m in history}
    assert by_step[0] == 1280 * 11 + 11
    assert by_step[1] > 2_000_000


def test_train_from_the_start_in_an_existing_run(tiny_data: Path) -> None:
    # What a retried Tune trial does when its lost attempt had created its run but logged no epoch.
    client = MlflowClient()
    experiment = client.create_experiment(metrics.EXPERIMENT)
    run_id = client.create_run(experiment, tags={"mltrain.tune.trial_id": "t1"}).info.run_id
    client.set_terminated(run_id, "FAILED")

    def train_in(run_id: str, resume: Path | None = None) -> TrainResult:
        more = {"total_epochs": 3} if resume else {}  # a plan that could go on, so only the run is in question
        plan = plan_training(TrainConfig(**TINY), more, None, tiny_data, resume, None)
        return run_training(plan, RunSpec(run_id=run_id), progress=False)

    result = train_in(run_id)
    assert result.run_id == run_id and len(client.search_runs([experiment])) == 1
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mltrain.tune.trial_id"] == "t1"
    assert metric_steps(run_id, metrics.VAL_LOSS) == [0, 1]
    with pytest.raises(ConfigError, match="not both"):
        train_in(run_id, resume=result.checkpoint)


def test_interrupted_training_resumes_exactly(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference: 4 epochs without a stop.
    reference = train(TrainConfig(**{**TINY, "total_epochs": 4}), data_dir=tiny_data, progress=False)

    # Stopped right after epoch 1's checkpoint, before MLflow got that epoch (the worst moment), then resumed
    # with more epochs: the run must end as if nothing had happened.
    real_save = torch_engine.save_checkpoint
    saved = stop_after_saves(monkeypatch, torch_engine)
    # As after a kill -9: nothing runs after the checkpoint write (normally the run's end logs epoch 1 from it).
    real_finalize = training.finalize_run
    monkeypatch.setattr(training, "finalize_run", lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(TrainConfig(**{**TINY, "total_epochs": 3}), data_dir=tiny_data, progress=False)
    folder = saved[0].parent
    run_id = folder.name
    assert stopped.value.resume_hint.run_id == run_id and stopped.value.resume_hint.folder == folder
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert metric_steps(run_id, metrics.VAL_LOSS) == [0]  # epoch 1 is only in the checkpoint

    monkeypatch.setattr(torch_engine, "save_checkpoint", real_save)
    monkeypatch.setattr(training, "finalize_run", real_finalize)
    resumed = train(resume=folder, overrides=["total_epochs=4"], progress=False)  # no data_dir: the checkpoint's
    assert resumed.run_id == run_id and resumed.epochs_run == 4
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in metrics.EPOCH_METRICS:
        assert metric_steps(run_id, key) == [0, 1, 2, 3], key
    assert metric_steps(run_id, metrics.TEST_ACCURACY) == [3]
    assert run.data.params["total_epochs"] == "3"  # params never change; the resume tag says what did
    assert run.data.tags["mltrain.resumes"] == "1"
    assert run.data.tags["mltrain.resume.1"] == "total_epochs: 3 -> 4"
    for key in (metrics.TRAIN_LOSS, metrics.VAL_LOSS, metrics.VAL_ACCURACY):
        expected = metric_values(reference.run_id, key)
        assert metric_values(run_id, key) == pytest.approx(expected, rel=1e-6, abs=1e-7), key
    assert resumed.test_loss == pytest.approx(reference.test_loss, rel=1e-6)


def test_an_interrupted_run_gets_its_epochs_and_best_model(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = stop_after_saves(monkeypatch, torch_engine)  # after epoch 1's checkpoint, before MLflow got epoch 1
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**TINY, "total_epochs": 3}), data_dir=tiny_data, progress=False)
    run = MlflowClient().get_run(saved[0].parent.name)
    assert run.info.status == "KILLED"
    assert metric_steps(run.info.run_id, metrics.VAL_LOSS) == [0, 1]  # epoch 1 came from the checkpoint
    model = mlflow.pytorch.load_model(run.data.tags["mltrain.best_model_uri"])  # the best weights so far
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 11)


def test_a_finished_run_can_be_extended_and_a_forbidden_change_touches_nothing(tiny_data: Path) -> None:
    first = train(TrainConfig(**TINY), data_dir=tiny_data, progress=False)
    folder = first.checkpoint.parent
    before = MlflowClient().get_run(first.run_id)
    for overrides, named in ((["image_size=96"], "image_size"), (["lr=0.1", "seed=3"], "lr, seed"), ([], "already")):
        with pytest.raises(ConfigError, match=named):
            train(resume=first.run_id, overrides=overrides, progress=False)  # a run id, found under outputs/
    after = MlflowClient().get_run(first.run_id)
    assert (after.info.status, after.data.tags, after.data.params) == (
        before.info.status,
        before.data.tags,
        before.data.params,
    )

    extended = train(resume=folder, overrides={"total_epochs": 3}, progress=False)
    assert extended.run_id == first.run_id and extended.epochs_run == 3
    assert metric_steps(first.run_id, metrics.VAL_LOSS) == [0, 1, 2]
    assert metric_steps(first.run_id, metrics.TEST_ACCURACY) == [1, 2]  # the test of each end, at its last epoch


def test_resume_from_a_copy_of_the_checkpoint_folder(tiny_data: Path, tmp_path: Path) -> None:
    first = train(TrainConfig(**TINY), data_dir=tiny_data, progress=False)
    copy = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(first.checkpoint.parent, copy)
    extended = train(resume=copy, overrides={"total_epochs": 3}, data_dir=tiny_data, progress=False)
    assert extended.run_id == first.run_id and extended.checkpoint == copy / "checkpoint.pt"
    assert load_checkpoint(copy)["state"].next_epoch == 3
    assert load_checkpoint(first.checkpoint)["state"].next_epoch == 2  # the original folder is left as it was


def test_a_checkpoint_written_before_launchers_existed_resumes(tiny_data: Path) -> None:
    # Before 0.2 the config held the Ray launcher's options (at their defaults for a local training), and every
    # checkpoint.pt saved them: such a folder still resumes, in its run, each epoch once.
    first = train(TrainConfig(**TINY), data_dir=tiny_data, progress=False)
    payload = torch.load(first.checkpoint, weights_only=True)
    old_keys = {"workers": 1, "min_workers": None, "resize_interval": 60.0, "cpus_per_worker": 1.0}
    old_keys |= {"gpus_per_worker": 0.0, "max_failures": 2, "storage": None}
    payload["state"]["config"] = {**payload["state"]["config"], **old_keys}
    torch.save(payload, first.checkpoint)

    longer = train(resume=first.checkpoint.parent, overrides={"total_epochs": 3}, progress=False)
    assert longer.run_id == first.run_id and longer.epochs_run == 3
    assert metric_steps(first.run_id, metrics.VAL_LOSS) == [0, 1, 2]
    assert "workers" not in load_checkpoint(first.checkpoint.parent)["state"].config  # saved without them now
