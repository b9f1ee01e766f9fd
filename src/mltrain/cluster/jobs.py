"""``mltrain submit`` and ``mltrain jobs``: Ray's Jobs SDK plus what it leaves to the user.

Ray accepts any request and leaves a job that asks for more than any node has PENDING (until its 15-minute
start timeout), without a word. :func:`submit` first compares the request with every live node's total
resources and refuses one that no node could ever run (unless ``allow_pending``, for clusters that add
nodes on demand); a request that fits a node but not now is submitted and reported as waiting, with the
demand the autoscaler sees. The job's runtime environment carries the data folder and the tracking
server's address and credentials of the submitting shell. Ray's ``stop_job`` does nothing to a PENDING
job (ray-project/ray#58353): :func:`stop_job` stops those too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mltrain import console, env
from mltrain.cluster import capacity
from mltrain.cluster.connection import ClusterConnection, explain_errors
from mltrain.cluster.status import Demand, pending_demands
from mltrain.errors import ClusterError, InfeasibleRequest
from mltrain.internals import ray as ray_internals

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_S = 1.0
REPORT_EVERY_S = 30.0
QUIET_PENDING_S = 3.0
_STOPPER_METADATA = "mltrain.stop-pending"


@dataclass(frozen=True)
class JobRequest:
    """A command to run on the cluster and what it needs."""

    command: list[str]
    """The entrypoint, as argv (joined with shell quoting)."""
    cpus: float | None = None
    """CPUs reserved for the entrypoint process (``entrypoint_num_cpus``)."""
    gpus: float | None = None
    """GPUs reserved for the entrypoint process (``entrypoint_num_gpus``); fractions allowed."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources reserved for the entrypoint."""
    labels: dict[str, str] = field(default_factory=dict)
    """Node labels the entrypoint's node must carry (equality), e.g. ``{"mltrain.io/worker": "1"}``."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables; they win over the forwarded ones."""
    pip: list[str] = field(default_factory=list)
    """Packages to install for the job (a runtime env ``pip`` list)."""
    working_dir: str | None = None
    """A local folder Ray uploads and runs the entrypoint in."""
    allow_pending: bool = False
    """Submit even if no live node could run it (a cluster that adds nodes on demand)."""

    def __post_init__(self) -> None:
        if not self.command:
            raise ClusterError("expected a command to run after `--`, e.g. `mltrain submit -- mltrain train`")
        for name, amount in (("cpus", self.cpus), ("gpus", self.gpus), *self.resources.items()):
            if amount is not None and amount < 0:
                raise ClusterError(f"expected a non-negative amount for {name}, found {amount}")
        if self.working_dir is not None and not Path(self.working_dir).is_dir():
            raise ClusterError(f"expected a folder for --working-dir, found no folder at {self.working_dir}")

    @property
    def entrypoint(self) -> str:
        return shlex.join(self.command)

    def wanted(self) -> dict[str, float]:
        """Every resource the entrypoint reserves, with a positive amount."""
        wanted = {"CPU": self.cpus or 0, "GPU": self.gpus or 0, **self.resources}
        return {name: float(amount) for name, amount in wanted.items() if amount}

    def runtime_env(self) -> dict[str, Any]:
        """Ray's runtime environment for the job: forwarded variables, ``env``, ``pip``, ``working_dir``."""
        # The stop grace period (see env.JOB_STOP_WAIT_S) travels with the job too, for clusters started elsewhere.
        grace = {env.JOB_STOP_WAIT_VAR: os.environ.get(env.JOB_STOP_WAIT_VAR, env.JOB_STOP_WAIT_S)}
        runtime: dict[str, Any] = {"env_vars": {**grace, **env.job_environment(), **self.env}}
        runtime |= console.ray_runtime_env()  # the job's Ray workers show what the submitting console shows
        if self.pip:
            runtime["pip"] = list(self.pip)
        if self.working_dir is not None:
            runtime["working_dir"] = str(self.working_dir)
        return runtime


