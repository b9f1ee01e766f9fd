"""Find and stop the processes of one local cluster node — exactly those, never another Ray's.

A node is one ``ray start --block`` process started in a session of its own. Ray starts the node's
daemons (GCS, raylet, dashboard, agents) below it, but its worker processes get process groups of their
own and a job's driver a session of its own, so neither the process tree nor the session catches
everything. Every process of a cluster inherits two variables from ``ray start``, though: the cluster's
random id and the node's name. A process belongs to a node if it descends from the node's recorded
``ray start`` process, shares its session, or carries both variables — and started after the node did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from mltrain.cluster.state import NodeRecord

CLUSTER_ID_VAR = "MLTRAIN_CLUSTER_ID"
NODE_NAME_VAR = "MLTRAIN_CLUSTER_NODE"
_CLOCK_SLACK_S = 1.0  # create_time has a resolution of clock ticks


def root_process(node: NodeRecord) -> psutil.Process | None:
    """The node's ``ray start`` process if it still runs (a reused pid does not count)."""
    try:
        process = psutil.Process(node.pid)
        if abs(process.create_time() - node.started) > _CLOCK_SLACK_S or _is_zombie(process):
            return None
        return process
    except psutil.Error:
        return None


def node_processes(cluster_id: str, node: NodeRecord) -> list[psutil.Process]:
    """Every live process of ``node`` (see the module docstring for how they are recognised)."""
    found: dict[int, psutil.Process] = {}
    root = root_process(node)
    if root is not None:
        found[root.pid] = root
        for child in _children(root):
            found[child.pid] = child
    for process in psutil.process_iter():
        if process.pid in found or process.pid == os.getpid():
            continue
        try:
            if process.create_time() < node.started - _CLOCK_SLACK_S or _is_zombie(process):
                continue
            # The session id stays reserved while any member lives, so it cannot name a stranger.
            if os.getsid(process.pid) == node.pid or _carries(process, cluster_id, node.name):
                found[process.pid] = process
        except (psutil.Error, OSError):
            continue
    return list(found.values())


def stop_node(cluster_id: str, node: NodeRecord, graceful: bool, timeout: float = 20.0) -> int:
    """Stop every process of ``node``; returns how many there were.

    Args:
        cluster_id: The cluster's id (:attr:`ClusterState.cluster_id`).
        node: The node's record.
        graceful: SIGTERM ``ray start`` first so Ray shuts the node down itself (its daemons, workers and
            the drivers of its jobs), then SIGKILL whatever is left after ``timeout``. Without it, SIGKILL
            every process of the node at once: the node is lost, as when its machine dies.
        timeout: Seconds to wait for a graceful shutdown, and again for the killed processes to go.
    """
    processes = node_processes(cluster_id, node)
    count = len(processes)
    root = root_process(node)
    if graceful and root is not None:
        _signal([root], signal.SIGTERM)
        _wait_gone([root], timeout)
    # Rescan: a dying raylet may have started a worker a moment before.
    for _ in range(5):
        processes = node_processes(cluster_id, node)
        if not processes:
            break
        _signal(processes, signal.SIGKILL)
        _wait_gone(processes, timeout)
    return count


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [child for child in process.children(recursive=True) if not _is_zombie(child)]
    except psutil.Error:
        return []


def _carries(process: psutil.Process, cluster_id: str, node_name: str) -> bool:
    try:
        environ = process.environ()
    except (psutil.Error, OSError):
        return False
    return environ.get(CLUSTER_ID_VAR) == cluster_id and environ.get(NODE_NAME_VAR) == node_name


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _signal(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)  # psutil checks the pid still names the same process


def _wait_gone(processes: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            # Reaps our own children (a test process that started the cluster), polls the others.
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except psutil.TimeoutExpired:
            continue
        except psutil.Error:
            continue
