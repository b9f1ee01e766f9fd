"""Subcommands for Ray: a local cluster (``cluster …``), job submission (``submit``) and ``jobs …``.

Each parses options, calls :mod:`mltrain.cluster` and prints; nothing more.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mltrain import env
from mltrain.errors import ClusterError

if TYPE_CHECKING:
    from mltrain.cluster.connection import ClusterConnection

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Folder of the cluster's state file [default: $MLTRAIN_CLUSTER_DIR or ~/.local/state/mltrain/cluster].",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Dashboard URL (http://host:8265) or GCS address [default: $RAY_ADDRESS, else `cluster up`'s cluster].",
    ),
]
WorkerArgument = Annotated[int, typer.Argument(help="Worker number, from 0 (worker-0, worker-1 …).")]

# What a job's final status makes `mltrain submit` exit with.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}


def cluster_up(
    workers: Annotated[int, typer.Option(help="Worker nodes (the head comes on top and runs no tasks).")] = 2,
    cpus_per_worker: Annotated[
        int | None, typer.Option(help="Logical CPUs per worker [default: this machine's cores / workers, at least 1].")
    ] = None,
    gpus_per_worker: Annotated[
        int, typer.Option(help="GPUs per worker: real ones split between workers if there are enough, else logical.")
    ] = 0,
    resources: Annotated[
        str | None, typer.Option(help="Custom resources per worker, as JSON: '{\"bigmem\": 1}'.")
    ] = None,
    object_store_mb: Annotated[int, typer.Option(help="Object store per node, MiB.")] = 150,
    dashboard_port: Annotated[
        int | None, typer.Option(help="Dashboard port on 127.0.0.1 [default: 8265 if free].")
    ] = None,
    auth: Annotated[bool, typer.Option(help="Token authentication (RAY_AUTH_MODE=token).")] = True,
    workdir: Annotated[
        Path | None, typer.Option(help="Where jobs without --working-dir run [default: this folder].")
    ] = None,
    dir: DirOption = None,
) -> None:
    """Start a local Ray cluster: a head and N worker nodes, each a `ray start` process of this machine.

    The dashboard and Jobs API listen on 127.0.0.1; the nodes talk over loopback addresses of their own (head
    127.0.0.2, worker K 127.0.0.K+3); token authentication is on. Where the cluster runs
    (address, dashboard, token file, processes) goes to a state file that `submit`, `status`,
    `stop-worker`, `start-worker`, `down` and `mltrain train --engine ray` read.

    \b
    Examples:
      mltrain cluster up
      mltrain cluster up --workers 2 --cpus-per-worker 1 --gpus-per-worker 1
      mltrain cluster up --workers 3 --resources '{"bigmem": 1}' --dir /tmp/my-cluster
    """
    from mltrain.cluster.local import ClusterSpec, LocalCluster

    spec = ClusterSpec(
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        resources=_json_object(resources, "--resources"),
        object_store_mb=object_store_mb,
        auth=auth,
        dashboard_port=dashboard_port,
        workdir=str(workdir) if workdir else None,
    )
    started = time.monotonic()
    cluster = LocalCluster.up(spec, dir, progress=lambda line: print(line, flush=True))
    state = cluster.state
    print(f"cluster up in {time.monotonic() - started:.1f}s; state file {state.path}")
    print(f"  address     {state.address}   (ray.init / ray start --address)")
    print(f"  dashboard   {state.dashboard_url}   (Jobs API: mltrain submit, ray job …)")
    print(f"  metrics     {state.metrics_url}")
    if state.token_path:
        print(f"  token       {state.token_path}   (clients: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<that file>)")
    else:
        print("  token       none: authentication is off")
    for node in state.workers:
        extra = f", {json.dumps(node.resources)}" if node.resources else ""
        gpus = f"{node.gpus} GPU" + (f" (CUDA_VISIBLE_DEVICES={node.visible_devices})" if node.visible_devices else "")
        print(f"  {node.name:<10}  {node.ip:<11} {node.cpus} CPU, {gpus}{extra}")


def cluster_status(address: AddressOption = None, dir: DirOption = None) -> None:
    """Show the cluster's nodes (alive or dead, CPUs/GPUs used, jobs on them) and what waits for resources.

    Works on the `cluster up` cluster and on any cluster named by --address or $RAY_ADDRESS.

    \b
    Examples:
      mltrain cluster status
      mltrain cluster status --address http://127.0.0.1:8265
    """
    from mltrain.cluster.status import cluster_status as read_status

    connection = _connection(address, dir)
    print(f"cluster at {connection.dashboard_url} (from {connection.source})")
    print(read_status(connection).format())


def cluster_env(dir: DirOption = None) -> None:
    """Print shell exports that point Ray's own tools (`ray job …`, the Jobs SDK) at the `cluster up` cluster.

    RAY_ADDRESS is the dashboard URL, as `ray job` wants it (mltrain maps it back to the GCS address for
    ray.init); the token is named by its file.

    \b
    Example:
      eval "$(mltrain cluster env)" && ray job list
    """
    from mltrain.cluster.state import require_state

    state = require_state(dir)
    exports = {env.RAY_ADDRESS_VAR: state.dashboard_url, **state.auth_env()}
    print("export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items()))
    print(f"# GCS address, for `ray status --address` or `ray start --address`: {state.address}")


def cluster_down(dir: DirOption = None) -> None:
    """Stop every process of the `cluster up` cluster — those it started, by recorded id, nothing else.

    \b
    Example:
      mltrain cluster down
    """
    from mltrain.cluster.local import LocalCluster

    cluster = LocalCluster.load(dir)
    count = cluster.down()
    print(f"stopped {count} process(es) of the cluster at {cluster.state.dashboard_url}; removed {cluster.state.path}")
    if env.ray_address() in (cluster.state.dashboard_url, cluster.state.address):
        names = " ".join([env.RAY_ADDRESS_VAR, *cluster.state.auth_env()])
        print(f"this shell still names it ({env.RAY_ADDRESS_VAR}={env.ray_address()}): unset {names}")


def cluster_stop_worker(
    index: WorkerArgument,
    graceful: Annotated[bool, typer.Option(help="Let Ray shut the node down instead of killing it (-9).")] = False,
    dir: DirOption = None,
) -> None:
    """Stop one worker node of the `cluster up` cluster: the lab's `docker stop ray-worker-K` drill.

    By default every process of the node is killed at once, as when its machine dies; Ray marks the
    node dead after its health checks fail (about 15 s).

    \b
    Examples:
      mltrain cluster stop-worker 1
      mltrain cluster stop-worker 0 --graceful
    """
    from mltrain.cluster.local import LocalCluster

    count = LocalCluster.load(dir).stop_worker(index, graceful=graceful)
    print(f"worker-{index}: stopped {count} process(es); `mltrain cluster start-worker {index}` brings it back")


def cluster_start_worker(index: WorkerArgument, dir: DirOption = None) -> None:
    """Start a stopped worker node of the `cluster up` cluster again, with the resources it had.

    \b
    Example:
      mltrain cluster start-worker 1
    """
    from mltrain.cluster.local import LocalCluster

    started = time.monotonic()
    node = LocalCluster.load(dir).start_worker(index)
    took = time.monotonic() - started
    print(f"{node.name} is back (pid {node.pid}, {node.cpus} CPU, {node.gpus} GPU) after {took:.1f}s")


def submit(
    command: Annotated[list[str], typer.Argument(help="The command to run on the cluster, after --.")],
    address: AddressOption = None,
    gpus: Annotated[float | None, typer.Option(help="GPUs reserved for the command (fractions allowed).")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs reserved for the command.")] = None,
    resources: Annotated[str | None, typer.Option(help="Custom resources, as JSON: '{\"bigmem\": 1}'.")] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="Run on a node with this label, KEY=VALUE (repeatable).")
    ] = None,
    env_: Annotated[
        list[str] | None, typer.Option("--env", help="Environment variable for the job, K=V (repeatable).")
    ] = None,
    pip: Annotated[Path | None, typer.Option(help="Requirements file to install for the job.")] = None,
    working_dir: Annotated[Path | None, typer.Option(help="Folder to upload and run the command in.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job to its end (--no-wait: print its id and return).")] = True,
    allow_pending: Annotated[
        bool, typer.Option(help="Submit even if no node could ever run it (a cluster that adds nodes).")
    ] = False,
    dir: DirOption = None,
) -> None:
    """Run a command on the Ray cluster as a job; follow its logs and exit with its outcome.

    The job's environment carries FOOD11_DATA_DIR, MLFLOW_TRACKING_URI and the MLflow credentials of
    this shell, then each --env. A request no node could ever run is refused (exit 2) unless
    --allow-pending; one that must wait is reported with what the cluster waits for. Exit status: 0
    SUCCEEDED, 1 FAILED, 3 STOPPED. A command that trains in its own process asks for its node with
    --cpus/--gpus; without them Ray runs it on the head.

    \b
    Examples:
      mltrain submit --cpus 1 -- mltrain train --data /data/Food-11
      mltrain submit --gpus 1 --env MLTRAIN_CACHE_DIR=/tmp/cache -- mltrain train --set total_epochs=10
      mltrain submit --gpus 2 --allow-pending --no-wait -- mltrain train
      mltrain submit --pip requirements.txt --working-dir . -- python my_script.py
    """
    from mltrain.cluster import jobs

    request = jobs.JobRequest(
        command=list(command),
        cpus=cpus,
        gpus=gpus,
        resources=_json_object(resources, "--resources"),
        labels=_pairs(label, "--label"),
        env=_pairs(env_, "--env"),
        pip=jobs.read_requirements(pip) if pip else [],
        working_dir=str(working_dir) if working_dir else None,
        allow_pending=allow_pending,
    )
    connection = _connection(address, dir)
    submission_id = jobs.submit(connection, request)
    print(f"submitted job {submission_id} to {connection.dashboard_url}", file=sys.stderr, flush=True)
    if "mltrain" in request.entrypoint and env.TRACKING_URI_VAR not in request.runtime_env()["env_vars"]:
        print(
            f"note: {env.TRACKING_URI_VAR} is not set: the job tracks into mlflow.db in its own working folder on the "
            "node; set it (a server, or an absolute sqlite:/// path) to find the run afterwards",
            file=sys.stderr,
        )
    if not wait:
        print(submission_id)
        print(f"follow it with: mltrain jobs logs {submission_id} --follow", file=sys.stderr)
        return
    try:
        status = jobs.follow(connection, submission_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; job {submission_id} goes on (`mltrain jobs stop {submission_id}`)", file=sys.stderr
        )
        raise
    info = jobs.job_info(connection, submission_id)
    print(
        f"job {submission_id} {status}" + (f": {info.message}" if status != "SUCCEEDED" and info.message else ""),
        file=sys.stderr,
    )
    raise typer.Exit(EXIT_CODES.get(status, 1))


def jobs_list(address: AddressOption = None, dir: DirOption = None) -> None:
    """List the cluster's jobs: id, status, start time, entrypoint.

    `ray job list` prints the same as Python objects; this is one line per job.

    \b
    Example:
      mltrain jobs list
    """
    from datetime import datetime

    from mltrain.cluster import jobs

    for job in jobs.list_jobs(_connection(address, dir)):
        started = datetime.fromtimestamp((job.start_time or 0) / 1000).strftime("%Y-%m-%d %H:%M:%S")
        entrypoint = " ".join(job.entrypoint.split())
        entrypoint = entrypoint if len(entrypoint) <= 80 else entrypoint[:77] + "..."
        print(f"{job.submission_id or job.job_id}  {job.status!s:<9}  {started}  {entrypoint}")


def jobs_logs(
    submission_id: Annotated[str, typer.Argument(help="Submission id (raysubmit_…).")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
    address: AddressOption = None,
    dir: DirOption = None,
) -> None:
    """Print a job's logs (--follow: until it ends).

    \b
    Examples:
      mltrain jobs logs raysubmit_XXXXXXXX
      mltrain jobs logs raysubmit_XXXXXXXX --follow
    """
    from mltrain.cluster import jobs

    jobs.job_logs(_connection(address, dir), submission_id, follow_logs=follow)


def jobs_stop(
    submission_id: Annotated[str, typer.Argument(help="Submission id (raysubmit_…).")],
    address: AddressOption = None,
    dir: DirOption = None,
) -> None:
    """Stop a job, RUNNING or PENDING (Ray's own `ray job stop` cannot stop a PENDING one).

    \b
    Example:
      mltrain jobs stop raysubmit_XXXXXXXX
    """
    from mltrain.cluster import jobs

    connection = _connection(address, dir)
    before = str(jobs.job_info(connection, submission_id).status)
    status = jobs.stop_job(connection, submission_id)
    if before == "PENDING" and status == "FAILED":
        print(f"job {submission_id} stopped before it started (Ray records it FAILED: its supervisor actor was killed)")
    else:
        print(f"job {submission_id} {status}" + (" (it had ended already)" if before in jobs.TERMINAL else ""))


def _connection(address: str | None, dir: Path | None) -> ClusterConnection:
    from mltrain.cluster.connection import resolve_cluster

    connection = resolve_cluster(address, dir)
    if connection is None:
        raise ClusterError(
            f"no Ray cluster named: pass --address, set {env.RAY_ADDRESS_VAR}, or start one with `mltrain cluster up`"
        )
    connection.require_dashboard()
    return connection


def _json_object(text: str | None, option: str) -> dict[str, float]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClusterError(f"expected a JSON object for {option}, e.g. '{{\"bigmem\": 1}}'; found {text!r}") from exc
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise ClusterError(f"expected a JSON object of numbers for {option}, found {text!r}")
    return value


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClusterError(f"expected KEY=VALUE for {option}, found {item!r}")
        pairs[key] = value
    return pairs
