"""Subcommands for the team tracking server (deploy/mlflow): parse options, call the API, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mltrain import stack


def stack_init(
    dir: Annotated[
        Path, typer.Option("--dir", help="Folder of the tracking server's compose.yaml.")
    ] = stack.DEFAULT_DIR,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing env file.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Also print the generated secrets.")] = False,
) -> None:
    """Generate the tracking server's env file (DIR/.env) with random secrets, readable by you only.

    Compose refuses to start the server without it. An existing file is kept unless --force: the
    database and MLflow's users keep the passwords they were first started with.

    \b
    Examples:
      mltrain stack init
      mltrain stack init --dir deploy/mlflow --force
    """
    path = stack.init_env(dir, force=force)
    values = stack.read_env(path)
    print(f"wrote {path} (mode 0600; secrets not shown, see the file or pass --show)")
    print(f"MLflow admin user: {values.get('MLFLOW_AUTH_ADMIN_USERNAME', stack.ADMIN_USERNAME)}")
    if show:
        for name in stack.SECRETS:
            print(f"{name}={values[name]}")
    print("next: start the server with")
    print(f"  docker compose -f {path.parent / stack.COMPOSE_FILE} --env-file {path} up -d --build")


def stack_init_ray(
    dir: Annotated[Path, typer.Option("--dir", help="Folder of the Ray cluster's compose files.")] = Path("deploy/ray"),
    tracking_env: Annotated[
        Path, typer.Option(help="The tracking server's env file, to copy the Ray workers' MinIO user from.")
    ] = Path("deploy/mlflow/.env"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing env file.")] = False,
) -> None:
    """Generate the Ray cluster's env file (DIR/.env): a Ray token, Grafana's password, settings.

    The Ray workers' MinIO user (bucket `ray` only) is copied from the tracking server's env file; run
    `mltrain stack init` first, on the same machine, or fill MINIO_RAY_SECRET_KEY in by hand.

    \b
    Examples:
      mltrain stack init-ray
      mltrain stack init-ray --tracking-env /srv/mltrain/deploy/mlflow/.env --force
    """
    from mltrain.cluster.deploy_env import COPIED, init_ray_env

    path, copied = init_ray_env(dir, tracking_env, force=force)
    print(f"wrote {path} (mode 0600): a new Ray token (RAY_AUTH_TOKEN) and Grafana password; secrets not shown")
    missing = sorted(set(COPIED) - set(copied))
    if missing:
        print(f"note: {', '.join(missing)} not found in {tracking_env}: fill them in {path} before starting")
    print("next: start the cluster with")
    print(f"  docker compose -f {path.parent / 'compose.yaml'} up -d --build      # NVIDIA")
    print(f"  docker compose -f {path.parent / 'compose.rocm.yaml'} up -d --build # AMD (ROCm)")
