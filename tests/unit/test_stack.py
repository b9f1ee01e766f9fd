"""`mltrain stack init`: the env file of the team tracking server (random secrets, private, never clobbered)."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from mltrain import stack
from mltrain.errors import MltrainError
from tests.helpers import REPO, call_cli

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


def test_cli_init_refuses_then_forces(stack_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = call_cli(capsys, "stack", "init", "--dir", str(stack_dir))
    assert done.returncode == 0, done.stderr
    path = stack_dir / ".env"
    values = stack.read_env(path)
    assert str(path) in done.stdout and "admin" in done.stdout and "docker compose" in done.stdout
    assert not any(values[name] in done.stdout for name in stack.SECRETS), "secrets are not printed"

    refused = call_cli(capsys, "stack", "init", "--dir", str(stack_dir))
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert stack.read_env(path) == values

    forced = call_cli(capsys, "stack", "init", "--dir", str(stack_dir), "--force", "--show")
    assert forced.returncode == 0, forced.stderr
    new = stack.read_env(path)
    assert new["POSTGRES_PASSWORD"] != values["POSTGRES_PASSWORD"]
    assert f"MLFLOW_AUTH_ADMIN_PASSWORD={new['MLFLOW_AUTH_ADMIN_PASSWORD']}" in forced.stdout
    assert _mode(path) == 0o600


def test_one_minio_user_per_consumer_with_the_names_the_deploy_files_use(stack_dir: Path) -> None:
    values = stack.read_env(stack.init_env(stack_dir))
    assert values["MINIO_MLFLOW_ACCESS_KEY"] == "mlflow"
    assert values["MINIO_RAY_ACCESS_KEY"] == "ray-worker"
    keys = [values["MINIO_MLFLOW_SECRET_KEY"], values["MINIO_RAY_SECRET_KEY"]]
    assert all(8 <= len(key) <= 40 for key in keys), "MinIO secret keys are 8-40 characters"
    assert len({*keys, values["MINIO_ROOT_PASSWORD"]}) == 3, "no user shares the root's secret"


def test_add_missing_completes_an_older_env_file_and_keeps_its_values(stack_dir: Path) -> None:
    path = stack.init_env(stack_dir)
    before = stack.read_env(path)
    # An env file from before the scoped MinIO users: the same file without their four variables.
    new = ("MINIO_MLFLOW_ACCESS_KEY", "MINIO_MLFLOW_SECRET_KEY", "MINIO_RAY_ACCESS_KEY", "MINIO_RAY_SECRET_KEY")
    old_text = "".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith(new))
    path.write_text(old_text)
    path.chmod(0o600)

    assert sorted(stack.add_missing_env(stack_dir)) == sorted(new)
    after = stack.read_env(path)
    assert set(after) == set(before)
    assert all(after[name] == before[name] for name in before if name not in new), "existing values are kept"
    assert after["MINIO_RAY_ACCESS_KEY"] == "ray-worker" and len(after["MINIO_RAY_SECRET_KEY"]) == 40
    assert path.read_text().startswith(old_text)
    assert _mode(path) == 0o600
    assert stack.add_missing_env(stack_dir) == [], "a complete file is left alone"


def test_cli_add_missing(stack_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = call_cli(capsys, "stack", "init", "--dir", str(stack_dir), "--add-missing")
    assert missing.returncode == 2 and "stack init" in missing.stderr and "Traceback" not in missing.stderr
    assert call_cli(capsys, "stack", "init", "--dir", str(stack_dir)).returncode == 0
    done = call_cli(capsys, "stack", "init", "--dir", str(stack_dir), "--add-missing")
    assert done.returncode == 0, done.stderr
    assert "nothing added" in done.stdout
    both = call_cli(capsys, "stack", "init", "--dir", str(stack_dir), "--add-missing", "--force")
    assert both.returncode == 2 and "choose one" in both.stderr
