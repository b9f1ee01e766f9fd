"""What mltrain takes from Ray's internals: logger names, the token cache, the job supervisor's name and the
dashboard's autoscaler report. Each has no public API in Ray 2.60; ``tests/unit/test_internals.py`` checks
each against the installed Ray. Ray is imported inside the functions only.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

# --- logger names (mltrain.console, mltrain.cluster.jobs) -----------------------------------------------------
# Ray logs through loggers named after its modules, private ones included; a quiet console can only quiet a
# line by its logger's name, and Ray has no setting for these lines.

TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Warns once per embedded Ray that token authentication is on, which is the default mltrain wants."""
TOKEN_AUTH_ENABLED_WARNING = "Token authentication is enabled"
"""The start of that warning (the rest names a variable and a URL that may change)."""
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
"""Ray Train's placement-group cleaner: polls the State API every few seconds, and an embedded Ray without a
dashboard answers it with a warning each time."""
JOB_SDK_LOGGER = "ray.dashboard.modules.job.sdk"
"""The Jobs SDK (``ray.job_submission``'s implementation): an INFO line when a log stream closes normally."""
TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"
"""Ray Train's "Reporting training result ..." line, per report and rank, comes from this module."""


def train_report_logger_name() -> str | None:
    """The name of the logger of Ray Train's per-report INFO line, or None if this Ray has no such module.

    That module logs through ``logging.getLogger(__file__)``: the logger is named after its file's path,
    which only the module's spec knows (finding it imports the parent packages, not the module).
    """
    try:
        spec = importlib.util.find_spec(TRAIN_CONTEXT_MODULE)
    except ModuleNotFoundError:  # a parent package is gone: the console is louder, nothing breaks
        return None
    return spec.origin if spec is not None and spec.origin else None


# --- token authentication (mltrain.cluster.connection.client_auth) ---------------------------------------------


def reset_auth_token_cache() -> None:
    """Make this process's Ray read ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` again.

    Ray's extension reads the mode into its RayConfig once and caches the token in a process-wide loader, and
    Ray 2.60 has no public call to re-read them (its docs say to set the variables before the process starts).
    ``mltrain`` switches between an embedded Ray and a cluster's token within one process, so it does what
    Ray's own ``authentication_token_setup._enable_token_auth`` and ``ensure_token_if_auth_enabled`` do (and
    its test helper ``reset_auth_token_state``): re-initialize the config, then drop the cached token, in that
    order. Nothing is cached before the extension is loaded, so nothing is done then.
    """
    if "ray._raylet" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in Ray's stub

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# --- a PENDING job's supervisor actor (mltrain.cluster.jobs.stop_job) ------------------------------------------


def kill_job_supervisor_script() -> str:
    """Python source that kills the supervisor actor of the job whose submission id is its first argument.

    Ray's ``stop_job`` cannot stop a PENDING job (ray-project/ray#58353): its stop request waits behind the
    supervisor actor, which waits for resources. Killing that actor ends the job (Ray records it FAILED). The
    actor's name and namespace are constants of Ray's job manager with no public counterpart. The script runs
    on the cluster as a Ray job (``python -c SCRIPT SUBMISSION_ID``), with the cluster's own Ray, address and
    token, so it is self-contained text and reads the constants there.
    """
    return (
        "import sys, ray; "
        "from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE as NAME; "
        "from ray.dashboard.modules.job.common import SUPERVISOR_ACTOR_RAY_NAMESPACE as NS; "
        "ray.init(log_to_driver=False); "
        "ray.kill(ray.get_actor(NAME.format(job_id=sys.argv[1]), namespace=NS), no_restart=True)"
    )


# --- the autoscaler's report (mltrain.cluster.status) ------------------------------------------------------------
# Pending resource demands have no public API in Ray 2.60: the State API lists nodes, actors, tasks and placement
# groups but not what the autoscaler waits for; ``ray status`` prints it as text for people;
# ``ray.autoscaler.v2.sdk.get_cluster_status`` is not a public API and needs a GCS connection (mltrain talks to
# the dashboard over HTTP, with the token as a header). The dashboard's own UI reads this undocumented route.