def read_requirements(path: str | Path) -> list[str]:
    """The requirement lines of a pip requirements file (comments and blank lines dropped).

    Raises:
        ClusterError: the file cannot be read.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ClusterError(f"expected a pip requirements file for --pip, cannot read {path}: {exc}") from exc
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


ALLOW_PENDING_HINT = "pass --allow-pending to submit anyway (for a cluster that adds nodes)"


def check_feasible(
    wanted: dict[str, float],
    labels: dict[str, str],
    nodes: Iterable[capacity.NodeResources],
    hint: str = ALLOW_PENDING_HINT,
) -> None:
    """Refuse a request that no live node could ever run.

    Args:
        wanted: Resources by name (``CPU``, ``GPU``, custom), as :meth:`JobRequest.wanted` gives.
        labels: Node labels the node must carry.
        nodes: The cluster's nodes (:func:`~mltrain.cluster.capacity.from_node_states` or ``from_ray_nodes``).
        hint: What the user can do, appended to the message.

    Raises:
        InfeasibleRequest: naming the request and the largest node.
    """
    nodes = list(nodes)
    alive = [node for node in nodes if node.alive]
    if any(_fits(node, wanted, labels) for node in alive):
        return
    asked = f"asks for {describe(wanted)}" if wanted else "asks for no resources"
    if labels:
        asked += " on a node labelled " + ", ".join(f"{key}={value}" for key, value in labels.items())
    candidates = [node for node in alive if _has_labels(node, labels)]
    if not candidates:
        seen = sorted({f"{k}={v}" for node in alive for k, v in node.labels.items() if not k.startswith("ray.io/")})
        message = f"{asked}; no live node carries that label (labels: {', '.join(seen) or 'none'})"
    else:
        largest = max(candidates, key=lambda node: _closeness(node, wanted))
        has = describe({name: largest.total.get(name, 0) for name in wanted})
        message = f"{asked}; the largest node has {has} ({_name(largest)})"
    dead = [node for node in nodes if not node.alive and _fits(node, wanted, labels)]
    if dead:
        message += f"; {_name(dead[0])} could run it but is dead: start it again"
    raise InfeasibleRequest(f"{message}; {hint}")


def describe(resources: dict[str, float]) -> str:
    """``{"GPU": 2, "CPU": 1}`` → ``2 GPUs, 1 CPU``."""
    parts = []
    for name, amount in resources.items():
        number = str(int(amount)) if float(amount).is_integer() else f"{amount:g}"
        plural = name in ("CPU", "GPU") and amount != 1
        parts.append(f"{number} {name}{'s' if plural else ''}")
    return ", ".join(parts)


def submit(connection: ClusterConnection, request: JobRequest) -> str:
    """Check the request against the cluster's nodes and submit it; returns the submission id.

    Raises:
        InfeasibleRequest: no live node could run it and ``request.allow_pending`` is False.
        ClusterError: the cluster cannot be reached or refuses the token.
    """
    from ray.util.state.common import ListApiOptions, StateResource

    client = connection.jobs_client()
    if not request.allow_pending:
        state_client = connection.state_client()
        with explain_errors(connection):
            nodes = state_client.list(
                StateResource.NODES, options=ListApiOptions(detail=True), raise_on_missing_output=False
            )
        check_feasible(request.wanted(), request.labels, capacity.from_node_states(nodes))
    with explain_errors(connection):
        return client.submit_job(
            entrypoint=request.entrypoint,
            runtime_env=request.runtime_env(),
            entrypoint_num_cpus=request.cpus,
            entrypoint_num_gpus=request.gpus,
            entrypoint_resources=request.resources or None,
            entrypoint_label_selector=request.labels or None,
            metadata={"submitted_by": "mltrain submit"},
        )


def follow(
    connection: ClusterConnection,
    submission_id: str,
    out: TextIO = sys.stdout,
    report: Callable[[str], None] | None = None,
    report_every: float = REPORT_EVERY_S,
    quiet_for: float = QUIET_PENDING_S,
) -> str:
    """Wait for the job to start, reporting what it waits for, then stream its logs to ``out`` until it
    ends. Returns its final status (SUCCEEDED, FAILED or STOPPED).

    Args:
        connection: The cluster.
        submission_id: The job.
        out: Where the job's output goes.
        report: Called with each "waiting" line (default: print to stderr).
        report_every: Seconds between repeated waiting lines while the demand stays the same.
        quiet_for: Seconds a job may be PENDING (setting up its runtime environment) before the first
            waiting line.
    """
    client = connection.jobs_client()
    say = report or (lambda line: print(line, file=sys.stderr, flush=True))
    since = time.monotonic()
    last_report, last_demands = 0.0, None
    while True:
        with explain_errors(connection):
            info = client.get_job_info(submission_id)
        if str(info.status) != "PENDING":
            break
        now = time.monotonic()
        if now - since >= quiet_for:
            demands = pending_demands(connection)
            text = _demand_text(demands)
            # The autoscaler's report lags a little: a demand that blinks out is no news.
            first, changed = last_demands is None, bool(demands) and text != last_demands
            if first or changed or now - last_report >= report_every:
                detail = f" ({info.message})" if first and info.message else ""
                say(f"waiting: job {submission_id} is PENDING{detail}; pending demands on the cluster: {text}")
                last_report, last_demands = now, text
        time.sleep(POLL_S)

    return _follow_log(connection, client, submission_id, out)


def _follow_log(connection: ClusterConnection, client: Any, submission_id: str, out: TextIO) -> str:
    """Stream the job's log to ``out`` until the job ends; returns its final status."""
    written = _stream(client, submission_id, out)
    # The stream may close early (its node went away) or a moment before the driver's last lines reach
    # the file: poll the log for what it missed until the job has ended.
    while True:
        status = wait_terminal(connection, submission_id, timeout=2 * POLL_S)
        written = _print_new(client, submission_id, written, out)
        if status in TERMINAL:
            return status


