"""Secrets for the team tracking server (``deploy/mlflow``): generate the env file docker compose reads.

No password or key lives in a tracked file. :func:`init_env` writes ``deploy/mlflow/.env`` — random
values, mode 0600 — and the compose files refuse to start without it (``${VAR:?…}``). Compose reads a
``.env`` next to the compose file by itself, so ``cd deploy/mlflow && docker compose up -d`` just works::

    from mltrain.stack import init_env
    path = init_env("deploy/mlflow")
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mltrain.errors import MltrainError

DEFAULT_DIR = Path("deploy/mlflow")
ENV_FILE = ".env"
COMPOSE_FILE = "compose.yaml"
ADMIN_USERNAME = "admin"

SECRETS: dict[str, str] = {
    "POSTGRES_PASSWORD": "password of the 'mlflow' PostgreSQL role (set when the database volume is created)",
    "MINIO_ROOT_PASSWORD": "MinIO root password: for the bucket job (minio-buckets) and the console, never a client",
    "MINIO_MLFLOW_SECRET_KEY": "secret key of MINIO_MLFLOW_ACCESS_KEY, the MLflow server's MinIO user",
    "MINIO_RAY_SECRET_KEY": "secret key of MINIO_RAY_ACCESS_KEY, the Ray workers' MinIO user",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "password of the MLflow admin, applied once when the user store is created",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "signs MLflow's CSRF tokens and sessions",
    "JUPYTER_TOKEN": "token of the Jupyter client container (deploy/jupyter)",
}
"""Generated variables and what each is for (the comment above it in the env file)."""

SETTINGS: dict[str, tuple[str, str]] = {
    "BIND_ADDRESS": ("127.0.0.1", "host address the published ports bind to; 0.0.0.0 exposes them to the network"),
    "MLFLOW_PORT": ("5000", "MLflow UI and REST API"),
    "MINIO_API_PORT": ("9000", "MinIO S3 API"),
    "MINIO_CONSOLE_PORT": ("9001", "MinIO web console"),
    "JUPYTER_PORT": ("8888", "Jupyter client (deploy/jupyter)"),
    "MINIO_ROOT_USER": ("mltrain", "MinIO root user: creates the buckets, the users below and their policies"),
    "MINIO_MLFLOW_ACCESS_KEY": (
        "mlflow",
        "MinIO user of the MLflow server: read/write on bucket mlflow-artifacts only",
    ),
    "MINIO_RAY_ACCESS_KEY": ("ray-worker", "MinIO user of the Ray workers: read/write on bucket ray only"),
    "MLFLOW_AUTH_ADMIN_USERNAME": (ADMIN_USERNAME, "MLflow admin user, created at the first start"),
}
"""Plain settings with their defaults, written to the env file for the operator to adjust."""

SECRET_BYTES = 32  # token_urlsafe(32): 43 characters of [A-Za-z0-9_-], safe in URLs and in env files
SECRET_BYTES_BY_NAME = {"MINIO_MLFLOW_SECRET_KEY": 30, "MINIO_RAY_SECRET_KEY": 30}
"""Exceptions to SECRET_BYTES: MinIO's tools make secret keys of at most 40 characters (30 bytes: 40)."""


def init_env(dir: str | os.PathLike[str] = DEFAULT_DIR, force: bool = False) -> Path:
    """Write ``DIR/.env`` with fresh random secrets and default settings; returns its path.

    Args:
        dir: The folder holding the stack's ``compose.yaml`` (``deploy/mlflow`` in the repository).
        force: Replace an existing env file. The database and MLflow's user store keep the passwords
            they were created with, so only do this before the first start or after removing the volumes.

    Raises:
        MltrainError: ``dir`` has no ``compose.yaml``, or the env file exists and ``force`` is False.
    """
    folder = Path(dir)
    if not (folder / COMPOSE_FILE).is_file():
        raise MltrainError(
            f"expected the tracking-server folder holding {COMPOSE_FILE} (deploy/mlflow in the mltrain "
            f"repository), found no {COMPOSE_FILE} in {folder}; run from the repository root or pass --dir"
        )
    path = folder / ENV_FILE
    if path.exists() and not force:
        raise MltrainError(
            f"{path} already exists and was kept (a running stack's database and users were created with its "
            "secrets); pass --add-missing to add only the variables it lacks, or --force to replace it"
        )
    write_private(path, render_env(generate_secrets()))
    return path


def add_missing_env(dir: str | os.PathLike[str] = DEFAULT_DIR) -> list[str]:
    """Append to an existing ``DIR/.env`` the variables a newer mltrain needs, keeping every value it has.

    For upgrades: a stack made before, say, the scoped MinIO users keeps its database and admin
    passwords, and gains fresh secrets (and default settings) for the new variables only.

    Returns:
        The names added, in the env file's order (empty when nothing was missing).

    Raises:
        MltrainError: There is no ``DIR/.env`` to complete.
    """
    path = Path(dir) / ENV_FILE
    if not path.is_file():
        raise MltrainError(f"expected an env file to complete at {path}, found none; run `mltrain stack init`")
    present = read_env(path)
    fresh = generate_secrets()
    lines: list[str] = []
    added: list[str] = []
    for name, (default, purpose) in SETTINGS.items():
        if name not in present:
            lines += [f"# {purpose}", f"{name}={default}"]
            added.append(name)
    for name, purpose in SECRETS.items():
        if name not in present:
            lines += [f"# {purpose}", f"{name}={fresh[name]}"]
            added.append(name)
    if added:
        text = path.read_text()
        separator = "" if text.endswith("\n") or not text else "\n"
        write_private(
            path, text + separator + "\n# Added by `mltrain stack init --add-missing`.\n" + "\n".join(lines) + "\n"
        )
    return added


def generate_secrets() -> dict[str, str]:
    """A fresh random value for every variable in :data:`SECRETS`."""
    return {name: secrets.token_urlsafe(SECRET_BYTES_BY_NAME.get(name, SECRET_BYTES)) for name in SECRETS}


def render_env(values: dict[str, str]) -> str:
    """The env file's text: settings first, then the secrets, each under a comment saying what it is for."""
    lines = [
        "# Secrets and settings of the mltrain tracking server, made by `mltrain stack init`.",
        "# Keep this file private (mode 0600) and out of git. docker compose reads it from this folder.",
        "",
    ]
    for name, (default, purpose) in SETTINGS.items():
        lines += [f"# {purpose}", f"{name}={default}"]
    lines.append("")
    for name, purpose in SECRETS.items():
        lines += [f"# {purpose}", f"{name}={values[name]}"]
    return "\n".join(lines) + "\n"


def read_env(path: str | os.PathLike[str]) -> dict[str, str]:
    """``NAME=value`` pairs of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), replacing the file atomically."""
    # Created 0600 from the start (never briefly world-readable) and swapped in whole.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
