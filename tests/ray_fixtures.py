"""Local multi-node Ray clusters for tests, started through the same code as `mltrain cluster up`.

Each cluster has its own state folder and temp folder, free ports, token authentication and a cluster
id that every one of its processes carries; teardown stops exactly those processes (by pid) and checks
that none is left. Fixtures using this live in ``tests/integration/ray/conftest.py``::

    def test_failover(ray_cluster_factory):
        cluster = ray_cluster_factory(workers=2, cpus_per_worker=1, gpus_per_worker=1)
        env = cluster.client_env()          # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, MLTRAIN_CLUSTER_DIR
        cluster.node_ids()                  # {"head": …, "worker-0": …, "worker-1": …}
        cluster.pids(1)                     # processes of worker-1
        cluster.stop_worker(1)              # kill -9 every process of worker-1
        cluster.start_worker(1)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mltrain.cluster.local import ClusterSpec, LocalCluster
from mltrain.cluster.ports import free_port
from mltrain.cluster.processes import node_processes

# Ray marks a killed node dead after health_check_failure_threshold missed checks, one every
# health_check_period_ms: 5 x 3 s by default. Tests need not wait 15 s to see it.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@contextmanager
def local_cluster(
    state_dir: Path,
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: int = 0,
    resources: dict[str, float] | None = None,
    object_store_mb: int = 100,
    fast_health_checks: bool = True,
) -> Iterator[LocalCluster]:
    """A running head + ``workers`` worker nodes; stopped (and checked gone) when the block ends.

    Args:
        state_dir: Folder for the state file and token (a test's tmp folder).
        workers: Worker nodes.
        cpus_per_worker: Logical CPUs per worker.
        gpus_per_worker: GPUs per worker (logical on a machine without GPUs).
        resources: Custom resources per worker.
        object_store_mb: Object store per node.
        fast_health_checks: Let Ray notice a killed node in about 3 s instead of 15 s.
    """
    spec = ClusterSpec(
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        resources=resources or {},
        object_store_mb=object_store_mb,
        dashboard_port=free_port(),  # never the shared 8265
        system_config=FAST_HEALTH_CHECKS if fast_health_checks else {},
        workdir=str(state_dir),  # jobs' relative outputs (outputs/, mlruns/) stay in the test's folder
    )
    cluster = LocalCluster.up(spec, state_dir)
    try:
        assert_on_loopback(cluster)
        yield cluster
    finally:
        cluster.down()
        state = cluster.state
        left = [process.pid for node in state.nodes for process in node_processes(state.cluster_id, node)]
        assert not left, f"processes of the test cluster left behind: {left}"
        assert not Path(state.temp_root).exists()


def assert_on_loopback(cluster: LocalCluster) -> None:
    """Every node the cluster reports, and its GCS address, is on 127.0.0.0/8: no test traffic leaves the host.

    Ray replaces a node IP of 127.0.0.1 with the host's network address (see mltrain.cluster.loopback).
    """
    ips = {**cluster.node_ips(), "GCS address": cluster.address.rsplit(":", 1)[0]}
    assert len(ips) == len(cluster.state.nodes) + 1, f"nodes reported: {ips}"
    off = {name: ip for name, ip in ips.items() if not ipaddress.ip_address(ip).is_loopback}
    assert not off, f"test cluster nodes off loopback: {off}"
