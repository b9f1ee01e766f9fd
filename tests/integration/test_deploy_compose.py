"""deploy/ checked with the real tools (subprocesses, so not in the unit tier): `docker compose config` on every
compose file under deploy/, each with the env files its header comment says to pass, filled from env.example;
and `mltrain stack init-ray` run as a user runs it.

`docker compose config` parses a file as Compose does (schema, interpolation, required variables) without a
Docker engine; where the docker client or its compose plugin is missing, that test skips and says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mltrain.stack import read_env
from tests.helpers import run_cli
from tests.unit.test_deploy import (
    DEPLOY,
    OVERLAYS,
    SECRET_VARIABLES,
    compose_name,
    find_compose_files,
    required_variables,
)
from tests.unit.test_deploy_ray import copy_deploy

pytestmark = pytest.mark.integration

ENV_EXAMPLES = {"mlflow": DEPLOY / "mlflow" / "env.example", "ray": DEPLOY / "ray" / "env.example"}
# How each compose file under deploy/ is run (the command in its header comment): the files given with -f, an
# overlay on top of its base, and the env files given with --env-file (which env.example each is made from).
COMPOSE_RUNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "data/compose.yaml": (("data/compose.yaml",), ()),
    "mlflow/compose.yaml": (("mlflow/compose.yaml",), ("mlflow",)),
    "jupyter/compose.yaml": (("jupyter/compose.yaml",), ("mlflow",)),
    "jupyter/compose.ray.yaml": (("jupyter/compose.yaml", "jupyter/compose.ray.yaml"), ("mlflow", "ray")),
    "ray/compose.yaml": (("ray/compose.yaml",), ("ray",)),
    "ray/compose.rocm.yaml": (("ray/compose.rocm.yaml",), ("ray",)),
}


def test_every_compose_file_is_run() -> None:
    found = {compose_name(path) for path in find_compose_files()}
    assert found == set(COMPOSE_RUNS) == set(SECRET_VARIABLES), "a compose file was added, renamed or removed"
    for name, (files, _) in COMPOSE_RUNS.items():
        assert files[-1] == name and files[:-1] == ((OVERLAYS[name],) if name in OVERLAYS else ()), name


@functools.cache
def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        return None
    return [docker, "compose"]


def _filled_env(source: str, folder: Path) -> Path:
    """The env.example of ``source`` with each empty value (a secret `mltrain stack init` generates) filled in."""
    path = folder / f"{source}.env"
    values = read_env(ENV_EXAMPLES[source])
    path.write_text(
        "".join(
            f"{name}={value or f'placeholder-{source}-{index}'}\n" for index, (name, value) in enumerate(values.items())
        )
    )
    return path


def _compose_environment() -> dict[str, str]:
    """Only what the docker client needs: a variable of the caller's shell must not stand in for the env file's."""
    return {name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_CONFIG", "DOCKER_HOST") if name in os.environ}


@pytest.mark.parametrize("name", sorted(COMPOSE_RUNS))
def test_docker_compose_config_accepts_the_file(name: str, tmp_path: Path) -> None:
    files, sources = COMPOSE_RUNS[name]
    env_files = [_filled_env(source, tmp_path) for source in sources]
    if not env_files:  # an empty one: Compose must not read a developer's own .env beside the file instead
        env_files.append(tmp_path / "empty.env")
        env_files[0].write_text("")
    provided = {key for env_file in env_files for key, value in read_env(env_file).items() if value}
    required = set().union(*(required_variables(DEPLOY / file) for file in files))
    assert required <= provided, f"{name}: env.example lacks {sorted(required - provided)}"

    docker_compose = _docker_compose()
    if docker_compose is None:
        pytest.skip("no `docker compose` (docker client with the compose plugin): the file was not parsed by Compose")
    command = [
        *docker_compose,
        *(arg for file in files for arg in ("-f", str(DEPLOY / file))),
        *(arg for env_file in env_files for arg in ("--env-file", str(env_file))),
        "config",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=_compose_environment(), timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"


# ---- `mltrain stack init-ray` ------------------------------------------------------------------------------------


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    return copy_deploy(tmp_path)


def test_init_ray_env_without_the_tracking_env_leaves_the_secret_to_fill(deploy_copy: Path) -> None:
    (deploy_copy / "mlflow" / ".env").unlink()
    done = run_cli(
        "stack", "init-ray", "--dir", str(deploy_copy / "ray"), "--tracking-env", str(deploy_copy / "mlflow" / ".env")
    )
    assert done.returncode == 0, done.stderr
    assert "MINIO_RAY_SECRET_KEY" in done.stdout and "docker compose" in done.stdout
    values = read_env(deploy_copy / "ray" / ".env")
    assert values["MINIO_RAY_SECRET_KEY"] == "" and values["MINIO_RAY_ACCESS_KEY"] == "ray-worker"
    again = run_cli("stack", "init-ray", "--dir", str(deploy_copy / "ray"))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_init_ray_env_wants_the_ray_folder(tmp_path: Path) -> None:
    done = run_cli("stack", "init-ray", "--dir", str(tmp_path))
    assert done.returncode == 2 and "compose.yaml" in done.stderr and not (tmp_path / ".env").exists()
