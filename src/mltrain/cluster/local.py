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
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests

from mltrain import env
from mltrain.cluster import ports
from mltrain.cluster.connection import ClusterConnection, resolve_cluster
from mltrain.cluster.processes import CLUSTER_ID_VAR, NODE_NAME_VAR, node_processes, root_process, stop_node
from mltrain.cluster.state import TOKEN_FILE, ClusterState, NodeRecord, load_state, save_state, state_path
from mltrain.errors import ClusterError

DEFAULT_OBJECT_STORE_MB = 150
"""Per node. Ray's default (30% of RAM per node) is far too much for several nodes on one laptop."""
MIN_OBJECT_STORE_MB = 80  # Ray refuses less than 75 MiB
HEAD_NAME = "head"
START_TIMEOUT_S = 180.0
LABEL_WORKER = "mltrain.io/worker"
"""Node label carrying the worker number: ``mltrain submit --label mltrain.io/worker=1`` runs there."""

_RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of a local cluster."""

    workers: int = 2
    """Worker nodes (the head comes on top and runs no tasks)."""
    cpus_per_worker: int | None = None
    """Logical CPUs each worker offers; None: this machine's cores shared among the workers (at least 1)."""
    gpus_per_worker: int = 0
    """GPUs each worker offers. Real GPUs are split between workers when there are enough of them (each
    worker sees its own through ``CUDA_VISIBLE_DEVICES``); otherwise the GPUs are logical only, which is
    what tests of scheduling need on a machine without one."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources each worker offers, e.g. ``{"bigmem": 1}``."""
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB
    """Object store size per node, in MiB."""
    auth: bool = True
    """Token authentication (``RAY_AUTH_MODE=token``) on every node."""
    dashboard_port: int | None = None
    """None: 8265 (the lab's) when free, else any free port."""
    system_config: dict[str, Any] = field(default_factory=dict)
    """Ray system settings for the head (``ray start --system-config``), e.g. faster health checks in tests."""
    workdir: str | None = None
    """Working folder of the nodes, where a job without ``--working-dir`` runs (relative paths such as
    ``outputs/`` land there); None: the folder ``up`` is called from."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ClusterError(f"expected at least 1 worker, found workers={self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 0:
            raise ClusterError(f"expected cpus_per_worker >= 0, found {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ClusterError(f"expected gpus_per_worker >= 0, found {self.gpus_per_worker}")
        if self.object_store_mb < MIN_OBJECT_STORE_MB:
            raise ClusterError(f"expected object_store_mb >= {MIN_OBJECT_STORE_MB}, found {self.object_store_mb}")
        for name, amount in self.resources.items():
            if name in _RESERVED_RESOURCES:
                raise ClusterError(f"resource {name!r} has its own option; custom resources are other names")
            if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
                raise ClusterError(f"expected a positive number for resource {name!r}, found {amount!r}")

    def worker_cpus(self) -> int:
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        return max(1, (os.cpu_count() or 1) // self.workers)


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
        token_path = _new_token(folder) if spec.auth else None
        # One temp dir for all nodes, as Ray's own multi-node-on-one-host setup has it: a job's log is written
        # by the head (runtime env setup) and by the driver's node, and every node's agent reads it from the
        # session folder the head announced. Short on purpose: Ray's unix socket paths may not exceed 107 bytes.
        temp_root = tempfile.mkdtemp(prefix="mlt-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        started = time.monotonic()
        deadline = started + timeout
        try:
            state = _start_head_state(spec, token_path, temp_root, deadline)
            save_state(state, folder)  # from here on, `cluster down` can clean up whatever happens
            say(f"head started in {time.monotonic() - started:.1f}s: {state.address}, dashboard {state.dashboard_url}")
            cluster = cls(state, folder)
            cluster._start_workers(spec, deadline)
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

    def _start_workers(self, spec: ClusterSpec, deadline: float) -> None:
        """Start the workers one after the other (see :func:`_wait_sockets`), then wait for all to join."""
        devices = _split_gpus(spec.workers, spec.gpus_per_worker)
        for index in range(spec.workers):
            worker = _start_worker(
                self.state, index, spec.worker_cpus(), spec.gpus_per_worker, spec.resources, devices[index]
            )
            self.state.workers.append(worker)
            save_state(self.state, self.cluster_dir)
            _wait_sockets(worker, Path(self.state.temp_root), expected=index + 2, deadline=deadline)
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
        fresh = _start_worker(
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
                    raise ClusterError(f"{name} failed to start: {_log_tail(record.log)}")
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


# ---- starting nodes ----------------------------------------------------------------------------------------


def _ray_start() -> list[str]:
    # This interpreter's Ray, whatever PATH says.
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]


def _node_env(cluster_id: str, name: str, token_path: Path | str | None) -> dict[str, str]:
    node_env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_")}
    node_env.pop(env.RAY_ADDRESS_VAR, None)  # jobs get the right one from Ray; a stale one would mislead
    # Entrypoints such as `python …` or `mltrain train …` must find this environment's programs.
    node_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), node_env.get("PATH", "")])
    node_env.update({CLUSTER_ID_VAR: cluster_id, NODE_NAME_VAR: name, "RAY_USAGE_STATS_ENABLED": "0"})
    # On SIGTERM (cluster down) stop at once instead of draining for up to 30 s.
    node_env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    # `ray job stop` SIGTERMs a job, then SIGKILLs it after this many seconds (Ray's default: 3): a training
    # needs longer to end its MLflow run KILLED, keep its checkpoint and log its best model.
    node_env.setdefault(env.JOB_STOP_WAIT_VAR, env.JOB_STOP_WAIT_S)
    if token_path is None:
        node_env[env.RAY_AUTH_MODE_VAR] = "disabled"
    else:
        node_env.update({env.RAY_AUTH_MODE_VAR: "token", env.RAY_AUTH_TOKEN_PATH_VAR: str(token_path)})
    return node_env


def _common_ports(previous: NodeRecord | None) -> dict[str, int]:
    if previous is not None and all(ports.is_free(port) for port in previous.ports.values()):
        return dict(previous.ports)  # a restarted worker comes back where it was, if it can
    first, last = ports.free_port_block()
    return {
        "node-manager-port": ports.free_port(),
        "object-manager-port": ports.free_port(),
        "metrics-export-port": ports.free_port(),
        "dashboard-agent-listen-port": ports.free_port(),
        "dashboard-agent-grpc-port": ports.free_port(),
        "runtime-env-agent-port": ports.free_port(),
        "min-worker-port": first,
        "max-worker-port": last,
    }


def _launch(
    name: str,
    args: list[str],
    node_ports: dict[str, int],
    temp_dir: Path,
    node_env: dict[str, str],
    cpus: int,
    gpus: int,
    resources: dict[str, float],
    object_store_bytes: int,
    workdir: str,
    visible_devices: str | None = None,
) -> NodeRecord:
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = temp_dir / f"ray-start-{name}.log"
    if visible_devices is not None:
        node_env = {**node_env, "CUDA_VISIBLE_DEVICES": visible_devices}
    command = [
        *_ray_start(),
        *args,
        # Ray resolves 127.0.0.1 to the host's address for the node IP; its servers listen on all
        # interfaces whatever we say, and the token is what guards them.
        "--node-ip-address=127.0.0.1",
        f"--node-name={name}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        f"--object-store-memory={object_store_bytes}",
        "--disable-usage-stats",
        *(f"--{option}={port}" for option, port in node_ports.items()),
    ]
    if resources:
        command.append(f"--resources={json.dumps(resources)}")
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=node_env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return NodeRecord(
        name=name,
        pid=process.pid,
        started=psutil.Process(process.pid).create_time(),
        temp_dir=str(temp_dir),
        log=str(log),
        ports=node_ports,
        cpus=cpus,
        gpus=gpus,
        resources=dict(resources),
        visible_devices=visible_devices,
    )


def _new_token(folder: Path) -> Path:
    from mltrain.stack import write_private

    path = folder / TOKEN_FILE
    write_private(path, secrets.token_hex(32))  # Ray's own token format: 256 random bits in hex
    return path


def _start_head_state(spec: ClusterSpec, token_path: Path | None, temp_root: str, deadline: float) -> ClusterState:
    """Start the head node and wait for it; the cluster's state with no workers yet."""
    cluster_id = secrets.token_hex(6)
    workdir = str(Path(spec.workdir or os.getcwd()).resolve())
    head = _start_head(spec, cluster_id, temp_root, token_path, workdir)
    try:
        address = _wait_head(head, deadline)
    except BaseException:
        stop_node(cluster_id, head, graceful=False)
        raise
    return ClusterState(
        cluster_id=cluster_id,
        address=address,
        dashboard_url=f"http://127.0.0.1:{head.ports['dashboard-port']}",
        metrics_url=f"http://127.0.0.1:{head.ports['metrics-export-port']}/metrics",
        token_path=str(token_path) if token_path else None,
        temp_root=temp_root,
        object_store_bytes=spec.object_store_mb * 2**20,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        head=head,
        workers=[],
        system_config=dict(spec.system_config),
        workdir=workdir,
    )


