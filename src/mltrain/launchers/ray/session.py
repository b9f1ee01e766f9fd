"""Ray for one training or search: the process's own (inside a Ray job or trial), a cluster's, or an embedded one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from mltrain import console, env
from mltrain.launchers.ray.options import RayOptions
from mltrain.launchers.ray.scratch import sweep_scratch

_EMBEDDED_OBJECT_STORE = 150 * 2**20  # small: this machine's memory is for the workers (see README)


@contextlib.contextmanager
def ray_session(options: RayOptions, dashboard: bool = False) -> Iterator[str | None]:
    """Ray for this training: the process's own if running inside Ray, a cluster's, or an embedded one.

    The cluster is ``options.address``, else ``RAY_ADDRESS``, else the one ``mltrain cluster up`` recorded; with
    none, a local Ray instance lives as long as the block (``address="local"``: a bare ``ray.init()`` would join
    whatever cluster /tmp/ray names, even a dead one). Before yielding, the request is compared with every
    node: a worker that no node could ever hold is a ConfigError (exit 2) before any MLflow run exists.
    Yields the address joined (None for the embedded instance).

    ``dashboard``: the embedded instance also runs Ray's dashboard (on a free loopback port). Its state API is
    how Ray Train frees the resources of a worker group whose controller was killed — as Tune does to every
    trial it stops early (``mltrain tune``); without it they stay reserved until Ray stops.
    """
    import ray

    from mltrain.cluster import client_auth, embedded_auth, resolve_address, resolve_cluster

    if ray.is_initialized():  # a Ray job's entrypoint, a Tune trial: Ray is already there
        try:
            check_fits(options)
            yield None
        finally:
            sweep_scratch()  # what workers killed on this host (a lost node, a restart) left behind
        return
    target = resolve_address(options.address)
    connection = resolve_cluster(target) if target else None
    with client_auth(connection) if target else embedded_auth():
        if target is None:
            _init_embedded(options, dashboard)
        else:
            _join(target)
        try:
            check_fits(options)
            yield target
        finally:
            ray.shutdown()
            sweep_scratch()  # what workers killed on this host (a restart, a trial Tune stopped) left behind


def _init_embedded(options: RayOptions, dashboard: bool) -> None:
    import ray

    from mltrain.cluster.loopback import embedded_ip
    from mltrain.internals.ray import node_ip_option

    needed = options.workers * options.cpus_per_worker
    settings = _embedded_dashboard(dashboard)
    runtime_env = settings.pop("runtime_env", {}) | console.ray_runtime_env()
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, int(-(-needed // 1))),
        object_store_memory=_EMBEDDED_OBJECT_STORE,
        **settings,
        runtime_env=runtime_env or None,
        **node_ip_option(embedded_ip()),  # its node, workers and this driver talk over loopback only
        logging_level=logging.WARNING,
    )


def _join(target: str) -> None:
    import ray

    from mltrain.cluster.loopback import driver_ip
    from mltrain.internals.ray import node_ip_option

    ray.init(
        address=target,
        # A Ray job's runtime env (mltrain submit's) already reaches every worker.
        runtime_env=None
        if env.inside_ray_job()
        else {"env_vars": env.forwarded_to_workers(), **console.ray_runtime_env()},
        **node_ip_option(driver_ip(target)),
        logging_level=logging.WARNING,
    )


def _embedded_dashboard(wanted: bool) -> dict[str, Any]:
    """``ray.init`` options for the embedded instance's dashboard: none, or one on a free loopback port.

    The job's processes are told its address: Ray's state API (which Ray Train's placement-group cleaner
    calls) otherwise guesses the cluster, and fails when this host runs more than one Ray instance.
    """
    from mltrain.cluster.ports import free_port

    if not wanted:
        return {"include_dashboard": False}
    port = free_port()
    return {
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
        "runtime_env": {"env_vars": {env.RAY_API_SERVER_VAR: f"http://127.0.0.1:{port}"}},
    }


def check_fits(options: RayOptions) -> None:
    """ConfigError (InfeasibleRequest) when no node of the joined cluster could ever hold one worker."""
    import ray

    from mltrain.cluster.capacity import from_ray_nodes
    from mltrain.cluster.jobs import check_feasible

    # The message reads "asks for 4 CPUs; the largest node has 1 CPU (worker-0); <hint>": the request is per worker.
    hint = (
        "that is for each Ray Train worker: lower --cpus-per-worker/--gpus-per-worker, or add a node that has them "
        "(mltrain cluster up --help)"
    )
    check_feasible(options.per_worker(), {}, from_ray_nodes(ray.nodes()), hint=hint)
