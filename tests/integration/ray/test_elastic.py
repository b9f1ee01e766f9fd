"""Elastic Ray training (`--workers MIN-MAX`): it goes on with the nodes that are left and grows back; a fixed
group that lost a node waits and says why. Real Ray nodes, killed with SIGKILL and started again."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.engines.checkpoint import load_checkpoint
from tests.helpers import MLTRAIN, TINY_TRAIN
from tests.integration.ray.test_ray_train import RAY, _assert_each_epoch_once, _running_run_with_epochs, _wait_for

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
def test_elastic_group_shrinks_on_a_lost_node_and_grows_back(tiny_data: Path, ray_cluster_factory) -> None:
    cluster = ray_cluster_factory(workers=2, cpus_per_worker=1)
    epochs = 36  # measured here: it shrinks at epoch 1-3 and is back to 2 workers by about epoch 12
    process, lines = _driver(
        tiny_data,
        {**os.environ, **cluster.client_env()},
        "--workers", "1-2", "--resize-interval", "5",
        "--set", f"total_epochs={epochs}", "--set", f"patience={epochs}",
    )  # fmt: skip
    try:
        run_id = _wait_for(lambda: _running_run_with_epochs(3), 240, "three epochs")
        assert _workers_by_epoch(run_id)[:3] == [2, 2, 2]
        cluster.stop_worker(1)
        lost_at = time.time()
        # It goes on with one worker, without waiting for a replacement ...
        _wait_for(lambda: 1 in _workers_by_epoch(run_id), 180, "an epoch trained by 1 worker")
        cluster.start_worker(1)
        back_at = time.time()
        # ... and grows back to two when the node returns.
        _wait_for(lambda: _workers_by_epoch(run_id)[-1] == 2, 180, "the group to grow back to 2")
        process.wait(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    _assert_each_epoch_once(run_id, epochs)
    by_epoch = _workers_by_epoch(run_id)
    changes = [by_epoch[0]] + [after for before, after in itertools.pairwise(by_epoch) if after != before]
    assert changes == [2, 1, 2], by_epoch
    tags = run.data.tags
    assert tags["mltrain.ray.resizes"] == "2"
    assert tags["mltrain.ray.resize.1"].startswith("2 -> 1 workers") and tags["mltrain.ray.resize.2"].startswith(
        "1 -> 2"
    )
    # The timeline, from when each epoch reached MLflow (an epoch ends a few tenths of a second earlier).
    history = sorted(MlflowClient().get_metric_history(run_id, metrics.WORKERS), key=lambda m: m.step)
    first_on_one = next(m for m in history if m.value == 1)
    first_on_two_again = next(m for m in history if m.value == 2 and m.step > first_on_one.step)
    shrunk, grown = (_first_step(tags[f"mltrain.ray.restart.{n}"]) for n in (1, 2))
    print(
        f"elastic timeline: node lost -> first step on 1 worker {shrunk - lost_at:.1f}s, first new epoch logged "
        f"{first_on_one.timestamp / 1000 - lost_at:.1f}s (epoch {first_on_one.step}); node back -> first step on 2 "
        f"workers {grown - back_at:.1f}s, first epoch logged {first_on_two_again.timestamp / 1000 - back_at:.1f}s "
        f"(epoch {first_on_two_again.step}); {tags['mltrain.ray.resize.1']} | {tags['mltrain.ray.resize.2']}"
    )


def _first_step(restart_tag: str) -> float:
    """The POSIX time of a restart's first training step, from its tag (``epoch 3; first step at <ISO> on …``)."""
    return datetime.fromisoformat(re.search(r"first step at (\S+)", restart_tag).group(1)).timestamp()


@pytest.mark.timeout(420)
def test_a_fixed_group_that_lost_a_node_waits_says_why_and_ctrl_c_ends_it_killed(
    tiny_data: Path, ray_cluster_factory
) -> None:
    cluster = ray_cluster_factory(workers=2, cpus_per_worker=1)
    process, lines = _driver(
        tiny_data,
        {**os.environ, **cluster.client_env()},
        "--workers", "2", "--set", "total_epochs=200", "--set", "patience=200",
    )  # fmt: skip
    try:
        run_id = _wait_for(lambda: _running_run_with_epochs(4), 240, "four epochs")
        cluster.stop_worker(0)
        reason = _wait_for(
            lambda: MlflowClient().get_run(run_id).data.tags.get("mltrain.ray.waiting"), 120, "the waiting tag"
        )
        assert "2 worker(s) of CPU=1 needed" in reason and "hold 1" in reason
        assert any("waiting for resources" in line for line in lines), "".join(lines)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, "".join(lines)
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    folder = Path("outputs") / run_id
    assert load_checkpoint(folder)["state"].next_epoch >= 1  # the checkpoint was brought back for --resume
