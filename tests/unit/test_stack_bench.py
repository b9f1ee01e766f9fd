"""`mltrain stack bench` without a server: the plan's checks, the latency summary, the stored-point count,
the report, and the CLI's answer to a URI that is no tracking server."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mltrain.errors import MltrainError
from mltrain.stack_bench import (
    Call,
    ClientResult,
    LoadPlan,
    LoadResult,
    Stored,
    count_stored,
    latency_summary,
    read_back,
    run_load,
    write_json,
)
from tests.helpers import call_cli


@pytest.mark.parametrize(
    "change",
    [
        {"clients": 0},
        {"epochs": 0},
        {"epoch_seconds": -1},
        {"system_interval": -0.5},
        {"artifact_every": -1},
        {"params": 101},
        {"retries": -1},
        {"experiment": ""},
    ],
)
def test_plan_rejects_impossible_values(change: dict) -> None:
    with pytest.raises(MltrainError, match="load plan: expected"):
        LoadPlan(**change)


def test_latency_summary_in_milliseconds() -> None:
    summary = latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == pytest.approx(100)
    assert latency_summary([0.25]) == dict.fromkeys(("p50", "p90", "p99", "max"), 250.0)
    assert all(math.isnan(value) for value in latency_summary([]).values())


def test_count_stored_finds_each_point_by_step_and_value() -> None:
    logged = {"train_loss": {0: 0.5, 1: 0.25}, "val_loss": {0: 0.75}}
    assert count_stored(logged, {"train_loss": {(0, 0.5), (1, 0.25)}, "val_loss": {(0, 0.75)}}) == 3
    assert count_stored(logged, {"train_loss": {(0, 0.5), (1, 0.3)}}) == 1, "a wrong value or a lost key counts"


class _FakeServer:
    """Holds runs as the MLflow client returns them, minus whatever a test drops."""

    def __init__(self, results: list[ClientResult], drop_point: bool = False, unfinished: bool = False) -> None:
        self.results = {r.run_id: r for r in results}
        self.drop_point, self.unfinished = drop_point, unfinished

    def get_run(self, run_id: str):
        from types import SimpleNamespace

        result = self.results[run_id]
        status = "RUNNING" if self.unfinished else "FINISHED"
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(params=dict(result.params)))

    def get_metric_history(self, run_id: str, key: str):
        from types import SimpleNamespace

        points = sorted(self.results[run_id].metrics[key].items())
        if self.drop_point and key == "train_loss":
            points = points[1:]
        return [SimpleNamespace(step=step, value=value) for step, value in points]

    def list_artifacts(self, run_id: str, path: str):
        from types import SimpleNamespace

        return [SimpleNamespace(path=name) for name in self.results[run_id].artifacts]


def _results() -> list[ClientResult]:
    return [
        ClientResult(
            index=i,
            run_id=f"run{i}",
            calls=[Call("epoch", 100.0 + i, 0.2)],
            metrics={"train_loss": {0: 0.5, 1: 0.4}, "system/cpu_utilization_percentage": {0: 12.5}},
            params={"param_00": "1"},
            artifacts=["load/epoch-0001.txt"],
        )
        for i in range(2)
    ]


def test_read_back_counts_what_the_server_holds() -> None:
    results = _results()
    full = read_back(_FakeServer(results), results)
    assert full == Stored(6, 6, 2, 2, 2, 2, 2, 2, calls=2 * 4) and full.complete

    lossy = read_back(_FakeServer(results, drop_point=True), results)
    assert (lossy.points_logged, lossy.points_stored) == (6, 4) and not lossy.complete
    assert not read_back(_FakeServer(results, unfinished=True), results).complete
    no_run = [*results, ClientResult(index=2, metrics={"train_loss": {0: 1.0}})]  # its create_run failed
    stored = read_back(_FakeServer(results), no_run)
    assert (stored.runs, stored.runs_finished, stored.points_logged, stored.points_stored) == (3, 2, 7, 6)


def test_report_and_json(tmp_path: Path) -> None:
    calls = [Call("epoch", 100.0, 0.1), Call("epoch", 100.5, 0.3), Call("system", 101.0, 0.2, "system: boom")]
    result = LoadResult(
        plan=LoadPlan(clients=2, epochs=1),
        tracking_uri="http://127.0.0.1:5000",
        calls=calls,
        seconds=1.5,
        stored=Stored(10, 10, 2, 2, 0, 0, 2, 2, calls=6),
        client_cpu_seconds=0.3,
        retried=1,
        retry_reasons=["Retry: /api/2.0/mlflow/runs/log-batch"],
        users=2,
    )
    assert result.errors == 1 and not result.ok
    assert result.calls_per_second == pytest.approx(2.0)
    table = result.table()
    assert "| epoch | 2 | 0 | 200 |" in table and "| system | 1 | 1 |" in table and "| all | 3 | 1 |" in table
    assert "2.0 calls/s, errors 1, retried requests 1" in table and "error: system: boom" in table
    assert "retried: Retry: /api/2.0/mlflow/runs/log-batch" in table
    saved = json.loads(write_json(result, tmp_path / "load.json").read_text())
    assert saved["calls"] == 3 and saved["errors"] == 1 and saved["ok"] is False
    assert saved["latency_ms"]["epoch"]["p50"] == pytest.approx(200)


def test_run_load_wants_a_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MltrainError, match=r"http:// or https://.*found 'sqlite:///mlflow.db'"):
        run_load("sqlite:///mlflow.db", LoadPlan())
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(MltrainError, match="found None"):
        run_load(None, LoadPlan())


def test_cli_refuses_a_store_that_is_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "stack", "bench", "--clients", "2")  # isolated_env points MLFLOW_TRACKING_URI at sqlite
    assert done.returncode == 2
    assert done.stderr.startswith("error: expected the URI of a tracking server") and "Traceback" not in done.stderr
    bad = call_cli(capsys, "stack", "bench", "--tracking-uri", "http://127.0.0.1:9", "--clients", "0")
    assert bad.returncode == 2 and "clients >= 1" in bad.stderr
