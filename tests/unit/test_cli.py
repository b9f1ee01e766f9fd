"""The command line's contract: usage errors exit 2 with one message, never a traceback."""

import io
import os
from typing import Any

import psutil
import pytest

from mltrain import env
from mltrain.cli import SUBCOMMANDS, app, main


@pytest.mark.parametrize(
    "argv",
    [["train", "--bogus"], ["bench", "--epochs", "two"], ["no-such-command"], ["train", "--set", "lr=-1"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_every_subcommand_has_an_example_in_its_help() -> None:
    for _group, name, function in SUBCOMMANDS:
        assert "Example" in (function.__doc__ or ""), name
    assert app.info.name == "mltrain"


def test_the_process_start_is_read_to_the_clock_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    # startup_seconds counts from it; psutil's create_time is off by up to a second (boot time in whole seconds).
    # /proc/self/stat's field 22 is the start in clock ticks since boot; a process name may hold ") " and spaces.
    stat = "4242 (a) b (c) S " + " ".join(["0"] * 18) + " 12345 " + " ".join(["0"] * 30)
    files = {"/proc/self/stat": stat, "/proc/uptime": "200.50 390.00"}

    real_open = open

    def fake_open(path: str, *args: Any, **kwargs: Any) -> Any:
        if path not in ("/proc/self/stat", "/proc/uptime"):
            return real_open(path, *args, **kwargs)  # psutil's own reads
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(env.os, "sysconf", lambda name: 100 if name == "SC_CLK_TCK" else os.sysconf(name))
    monkeypatch.setattr(env.time, "time", lambda: 1000.0)
    assert env.process_started_at() == pytest.approx(1000.0 - (200.50 - 123.45))

    files.clear()  # no /proc (macOS): psutil's create_time
    assert env.process_started_at() == psutil.Process().create_time()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--workers", "1-2", "--cpus-per-worker", "1", "--launcher", "local"],
            "--workers, --cpus-per-worker: options",
        ),
        (["--set", "workers=2"], "workers=2 needs the Ray launcher"),
        (["--launcher", "ray", "--engine", "torch"], "the Ray launcher trains with the lightning engine"),
        (["--launcher", "slurm"], "unknown launcher 'slurm'; choose one of local, ray"),
        # ["--engine", "ray", "--accelerator", "gpu"]: the launcher's own check, in run_training (tests/integration)
    ],
)
def test_launcher_mistakes_exit_2_before_any_run(
    argv: list[str], message: str, tiny_data: object, capsys: pytest.CaptureFixture[str]
) -> None:
    _exits_2_before_any_run(argv, message, tiny_data, capsys)


def _exits_2_before_any_run(
    argv: list[str], message: str, tiny_data: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mltrain train ARGV`` on the tiny set exits 2 with ``message`` and makes no experiment."""
    with pytest.raises(SystemExit) as raised:
        main(["train", "--data", str(tiny_data), "--set", "pretrained=false", *argv])
    assert raised.value.code == 2 and message in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    assert not MlflowClient().search_experiments(filter_string="name = 'food11-classifier'")


def test_ui_on_a_tracking_server_prints_the_link_into_its_ui_and_serves_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Serving would start `mlflow ui`: the unit tier's guard would fail the test.
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from tests.helpers import call_cli

    server = "http://mlflow.example:5000"
    answers: list[object] = [SimpleNamespace(experiment_id="7"), RuntimeError("server down")]
    asked = []

    def by_name(client: MlflowClient, name: str) -> object:
        asked.append((client.tracking_uri, name))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", by_name)
    view, query = "on the model-training view", "workflowType=machine_learning"
    done = call_cli(capsys, "ui", "--tracking-uri", server, "--experiment", "mine")  # wins over MLFLOW_TRACKING_URI
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"runs are tracked on a server; its UI, {view}: {server}/#/experiments/7?{query}\n"
    assert asked == [(server, "mine")]
    # The server cannot say which experiment: the link opens its list of experiments.
    done = call_cli(capsys, "ui", "--tracking-uri", server)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"runs are tracked on a server; its UI, {view}: {server}/#/experiments?{query}\n"
    assert asked[-1] == (server, "food11-classifier")
