import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain.config import TrainConfig
from mltrain.errors import TrackingError, TrainingInterrupted
from mltrain.model import build_model
from mltrain.tracking import BEST_MODEL_TAG, NullLogger, RunLogger, RunOwner, RunSpec, gpu_info_text
from tests.helpers import wait_for


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def _metrics(run_id: str) -> dict[str, float]:
    return MlflowClient().get_run(run_id).data.metrics


def _owner(run_id: str | None = None, experiment: str = "t", **options: object) -> RunOwner:
    return RunOwner(RunSpec(experiment, run_id=run_id), **{"system_metrics": False, **options})  # type: ignore[arg-type]


def test_finished_run_has_what_was_logged() -> None:
    with _owner() as owner:
        tracker = owner.logger
        tracker.log_params({"a": 1})
        tracker.log_metrics({"val_loss": 0.5}, step=3)
        tracker.log_text("hello", "notes.txt")
    run = MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"a": "1"}
    history = MlflowClient().get_metric_history(tracker.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5)]
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (TrainingInterrupted(15), "KILLED")],
)
def test_exceptions_end_the_run(error: BaseException, status: str) -> None:
    tracker = _owner()
    with pytest.raises(type(error)), tracker:
        raise error
    assert _status(tracker.run_id) == status
    assert mlflow.active_run() is None
    # the next run starts cleanly
    with _owner() as again:
        pass
    assert _status(again.run_id) == "FINISHED"


def test_failed_run_records_the_error() -> None:
    tracker = _owner()
    with pytest.raises(ValueError), tracker:
        raise ValueError("bad thing")
    assert MlflowClient().get_run(tracker.run_id).data.tags["mltrain.error"] == "ValueError: bad thing"


def test_with_a_run_already_active_it_becomes_a_child() -> None:
    mlflow.set_experiment("t")
    with mlflow.start_run() as parent:
        with _owner() as tracker:
            tracker.logger.log_metrics({"x": 1.0}, step=0)
        assert tracker.run_id != parent.info.run_id
        assert tracker.parent_run_id == parent.info.run_id
        # the parent is still the active run and untouched
        assert mlflow.active_run().info.run_id == parent.info.run_id
        assert "x" not in MlflowClient().get_run(parent.info.run_id).data.metrics
    child = MlflowClient().get_run(tracker.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED"


def test_attach_to_the_active_run_by_id_leaves_it_open() -> None:
    mlflow.set_experiment("t")
    with mlflow.start_run() as outer:
        with _owner(run_id=outer.info.run_id) as tracker:
            tracker.logger.log_metrics({"y": 2.0}, step=1)
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert MlflowClient().get_run(outer.info.run_id).data.metrics["y"] == 2.0


def test_reattach_after_a_restart_continues_the_same_run() -> None:
    first = _owner()
    with pytest.raises(KeyboardInterrupt), first:
        first.logger.log_metrics({"val_loss": 1.0}, step=0)
        raise KeyboardInterrupt
    assert _status(first.run_id) == "KILLED"
    with _owner(run_id=first.run_id) as second:
        second.logger.log_metrics({"val_loss": 0.8}, step=1)
    assert second.run_id == first.run_id
    history = MlflowClient().get_metric_history(first.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.8)]
    assert _status(first.run_id) == "FINISHED"


def test_other_ranks_log_nothing() -> None:
    before = len(MlflowClient().search_experiments())
    with NullLogger() as tracker:  # ranks other than 0 own no run (so they log no model) and log nothing
        tracker.log_metrics({"x": 1.0}, step=0)
        tracker.log_epoch(0, {"x": 1.0})
        tracker.set_tags({"a": "b"})
        assert tracker.log_history({0: {"x": 1.0}}) == [] and tracker.tag_value("a") is None
    assert tracker.run_id is None
    assert mlflow.active_run() is None
    assert len(MlflowClient().search_experiments()) == before


