"""`mltrain train --engine lightning` as a user runs it: subprocesses on a tiny set, read back from MLflow.

The engines must log the same things, so that their runs compare side by side: the same params (the
config) and the same metric keys at the same steps.
"""

import signal
import subprocess
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.engines.checkpoint import load_checkpoint
from tests.helpers import MLTRAIN, TINY_TRAIN, run_cli
from tests.integration.test_train_cli import _wait_for_first_epoch

pytestmark = pytest.mark.integration

LIGHTNING = ["--engine", "lightning", "--accelerator", "cpu"]
HEAD_ONLY = 1280 * 11 + 11  # MobileNetV2's last_channel x 11 classes + bias


def _all_runs() -> list[Run]:
    """Runs in every experiment: a worker process must not have started one anywhere."""
    client = MlflowClient()
    return client.search_runs([exp.experiment_id for exp in client.search_experiments()])


def _train(data: Path, *args: str, experiment: str = metrics.EXPERIMENT) -> subprocess.CompletedProcess:
    done = run_cli("train", "--data", str(data), *TINY_TRAIN, *args, "--experiment", experiment, "--no-progress")
    assert done.returncode == 0, done.stderr
    return done


def _assert_logged_like_the_plain_engine(run: Run, stdout: str, devices: int) -> None:
    client = MlflowClient()
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert f"run {run_id}" in stdout and "test_accuracy" in stdout

    overrides = [*TINY_TRAIN[1::2], "engine=lightning", "accelerator=cpu", f"devices={devices}"]
    expected = TrainConfig.build(overrides=overrides).to_params()
    assert {key: run.data.params[key] for key in expected} == expected
    assert set(run.data.params) == set(expected)  # the config, nothing else: a resume never changes a param

    for key in metrics.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1], key
    for key in (*metrics.FINAL_METRICS, metrics.SKIPPED_IMAGES):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    trainable = {m.step: m.value for m in client.get_metric_history(run_id, metrics.TRAINABLE_PARAMS)}
    assert trainable[0] == HEAD_ONLY and trainable[1] > 2_000_000  # backbone frozen, then trained
    assert 0 <= run.data.metrics[metrics.DATA_WAIT_FRACTION] <= 1
    assert "system/cpu_utilization_percentage" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {metrics.GPU_INFO_ARTIFACT, metrics.CONFIG_ARTIFACT} <= artifacts

    model_uri = run.data.tags["mltrain.best_model_uri"]
    model = mlflow.pytorch.load_model(model_uri)
    assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 11)
    assert model(torch.zeros(1, 3, 100, 80)).shape == (1, 11)
    logged = mlflow.get_logged_model(model_uri.split("/")[-1])
    assert logged.source_run_id == run_id and logged.name == metrics.MODEL_NAME

    assert not (Path("outputs") / "None").exists()  # a worker, which does not know the run id, wrote nothing
    assert {"best.ckpt", "last.ckpt", "checkpoint.pt", metrics.CONFIG_ARTIFACT} <= {
        path.name for path in (Path("outputs") / run_id).iterdir()
    }


@pytest.mark.timeout(240)
def test_two_processes_make_one_run(tiny_data: Path) -> None:
    done = _train(tiny_data, *LIGHTNING, "--devices", "2")
    runs = _all_runs()
    assert len(runs) == 1
    assert "worker process finished" in done.stdout  # a second process (rank 1) really trained, and said so
    _assert_logged_like_the_plain_engine(runs[0], done.stdout, devices=2)


@pytest.mark.timeout(360)
def test_one_device_logs_the_same_keys_as_the_torch_engine(tiny_data: Path) -> None:
    done = _train(tiny_data, *LIGHTNING, "--devices", "1", experiment="lightning")
    _train(tiny_data, "--engine", "torch", experiment="torch")
    runs = {run.data.tags["mltrain.engine"]: run for run in _all_runs()}
    assert len(runs) == 2
    lightning, plain = runs["lightning"], runs["torch"]
    assert "worker process finished" not in done.stdout
    _assert_logged_like_the_plain_engine(lightning, done.stdout, devices=1)

    assert set(plain.data.params) == set(lightning.data.params)
    assert set(lightning.data.metrics) == set(plain.data.metrics)
    client = MlflowClient()
    for key in (*metrics.EPOCH_METRICS, *metrics.FINAL_METRICS):
        steps = [[m.step for m in client.get_metric_history(run.info.run_id, key)] for run in (lightning, plain)]
        assert steps[0] == steps[1], key


@pytest.mark.timeout(300)
def test_ctrl_c_ends_the_run_killed_and_stops_every_process(tiny_data: Path) -> None:
    args = [*TINY_TRAIN, *LIGHTNING, "--devices", "2", "--set", "total_epochs=200", "--set", "patience=200"]
    process = subprocess.Popen(
        [*MLTRAIN, "train", "--data", str(tiny_data), *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A harness may start us with SIGINT ignored (background jobs); a terminal user's process is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        run_id = _wait_for_first_epoch(process, files=("checkpoint.pt", "last.ckpt"))
        children = psutil.Process(process.pid).children(recursive=True)  # rank 1 and the loader workers
        assert any("mltrain" in " ".join(child.cmdline()) for child in children)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    assert len(_all_runs()) == 1
    folder = Path("outputs") / run_id
    for name in ("checkpoint.pt", "last.ckpt"):  # nothing lost: `--resume outputs/<run_id>` continues
        assert (folder / name).is_file()
    assert f"mltrain train --resume {folder}" in stderr

    # Two processes again (the checkpoint's devices=2), the same run, each epoch once.
    total = load_checkpoint(folder)["state"].next_epoch + 1
    resumed = run_cli("train", "--resume", str(folder), "--set", f"total_epochs={total}", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "worker process finished" in resumed.stdout  # two processes again
    assert len(_all_runs()) == 1 and MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in metrics.EPOCH_METRICS:
        assert [m.step for m in MlflowClient().get_metric_history(run_id, key)] == list(range(total)), key