def _start_head(
    spec: ClusterSpec, cluster_id: str, temp_root: str, token_path: Path | None, workdir: str
) -> NodeRecord:
    dashboard = spec.dashboard_port
    if dashboard is None:
        dashboard = 8265 if ports.is_free(8265) else ports.free_port()
    head_ports = {
        "port": ports.free_port(),
        "dashboard-port": dashboard,
        "ray-client-server-port": ports.free_port(),
        **_common_ports(None),
    }
    args = ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    if spec.system_config:
        args.append(f"--system-config={json.dumps(spec.system_config)}")
    return _launch(
        HEAD_NAME,
        args,
        head_ports,
        Path(temp_root),
        _node_env(cluster_id, HEAD_NAME, token_path),
        cpus=0,
        gpus=0,
        resources={},
        object_store_bytes=spec.object_store_mb * 2**20,
        workdir=workdir,
    )


def _wait_head(head: NodeRecord, deadline: float) -> str:
    """Wait for the head's dashboard; return the GCS address Ray recorded."""
    url = f"http://127.0.0.1:{head.ports['dashboard-port']}/api/gcs_healthz"  # answers without a token
    address_file = Path(head.temp_dir) / "ray_current_cluster"
    while True:
        if root_process(head) is None:
            raise ClusterError(f"the head failed to start: {_log_tail(head.log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200 and address_file.is_file():
                address = address_file.read_text().strip()
                if address:
                    return address
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for the head's dashboard at {url}; log: {head.log}")
        time.sleep(0.3)


def _wait_sockets(node: NodeRecord, temp_root: Path, expected: int, deadline: float) -> None:
    """Wait until ``expected`` raylets have made their sockets in the shared session folder.

    Each node picks the next free socket name (raylet, raylet.1 …) when it starts; two nodes starting at
    the same moment can pick the same one, and one of them then never comes up. So nodes start one by one.
    """
    sockets = temp_root / "session_latest" / "sockets"
    while True:
        if root_process(node) is None:
            raise ClusterError(f"{node.name} failed to start: {_log_tail(node.log)}")
        if sockets.is_dir() and sum(1 for entry in sockets.iterdir() if entry.name.startswith("raylet")) >= expected:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {node.name}'s raylet; log: {node.log}")
        time.sleep(0.2)


def _start_worker(
    state: ClusterState,
    index: int,
    cpus: int,
    gpus: int,
    resources: dict[str, float],
    visible_devices: str | None,
    ports_from: NodeRecord | None = None,
) -> NodeRecord:
    name = f"worker-{index}"
    return _launch(
        name,
        # One log monitor per host (the head's) reads the shared log folder; more would repeat every line.
        [f"--address={state.address}", f"--labels={LABEL_WORKER}={index}", "--include-log-monitor=false"],
        _common_ports(ports_from),
        Path(state.temp_root),
        _node_env(state.cluster_id, name, state.token_path),
        cpus=cpus,
        gpus=gpus,
        resources=resources,
        object_store_bytes=state.object_store_bytes,
        workdir=state.workdir or os.getcwd(),
        visible_devices=visible_devices,
    )


def _split_gpus(workers: int, per_worker: int) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` for each worker: a distinct slice of the NVIDIA GPUs this process sees when
    there are enough of them; None each (logical GPUs, nothing hidden) otherwise."""
    if per_worker == 0:
        return [None] * workers
    visible = _visible_gpu_ids()
    if len(visible) < workers * per_worker:
        return [None] * workers
    return [",".join(visible[k * per_worker : (k + 1) * per_worker]) for k in range(workers)]


def _visible_gpu_ids() -> list[str]:
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [item for item in declared.split(",") if item.strip() and item.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(index) for index in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no NVIDIA GPU to split
        return []


def _log_tail(path: str, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
    return f"{tail} (log: {path})"