def test_logged_model_takes_any_batch_and_image_size() -> None:
    model = build_model(TrainConfig(pretrained=False)).to(memory_format=torch.channels_last)
    with _owner() as tracker:
        uri = tracker.log_model(model, image_size=96, step=4)
    assert MlflowClient().get_run(tracker.run_id).data.tags[BEST_MODEL_TAG] == uri
    loaded = mlflow.pytorch.load_model(uri)
    model.eval()
    for shape in [(1, 3, 96, 96), (5, 3, 96, 96), (3, 3, 160, 120)]:
        batch = torch.randn(shape)
        out = loaded(batch)
        assert out.shape == (shape[0], 11)
        assert torch.allclose(out, model(batch), atol=1e-4)
    logged = mlflow.get_logged_model(uri.split("/")[-1])
    assert logged.source_run_id == tracker.run_id and logged.name == "food11"


def test_gpu_info_mentions_torch() -> None:
    text = gpu_info_text()
    assert "torch " in text and "cuda available:" in text


def test_each_step_is_logged_once_whatever_restarts() -> None:
    with _owner() as first:
        first.logger.log_metrics({"val_loss": 0.9, "val_accuracy": 0.1}, step=0)
        first.logger.log_metrics({"val_loss": 0.8}, step=1)
    # A resumed training re-attaches: it re-runs epoch 1 and replays a checkpoint history holding 0..2.
    with _owner(run_id=first.run_id) as again:
        again.logger.log_metrics({"val_loss": 0.8, "val_accuracy": 0.2}, step=1)  # only val_accuracy is new at 1
        filled = again.logger.log_history({0: {"val_loss": 0.9, "val_accuracy": 0.1}, 2: {"val_loss": 0.7}})
    assert filled == [2]
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "val_loss")] == [
        (0, 0.9),
        (1, 0.8),
        (2, 0.7),
    ]
    assert [m.step for m in client.get_metric_history(first.run_id, "val_accuracy")] == [0, 1]
    assert _status(first.run_id) == "FINISHED"


def test_a_worker_attaches_logs_and_never_ends_the_run() -> None:
    owner = _owner()
    owner.start()
    try:
        with RunLogger(str(owner.run_id)) as worker:
            worker.log_metrics({"train_loss": 1.5}, step=0)
            worker.set_tags({"mltrain.ray.restarts": "0"})
            # System metrics are sampled every second in the tests (conftest): wait for the first sample.
            wait_for(lambda: "system/cpu_utilization_percentage" in _metrics(owner.run_id), "a system metrics sample")
        assert _status(owner.run_id) == "RUNNING"  # the worker left the run to its owner
    finally:
        owner.end("FINISHED")
    run = MlflowClient().get_run(owner.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] == 1.5
    assert "system/cpu_utilization_percentage" in run.data.metrics  # the worker's machine, sampled into the run
    assert run.data.tags["mltrain.ray.restarts"] == "0"
    with pytest.raises(ValueError):
        RunLogger("")
    with pytest.raises(TrackingError):
        RunLogger("0" * 32).attach()


def test_a_worker_shorter_than_the_sampling_interval_still_samples_its_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "60")
    owner = _owner()
    owner.start()
    try:
        for _ in range(2):  # a restarted worker goes on from the run's last sample
            with RunLogger(str(owner.run_id)) as worker:
                worker.log_metrics({"train_loss": 1.5}, step=0)
    finally:
        owner.end("FINISHED")
    history = MlflowClient().get_metric_history(owner.run_id, "system/cpu_utilization_percentage")
    assert sorted(point.step for point in history) == [0, 1]
    # The process that owns a run samples its machine the same way, also when it is resumed.
    with _owner(system_metrics=True) as new:
        new.logger.log_metrics({"train_loss": 1.0}, step=0)
    with _owner(run_id=owner.run_id, system_metrics=True) as resumed:
        resumed.logger.log_metrics({"train_loss": 1.0}, step=1)
    for run_id, steps in ((new.run_id, [0]), (owner.run_id, [0, 1, 2])):
        history = MlflowClient().get_metric_history(run_id, "system/cpu_utilization_percentage")
        assert sorted(point.step for point in history) == steps
