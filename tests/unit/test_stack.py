"""`mltrain stack init`: the env file of the team tracking server (random secrets, private, never clobbered)."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from mltrain import stack
from mltrain.errors import MltrainError
from tests.helpers import REPO, run_cli

DEPLOY = REPO / "deploy" / "mlflow"


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    """A copy of deploy/mlflow without any env file."""
    target = tmp_path / "deploy" / "mlflow"
    shutil.copytree(DEPLOY, target, ignore=shutil.ignore_patterns(".env"))
    return target


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_env_writes_distinct_random_secrets(stack_dir: Path) -> None:
    path = stack.init_env(stack_dir)
    assert path == stack_dir / ".env"
    assert _mode(path) == 0o600
    values = stack.read_env(path)
    generated = [values[name] for name in stack.SECRETS]
    assert len(set(generated)) == len(generated), "every secret is its own"
    assert all(len(value) >= 32 and re.fullmatch(r"[A-Za-z0-9_-]+", value) for value in generated)
    assert values["BIND_ADDRESS"] == "127.0.0.1"
    assert values["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"

    again = stack.read_env(stack.init_env(stack_dir, force=True))
    assert not set(generated) & {again[name] for name in stack.SECRETS}, "a new file has new secrets"


def test_every_required_compose_variable_is_generated(stack_dir: Path) -> None:
    values = stack.read_env(stack.init_env(stack_dir))
    for compose in (REPO / "deploy").glob("**/compose.yaml"):
        if compose.parent.name == "ray":
            continue  # deploy/ray has its own env file (tests/unit/test_deploy_ray.py)
        required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", compose.read_text()))
        if compose.parent.name == "mlflow":
            assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= required
        assert required <= set(values), f"{compose}: {sorted(required - set(values))} missing"
        for name in required:
            assert values[name], name
    # env.example lists the same names, without values for the secrets.
    example = stack.read_env(DEPLOY / "env.example")
    assert set(example) == set(values)
    assert all(example[name] == "" for name in stack.SECRETS)


def test_init_env_keeps_an_existing_file(stack_dir: Path) -> None:
    path = stack_dir / ".env"
    path.write_text("POSTGRES_PASSWORD=in-use\n")
    with pytest.raises(MltrainError, match=r"already exists.*--force"):
        stack.init_env(stack_dir)
    assert path.read_text() == "POSTGRES_PASSWORD=in-use\n"


def test_init_env_wants_the_compose_folder(tmp_path: Path) -> None:
    with pytest.raises(MltrainError, match=r"no compose\.yaml in"):
        stack.init_env(tmp_path)
    assert not (tmp_path / ".env").exists()


def test_cli_init_refuses_then_forces(stack_dir: Path) -> None:
    done = run_cli("stack", "init", "--dir", str(stack_dir))
    assert done.returncode == 0, done.stderr
    path = stack_dir / ".env"
    values = stack.read_env(path)
    assert str(path) in done.stdout and "admin" in done.stdout and "docker compose" in done.stdout
    assert not any(values[name] in done.stdout for name in stack.SECRETS), "secrets are not printed"

    refused = run_cli("stack", "init", "--dir", str(stack_dir))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert stack.read_env(path) == values

    forced = run_cli("stack", "init", "--dir", str(stack_dir), "--force", "--show")
    assert forced.returncode == 0, forced.stderr
    new = stack.read_env(path)
    assert new["POSTGRES_PASSWORD"] != values["POSTGRES_PASSWORD"]
    assert f"MLFLOW_AUTH_ADMIN_PASSWORD={new['MLFLOW_AUTH_ADMIN_PASSWORD']}" in forced.stdout
    assert _mode(path) == 0o600


def test_generated_env_file_is_ignored_by_git() -> None:
    import subprocess

    done = subprocess.run(["git", "check-ignore", "-q", "deploy/mlflow/.env"], cwd=REPO)
    assert done.returncode == 0