def _print_new(client: Any, submission_id: str, written: str, out: TextIO) -> str:
    """Print the part of the job's log after ``written``; returns the whole log printed so far."""
    try:
        full = client.get_job_logs(submission_id)
    except RuntimeError:  # the node holding the log is gone
        return written
    if full.startswith(written) and len(full) > len(written):
        out.write(full[len(written) :])
        out.flush()
        return full
    return written


def wait_terminal(connection: ClusterConnection, submission_id: str, timeout: float) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout``); returns the last status."""
    client = connection.jobs_client()
    deadline = time.monotonic() + timeout
    while True:
        with explain_errors(connection):
            status = str(client.get_job_status(submission_id))
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def job_info(connection: ClusterConnection, submission_id: str) -> Any:
    """Ray's record of the job (``JobDetails``: status, message, entrypoint, driver node …)."""
    client = connection.jobs_client()
    with explain_errors(connection):
        try:
            return client.get_job_info(submission_id)
        except RuntimeError as exc:
            raise ClusterError(f"no job {submission_id} on the cluster at {connection.dashboard_url}: {exc}") from exc


def list_jobs(connection: ClusterConnection) -> list[Any]:
    """Every job the cluster knows, oldest first."""
    client = connection.jobs_client()
    with explain_errors(connection):
        jobs = client.list_jobs()
    return sorted(jobs, key=lambda job: job.start_time or 0)


def job_logs(
    connection: ClusterConnection, submission_id: str, follow_logs: bool = False, out: TextIO = sys.stdout
) -> None:
    """Print the job's logs so far, or (``follow_logs``) stream them until the job ends."""
    job_info(connection, submission_id)  # a clear error for an unknown id
    client = connection.jobs_client()
    with explain_errors(connection):
        if follow_logs:
            _follow_log(connection, client, submission_id, out)
            return
        try:
            out.write(client.get_job_logs(submission_id))
        except RuntimeError as exc:
            raise ClusterError(f"the logs of job {submission_id} cannot be read: {exc}") from exc
        out.flush()


