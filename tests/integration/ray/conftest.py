"""Fixtures for tests that need a Ray cluster (see tests/ray_fixtures.py).

One cluster serves the whole session: a head and 2 workers, 1 CPU and 1 logical GPU each. A test may damage
it (kill a worker node, leave a job running): ``ray_cluster`` hands it over whole and takes it back whole —
every worker alive, no job running, every CPU and GPU free — or fails the test that left it otherwise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mltrain import env
from mltrain.cluster import jobs
from mltrain.cluster.local import LocalCluster
from mltrain.cluster.processes import root_process
from mltrain.cluster.status import cluster_status
from tests.ray_fixtures import local_cluster

IDLE_TIMEOUT_S = 120
"""How long a test's leftovers (a stopping job, actors being torn down) may take to free the cluster."""


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state_dir = tmp_path_factory.mktemp("ray-cluster")
    with local_cluster(state_dir, workers=2, cpus_per_worker=1, gpus_per_worker=1) as cluster:
        yield cluster


def restore(cluster: LocalCluster) -> list[str]:
    """Bring the cluster back to whole and idle; returns what had to be mended (empty if it was whole).

    With the cluster's own token (from its state folder): a test may still have a wrong one in the environment.
    """
    with env.restored(*TOKEN_VARIABLES):
        for name in TOKEN_VARIABLES:
            os.environ.pop(name, None)
        return _restore(cluster)


TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS")


def _restore(cluster: LocalCluster) -> list[str]:
    mended = []
    for index, node in enumerate(cluster.state.workers):
        if root_process(node) is None:
            cluster.start_worker(index)
            mended.append(f"worker-{index} started again")
    connection = cluster.connection()
    for job in jobs.list_jobs(connection):
        # A driver that joined with ray.init is a job without a submission id: it ends with its process.
        if job.submission_id and not job.status.is_terminal():
            jobs.stop_job(connection, job.submission_id)
            mended.append(f"job {job.submission_id} stopped")
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while busy := _busy(cluster):
        if time.monotonic() > deadline:
            raise AssertionError(f"the session's Ray cluster is still busy after {IDLE_TIMEOUT_S}s: {busy}")
        time.sleep(1)
    return mended


def _busy(cluster: LocalCluster) -> list[str]:
    status = cluster_status(cluster.connection())
    alive = {node.name for node in status.nodes if node.state == "ALIVE"}
    busy = [f"{name} not alive" for name in ("head", "worker-0", "worker-1") if name not in alive]
    for node in status.nodes:
        if node.state == "ALIVE":
            busy += [f"{node.name}: {key} {amount:g} in use" for key, amount in node.used.items() if amount > 0]
    return busy


@pytest.fixture
def ray_cluster(session_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session's cluster, whole and idle; restored after the test (workers started again, jobs stopped)."""
    restore(session_cluster)
    yield session_cluster
    restore(session_cluster)


@pytest.fixture
def ray_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters of any shape (``local_cluster``'s arguments) within a test; all stop at its end."""
    with ExitStack() as stack:
        count = 0

        def start(**shape: Any) -> LocalCluster:
            nonlocal count
            count += 1
            return stack.enter_context(local_cluster(tmp_path / f"ray-cluster-{count}", **shape))

        yield start
