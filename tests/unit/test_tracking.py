import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mltrain.config import TrainConfig
from mltrain.errors import TrackingError, TrainingInterrupted
from mltrain.model import build_model
from mltrain.tracking import BEST_MODEL_TAG, NullLogger, RunLogger, RunOwner, RunSpec, gpu_info_text, open_client
from mltrain.tracking.starter import RunStarter


def _status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


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
            time.sleep(2.5)  # system metrics are sampled every second in the tests (conftest)
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


def test_the_helper_creates_the_run_and_the_tracker_attaches_once_mlflow_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starter = RunStarter("helped", None)
    try:
        created = starter.create({"mltrain.engine": "torch"}, run_name="first")
    finally:
        starter.close()
    run = MlflowClient().get_run(created.run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "first"
    assert run.info.experiment_id == created.experiment_id
    assert run.data.tags["mltrain.engine"] == "torch" and run.data.tags["mlflow.source.type"] == "LOCAL"
    assert run.data.tags["mlflow.source.name"] == sys.argv[0]  # the training's command, not the helper's
    assert "mlflow.user" in run.data.tags  # the context tags mlflow.start_run would set

    recorded: list[str] = []
    loaded = threading.Event()
    monkeypatch.setattr(RunLogger, "_warm_up", lambda self: loaded.wait(60))  # MLflow "loads" until told
    owner = _owner(created.run_id, "helped", fresh=True, deferred=True, experiment_id=created.experiment_id)
    with owner:
        tracker = owner.logger
        tracker.when_attached(lambda: recorded.append("start records"))
        tracker.when_attached(lambda: tracker.log_params({"lr": 0.1}))
        tracker.training_started(0)  # MLflow loads behind the loop from now on
        tracker.log_epoch(0, {"val_loss": 1.0})  # still loading: the epoch is kept, the loop does not wait
        assert recorded == [] and not MlflowClient().get_metric_history(created.run_id, "val_loss")
        loaded.set()
        time.sleep(0.5)
        tracker.log_epoch(1, {"val_loss": 0.9})  # loaded: attaches, records the start, sends both epochs
        assert recorded == ["start records"]
    run = MlflowClient().get_run(created.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert [m.step for m in MlflowClient().get_metric_history(created.run_id, "val_loss")] == [0, 1]
    assert tracker.blocked_seconds > 0  # attaching is counted as time the loop waited for tracking


def test_a_lazy_run_interrupted_before_its_first_use_still_ends_killed_with_its_records() -> None:
    starter = RunStarter("helped", None)
    created = starter.create({})
    starter.close()
    owner = _owner(created.run_id, "helped", fresh=True, deferred=True, experiment_id=created.experiment_id)
    with pytest.raises(KeyboardInterrupt), owner:
        owner.logger.when_attached(lambda: owner.logger.log_params({"lr": 0.1}))
        raise KeyboardInterrupt
    run = MlflowClient().get_run(created.run_id)
    assert run.info.status == "KILLED" and run.data.params == {"lr": "0.1"}


def test_the_helper_creates_nothing_unless_asked_and_reports_why_it_cannot() -> None:
    RunStarter("never-created", None).close()  # the training stopped before it needed its run
    assert MlflowClient().get_experiment_by_name("never-created") is None
    client = MlflowClient()
    client.delete_experiment(client.create_experiment("gone"))
    starter = RunStarter("gone", None)
    with pytest.raises(TrackingError, match="deleted"):
        starter.create({})
    starter.close()
    assert not client.search_runs([client.get_experiment_by_name("gone").experiment_id], run_view_type=3)


def _failures_at_once(target: Callable[[list, Any, Any], None], work: list[list]) -> list[str]:
    """Run ``target(items, barrier, errors)`` in one spawned process per entry of ``work``; the errors they put."""
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(len(work)), context.Queue()
    workers = [context.Process(target=target, args=(items, barrier, errors)) for items in work]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=240)
    assert [worker.exitcode for worker in workers] == [0] * len(work)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    return failures


def _record_the_dataset_at_once(run_ids: list[str], barrier: Any, errors: Any) -> None:
    """One of several processes: attach to each run in turn and record the round's dataset with the others."""
    from mltrain.tracking.datasets import Food11Dataset

    for round_, run_id in enumerate(run_ids):
        tracker = RunLogger(run_id, system_metrics=False)
        tracker.attach()
        dataset = Food11Dataset(Path("/data/Food-11"), f"{round_:016x}" * 4, {"training": [4] * 11})
        barrier.wait()
        try:
            tracker.log_dataset(dataset, "training")
        except Exception as exc:
            errors.put(f"{type(exc).__name__}: {str(exc)[:200]}")


def test_trainings_that_start_at_once_each_record_the_shared_dataset() -> None:
    # MLflow's SQL store looks a dataset up and then inserts it: without a second try, about 1 in 3 of
    # these processes hit the unique key (18 of 60 here), as 1 of 3 Ray jobs did in CI.
    client = MlflowClient()
    experiment_id = client.create_experiment("t")
    processes, rounds = 3, 12
    run_ids = [[client.create_run(experiment_id).info.run_id for _ in range(rounds)] for _ in range(processes)]
    assert _failures_at_once(_record_the_dataset_at_once, run_ids) == []
    for ids in run_ids:
        for run_id in ids:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [entry.dataset.name for entry in inputs] == ["Food-11"]
    # one dataset row per round, shared by the three runs
    digests = {
        entry.dataset.digest for ids in run_ids for i in ids for entry in client.get_run(i).inputs.dataset_inputs
    }
    assert len(digests) == rounds


def _open_new_stores_at_once(uris: list[str], barrier: Any, errors: Any) -> None:
    """One of several processes: open each new store together with the others."""
    from mltrain.tracking import open_client

    for uri in uris:
        barrier.wait()
        try:
            open_client(uri).search_experiments()
        except Exception as exc:
            errors.put(f"{type(exc).__name__}: {str(exc)[:200]}")


def test_processes_that_open_a_new_sqlite_store_at_once_all_get_it(tmp_path: Path) -> None:
    # MLflow creates a new database's tables in whichever process opens it, unguarded: without the lock,
    # 12 of 15 such opens failed here ("table ... already exists", alembic revision errors), as a test
    # watching a training's first epoch did in CI.
    uris = [f"sqlite:///{tmp_path / f'new-{round_}.db'}" for round_ in range(2)]
    assert _failures_at_once(_open_new_stores_at_once, [uris] * 3) == []
    for uri in uris:
        assert [experiment.name for experiment in open_client(uri).search_experiments()] == ["Default"]
