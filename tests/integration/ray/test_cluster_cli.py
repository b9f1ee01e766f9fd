"""`mltrain cluster …` as a user runs it: up, status, the stop-worker/start-worker drill, down."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mltrain.cluster.ports import free_port
from mltrain.cluster.processes import node_processes
from mltrain.cluster.state import load_state
from tests.helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _row(status_text: str, node: str) -> str:
    for line in status_text.splitlines():
        if re.match(rf"{node}(\s|\s\(\+)", line):
            return line
    raise AssertionError(f"no row for {node} in:\n{status_text}")


def _status_until(predicate: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        done = run_cli("cluster", "status")
        assert done.returncode == 0, done.stderr
        if predicate(done.stdout) or time.monotonic() > deadline:
            return done.stdout
        time.sleep(1)


@pytest.mark.timeout(300)
def test_up_status_stop_start_worker_down(tmp_path: Path) -> None:
    cluster_dir = Path(tmp_path / "ray-cluster")  # MLTRAIN_CLUSTER_DIR of the isolated test environment
    up = run_cli(
        "cluster", "up", "--workers", "2", "--cpus-per-worker", "1", "--gpus-per-worker", "1",
        "--object-store-mb", "100", "--dashboard-port", str(free_port()), timeout=240,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    state = load_state(cluster_dir)
    assert state is not None and state.token_path and Path(state.token_path).stat().st_mode & 0o077 == 0
    assert state.dashboard_url in up.stdout and state.address in up.stdout and state.token_path in up.stdout
    try:
        status = run_cli("cluster", "status").stdout
        assert _row(status, "head").split()[1:4] == ["ALIVE", "0/0", "0/0"]
        for worker in ("worker-0", "worker-1"):
            assert _row(status, worker).split()[1:4] == ["ALIVE", "0/1", "0/1"]

        on_worker_1 = ["--cpus", "1", "--label", "mltrain.io/worker=1", "--no-wait"]
        submitted = run_cli("submit", *on_worker_1, "--", "sleep", "600")
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip()
        # The job shows at once; the CPU it holds when the autoscaler's next report comes.
        status = _status_until(lambda text: job in (row := _row(text, "worker-1")) and " 1/1 " in row, timeout=60)
        assert job in _row(status, "worker-1") and _row(status, "worker-1").split()[2] == "1/1"

        stopped = run_cli("cluster", "stop-worker", "1")
        assert stopped.returncode == 0, stopped.stderr
        assert not node_processes(state.cluster_id, state.worker(1)), "kill -9 leaves no process of the node"
        assert node_processes(state.cluster_id, state.worker(0)), "the other worker is untouched"
        status = _status_until(lambda text: _row(text, "worker-1").split()[1] == "DEAD", timeout=60)
        assert _row(status, "worker-1").split()[1] == "DEAD" and "worker-1 died:" in status
        deadline = time.monotonic() + 60
        while not re.search(rf"{job}\s+FAILED", jobs := run_cli("jobs", "list").stdout) and time.monotonic() < deadline:
            time.sleep(1)
        assert re.search(rf"{job}\s+FAILED", jobs), f"its driver died with the node:\n{jobs}"

        again = run_cli("cluster", "start-worker", "1")
        assert again.returncode == 0, again.stderr
        status = run_cli("cluster", "status").stdout
        assert re.search(r"worker-1 \(\+1 earlier\)\s+ALIVE\s+0/1\s+0/1", status), status
        state = load_state(cluster_dir)  # the restarted worker's processes
        assert state is not None

        # --graceful: `ray start` is asked to shut its node down; Ray sees it go, and nothing of it is left.
        graceful = run_cli("cluster", "stop-worker", "0", "--graceful")
        assert graceful.returncode == 0, graceful.stderr
        assert not node_processes(state.cluster_id, state.worker(0))
        assert node_processes(state.cluster_id, state.worker(1)), "the other worker is untouched"
        status = _status_until(lambda text: _row(text, "worker-0").split()[1] == "DEAD", timeout=60)
        assert "worker-0 died: Expected termination: received SIGTERM" in status, status
    finally:
        down = run_cli("cluster", "down")
    assert down.returncode == 0, down.stderr
    assert not any(node_processes(state.cluster_id, node) for node in state.nodes)
    assert not Path(state.temp_root).exists() and not (cluster_dir / "cluster.json").exists()
    assert not Path(state.token_path).exists()


def test_commands_without_a_cluster_say_what_to_do() -> None:
    for argv in (["cluster", "status"], ["cluster", "down"], ["cluster", "stop-worker", "0"], ["jobs", "list"]):
        done = run_cli(*argv)
        assert done.returncode == 2, argv
        assert "cluster up" in done.stderr and "Traceback" not in done.stderr, done.stderr
