"""mltrain.cluster with real processes: a fresh interpreter's imports, marked node processes found and stopped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mltrain.cluster import processes
from mltrain.cluster.state import NodeRecord

pytestmark = pytest.mark.integration


def test_importing_the_package_starts_nothing_and_loads_no_ray() -> None:
    code = "import mltrain.cluster, sys; print('ray' in sys.modules, 'requests' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_node_processes_finds_marked_processes_only(tmp_path: Path) -> None:
    marked = {**os.environ, processes.CLUSTER_ID_VAR: "cid", processes.NODE_NAME_VAR: "worker-0"}
    other = {**os.environ, processes.CLUSTER_ID_VAR: "other", processes.NODE_NAME_VAR: "worker-0"}
    ours = subprocess.Popen(["sleep", "60"], env=marked, start_new_session=True)
    theirs = subprocess.Popen(["sleep", "60"], env=other, start_new_session=True)
    try:
        import psutil

        record = NodeRecord("worker-0", 999_999_999, psutil.Process(ours.pid).create_time() - 1, "", "", {}, 1, 0)
        found = {process.pid for process in processes.node_processes("cid", record)}
        assert ours.pid in found and theirs.pid not in found
        assert processes.stop_node("cid", record, graceful=False, timeout=5) == 1
        assert not psutil.pid_exists(ours.pid) and theirs.poll() is None  # stop_node reaped our child
    finally:
        ours.kill()
        theirs.kill()
        ours.wait()
        theirs.wait()
