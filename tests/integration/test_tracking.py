"""The run helper process and processes sharing one MLflow store: a starter, spawned writers, new stores at once."""

import multiprocessing
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from mltrain.errors import TrackingError
from mltrain.tracking import RunLogger, open_client
from mltrain.tracking.starter import RunStarter
from tests.unit.test_tracking import _owner

pytestmark = pytest.mark.integration


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
        for thread in threading.enumerate():  # until the warm-up behind the loop has ended
            if thread.name == "mltrain-mlflow-warm-up":
                thread.join(timeout=60)
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
