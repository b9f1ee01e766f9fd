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
    add_missing: Annotated[
        bool, typer.Option("--add-missing", help="Keep an existing env file; append only the variables it lacks.")
    ] = False,
) -> None:
    """Generate the tracking server's env file (DIR/.env) with random secrets, readable by you only.

    Compose refuses to start the server without it. An existing file is kept unless --force: the
    database and MLflow's users keep the passwords they were first started with. After an upgrade
    that needs new variables (e.g. the scoped MinIO users), --add-missing adds just those.

    \b
    Examples:
      mltrain stack init
      mltrain stack init --dir deploy/mlflow --force
      mltrain stack init --add-missing
    """
    if add_missing and force:
        raise typer.BadParameter("--add-missing keeps the file and --force replaces it: choose one")
    if add_missing:
        added = stack.add_missing_env(dir)
        path = Path(dir) / stack.ENV_FILE
        print(f"added to {path}: {', '.join(added)}" if added else f"{path} has every variable; nothing added")
        if show:
            values = stack.read_env(path)
            for name in added:
                if name in stack.SECRETS:
                    print(f"{name}={values[name]}")
        return
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


def stack_bench(
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="Server to load [default: $MLFLOW_TRACKING_URI].")
    ] = None,
    clients: Annotated[int, typer.Option(help="Simulated trainings logging at once (one process each).")] = 16,
    epochs: Annotated[int, typer.Option(help="Epochs per training: one batch of the 7 epoch metrics each.")] = 100,
    epoch_seconds: Annotated[
        float, typer.Option(help="Pause after each epoch; 0 logs back to back (the server's capacity).")
    ] = 0.0,
    system_interval: Annotated[float, typer.Option(help="Seconds between system-metric batches; 0: none.")] = 5.0,
    artifact_every: Annotated[int, typer.Option(help="Epochs between file uploads; 0: none.")] = 25,
    artifact_kib: Annotated[int, typer.Option(help="Size of each uploaded file, KiB.")] = 64,
    own_users: Annotated[
        bool,
        typer.Option(
            "--own-users/--shared-user",
            help="One throwaway login per client (needs an admin login; deleted afterwards), or all use yours.",
        ),
    ] = False,
    retries: Annotated[
        int | None, typer.Option(help="Client retries per request (counted) [default: MLflow's, 7 with backoff].")
    ] = None,
    experiment: Annotated[str, typer.Option(help="Experiment the load runs go to.")] = "mltrain-load",
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON file.")] = None,
) -> None:
    """Load a tracking server with simulated trainings at once: calls/s, latency, errors, and whether all was kept.

    Each client logs what a training logs (params once, the 7 epoch metrics per epoch, system metrics
    every few seconds, a file now and then), then every run is read back and each point looked for.
    Exits 1 when a call failed or anything is missing. Your login comes from MLFLOW_TRACKING_USERNAME
    and MLFLOW_TRACKING_PASSWORD. See docs/TEAM_SERVER.md, "Capacity".

    \b
    Examples:
      mltrain stack bench --tracking-uri http://127.0.0.1:5000 --clients 16 --own-users
      mltrain stack bench --clients 8 --epochs 20 --json load.json
      mltrain stack bench --clients 60 --epoch-seconds 10 --system-interval 10   # a team's real pace
    """
    from mltrain.stack_bench import LoadPlan, run_load, write_json

    plan = LoadPlan(
        clients=clients,
        epochs=epochs,
        epoch_seconds=epoch_seconds,
        system_interval=system_interval,
        artifact_every=artifact_every,
        artifact_kib=artifact_kib,
        retries=retries,
        experiment=experiment,
    )
    result = run_load(tracking_uri, plan, own_users=own_users)
    print(result.table())
    if json_file is not None:
        print(f"wrote {write_json(result, json_file)}")
    if not result.ok:
        raise typer.Exit(1)