CLUSTER_STATUS_PATH = "/api/cluster_status"
"""The dashboard route (``reporter_head``) that returns the autoscaler's status from the GCS."""


@dataclass(frozen=True)
class ReportedDemand:
    """One entry of the autoscaler's pending demands."""

    kind: str
    """``task/actor``, ``placement group`` or ``requested`` (``ray.autoscaler.sdk.request_resources``)."""
    resources: dict[str, float]
    """What one of them asks for (a placement group: all its bundles together)."""
    count: int
    strategy: str | None = None
    """A placement group's strategy (``PACK``, ``SPREAD``, ...)."""


_DEMAND_KEYS = (("resourceDemand", "task/actor"), ("pgDemand", "placement group"), ("requestDemand", "requested"))


def load_metrics_report(answer: dict[str, Any]) -> dict[str, Any]:
    """The load-metrics report in an answer of :data:`CLUSTER_STATUS_PATH` ({} if the autoscaler wrote none).

    The dashboard answers ``{"data": {"clusterStatus": {...}}}`` with the autoscaler monitor's status; its
    ``load_metrics_report`` is Ray's ``LoadMetricsSummary`` with every key camel-cased by the dashboard.
    """
    status = (answer.get("data") or {}).get("clusterStatus") or {}
    return status.get("loadMetricsReport") or {}


def reported_demands(report: dict[str, Any]) -> list[ReportedDemand]:
    """The pending demands in a load-metrics report.

    Each list holds ``[what, count]`` pairs; for placement groups ``what`` is ``{"bundles": [[bundle, n],
    ...], "strategy": ...}``. A bare ``{"bundles": [bundle, ...], ...}`` (no count, one of each) is read too.
    """
    demands = []
    for key, kind in _DEMAND_KEYS:
        for entry in report.get(key) or []:
            what, count = (entry[0], entry[1]) if isinstance(entry, list | tuple) and len(entry) == 2 else (entry, 1)
            if not isinstance(what, dict):
                continue
            if "bundles" in what:
                strategy = str(what.get("strategy") or "PACK")
                demands.append(ReportedDemand(kind, _merged(what["bundles"] or []), int(count), strategy))
            else:
                demands.append(ReportedDemand(kind, dict(what), int(count)))
    return demands


