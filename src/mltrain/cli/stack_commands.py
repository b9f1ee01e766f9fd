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
