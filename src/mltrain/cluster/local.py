"""A Ray cluster on one machine, in the lab's shape: a head and N worker nodes, each its own ``ray start``.

The head runs the GCS, the dashboard and Jobs API (on 127.0.0.1) and the metrics agent, and offers no CPU
or GPU, so no task lands on it. Each worker declares its own CPUs, GPUs and custom resources, and can be
stopped and started on its own — the lab's ``docker stop ray-worker-1`` drill, by worker number::

    from mltrain.cluster import ClusterSpec, LocalCluster

    cluster = LocalCluster.up(ClusterSpec(workers=2, cpus_per_worker=1, gpus_per_worker=1))
    cluster.stop_worker(1)
    cluster.start_worker(1)
    cluster.down()

Token authentication is on by default: a fresh token is written next to the state file (mode 0600) and
every node starts with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at it.

This module decides which nodes run and keeps the state file; the shape is :class:`~mltrain.cluster.spec.ClusterSpec`
and each node is started by :mod:`mltrain.cluster.nodes`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mltrain import env
from mltrain.cluster import nodes
from mltrain.cluster.connection import ClusterConnection, resolve_cluster
from mltrain.cluster.processes import node_processes, root_process, stop_node
from mltrain.cluster.spec import ClusterSpec
from mltrain.cluster.state import ClusterState, NodeRecord, load_state, save_state, state_path
from mltrain.errors import ClusterError

__all__ = ["START_TIMEOUT_S", "ClusterSpec", "LocalCluster"]

START_TIMEOUT_S = 180.0


class LocalCluster:
    """Handle on a running local cluster (its state file); every method acts on its recorded processes."""

    def __init__(self, state: ClusterState, cluster_dir: Path) -> None:
        self.state = state
        self.cluster_dir = cluster_dir

    # ---- lifecycle -------------------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        spec: ClusterSpec | None = None,
        cluster_dir: str | os.PathLike[str] | None = None,
        timeout: float = START_TIMEOUT_S,
        progress: Callable[[str], None] | None = None,
    ) -> LocalCluster:
        """Start a head and ``spec.workers`` worker nodes; returns once every node is alive.

        Args:
            spec: The cluster's shape (default: 2 workers, this machine's cores shared among them).
            cluster_dir: Folder for the state file and the token (default ``MLTRAIN_CLUSTER_DIR`` or
                ``~/.local/state/mltrain/cluster``).
            timeout: Seconds to wait for the nodes.
            progress: Called with a short line as each step completes.

        Raises:
            ClusterError: a cluster recorded there is running, or a node failed to start (its log's tail
                is in the message; whatever had started is stopped again).
        """
        spec = spec or ClusterSpec()
        folder = env.cluster_dir(cluster_dir)
        cls._refuse_running(folder)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        say = progress or (lambda line: None)
        token_path = nodes.new_token(folder) if spec.auth else None
        # One temp dir for all nodes, as Ray's own multi-node-on-one-host setup has it: a job's log is written
        # by the head (runtime env setup) and by the driver's node, and every node's agent reads it from the
        # session folder the head announced. Short on purpose: Ray's unix socket paths may not exceed 107 bytes.
        temp_root = tempfile.mkdtemp(prefix="mlt-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        started = time.monotonic()
        deadline = started + timeout
        try:
            state = nodes.start_head_state(spec, token_path, temp_root, deadline)
            save_state(state, folder)  # from here on, `cluster down` can clean up whatever happens
            say(f"head started in {time.monotonic() - started:.1f}s: {state.address}, dashboard {state.dashboard_url}")
            cluster = cls(state, folder)
            cluster.start_workers(spec, deadline)
        except BaseException:
            leftover = load_state(folder)
            if leftover is not None:
                cls(leftover, folder).down()
            shutil.rmtree(temp_root, ignore_errors=True)
            if token_path is not None:
                token_path.unlink(missing_ok=True)
            raise
        say(f"{spec.workers} worker(s) alive after {time.monotonic() - started:.1f}s")
        return cluster

    def start_workers(self, spec: ClusterSpec, deadline: float) -> None:
        """Start the workers one after the other (see :func:`~mltrain.cluster.nodes.wait_sockets`), then wait for
        all to join."""
        devices = nodes.split_gpus(spec.workers, spec.gpus_per_worker)
        for index in range(spec.workers):
            worker = nodes.start_worker(
                self.state, index, spec.worker_cpus(), spec.gpus_per_worker, spec.resources, devices[index]
            )
            self.state.workers.append(worker)
            save_state(self.state, self.cluster_dir)
            nodes.wait_sockets(worker, Path(self.state.temp_root), expected=index + 2, deadline=deadline)
        self._wait_alive([node.name for node in self.state.workers], deadline)

    @classmethod
    def load(cls, cluster_dir: str | os.PathLike[str] | None = None) -> LocalCluster:
        """The cluster recorded in ``cluster_dir``.

        Raises:
            ClusterError: none is recorded there.
        """
        from mltrain.cluster.state import require_state

        folder = env.cluster_dir(cluster_dir)
        return cls(require_state(folder), folder)

    def down(self, timeout: float = 20.0) -> int:
        """Stop every process of the cluster (workers first, then the head), remove its temp folders, the
        token and the state file. Returns how many processes there were."""
        count = 0
        for node in self.state.workers:
            count += stop_node(self.state.cluster_id, node, graceful=True, timeout=timeout)
        count += stop_node(self.state.cluster_id, self.state.head, graceful=True, timeout=timeout)
        shutil.rmtree(self.state.temp_root, ignore_errors=True)
        if self.state.token_path:
            Path(self.state.token_path).unlink(missing_ok=True)
        state_path(self.cluster_dir).unlink(missing_ok=True)
        return count

    def stop_worker(self, index: int, graceful: bool = False) -> int:
        """Stop worker ``index``'s node: by default SIGKILL every process of it at once, as if its machine
        died (``graceful``: let Ray shut it down). Returns how many processes were stopped.

        Ray notices the node is gone after its health checks fail (about 15 s with Ray's defaults).
        """
        node = self.state.worker(index)
        if root_process(node) is None and not node_processes(self.state.cluster_id, node):
            raise ClusterError(f"worker {index} is not running (start it with `mltrain cluster start-worker {index}`)")
        return stop_node(self.state.cluster_id, node, graceful=graceful)

    def start_worker(self, index: int, timeout: float = START_TIMEOUT_S) -> NodeRecord:
        """Start worker ``index`` again, with the resources it had; returns once Ray sees it alive.

        Raises:
            ClusterError: it is running, or the head is not.
        """
        node = self.state.worker(index)
        if root_process(node) is not None:
            raise ClusterError(f"worker {index} is running (pid {node.pid}); stop it first with `stop-worker {index}`")
        if root_process(self.state.head) is None:
            raise ClusterError("the head of the local cluster is not running; `mltrain cluster down`, then `up`")
        # A node killed with -9 may leave a straggler; make sure nothing of the old node is left.
        stop_node(self.state.cluster_id, node, graceful=False)
        fresh = nodes.start_worker(
            self.state, index, node.cpus, node.gpus, node.resources, node.visible_devices, ports_from=node
        )
        self.state.workers[index] = fresh
        save_state(self.state, self.cluster_dir)
        self._wait_alive([fresh.name], time.monotonic() + timeout, since=fresh.started)
        return fresh

    # ---- queries ---------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The GCS address (``ray.init(address=…)``)."""
        return self.state.address

    @property
    def dashboard_url(self) -> str:
        """The dashboard / Jobs API URL."""
        return self.state.dashboard_url

    def connection(self) -> ClusterConnection:
        """How clients reach this cluster (dashboard, GCS address, token)."""
        connection = resolve_cluster(self.state.dashboard_url, self.cluster_dir)
        assert connection is not None
        return connection

    def node_ids(self, alive_only: bool = True) -> dict[str, str]:
        """Ray node id by node name (``head``, ``worker-0`` …); the newest node of each name."""
        nodes = _list_nodes(self.connection())
        ids: dict[str, tuple[int, str]] = {}
        for node in nodes:
            if alive_only and node.state != "ALIVE":
                continue
            started = node.start_time_ms or 0
            if node.node_name not in ids or started > ids[node.node_name][0]:
                ids[node.node_name] = (started, node.node_id)
        return {name: node_id for name, (_, node_id) in ids.items()}

    def node_ips(self) -> dict[str, str]:
        """The node IP Ray reports for each live node, by node name (see :mod:`mltrain.cluster.loopback`)."""
        return {node.node_name: node.node_ip for node in _list_nodes(self.connection()) if node.state == "ALIVE"}

    def pids(self, index: int | None = None) -> list[int]:
        """Process ids of worker ``index``'s node (the head's if None)."""
        node = self.state.head if index is None else self.state.worker(index)
        return sorted(process.pid for process in node_processes(self.state.cluster_id, node))

    def client_env(self) -> dict[str, str]:
        """Variables a subprocess needs to use this cluster: ``RAY_ADDRESS`` (GCS), the token's, and
        ``MLTRAIN_CLUSTER_DIR`` so that mltrain finds the state file."""
        return {
            env.RAY_ADDRESS_VAR: self.state.address,
            env.CLUSTER_DIR_VAR: str(self.cluster_dir),
            **self.state.auth_env(),
        }

    # ---- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _refuse_running(folder: Path) -> None:
        existing = load_state(folder)
        if existing is None:
            return
        if root_process(existing.head) is not None:
            raise ClusterError(
                f"a local cluster is already up (state file {state_path(folder)}, dashboard {existing.dashboard_url}); "
                "`mltrain cluster down` first, or pass another --dir"
            )
        # The head is gone (a reboot, a kill): clear what is left of that cluster before starting anew.
        LocalCluster(existing, folder).down()

    def _wait_alive(self, names: list[str], deadline: float, since: float | None = None) -> None:
        """Until Ray lists every node in ``names`` ALIVE (started after ``since``), or a node's process dies."""
        connection = self.connection()
        records = {node.name: node for node in self.state.nodes if node.name in names}
        while True:
            for name, record in records.items():
                if root_process(record) is None:
                    raise ClusterError(f"{name} failed to start: {nodes.log_tail(record.log)}")
            try:
                alive = {
                    node.node_name
                    for node in _list_nodes(connection)
                    if node.state == "ALIVE" and (since is None or (node.start_time_ms or 0) / 1000 >= since - 1)
                }
            except ClusterError:
                alive = set()
            if set(names) <= alive:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(names) - alive))
                raise ClusterError(f"timed out waiting for {missing} to join the cluster; logs: {self.state.temp_root}")
            time.sleep(0.5)


def _list_nodes(connection: ClusterConnection) -> list[Any]:
    from ray.util.state.common import ListApiOptions, StateResource

    from mltrain.cluster.connection import explain_errors

    client = connection.state_client()
    with explain_errors(connection):
        return client.list(StateResource.NODES, options=ListApiOptions(detail=True), raise_on_missing_output=False)
