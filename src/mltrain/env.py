"""Every environment variable mltrain reads, in one place. Explicit arguments always win."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from mltrain.internals.ray import JOB_CONFIG_VAR

DATA_DIR_VAR = "FOOD11_DATA_DIR"
TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"
RAY_ADDRESS_VAR = "RAY_ADDRESS"
CACHE_DIR_VAR = "MLTRAIN_CACHE_DIR"
CLUSTER_DIR_VAR = "MLTRAIN_CLUSTER_DIR"
# Ray's own names (Ray >= 2.52): the client side of token authentication.
RAY_AUTH_MODE_VAR = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_VAR = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
RAY_API_SERVER_VAR = "RAY_API_SERVER_ADDRESS"
"""Ray's: the dashboard (state API) that Ray's processes query; set for an embedded Ray's own processes."""
RAY_DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")
# What a job submitted with `mltrain submit` inherits from the submitting shell: where the data is and
# where (and as whom) to track. MLflow reads the credentials itself.
JOB_FORWARDED_VARS = (
    DATA_DIR_VAR,
    TRACKING_URI_VAR,
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)

S3_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
"""The standard AWS variables for an S3 endpoint (MinIO, or another store speaking S3)."""
WORKER_FORWARDED_VARS = (*JOB_FORWARDED_VARS, *S3_VARS, "MLFLOW_S3_ENDPOINT_URL")
"""What Ray Train workers on a cluster inherit from the driver: the job's variables plus S3 access (the
checkpoint storage and, without a proxying tracking server, MLflow's artifacts)."""

JOB_STOP_WAIT_VAR = "RAY_JOB_STOP_WAIT_TIME_S"
JOB_STOP_WAIT_S = "30"
"""Seconds a stopped Ray job gets between SIGTERM and SIGKILL (Ray's default, 3, is too short to end a run)."""

DEFAULT_DATA_DIR = Path("Food-11")


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the Food-11 folders are: the argument, else ``FOOD11_DATA_DIR``, else ``./Food-11``."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(DATA_DIR_VAR)
    return Path(from_env) if from_env else DEFAULT_DATA_DIR


def tracking_uri(explicit: str | None = None) -> str | None:
    """The MLflow tracking URI, or None to let MLflow use its own default (``sqlite:///mlflow.db``)."""
    return explicit or os.environ.get(TRACKING_URI_VAR) or None


def ray_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to join, or None for an embedded local instance."""
    return explicit or os.environ.get(RAY_ADDRESS_VAR) or None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where decoded-image caches live: the argument, ``MLTRAIN_CACHE_DIR``, or the user cache folder."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CACHE_DIR_VAR)
    if from_env:
        return Path(from_env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mltrain"


def state_dir() -> Path:
    """Where mltrain keeps what it knows about things it started (``$XDG_STATE_HOME/mltrain``,
    ``~/.local/state/mltrain``), e.g. the running ``mltrain ui``."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "mltrain"


def cluster_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where ``mltrain cluster up`` keeps its state file and token: the argument, ``MLTRAIN_CLUSTER_DIR``,
    else ``$XDG_STATE_HOME/mltrain/cluster`` (``~/.local/state/mltrain/cluster``)."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CLUSTER_DIR_VAR)
    if from_env:
        return Path(from_env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "mltrain" / "cluster"


def ray_auth_token(include_default_file: bool = True) -> tuple[str, str] | None:
    """The Ray token this shell offers and where it came from, in Ray's own order of precedence.

    ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, else (if ``include_default_file``)
    ``~/.ray/auth_token``; None if there is none.
    """
    token = os.environ.get(RAY_AUTH_TOKEN_VAR, "").strip()
    if token:
        return token, RAY_AUTH_TOKEN_VAR
    path = os.environ.get(RAY_AUTH_TOKEN_PATH_VAR)
    if path:
        file, source = Path(path).expanduser(), RAY_AUTH_TOKEN_PATH_VAR
    elif include_default_file:
        file, source = RAY_DEFAULT_TOKEN_PATH.expanduser(), "~/.ray/auth_token"
    else:
        return None
    text = file.read_text().strip() if file.is_file() else ""
    return (text, f"{source} ({file})") if text else None


def job_environment() -> dict[str, str]:
    """The variables of :data:`JOB_FORWARDED_VARS` that are set here, for a submitted job's runtime env.

    A relative ``FOOD11_DATA_DIR`` is made absolute: the job runs in another working directory.
    """
    values = {name: os.environ[name] for name in JOB_FORWARDED_VARS if os.environ.get(name)}
    if DATA_DIR_VAR in values:
        values[DATA_DIR_VAR] = os.path.abspath(values[DATA_DIR_VAR])
    return values


def forwarded_to_workers() -> dict[str, str]:
    """The variables of :data:`WORKER_FORWARDED_VARS` set here, for the runtime env of a cluster's workers."""
    values = {name: os.environ[name] for name in WORKER_FORWARDED_VARS if os.environ.get(name)}
    return {**values, **job_environment()}


def s3_settings() -> tuple[str | None, str | None, str | None, str]:
    """(endpoint URL, access key, secret key, region) of the S3 endpoint, from the standard AWS variables."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    endpoint = endpoint or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return endpoint, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY"), region


_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")
"""Set by launchers of data-parallel workers: torchrun sets RANK; Lightning's ddp launcher LOCAL_RANK/NODE_RANK."""


def is_rank_zero() -> bool:
    """False in a data-parallel worker that a launcher started (rank > 0): only rank 0 talks to MLflow.

    Lightning's ddp launcher starts ranks 1..N-1 by re-running the same command with these variables
    set, so the check must happen before anything creates an MLflow run.
    """
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


def process_started_at() -> float:
    """When this process started, on the ``time.time()`` scale: to 10 ms on Linux (psutil's ``create_time``
    counts from the boot time in whole seconds), else psutil's."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            since_boot = float(uptime.read().split()[0])
        return time.time() - (since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().create_time()


def inside_ray_job() -> bool:
    """True in the entrypoint of a Ray job (``mltrain submit``): its runtime env already reaches every worker."""
    return JOB_CONFIG_VAR in os.environ


@contextlib.contextmanager
def restored(*names: str) -> Iterator[None]:
    """Put the variables ``names`` back as they were (set, or unset) when the block ends."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
