"""Many trainings logging to the team server at once (real PostgreSQL, S3, basic auth with the credential
cache): nothing fails and every point, parameter and file is stored. Correctness only: how fast the server
is, `mltrain stack bench` measures and docs/TEAM_SERVER.md reports."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.stack_bench import LoadPlan, run_load
from tests.helpers import run_cli
from tests.integration.team.servers import BUCKET, S3, Postgres, TrackingServer

pytestmark = pytest.mark.integration


def _auth_users(postgres: Postgres) -> set[str]:
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user="mlflow", password=postgres.password, dbname="mlflow_auth"
    ) as db:
        return {row[0] for row in db.execute("SELECT username FROM users")}


@pytest.mark.timeout(420)
def test_concurrent_trainings_with_their_own_logins_lose_nothing(
    tracking_server: TrackingServer, team_env: dict[str, str], s3: S3, postgres: Postgres
) -> None:
    users_before = _auth_users(postgres)
    plan = LoadPlan(clients=8, epochs=20, system_interval=1.0, artifact_every=10, artifact_kib=4, experiment="load")
    result = run_load(tracking_server.url, plan, own_users=True)

    assert result.errors == 0, result.table()
    assert result.users == 8
    stored = result.stored
    assert stored.complete, result.table()
    epoch_points = 8 * 20 * len(metrics.EPOCH_METRICS)
    assert stored.points_logged > epoch_points, "epoch and system metrics were both logged"
    assert stored.points_stored == stored.points_logged
    assert (stored.params_stored, stored.artifacts_stored, stored.runs_finished) == (8 * 27, 8 * 2, 8)
    assert len([c for c in result.calls if c.kind == "epoch"]) == 8 * 20

    # Independently of the benchmark's own read-back: the server's view of the experiment and the bucket.
    client = MlflowClient()
    experiment = client.get_experiment_by_name("load")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == 8 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        for key in metrics.EPOCH_METRICS:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(20)), key
    files = [key for key in s3.keys(BUCKET) if "/artifacts/load/epoch-" in key]
    assert len(files) == 8 * 2, files
    # The throwaway logins are gone again.
    assert _auth_users(postgres) == users_before


@pytest.mark.timeout(300)
def test_stack_bench_cli_against_the_server(team_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = run_cli(
        "stack", "bench", "--clients", "2", "--epochs", "3", "--artifact-every", "3", "--artifact-kib", "1",
        "--experiment", "load-cli", "--json", str(out), env=team_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| epoch | 6 | 0 |" in done.stdout and "2/2 runs FINISHED" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["ok"] is True and saved["errors"] == 0 and saved["users"] == 1
    assert saved["stored"]["points_stored"] == saved["stored"]["points_logged"] >= 2 * 3 * 7
