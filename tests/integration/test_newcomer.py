"""What a newcomer meets first: mistakes that stop before a run, the UI link, the data input, per-class results.

Each test follows a promise of the README ("Training", "Tracking", "Run a tracking server for your team") on
the tiny synthetic set, and reads the outcome back from MLflow, the console or the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from PIL import Image

from mltrain import metrics, train
from mltrain.cluster.ports import free_port
from mltrain.config import TrainConfig
from mltrain.data.layout import CLASS_NAMES, SPLITS, class_dir_name
from mltrain.data.module import CachedImages, Food11Data
from mltrain.tracking.datasets import DIGEST_LENGTH
from tests.helpers import MLTRAIN, REPO, run_cli
from tests.readme import _copy_repository

pytestmark = pytest.mark.integration

TINY = {"pretrained": False, "image_size": 32, "batch_size": 16, "initial_epochs": 1, "total_epochs": 2}
"""The smallest training that runs both phases: ~4 s in process on 2 cores."""
TINY_ARGS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={str(value).lower()}")]
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _all_runs() -> list:
    """Every run of every experiment (deleted ones too) in this test's store; none when it was never created."""
    if not Path("mlflow.db").exists():
        return []
    client = MlflowClient()
    experiments = client.search_experiments(view_type=ViewType.ALL)
    if not experiments:
        return []
    return client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)


def _images(root: Path, split: str) -> list[int]:
    """Files per class folder of a split, counted on disk (in CLASS_NAMES order)."""
    return [sum(1 for f in (root / split / class_dir_name(i)).glob("*") if f.is_file()) for i in range(11)]


def _train(data: Path, **overrides: object) -> mlflow.entities.Run:
    result = train(overrides={**TINY, **overrides}, data_dir=data, progress=False)
    return MlflowClient().get_run(result.run_id)


