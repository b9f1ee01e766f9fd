"""The team tracking server for real: `mltrain train` against MLflow with basic auth, PostgreSQL and S3;
a server outage in the middle of a training; the registry notebook run against the server."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from mltrain import metrics
from tests.helpers import MLTRAIN, REPO, TINY_TRAIN, run_cli, wait_for
from tests.integration.team.servers import BUCKET, S3, TrackingServer

pytestmark = pytest.mark.integration

RUN_ID = re.compile(r"\brun ([0-9a-f]{32})\b")
NOTEBOOK = REPO / "examples" / "registry_api.ipynb"


def _run_id(stdout: str) -> str:
    found = RUN_ID.search(stdout)
    assert found, f"no run id in the trainer's output:\n{stdout}"
    return found.group(1)


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _a_running_run_has_epochs(client: MlflowClient) -> bool:
    experiment = client.get_experiment_by_name(metrics.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
    return any(metrics.VAL_LOSS in run.data.metrics for run in runs)


@pytest.fixture
def finished_run(team_env: dict[str, str], tiny_data: Path) -> str:
    """A FINISHED training run on the server: an earlier test's, or a fresh one."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(metrics.EXPERIMENT)
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=1)
        if runs:
            return runs[0].info.run_id
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--no-progress", env=team_env)
    assert done.returncode == 0, done.stderr
    return _run_id(done.stdout)


@pytest.mark.timeout(420)  # includes starting PostgreSQL, S3 and the server for the session
def test_train_against_team_server(
    tracking_server: TrackingServer, s3: S3, team_env: dict[str, str], tiny_data: Path
) -> None:
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--no-progress", env=team_env)
    assert done.returncode == 0, done.stderr
    run_id = _run_id(done.stdout)

    # Over REST, as any client sees it: FINISHED, params, metrics, artifacts proxied by the server.
    answer = requests.get(
        f"{tracking_server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=tracking_server.auth
    )
    assert answer.status_code == 200, answer.text
    run = answer.json()["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["total_epochs"] == "2" and params["image_size"] == "64"
    logged = {m["key"] for m in run["data"]["metrics"]}
    assert {*metrics.EPOCH_METRICS, *metrics.FINAL_METRICS} <= logged
    client = MlflowClient()
    for key in metrics.EPOCH_METRICS:
        assert _steps(client, run_id, key) == [0, 1], key

    # The files landed as objects in the bucket, not on the server's disk.
    keys = s3.keys(BUCKET)
    assert any(key.endswith(f"{run_id}/artifacts/{metrics.GPU_INFO_ARTIFACT}") for key in keys), keys
    assert any(key.endswith("/MLmodel") for key in keys), keys
    assert not (tracking_server.workdir / "mlartifacts").exists()

    # Basic auth is on: no or wrong credentials are refused; the health check stays open.
    anonymous = requests.get(f"{tracking_server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id})
    assert anonymous.status_code == 401
    wrong = requests.get(
        f"{tracking_server.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, auth=("admin", "not-it")
    )
    assert wrong.status_code == 401
    assert requests.get(f"{tracking_server.url}/health").status_code == 200

    # A per-user account, made through the auth API as docs/TEAM_SERVER.md shows, can read and (with
    # basic_auth.ini's default EDIT permission) log into the shared experiment's runs.
    member = ("alice", "alice-" + os.urandom(8).hex())
    created = requests.post(
        f"{tracking_server.url}/api/2.0/mlflow/users/create",
        json={"username": member[0], "password": member[1]},
        auth=tracking_server.auth,
    )
    assert created.status_code == 200, created.text
    assert requests.get(answer.url, auth=member).status_code == 200
    logged_by_member = requests.post(
        f"{tracking_server.url}/api/2.0/mlflow/runs/log-metric",
        json={"run_id": run_id, "key": "reviewed", "value": 1, "timestamp": int(time.time() * 1000), "step": 0},
        auth=member,
    )
    assert logged_by_member.status_code == 200, logged_by_member.text


@pytest.mark.timeout(600)
def test_training_keeps_training_through_a_server_outage(
    tracking_server: TrackingServer, team_env: dict[str, str], tiny_data: Path, tmp_path: Path
) -> None:
    """The server goes down once the training has logged into its run, and stays down until the training has
    finished epochs without it: with logging in the loop's way (synchronous calls retrying for minutes) none
    would finish, and the wait below would time out. Then the server comes back and every epoch reaches the
    run once. How fast the loop goes through an outage is measured by benchmarks/outage.py, not asserted."""
    epochs, during_outage = 40, 3
    # --verbose: MLflow's own INFO lines show how its system-metrics thread ended (checked below).
    args = [*TINY_TRAIN, "--set", f"total_epochs={epochs}", "--set", f"patience={epochs}", "--no-progress", "--verbose"]
    stderr_file = tmp_path / "trainer.stderr"
    with stderr_file.open("w") as stderr_sink:
        trainer = subprocess.Popen(
            [*MLTRAIN, "train", "--data", str(tiny_data), *args],
            stdout=subprocess.PIPE,
            stderr=stderr_sink,
            text=True,
            env={**os.environ, **team_env},
        )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(trainer.stdout), daemon=True).start()

    def epochs_printed() -> int:
        return sum(1 for line in list(lines) if re.match(rf"epoch\s+\d+/{epochs} ", line))

    def still_training(what: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            assert trainer.poll() is None, f"the training ended early:\n{''.join(lines)}"
            return what()

        return check

    client = MlflowClient()
    try:
        # The process attached to its run (it does so once MLflow has loaded behind the loop) ...
        wait_for(still_training(lambda: _a_running_run_has_epochs(client)), "an epoch in the run", timeout=240)
        tracking_server.kill()
        killed_after = epochs_printed()
        # ... and trains on without the server.
        wait_for(
            still_training(lambda: epochs_printed() >= killed_after + during_outage),
            f"{during_outage} epochs trained while the server is down",
            timeout=180,
        )
        during = epochs_printed() - killed_after
        tracking_server.start()
        trainer.wait(timeout=400)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    stdout, stderr = "".join(lines), stderr_file.read_text()
    assert trainer.returncode == 0, f"{stdout}\n{stderr}"
    assert epochs_printed() == epochs and killed_after + during < epochs, stdout

    run_id = _run_id(stdout)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in metrics.EPOCH_METRICS:
        assert _steps(client, run_id, key) == list(range(epochs)), key
    for key in metrics.FINAL_METRICS:
        assert len(client.get_metric_history(run_id, key)) == 1, key
    # Every epoch says how long its loop spent in tracking calls (the outage's epochs too).
    assert _steps(client, run_id, metrics.TRACKING_BLOCKED) == list(range(epochs))
    # The system-metrics thread waited out the outage (its requests retried too) and ended with the run.
    assert client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert "Failed to get mlflow run" not in stderr and "Failed to log system metrics" not in stderr, stderr
    assert "Successfully terminated system metrics monitoring" in stderr, stderr


@pytest.mark.timeout(300)
def test_registry_notebook_against_team_server(finished_run: str, team_env: dict[str, str], tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env={**os.environ, **team_env})  # raises CellExecutionError on any failing cell

    pulled = list((tmp_path / "models").rglob("MLmodel"))
    assert pulled, "the notebook pulled no model into ./models"
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "torch.Size([2, 11])" in text, text
