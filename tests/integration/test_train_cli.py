"""`mltrain train` as a user runs it: a subprocess on a tiny synthetic set, read back from MLflow."""

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.engines.checkpoint import load_checkpoint
from mltrain.tracking import open_client
from tests.helpers import MLTRAIN, TINY_TRAIN, run_cli

pytestmark = pytest.mark.integration


def _only_run(experiment: str = metrics.EXPERIMENT):
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.timeout(300)
def test_train_logs_everything(tiny_data: Path) -> None:
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--no-progress")
    assert done.returncode == 0, done.stderr
    run = _only_run()
    assert run.info.status == "FINISHED"
    assert f"run {run.info.run_id}" in done.stdout and "test_accuracy" in done.stdout

    # every config key as a param, with the resolved values
    expected = TrainConfig.build(overrides=TINY_TRAIN[1::2]).to_params()
    assert {k: run.data.params[k] for k in expected} == expected

    client = MlflowClient()
    for key in metrics.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    for key in (*metrics.FINAL_METRICS, metrics.SKIPPED_IMAGES):
        assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
    assert run.data.metrics[metrics.SKIPPED_IMAGES] == 0
    # From the command to the first step, logged once (its clock: tests/unit/test_cli.py; its size: benchmarks/).
    startup = client.get_metric_history(run.info.run_id, metrics.STARTUP)
    assert [m.step for m in startup] == [0] and startup[0].value > 0, startup
    assert 0 <= run.data.metrics[metrics.DATA_WAIT_FRACTION] <= 1
    system = [k for k in run.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {metrics.GPU_INFO_ARTIFACT, metrics.CONFIG_ARTIFACT} <= artifacts
    gpu_info = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{metrics.GPU_INFO_ARTIFACT}")
    assert "torch" in gpu_info

    assert run.data.tags["mltrain.version"]
    model_uri = run.data.tags["mltrain.best_model_uri"]
    model = mlflow.pytorch.load_model(model_uri)
    assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 11)
    assert model(torch.zeros(1, 3, 100, 80)).shape == (1, 11)
    logged = mlflow.get_logged_model(model_uri.split("/")[-1])
    assert logged.source_run_id == run.info.run_id and logged.name == metrics.MODEL_NAME
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 3, -1, -1)
    assert info.saved_input_example_info is not None