def stop_job(connection: ClusterConnection, submission_id: str, timeout: float = 60.0) -> str:
    """Stop a job, PENDING or RUNNING; returns its status afterwards.

    A RUNNING job is stopped through Ray (its driver gets SIGTERM, then SIGKILL). A PENDING job's
    supervisor actor waits for resources, and Ray's stop request waits behind it for ever; so a tiny
    helper job, run on the cluster with the cluster's own credentials, kills that actor with
    ``ray.kill``. Ray then records the job FAILED ("Job supervisor actor died"), and it can never start.
    """
    info = job_info(connection, submission_id)
    status = str(info.status)
    if status in TERMINAL:
        return status
    client = connection.jobs_client()
    with explain_errors(connection):
        client.stop_job(submission_id)
    if status == "PENDING":
        status = wait_terminal(connection, submission_id, timeout=3)
        if status == "PENDING":
            _kill_supervisor(connection, submission_id, timeout)
    return wait_terminal(connection, submission_id, timeout)


def _kill_supervisor(connection: ClusterConnection, submission_id: str, timeout: float) -> None:
    # Run on the cluster as a job, so with the cluster's own address and token.
    script = ray_internals.kill_job_supervisor_script()
    client = connection.jobs_client()
    with explain_errors(connection):
        helper = client.submit_job(
            entrypoint=shlex.join(["python", "-c", script, submission_id]),
            metadata={_STOPPER_METADATA: submission_id},
        )
    status = wait_terminal(connection, helper, timeout)
    if status != "SUCCEEDED" and wait_terminal(connection, submission_id, timeout=1) not in TERMINAL:
        with explain_errors(connection):
            logs = client.get_job_logs(helper)
        raise ClusterError(f"could not stop PENDING job {submission_id}: helper job {helper} {status}: {logs[-500:]}")


def _stream(client: Any, submission_id: str, out: TextIO) -> str:
    """Copy the job's log to ``out`` as it grows, until the job ends; returns what was written.

    Inside a running event loop (a notebook) nothing is streamed; :func:`follow` polls the log instead.
    """
    written: list[str] = []
    try:
        asyncio.get_running_loop()
        return ""
    except RuntimeError:
        pass  # no loop running: stream

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            written.append(chunk)
            out.write(chunk)
            out.flush()

    # Ray's SDK logs an INFO line when the stream closes normally; that is not news to the user.
    sdk_logger = logging.getLogger(ray_internals.JOB_SDK_LOGGER)
    level = sdk_logger.level
    sdk_logger.setLevel(logging.WARNING)
    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the stream broke off (e.g. the driver's node died); the caller polls on
        print(f"(log stream interrupted: {exc})", file=sys.stderr)
    finally:
        sdk_logger.setLevel(level)
    return "".join(written)


def _demand_text(demands: list[Demand]) -> str:
    return "; ".join(str(demand) for demand in demands) or "none reported yet"


def _name(node: capacity.NodeResources) -> str:
    return node.name or node.node_id[:8]


def _has_labels(node: capacity.NodeResources, labels: dict[str, str]) -> bool:
    return all(node.labels.get(key) == value for key, value in labels.items())


def _fits(node: capacity.NodeResources, wanted: dict[str, float], labels: dict[str, str]) -> bool:
    return _has_labels(node, labels) and capacity.fits(node.total, wanted)


def _closeness(node: capacity.NodeResources, wanted: dict[str, float]) -> tuple[int, float, float]:
    """How near the node comes: resources it covers, the smallest have/want ratio, then its size."""
    total = node.total
    covered = sum(total.get(name, 0) >= amount for name, amount in wanted.items())
    ratio = min((total.get(name, 0) / amount for name, amount in wanted.items()), default=0.0)
    return covered, ratio, total.get("GPU", 0) + total.get("CPU", 0)
