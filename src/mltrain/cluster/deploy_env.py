"""The env file of the Ray cluster in ``deploy/ray``: a fresh Ray token and Grafana password, the settings
the compose files read, and the MinIO credentials of the Ray workers' user copied from the tracking
server's env file (``deploy/mlflow/.env``, where ``mltrain stack init`` made that user)::

    from mltrain.cluster.deploy_env import init_ray_env
    path, copied = init_ray_env("deploy/ray")
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mltrain.errors import MltrainError
from mltrain.stack import ENV_FILE, SECRET_BYTES, read_env, write_private

DEFAULT_DIR = Path("deploy/ray")
TRACKING_ENV = Path("deploy/mlflow") / ENV_FILE
COMPOSE_FILES = ("compose.yaml", "compose.rocm.yaml")

SECRETS: dict[str, str] = {
    "RAY_AUTH_TOKEN": "Ray's token: every node and every client (RAY_AUTH_TOKEN) must present it",
    "GRAFANA_ADMIN_PASSWORD": "password of Grafana's admin user",
}
"""Generated here, each a fresh random value."""

COPIED: dict[str, tuple[str, str]] = {
    "MINIO_RAY_ACCESS_KEY": ("ray-worker", "MinIO user of the Ray workers (read/write on bucket `ray` only)"),
    "MINIO_RAY_SECRET_KEY": ("", "its secret key"),
}
"""Copied from the tracking server's env file; the default when it is not there."""

SETTINGS: dict[str, tuple[str, str]] = {
    "BIND_ADDRESS": ("127.0.0.1", "host address the published ports bind to; 0.0.0.0 exposes them to the network"),
    "RAY_DASHBOARD_PORT": ("8265", "Ray dashboard and Jobs API (clients set RAY_ADDRESS=http://<host>:<port>)"),
    "PROMETHEUS_PORT": ("9090", "Prometheus"),
    "GRAFANA_PORT": ("3000", "Grafana"),
    "GRAFANA_PUBLIC_URL": ("http://127.0.0.1:3000", "Grafana as browsers reach it (the Ray dashboard embeds it)"),
    "GRAFANA_ADMIN_USER": ("admin", "Grafana's admin user"),
    "GRAFANA_ANONYMOUS_VIEWER": ("true", "anonymous read-only Grafana viewers (needed for the dashboard's charts)"),
    "RAY_WORKER_CPUS": ("8", "logical CPUs each worker offers to Ray (about half of the host's cores)"),
    "RAY_WORKER_0_GPU": ("0", "GPU of worker 0: NVIDIA index or UUID, or ROCm index"),
    "RAY_WORKER_1_GPU": ("1", "GPU of worker 1"),
    "RAY_SHM_SIZE": ("8gb", "shared memory per node (Ray's object store lives there)"),
    "RAY_S3_ENDPOINT_URL": ("http://minio:9000", "S3 endpoint for checkpoints: the team's MinIO"),
    "RAY_MLFLOW_TRACKING_URI": ("http://mlflow:5000", "MLflow server jobs track into unless they say otherwise"),
}
"""Plain settings with their defaults, for the operator to adjust."""


def init_ray_env(
    dir: str | os.PathLike[str] = DEFAULT_DIR,
    tracking_env: str | os.PathLike[str] | None = TRACKING_ENV,
    force: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``DIR/.env`` for deploy/ray; returns its path and the names copied from ``tracking_env``.

    Args:
        dir: The folder holding deploy/ray's compose files.
        tracking_env: The tracking server's env file to copy the Ray workers' MinIO user from; missing
            or None leaves ``MINIO_RAY_SECRET_KEY`` empty (compose then refuses to start, saying so).
        force: Replace an existing env file (running nodes keep the old token until restarted).

    Raises:
        MltrainError: ``dir`` has no deploy/ray compose file, or the env file exists and not ``force``.
    """
    folder = Path(dir)
    if not any((folder / name).is_file() for name in COMPOSE_FILES):
        raise MltrainError(
            f"expected the Ray deploy folder holding {' or '.join(COMPOSE_FILES)} (deploy/ray in the mltrain "
            f"repository), found neither in {folder}; run from the repository root or pass --dir"
        )
    path = folder / ENV_FILE
    if path.exists() and not force:
        raise MltrainError(
            f"{path} already exists and was kept (running nodes use its token); pass --force to replace it"
        )
    tracking = read_env(tracking_env) if tracking_env and Path(tracking_env).is_file() else {}
    copied = {name: tracking[name] for name in COPIED if tracking.get(name)}
    values = {
        **{name: default for name, (default, _) in COPIED.items()},
        **copied,
        **{name: secrets.token_urlsafe(SECRET_BYTES) for name in SECRETS},
        # Ray's own token format (what `ray get-auth-token --generate` writes): 256 random bits in hex.
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    lines = [
        "# Secrets and settings of the mltrain Ray cluster (deploy/ray), made by `mltrain stack init-ray`.",
        "# Keep this file private (mode 0600) and out of git. docker compose reads it from this folder.",
        "",
    ]
    for name, (default, purpose) in SETTINGS.items():
        lines += [f"# {purpose}", f"{name}={default}"]
    lines += ["", f"# Copied from {tracking_env} (the tracking server's env file) when it was there."]
    for name, (_, purpose) in COPIED.items():
        lines += [f"# {purpose}", f"{name}={values[name]}"]
    lines.append("")
    for name, purpose in SECRETS.items():
        lines += [f"# {purpose}", f"{name}={values[name]}"]
    text = "\n".join(lines) + "\n"
    write_private(path, text)
    return path, sorted(copied)
