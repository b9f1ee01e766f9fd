"""`compare`: a PNG of curves and a markdown table, from runs logged directly into a sqlite store."""

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from mltrain import metrics
from mltrain.compare import compare
from mltrain.errors import TrackingError

EXPERIMENT = "compare-test"


def _log_run(name: str, lr: str, test_accuracy: float, epochs: int, gpu: bool = False) -> str:
    """A finished run shaped like a training run: params, per-epoch metrics, system metrics, test metrics."""
    client = MlflowClient()
    experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    run = client.create_run(experiment_id, run_name=name)
    run_id, start = run.info.run_id, run.info.start_time
    for key, value in {"lr": lr, "batch_size": "16", "engine": "torch"}.items():
        client.log_param(run_id, key, value)
    points = []
    for epoch in range(epochs):
        stamp = start + 1000 * (epoch + 1)
        points += [
            Metric(metrics.VAL_ACCURACY, 0.2 + 0.1 * epoch, stamp, epoch),
            Metric(metrics.VAL_LOSS, 2.0 - 0.3 * epoch, stamp, epoch),
            Metric(metrics.EPOCH_TIME, 1.5, stamp, epoch),
            Metric(metrics.DATA_WAIT_FRACTION, 0.1, stamp, epoch),
        ]
    for sample in range(5):
        stamp = start + 500 * sample
        points += [
            Metric("system/cpu_utilization_percentage", 40.0 + sample, stamp, sample),
            Metric("system/system_memory_usage_percentage", 30.0, stamp, sample),
        ]
        if gpu:
            points += [Metric("system/gpu_0_utilization_percentage", 90.0, stamp, sample)]
    points += [Metric(metrics.TEST_ACCURACY, test_accuracy, start + 9000, 0), Metric(metrics.TEST_LOSS, 1.0, start, 0)]
    client.log_batch(run_id, metrics=points)
    client.set_terminated(run_id, "FINISHED", end_time=start + 10_000)
    time.sleep(0.01)  # distinct start times order the runs
    return run_id


def test_compare_two_runs_writes_png_and_table(tmp_path: Path) -> None:
    first = _log_run("slow-lr", lr="0.001", test_accuracy=0.5, epochs=3)
    second = _log_run("fast-lr", lr="0.01", test_accuracy=0.75, epochs=2, gpu=True)

    report = compare(experiment=EXPERIMENT, runs=[first, second], out=tmp_path / "report")

    assert report.run_ids == [first, second]
    with Image.open(report.png) as image:
        assert image.format == "PNG"
        assert image.width >= 1200 and image.height >= 600
    text = report.markdown.read_text()
    assert "compare.png" in text
    assert "| lr | 0.001 | 0.01 |" in text
    assert "batch_size" not in text and "engine" not in text  # equal params stay out of the table
    assert "2 other parameter(s) are the same" in text
    rows = {
        line.split("|")[2].strip(" `"): line
        for line in text.splitlines()
        if line.startswith("| slow") or line.startswith("| fast")
    }
    assert "| 0.5000 |" in rows[first] and "| 3 |" in rows[first] and "| 1.5 |" in rows[first]  # mean epoch_time
    assert "| 0.7500 |" in rows[second] and "| 2 |" in rows[second] and "| 0.3000 |" in rows[second]


def test_default_is_the_last_finished_runs_oldest_first(tmp_path: Path) -> None:
    ids = [_log_run(f"run-{i}", lr=str(i), test_accuracy=0.1 * i, epochs=1) for i in range(3)]
    unfinished = MlflowClient().create_run(mlflow.get_experiment_by_name(EXPERIMENT).experiment_id).info.run_id

    report = compare(experiment=EXPERIMENT, out=tmp_path, last=2)

    assert report.run_ids == ids[1:]
    assert unfinished not in report.run_ids
    assert report.png.is_file() and report.markdown.is_file()


def test_duplicate_ids_are_compared_once(tmp_path: Path) -> None:
    run_id = _log_run("only", lr="0.1", test_accuracy=0.2, epochs=1)
    report = compare(runs=[run_id, run_id], out=tmp_path)
    assert report.run_ids == [run_id]
    assert "None: every run has the same parameters." in report.markdown.read_text()


def test_unknown_run_id_is_named(tmp_path: Path) -> None:
    known = _log_run("known", lr="0.1", test_accuracy=0.2, epochs=1)
    with pytest.raises(TrackingError, match="unknown: 0123456789abcdef"):
        compare(runs=[known, "0123456789abcdef"], out=tmp_path)


def test_empty_or_missing_experiment(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="experiment named 'nope'"):
        compare(experiment="nope", out=tmp_path)
    mlflow.set_experiment("empty")
    with pytest.raises(TrackingError, match="FINISHED run in experiment 'empty', found none"):
        compare(experiment="empty", out=tmp_path)