def used_by_node(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Resources in use per node in a load-metrics report: ``{node: {resource: amount}}``.

    The report pairs each resource as ``[used, total]``. Its node key is the node id (hex) on a cluster that
    ``ray start`` set up by hand (the monitor's read-only config sets ``use_node_id_as_ip``), the node's IP
    under an autoscaler config. Resource names come camel-cased like every key here (``objectStoreMemory``);
    ``CPU`` and ``GPU`` stay as they are.
    """
    usage = report.get("usageByNode") or {}
    return {node: {name: pair[0] for name, pair in (resources or {}).items()} for node, resources in usage.items()}


def _merged(bundles: list[Any]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for bundle in bundles:
        resources, times = (bundle[0], bundle[1]) if isinstance(bundle, list | tuple) else (bundle, 1)
        for name, amount in (resources or {}).items():
            merged[name] = merged.get(name, 0) + amount * times
    return merged


# --- starting Ray in-process (mltrain.launchers.ray.session) ------------------------------------------------
def node_ip_option(address: str | None) -> dict[str, Any]:
    """``ray.init`` keyword arguments that make this process's node (or driver) use ``address`` (none for None).

    ``ray.init`` takes the node IP only through its private ``_node_ip_address`` parameter (``ray start`` has the
    public ``--node-ip-address``). Without it, Ray takes the host's network address, and a loopback-only
    cluster (mltrain's tests, a laptop) would send traffic off loopback or fail to match its own nodes. Both
    pass the address through ``ray._private.services.resolve_ip_for_localhost``, which replaces 127.0.0.1,
    ``localhost`` and ``::1`` with the host's network address but keeps any other loopback address: hence
    :mod:`mltrain.cluster.loopback`'s 127.0.0.2 and up.
    """
    return {"_node_ip_address": address} if address else {}


# --- Ray Train (mltrain.launchers.ray) ------------------------------------------------------------------------
TRAIN_PRINT_PATCH_VAR = "RAY_TRAIN_ENABLE_PRINT_PATCH"
"""Ray Train turns ``print()`` in workers into log records, which reach the console twice next to Ray's own log
forwarding; this internal switch (``ray.train.v2._internal.constants``) turns it off. No public setting does."""


def quiet_worker_prints() -> None:
    """Keep the workers' epoch lines (prints) printed once (Ray passes this process's variable on to the
    controller and the workers); an explicit setting of the user's wins."""
    import os

    os.environ.setdefault(TRAIN_PRINT_PATCH_VAR, "0")


TRAIN_CONTROLLER_CLASS = "TrainController"
"""The class name of Ray Train V2's controller actor (``ray.train.v2._internal.execution.controller``)."""


def kill_train_controllers() -> list[int]:
    """SIGKILL this driver's Ray Train controller(s); returns their pids. Ray then ends its worker actors.

    Ray Train's public abort is ``Ctrl+C`` in the driver's main thread, which asks the controller politely — and a
    controller still waiting for its workers' resources only hears it after up to a minute. No public API names
    the controller actor: it is found by its internal class name, on a cluster through the State API (by this
    job's id), on an embedded Ray without a dashboard among this process's descendants.
    """
    import contextlib
    import os
    import signal

    import psutil
    import ray

    job = ray.get_runtime_context().get_job_id()
    pids: list[int] = []
    try:
        from ray.util.state import list_actors

        filters: list[tuple[str, str, str | bool | int | float]] = [
            ("class_name", "=", TRAIN_CONTROLLER_CLASS),
            ("state", "=", "ALIVE"),
            ("job_id", "=", job),
        ]
        actors = list_actors(filters=filters, raise_on_missing_output=False)
        pids = [actor.pid for actor in actors if actor.pid is not None]
    except Exception:
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if TRAIN_CONTROLLER_CLASS in " ".join(process.cmdline()):
                    pids.append(process.pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


# --- jobs and local nodes (mltrain.env, mltrain.cluster.nodes) -------------------------------------------------
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job manager in the environment of a submitted job's entrypoint (``ray.dashboard.modules.job``):
the one sign, before ``ray.init``, that this process is a Ray job whose runtime env already reaches every worker.
Ray has no public "am I a job's entrypoint" call that works before connecting."""
GRACEFUL_DRAIN_VAR = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
"""Ray's internal config (``RAY_<name>`` variables override ``ray_config_def.h``): seconds a stopping node waits
to drain. ``mltrain cluster stop-worker`` kills a node like a lost machine; nothing should wait for it."""
SESSION_LATEST = "session_latest"
"""The link a node makes in its ``--temp-dir`` to its session folder (sockets, logs)."""


def raylet_sockets(temp_root: Any) -> int:
    """How many raylets of the cluster sharing ``temp_root`` have made their socket (``raylet``, ``raylet.1`` ...).

    Ray reports a node only once it has registered with the GCS, but two nodes starting at once on one host can
    pick the same socket name; the socket files appear first, so ``mltrain cluster up`` waits for them between
    nodes. Their names and folder are Ray's session layout, not an API.
    """
    from pathlib import Path

    sockets = Path(temp_root) / SESSION_LATEST / "sockets"
    return sum(1 for entry in sockets.iterdir() if entry.name.startswith("raylet")) if sockets.is_dir() else 0