def _assert_stopped_before_a_run(done: subprocess.CompletedProcess, what_to_change: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and what_to_change in errors[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert _all_runs() == []
    assert not Path("outputs").exists() or not any(Path("outputs").iterdir())


# --- 1. a usage mistake stops before any run exists ---------------------------------------------------------------
@pytest.mark.timeout(120)
def test_missing_imagenet_weights_exit_2_before_a_run(tiny_data: Path, tmp_path: Path) -> None:
    """pretrained=true offline, with an empty torch cache: one error line naming the way out, nothing left behind."""
    home = tmp_path / "home"
    home.mkdir()
    offline = {
        "HOME": str(home),
        "TORCH_HOME": str(home / ".cache" / "torch"),
        # Any download fails at once: the only proxy is a closed port on loopback, and nothing bypasses it.
        **dict.fromkeys(("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"), "http://127.0.0.1:9"),
        **dict.fromkeys(("no_proxy", "NO_PROXY"), ""),
    }
    args = [*TINY_ARGS, "--set", "pretrained=true"]
    done = run_cli("train", "--data", str(tiny_data), *args, "--no-progress", env=offline, timeout=100)
    _assert_stopped_before_a_run(done, "--set pretrained=false")
    assert "ImageNet weights" in done.stderr and str(home / ".cache" / "torch") in done.stderr
    assert not any((home / ".cache" / "torch").rglob("*.pth"))  # nothing half-downloaded into the cache


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --accelerator gpu is no mistake")
@pytest.mark.parametrize(
    "devices",
    [["--accelerator", "gpu"], ["--engine", "lightning", "--devices", "4", "--accelerator", "gpu"]],
    ids=["torch", "lightning-4-gpus"],
)
def test_gpu_without_a_gpu_exits_2_before_a_run(tiny_data: Path, devices: list[str]) -> None:
    done = run_cli("train", "--data", str(tiny_data), *TINY_ARGS, *devices, "--no-progress", timeout=100)
    _assert_stopped_before_a_run(done, "accelerator=auto or cpu")


# --- 2. stack init leaves the test suite green ---------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_stack_init_keeps_the_secret_scan_green(tmp_path: Path) -> None:
    """The README's "stack init, then make test" path, narrowed to the check that broke.

    `mltrain stack init` writes real secrets into deploy/mlflow/.env (git-ignored); the unit test that scans the
    repository's deploy files for literal secrets must skip that file, not fail on it, on the server machine.
    """
    from tests.unit.test_deploy import LITERAL_SECRET, literal_secrets

    copy = tmp_path / "mltrain"
    _copy_repository(REPO, copy)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    init = subprocess.run([*MLTRAIN, "stack", "init"], cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    secrets = copy / "deploy" / "mlflow" / ".env"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert re.search(r"(?m)^MLFLOW_AUTH_ADMIN_PASSWORD=[A-Za-z0-9_-]{20,}$", secrets.read_text())
    assert LITERAL_SECRET.search(secrets.read_text()), "the scan would see these secrets if it read the file"
    assert literal_secrets(copy / "deploy") == []  # what test_no_secret_values_in_any_deploy_file asserts


# --- 3. the UI link, without a browser ---------------------------------------------------------------------------
def _wait_for_link(process: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    """The link `mltrain ui` prints, once the page behind it answers HTTP 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        link = re.search(r"http://127\.0\.0\.1:\d+/\S*", log.read_text(errors="replace"))
        if link:
            with contextlib.suppress(OSError), urllib.request.urlopen(link.group(0), timeout=2) as response:
                if response.status == 200:
                    return link.group(0)
        time.sleep(0.5)
    raise AssertionError(f"`mltrain ui` served no link in {timeout:.0f}s:\n{log.read_text()}")


def _stop(process: subprocess.Popen) -> None:
    """Ctrl+C, as a user stops it (it stops its `mlflow ui`); then anything left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the group holds only what it started
    process.wait(timeout=10)


@pytest.mark.timeout(300)
def test_ui_prints_the_model_training_link_and_trainings_link_their_run(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where `mltrain ui` records the address it serves, for the trainings to find (never the user's own).
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    port = free_port()
    log = tmp_path / "ui.log"
    # The store named by --tracking-uri, from a folder whose default store (./mlflow.db) would be another one.
    store, elsewhere = os.environ["MLFLOW_TRACKING_URI"], tmp_path / "elsewhere"
    elsewhere.mkdir()
    ui_env = {name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*MLTRAIN, "ui", "--port", str(port), "--tracking-uri", store], stdout=out, stderr=subprocess.STDOUT,
            env=ui_env, cwd=elsewhere,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        link = _wait_for_link(process, log)
        assert f"MLflow UI for {store}," in log.read_text() and not (elsewhere / "mlflow.db").exists()
        experiment = MlflowClient().get_experiment_by_name(metrics.EXPERIMENT)
        assert experiment is not None, "mltrain ui did not create the experiment its link opens"
        base = f"http://127.0.0.1:{port}"
        assert link == f"{base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
        assert experiment.tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]

        # The summary `mltrain train` prints, from a training in this process while the UI is up.
        result = train(overrides=TINY, data_dir=tiny_data, progress=False)
        run_link = f"{base}/#/experiments/{experiment.experiment_id}/runs/{result.run_id}?workflowType=machine_learning"
        summary = result.summary()
        assert re.search(rf"^the run:\s+{re.escape(run_link)}$", summary, re.M), summary
        assert "open the UI" not in summary
    finally:
        _stop(process)


# --- 4. the data as the run's dataset input ------------------------------------------------------------------------
def _dataset_input(run: mlflow.entities.Run) -> mlflow.entities.DatasetInput:
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1, inputs
    assert {(tag.key, tag.value) for tag in inputs[0].tags} == {("mlflow.data.context", "training")}
    return inputs[0]


@pytest.mark.timeout(240)
def test_dataset_input_digest_is_the_data_fingerprint(tiny_copy: Path) -> None:
    config = TrainConfig.build(overrides=TINY)
    first = _dataset_input(_train(tiny_copy)).dataset
    fingerprint = Food11Data(tiny_copy, config).setup().fingerprint
    assert first.digest == fingerprint[:DIGEST_LENGTH]
    assert first.name == "Food-11" and first.source_type == "local"
    assert json.loads(first.source) == {"uri": str(tiny_copy.resolve())}
    profile = json.loads(first.profile)
    assert profile["fingerprint"] == fingerprint and profile["classes"] == 11 and profile["skipped_images"] == 0
    for split in SPLITS:
        assert list(profile["splits"][split]["per_class"].values()) == _images(tiny_copy, split), split
    assert profile["images"] == sum(sum(_images(tiny_copy, split)) for split in SPLITS)

    egg = tiny_copy / "training" / class_dir_name(3)
    shutil.copyfile(sorted(egg.glob("*.jpg"))[0], egg / "3_new.jpg")
    second = _dataset_input(_train(tiny_copy)).dataset
    assert second.digest != first.digest
    assert json.loads(second.profile)["splits"]["training"]["per_class"]["Egg"] == _images(tiny_copy, "training")[3]
    assert json.loads(second.profile)["images"] == profile["images"] + 1


# --- 5. per-class results of the test evaluation -------------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("engine", ["torch", "lightning"])
def test_per_class_results(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str) -> None:
    run = _train(tiny_data, engine=engine, accelerator="cpu")
    run_id = run.info.run_id
    client = MlflowClient()
    assert {metrics.PER_CLASS_TABLE, metrics.CONFUSION_MATRIX_JSON, metrics.CONFUSION_MATRIX_PNG} <= {
        a.path for a in client.list_artifacts(run_id)
    }

    saved = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{metrics.CONFUSION_MATRIX_JSON}"))
    assert saved["classes"] == list(CLASS_NAMES)
    counts = np.array(saved["counts"])
    per_class = _images(tiny_data, "evaluation")
    assert counts.shape == (11, 11) and counts.sum() == sum(per_class) == 22  # every test image once
    assert counts.sum(axis=1).tolist() == per_class

    picture = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{metrics.CONFUSION_MATRIX_PNG}", dst_path=tmp_path)
    with Image.open(picture) as image:
        assert image.format == "PNG" and min(image.size) > 100

    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{metrics.PER_CLASS_TABLE}"))
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [row["class"] for row in rows] == list(CLASS_NAMES)
    assert [row["images"] for row in rows] == per_class
    assert [row["correct"] for row in rows] == np.diag(counts).tolist()

    accuracy = {key: value for key, value in run.data.metrics.items() if key.startswith("test_class_accuracy/")}
    assert sorted(accuracy) == sorted(metrics.class_accuracy_key(name) for name in CLASS_NAMES)
    for index, name in enumerate(CLASS_NAMES):
        assert accuracy[metrics.class_accuracy_key(name)] == pytest.approx(counts[index, index] / per_class[index])
        (logged,) = client.get_metric_history(run_id, metrics.class_accuracy_key(name))
        assert logged.step == TINY["total_epochs"] - 1  # the test metrics' step: the last epoch
    assert run.data.metrics[metrics.TEST_ACCURACY] == pytest.approx(np.trace(counts) / counts.sum())


# --- 6. data-wait advice -------------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_data_wait_advice_once_for_a_starved_run(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each training batch waits 0.7 s for its images: 2.1 s of each epoch, which computes for ~0.1 s (head only:
    the starving must outweigh the computing on a busy machine too). Epoch 1 is not judged; epochs 2 and 3 both
    starve, and the advice still comes once. (When a run gets none is decided from the measured wait alone:
    tests/unit/test_data_wait_advice.py.)
    """
    fetch = CachedImages.__getitems__

    def slow_fetch(self: CachedImages, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:  # the training split (validation and test are not augmented)
            time.sleep(0.7)
        return fetch(self, keys)

    monkeypatch.setattr(CachedImages, "__getitems__", slow_fetch)
    # num_workers=0: the batches are fetched in this process, through the patch
    run = _train(tiny_data, num_workers=0, initial_epochs=3, total_epochs=3)

    advice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("advice:")]
    assert len(advice) == 1, advice
    assert run.data.tags.get(metrics.DATA_WAIT_ADVICE_TAG) == advice[0]
    assert "of epoch 2 " in advice[0] and "num_workers=0" in advice[0]
    history = MlflowClient().get_metric_history(run.info.run_id, metrics.DATA_WAIT_FRACTION)
    waits = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(waits) == 3 and waits[1] > 0.2  # what the advice says it measured
