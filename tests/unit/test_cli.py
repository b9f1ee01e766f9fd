"""The command line's contract: usage errors exit 2 with one message, never a traceback."""

import subprocess
import sys
import time

import pytest

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


def test_the_process_start_is_known_to_the_hundredth_of_a_second() -> None:
    # startup_seconds counts from it; psutil's create_time is off by up to a second (boot time in whole seconds).
    probe = "import time; from mltrain import env; print(time.time() - env.process_started_at())"
    launched = time.time()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    age = float(done.stdout)
    assert -0.02 < age < time.time() - launched + 0.02, (age, time.time() - launched)


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
        (["--engine", "ray", "--accelerator", "gpu"], "needs GPUs per worker"),
    ],
)
def test_launcher_mistakes_exit_2_before_any_run(
    argv: list[str], message: str, tiny_data: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["train", "--data", str(tiny_data), "--set", "pretrained=false", *argv])
    assert raised.value.code == 2 and message in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    assert not MlflowClient().search_experiments(filter_string="name = 'food11-classifier'")
