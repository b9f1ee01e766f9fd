"""The state file of ``mltrain cluster up``: where the cluster runs and which processes are its own.

One JSON file, ``<cluster dir>/cluster.json`` (the cluster dir is ``--dir``, ``MLTRAIN_CLUSTER_DIR`` or
``~/.local/state/mltrain/cluster``), beside the token file ``auth_token`` (mode 0600). Clients read it to
find the cluster (:func:`mltrain.cluster.resolve_address`); ``down``, ``stop-worker`` and
``start-worker`` read it to act on exactly the processes ``up`` started.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mltrain import env
from mltrain.errors import ClusterError

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
STATE_VERSION = 1


@dataclass
class NodeRecord:
    """One ``ray start --block`` process of the cluster and what it declared."""

    name: str
    """``head`` or ``worker-K`` (also the Ray node name)."""
    pid: int
    """Process id of ``ray start --block``; every Ray process of the node descends from it."""
    started: float
    """The process's start time (seconds since the epoch): tells our process from a reused pid."""
    temp_dir: str
    """The node's ``--temp-dir`` (sessions, logs, sockets); the same folder for every node of a cluster."""
    log: str
    """Output of ``ray start``."""
    ports: dict[str, int]
    """Ports given to ``ray start``, by option name."""
    cpus: int
    gpus: int
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources declared (``--resources``)."""
    visible_devices: str | None = None
    """``CUDA_VISIBLE_DEVICES`` given to the node when real GPUs were split between workers."""
    ip: str = "127.0.0.1"
    """The node IP given to ``ray start`` (see :mod:`mltrain.cluster.loopback`); a restarted worker keeps it.
    State files written before it was recorded name none: their nodes were started with 127.0.0.1."""


@dataclass
class ClusterState:
    """Everything ``cluster up`` wrote: how to reach the cluster and how to stop it."""

    cluster_id: str
    """Random id; every process of the cluster carries it as ``MLTRAIN_CLUSTER_ID`` in its environment."""
    address: str
    """The GCS address ``ray.init(address=…)`` and ``ray start --address`` take (host:port)."""
    dashboard_url: str
    """Dashboard and Jobs API (``mltrain submit``, ``ray job …``)."""
    metrics_url: str
    """The head's Prometheus endpoint."""
    token_path: str | None
    """File holding the Ray token; None when token authentication is off."""
    temp_root: str
    """The nodes' temp dir (short, under /tmp: Ray's socket paths are length-limited)."""
    object_store_bytes: int
    created: str
    head: NodeRecord
    workers: list[NodeRecord]
    system_config: dict[str, Any] = field(default_factory=dict)
    workdir: str | None = None
    """The nodes' working folder: where jobs without a working_dir run."""
    version: int = STATE_VERSION
    path: Path | None = field(default=None, compare=False)
    """Where this state was read from or written to (not stored)."""

    @property
    def nodes(self) -> list[NodeRecord]:
        """Head first, then the workers in order."""
        return [self.head, *self.workers]

    def worker(self, index: int) -> NodeRecord:
        """Worker ``index`` (0-based, like the lab's ``ray-worker-0``/``ray-worker-1``).

        Raises:
            ClusterError: no such worker.
        """
        if not 0 <= index < len(self.workers):
            raise ClusterError(
                f"no worker {index}: the cluster has workers 0..{len(self.workers) - 1} (numbered from 0, "
                "as the lab's ray-worker-0 and ray-worker-1)"
            )
        return self.workers[index]

    def auth_env(self) -> dict[str, str]:
        """Environment variables with which Ray clients (``ray.init``, ``ray job …``) authenticate."""
        if self.token_path is None:
            return {env.RAY_AUTH_MODE_VAR: "disabled"}
        return {env.RAY_AUTH_MODE_VAR: "token", env.RAY_AUTH_TOKEN_PATH_VAR: self.token_path}

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> ClusterState:
        data = json.loads(text)
        data["head"] = NodeRecord(**data["head"])
        data["workers"] = [NodeRecord(**worker) for worker in data["workers"]]
        return cls(**data, path=path)


def state_path(cluster_dir: str | os.PathLike[str] | None = None) -> Path:
    """The state file's path for ``cluster_dir`` (default :func:`mltrain.env.cluster_dir`)."""
    return env.cluster_dir(cluster_dir) / STATE_FILE


def load_state(cluster_dir: str | os.PathLike[str] | None = None) -> ClusterState | None:
    """The recorded cluster, or None when there is no state file.

    Raises:
        ClusterError: the state file exists but cannot be read.
    """
    path = state_path(cluster_dir)
    if not path.is_file():
        return None
    try:
        state = ClusterState.from_json(path.read_text(), path=path)
    except (ValueError, TypeError, KeyError) as exc:
        raise ClusterError(
            f"expected a state file written by `mltrain cluster up`, found an unreadable {path} ({exc}); "
            "stop its processes by hand if any run, then delete the file"
        ) from exc
    if state.version != STATE_VERSION:
        raise ClusterError(f"{path} has state version {state.version}, this mltrain reads {STATE_VERSION}")
    return state


def require_state(cluster_dir: str | os.PathLike[str] | None = None) -> ClusterState:
    """Like :func:`load_state`, but a missing state file is an error that says what to do."""
    state = load_state(cluster_dir)
    if state is None:
        raise ClusterError(
            f"no local cluster recorded in {state_path(cluster_dir)}; start one with `mltrain cluster up` "
            f"(or point {env.CLUSTER_DIR_VAR} / --dir at the folder of another)"
        )
    return state


def save_state(state: ClusterState, cluster_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the state file atomically (readable by its owner only); returns its path."""
    from mltrain.stack import write_private

    path = state_path(cluster_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, state.to_json())
    state.path = path
    return path
