"""Elastic Ray training (`--workers MIN-MAX`): it goes on with the nodes that are left and grows back; a fixed
group that lost a node waits and says why. Real Ray nodes, killed with SIGKILL and started again."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.engines.checkpoint import load_checkpoint
from tests.helpers import MLTRAIN, TINY_TRAIN, wait_for
from tests.integration.ray.test_ray_train import RAY, _running_run_with_epochs, _steps

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _workers_by_epoch(run_id: str) -> list[int]:
    history = sorted(MlflowClient().get_metric_history(run_id, metrics.WORKERS), key=lambda m: m.step)
    return [int(m.value) for m in history]


def _driver(data: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, list[str]]:
    """A training driver on the cluster; its output lines are collected as they come."""
    process = subprocess.Popen(
        [*MLTRAIN, "train", "--data", str(data), *TINY_TRAIN, *RAY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # A harness may start us with SIGINT ignored (background jobs); a terminal user's process is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


@pytest.mark.timeout(600)
def test_elastic_group_shrinks_on_a_lost_node_and_grows_back(tiny_data: Path, ray_cluster) -> None:
    """Event by event, whatever the machine's pace: it trains on 2, loses a node, goes on with 1 without
    waiting, grows back to 2 when the node returns; then Ctrl+C ends the one run KILLED with no step twice.
    (How long each resize takes is measured by benchmarks/recovery.py, not asserted here.)"""
    cluster = ray_cluster
    process, lines = _driver(
        tiny_data,
        {**os.environ, **cluster.client_env()},
        "--workers", "1-2", "--resize-interval", "5",
        "--set", "total_epochs=1000", "--set", "patience=1000",
    )  # fmt: skip
    try:
        run_id = wait_for(lambda: _running_run_with_epochs(3), "three epochs", timeout=240)
        assert _workers_by_epoch(run_id)[:3] == [2, 2, 2]
        cluster.stop_worker(1)
        # It goes on with one worker, without waiting for a replacement ...
        wait_for(lambda: 1 in _workers_by_epoch(run_id), "an epoch trained by 1 worker", timeout=180)
        cluster.start_worker(1)
        # ... and grows back to two when the node returns.
        wait_for(lambda: _workers_by_epoch(run_id)[-1] == 2, "the group to grow back to 2", timeout=180)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, "".join(lines)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    by_epoch = _workers_by_epoch(run_id)
    for key in metrics.EPOCH_METRICS:  # every epoch it trained, once, from 0 on: no step twice, no gap
        assert _steps(run_id, key) == list(range(len(by_epoch))), key
    changes = [by_epoch[0]] + [after for before, after in itertools.pairwise(by_epoch) if after != before]
    assert changes == [2, 1, 2], by_epoch
    tags = run.data.tags
    assert tags["mltrain.ray.resizes"] == "2"
    assert tags["mltrain.ray.resize.1"].startswith("2 -> 1 workers") and tags["mltrain.ray.resize.2"].startswith(
        "1 -> 2"
    )
    assert 1 <= load_checkpoint(Path("outputs") / run_id)["state"].next_epoch <= len(by_epoch)  # for --resume


@pytest.mark.timeout(420)
def test_a_fixed_group_that_lost_a_node_waits_says_why_and_sigterm_ends_it_killed(tiny_data: Path, ray_cluster) -> None:
    """SIGTERM (what `kill`, systemd or a job scheduler send) ends it as Ctrl+C does in the elastic test: the run
    KILLED, the checkpoint brought back, the command to resume it printed; exit status 128 + 15."""
    cluster = ray_cluster
    process, lines = _driver(
        tiny_data,
        {**os.environ, **cluster.client_env()},
        "--workers", "2", "--set", "total_epochs=200", "--set", "patience=200",
    )  # fmt: skip
    try:
        run_id = wait_for(lambda: _running_run_with_epochs(4), "four epochs", timeout=240)
        cluster.stop_worker(0)
        reason = wait_for(
            lambda: MlflowClient().get_run(run_id).data.tags.get("mltrain.ray.waiting"), "the waiting tag", timeout=120
        )
        assert "2 worker(s) of CPU=1 needed" in reason and "hold 1" in reason
        assert any("waiting for resources" in line for line in lines), "".join(lines)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, "".join(lines)
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    folder = Path("outputs") / run_id
    assert load_checkpoint(folder)["state"].next_epoch >= 1  # the checkpoint was brought back for --resume
    wait_for(lambda: f"continue it with: mltrain train --resume {folder}\n" in lines, "the resume command", timeout=10)
