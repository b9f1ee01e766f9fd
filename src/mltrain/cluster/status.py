"""What a Ray cluster has and does now: nodes (alive or dead, resources used/total, jobs on them) and the
resource demands that wait — read from Ray's State API and the autoscaler report the dashboard shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mltrain.cluster.connection import ClusterConnection, explain_errors
from mltrain.internals import ray as ray_internals

ACTIVE_JOB_STATES = ("PENDING", "RUNNING")


@dataclass(frozen=True)
class NodeStatus:
    """One Ray node as the cluster sees it."""

    name: str
    node_id: str
    state: str
    """ALIVE or DEAD."""
    is_head: bool
    total: dict[str, float]
    """Resources the node declared (CPU, GPU, memory, custom ones)."""
    used: dict[str, float]
    """Resources in use now (CPU and GPU; from the autoscaler's report)."""
    labels: dict[str, str] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    """Submission ids of the active jobs whose driver or actors run here."""
    message: str | None = None
    """Why a dead node died, as Ray says it."""
    earlier: int = 0
    """How many earlier nodes of the same name Ray still lists (dead ones from before a restart)."""


@dataclass(frozen=True)
class Demand:
    """Resources that something on the cluster waits for."""

    resources: dict[str, float]
    count: int
    kind: str
    """``task/actor`` (a job's entrypoint, a Ray task or actor), ``placement group`` (e.g. Ray Train's
    worker group) or ``requested`` (``ray.autoscaler.sdk.request_resources``)."""

    def __str__(self) -> str:
        return f"{format_resources(self.resources)} x{self.count} ({self.kind})"


@dataclass(frozen=True)
class ClusterStatus:
    """Nodes, active jobs and pending demands of one cluster."""

    nodes: list[NodeStatus]
    demands: list[Demand]
    jobs: dict[str, str]
    """Status by submission id of the jobs that are PENDING or RUNNING."""

    def node(self, name: str) -> NodeStatus:
        """The newest node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def format(self) -> str:
        """A table of the nodes, then the jobs and the pending demands."""
        rows = [("NODE", "STATE", "CPU", "GPU", "OTHER RESOURCES", "JOBS")]
        for node in self.nodes:
            alive = node.state == "ALIVE"
            rows.append(
                (
                    node.name + (f" (+{node.earlier} earlier)" if node.earlier else ""),
                    node.state,
                    _usage(node, "CPU") if alive else "-",
                    _usage(node, "GPU") if alive else "-",
                    format_resources(_custom(node.total)) or "-",
                    ", ".join(node.jobs) or "-",
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        for node in self.nodes:
            if node.state != "ALIVE" and node.message:
                lines.append(f"{node.name} died: {node.message}")
        jobs = ", ".join(f"{job} {status}" for job, status in self.jobs.items())
        lines.append(f"active jobs: {jobs or 'none'}")
        lines.append("pending demands: " + ("; ".join(str(d) for d in self.demands) or "none"))
        return "\n".join(lines)


def cluster_status(connection: ClusterConnection) -> ClusterStatus:
    """Ask the cluster for its nodes, its active jobs and what waits for resources."""
    from ray.util.state.common import ListApiOptions, StateResource

    state_client = connection.state_client()
    with explain_errors(connection):
        # list() is typed as returning any record type; these are node and actor records.
        nodes: list[Any] = state_client.list(
            StateResource.NODES, options=ListApiOptions(detail=True), raise_on_missing_output=False
        )
        actors: list[Any] = state_client.list(
            StateResource.ACTORS,
            options=ListApiOptions(filters=[("state", "=", "ALIVE")], detail=False, limit=10_000),
            raise_on_missing_output=False,
        )
        jobs = connection.jobs_client().list_jobs()
    report = _autoscaler_report(connection)
    used = ray_internals.used_by_node(report)

    active = {job.submission_id: job for job in jobs if job.submission_id and str(job.status) in ACTIVE_JOB_STATES}
    by_ray_job = {job.job_id: job.submission_id for job in active.values() if job.job_id}
    jobs_on: dict[str, set[str]] = {}
    for job in active.values():
        if job.driver_node_id and job.submission_id:
            jobs_on.setdefault(job.driver_node_id, set()).add(job.submission_id)
    for actor in actors:
        submission = by_ray_job.get(actor.job_id)
        if submission and actor.node_id:
            jobs_on.setdefault(actor.node_id, set()).add(submission)

    newest: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for node in nodes:
        name = node.node_name or node.node_id[:8]
        counts[name] = counts.get(name, 0) + 1
        if name not in newest or (node.start_time_ms or 0) > (newest[name].start_time_ms or 0):
            newest[name] = node
    statuses = [
        NodeStatus(
            name=name,
            node_id=node.node_id,
            state=node.state,
            is_head=bool(node.is_head_node),
            total=dict(node.resources_total or {}),
            used={key: amount for key, amount in used.get(node.node_id, {}).items() if key in ("CPU", "GPU")},
            labels=dict(node.labels or {}),
            jobs=sorted(jobs_on.get(node.node_id, ())),
            message=node.state_message,
            earlier=counts[name] - 1,
        )
        for name, node in newest.items()
    ]
    statuses.sort(key=lambda status: (not status.is_head, status.name))
    return ClusterStatus(
        nodes=statuses, demands=demands_from_report(report), jobs={k: str(v.status) for k, v in active.items()}
    )


def pending_demands(connection: ClusterConnection) -> list[Demand]:
    """What waits for resources now, as the autoscaler reports it (the dashboard's "Demands")."""
    return demands_from_report(_autoscaler_report(connection))


def demands_from_report(report: dict[str, Any]) -> list[Demand]:
    """Demands in the autoscaler's load-metrics report (see :func:`mltrain.internals.ray.reported_demands`)."""
    demands = []
    for demand in ray_internals.reported_demands(report):
        kind = demand.kind if demand.strategy is None else f"{demand.kind}, {demand.strategy.lower()}"
        demands.append(Demand(demand.resources, demand.count, kind))
    return demands


def format_resources(resources: dict[str, float]) -> str:
    """``{"GPU": 2.0, "CPU": 1}`` → ``2 GPU, 1 CPU``."""
    return ", ".join(f"{_number(amount)} {name}" for name, amount in resources.items())


def _autoscaler_report(connection: ClusterConnection) -> dict[str, Any]:
    return ray_internals.load_metrics_report(connection.get_json(ray_internals.CLUSTER_STATUS_PATH))


def _usage(node: NodeStatus, resource: str) -> str:
    total = node.total.get(resource, 0)
    return f"{_number(node.used.get(resource, 0))}/{_number(total)}"


def _custom(resources: dict[str, float]) -> dict[str, float]:
    return {
        name: amount
        for name, amount in resources.items()
        if name not in ("CPU", "GPU", "memory", "object_store_memory") and not name.startswith("node:")
    }


def _number(amount: float) -> str:
    return str(int(amount)) if float(amount).is_integer() else f"{amount:g}"
