"""Starting the nodes of a local Ray cluster: one ``ray start --block`` process per node, with its ports, its
environment (cluster id, node name, token) and its share of the GPUs, and waiting until Ray has it.

:class:`mltrain.cluster.local.LocalCluster` decides which nodes to start and when; this module starts one.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests

from mltrain import env
from mltrain.cluster import loopback, ports
from mltrain.cluster.processes import CLUSTER_ID_VAR, NODE_NAME_VAR, root_process, stop_node
from mltrain.cluster.spec import ClusterSpec
from mltrain.cluster.state import TOKEN_FILE, ClusterState, NodeRecord
from mltrain.errors import ClusterError
from mltrain.internals import ray as ray_internals

HEAD_NAME = "head"
LABEL_WORKER = "mltrain.io/worker"
"""Node label carrying the worker number: ``mltrain submit --label mltrain.io/worker=1`` runs there."""


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
    node_env.setdefault(ray_internals.GRACEFUL_DRAIN_VAR, "0")
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
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    return {
        **dict(zip(names, ports.free_ports(len(names)), strict=True)),
        "min-worker-port": first,
        "max-worker-port": last,
    }


def _launch(
    name: str,
    ip: str,
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
        # A loopback address other than 127.0.0.1, which Ray would replace with the host's network address
        # (see mltrain.cluster.loopback). Its servers listen on all interfaces whatever we say; the token is
        # what guards them.
        f"--node-ip-address={ip}",
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
        ip=ip,
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


def new_token(folder: Path) -> Path:
    """Write a fresh Ray token to ``folder``'s token file (mode 0600); returns its path."""
    from mltrain.stack import write_private

    path = folder / TOKEN_FILE
    write_private(path, secrets.token_hex(32))  # Ray's own token format: 256 random bits in hex
    return path


def start_head_state(spec: ClusterSpec, token_path: Path | None, temp_root: str, deadline: float) -> ClusterState:
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
    gcs, client_server, spare = ports.free_ports(3)
    dashboard = spec.dashboard_port
    if dashboard is None:
        dashboard = 8265 if ports.is_free(8265) else spare
    head_ports = {"port": gcs, "dashboard-port": dashboard, "ray-client-server-port": client_server}
    common = _common_ports(None)
    while set(common.values()) & set(head_ports.values()):  # picked apart: a port freed above may come again
        common = _common_ports(None)
    head_ports |= common
    args = ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    if spec.system_config:
        args.append(f"--system-config={json.dumps(spec.system_config)}")
    return _launch(
        HEAD_NAME,
        loopback.node_ip(),
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
            raise ClusterError(f"the head failed to start: {log_tail(head.log)}")
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


def wait_sockets(node: NodeRecord, temp_root: Path, expected: int, deadline: float) -> None:
    """Wait until ``expected`` raylets have made their sockets in the shared session folder.

    Each node picks the next free socket name (raylet, raylet.1 …) when it starts; two nodes starting at
    the same moment can pick the same one, and one of them then never comes up. So nodes start one by one.
    """
    while True:
        if root_process(node) is None:
            raise ClusterError(f"{node.name} failed to start: {log_tail(node.log)}")
        if ray_internals.raylet_sockets(temp_root) >= expected:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {node.name}'s raylet; log: {node.log}")
        time.sleep(0.2)


def start_worker(
    state: ClusterState,
    index: int,
    cpus: int,
    gpus: int,
    resources: dict[str, float],
    visible_devices: str | None,
    ports_from: NodeRecord | None = None,
) -> NodeRecord:
    """Start worker ``index``'s node, joining the head in ``state``; returns at once, before Ray sees it.

    Args:
        state: The running cluster (head address, token, temp folder, object store size, working folder).
        index: Worker number, in the node name and the ``mltrain.io/worker`` label.
        cpus: Logical CPUs it offers.
        gpus: GPUs it offers.
        resources: Custom resources it offers.
        visible_devices: Its ``CUDA_VISIBLE_DEVICES``; None leaves the variable as it is.
        ports_from: The node it replaces: its address is taken again, and its ports when they are still free.
    """
    name = f"worker-{index}"
    return _launch(
        name,
        ports_from.ip if ports_from is not None else loopback.node_ip(index),
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


def split_gpus(workers: int, per_worker: int) -> list[str | None]:
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


def log_tail(path: str, lines: int = 12) -> str:
    """The last ``lines`` non-empty lines of a node's log on one line, for an error message."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {path})"
    tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
    return f"{tail} (log: {path})"