def _start_long_training(data: Path) -> subprocess.Popen:
    args = [*TINY_TRAIN, "--set", "total_epochs=200", "--set", "patience=200"]
    return subprocess.Popen(
        [*MLTRAIN, "train", "--data", str(data), *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        # A harness may start us with SIGINT ignored (background jobs); a terminal user's process is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_first_epoch(
    process: subprocess.Popen, timeout: float = 180, files: tuple[str, ...] = ("checkpoint.pt",)
) -> str:
    """The id of the run once its first epoch is logged and ``files`` are saved in its output folder."""
    client = open_client()  # the training may be creating the store right now
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        exp = client.get_experiment_by_name(metrics.EXPERIMENT) if Path("mlflow.db").exists() else None
        if exp is not None:
            for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'"):
                saved = all((Path("outputs") / run.info.run_id / name).is_file() for name in files)
                if metrics.VAL_LOSS in run.data.metrics and saved:
                    return run.info.run_id
        time.sleep(0.5)
    raise AssertionError("training did not reach its first epoch in time")


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_ends_the_run_killed_and_names_the_resume(tiny_data: Path, sig: signal.Signals, exit_code: int) -> None:
    process = _start_long_training(tiny_data)
    try:
        run_id = _wait_for_first_epoch(process)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, stderr
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    folder = Path("outputs") / run_id
    assert (folder / "checkpoint.pt").is_file()  # nothing lost: the run can be resumed
    assert f"run {run_id} ended KILLED" in stderr and f"mltrain train --resume {folder}" in stderr

    # a new training starts cleanly afterwards
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--no-progress")
    assert done.returncode == 0, done.stderr
    statuses = sorted(
        r.info.status
        for r in MlflowClient().search_runs([MlflowClient().get_experiment_by_name(metrics.EXPERIMENT).experiment_id])
    )
    assert statuses == ["FINISHED", "KILLED"]


@pytest.mark.timeout(400)
def test_resume_continues_the_interrupted_run_exactly(tiny_data: Path) -> None:
    process = _start_long_training(tiny_data)
    try:
        run_id = _wait_for_first_epoch(process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    folder = Path("outputs") / run_id
    client = MlflowClient()
    before = client.get_run(run_id)

    refused = run_cli("train", "--resume", str(folder), "--set", "image_size=96", "--no-progress")
    assert refused.returncode == 2 and "image_size" in refused.stderr and "64" in refused.stderr, refused.stderr
    after = client.get_run(run_id)
    assert (after.info.status, after.data.tags, after.data.params) == (
        before.info.status,
        before.data.tags,
        before.data.params,
    )

    done_epochs = load_checkpoint(folder)["state"].next_epoch
    total = done_epochs + 2
    # The README's short form: no --data (the checkpoint remembers it), only what changes.
    resumed = run_cli("train", "--resume", str(folder), "--set", f"total_epochs={total}", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and f"run {run_id}" in resumed.stdout
    for key in metrics.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(total)), key
    assert run.data.params == before.data.params
    assert run.data.tags["mltrain.resume.1"] == f"total_epochs: 200 -> {total}"

    # the same training without a stop gives the same numbers, epoch for epoch
    args = [*TINY_TRAIN, "--set", f"total_epochs={total}", "--set", "patience=200", "--experiment", "reference"]
    reference = run_cli("train", "--data", str(tiny_data), *args, "--no-progress")
    assert reference.returncode == 0, reference.stderr
    reference_id = _only_run("reference").info.run_id
    for key in (metrics.TRAIN_LOSS, metrics.VAL_LOSS):
        values = [sorted(client.get_metric_history(r, key), key=lambda m: m.step) for r in (run_id, reference_id)]
        assert [m.value for m in values[0]] == pytest.approx([m.value for m in values[1]], rel=1e-6), key


@pytest.mark.timeout(300)
def test_bad_files_are_skipped_and_counted(tiny_copy: Path) -> None:
    train_dir = tiny_copy / "training"
    good = (train_dir / "class_00" / "0_0.jpg").read_bytes()
    (train_dir / "class_01" / "corrupt.jpg").write_bytes(good[:200])
    (train_dir / "class_02" / "empty.jpg").write_bytes(b"")
    (train_dir / "class_03" / "notes.txt").write_text("this is not an image")
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(train_dir / "class_04" / "alpha.png")
    Image.fromarray(np.full((40, 40), 90, dtype=np.uint8), "L").save(tiny_copy / "validation" / "class_05" / "gray.jpg")
    palette = Image.fromarray(np.full((40, 40, 3), 30, dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tiny_copy / "evaluation" / "class_06" / "palette.png")

    done = run_cli("train", "--data", str(tiny_copy), *TINY_TRAIN, "--no-progress")
    assert done.returncode == 0, done.stderr
    run = _only_run()
    assert run.info.status == "FINISHED"
    assert run.data.metrics[metrics.SKIPPED_IMAGES] == 3
    for name in ("corrupt.jpg", "empty.jpg", "notes.txt"):
        assert name in done.stderr  # each skipped file is named in a warning
    assert "skipped images 3" in done.stdout


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB tmpfs: room for the tiny set's 64 px cache (1.1 MB), not for its 160 px training split (3.4 MB)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.timeout(300)
def test_a_full_disk_is_a_clear_error_before_any_run(tiny_data: Path, small_disk: Path) -> None:
    cache = small_disk / "cache"
    env = {"MLTRAIN_CACHE_DIR": str(cache)}
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--set", "image_size=160", "--no-progress", env=env)
    # Before, the cache file was sparse: the write that found the disk full killed the process with SIGBUS.
    assert done.returncode == 2, done.stderr
    assert "no room on disk for the image cache" in done.stderr and "MLTRAIN_CACHE_DIR" in done.stderr, done.stderr
    assert not list(cache.rglob("images.u8")) and not list(cache.rglob("*.tmp"))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(metrics.EXPERIMENT)
    assert experiment is None or not client.search_runs([experiment.experiment_id])

    # The same disk holds the 64 px cache, not the 128 MB hue tables: the training runs on PIL's hue.
    done = run_cli("train", "--data", str(tiny_data), *TINY_TRAIN, "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    assert "using PIL's slower hue conversion" in done.stderr and "no room on disk for the hue tables" in done.stderr
    assert _only_run().info.status == "FINISHED"
