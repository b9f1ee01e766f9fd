"""Ray clusters: a local one for a single machine, and submitting jobs to any Ray cluster.

- :mod:`~mltrain.cluster.local` — ``cluster up/down/stop-worker/start-worker``: a head and N worker nodes,
  each a ``ray start`` process of this machine, token authentication on (its shape:
  :mod:`~mltrain.cluster.spec`; starting one node: :mod:`~mltrain.cluster.nodes`);
- :mod:`~mltrain.cluster.state` — the state file ``up`` writes (address, dashboard, token, processes);
- :mod:`~mltrain.cluster.loopback` — the loopback addresses of this machine's nodes and drivers;
- :mod:`~mltrain.cluster.connection` — which cluster a client uses and with which token;
- :mod:`~mltrain.cluster.status` — nodes, jobs and pending demands;
- :mod:`~mltrain.cluster.jobs` — ``submit`` (refusing impossible requests) and ``jobs list/logs/stop``.

Joining the cluster from training code::

    import ray
    from mltrain.cluster import client_auth, resolve_address, resolve_cluster

    address = resolve_address()            # --address, RAY_ADDRESS, `cluster up`'s state file, or None
    with client_auth(resolve_cluster()):   # the token, if the cluster wants one
        ray.init(address=address or "local")
        ...
        ray.shutdown()

Importing this package starts nothing and does not import Ray.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    "ClusterSpec": "mltrain.cluster.spec",
    "LocalCluster": "mltrain.cluster.local",
    "ClusterState": "mltrain.cluster.state",
    "NodeRecord": "mltrain.cluster.state",
    "load_state": "mltrain.cluster.state",
    "ClusterConnection": "mltrain.cluster.connection",
    "resolve_cluster": "mltrain.cluster.connection",
    "resolve_address": "mltrain.cluster.connection",
    "client_auth": "mltrain.cluster.connection",
    "embedded_auth": "mltrain.cluster.connection",
    "ClusterStatus": "mltrain.cluster.status",
    "cluster_status": "mltrain.cluster.status",
    "JobRequest": "mltrain.cluster.jobs",
    "submit": "mltrain.cluster.jobs",
    "follow": "mltrain.cluster.jobs",
    "stop_job": "mltrain.cluster.jobs",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'mltrain.cluster' has no attribute {name!r}")
