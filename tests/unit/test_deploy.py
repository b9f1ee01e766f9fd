"""The compose files under deploy/, checked by parsing (no Docker engine needed): services, health
checks and start order, volumes, loopback-only ports, no literal secrets, pinned MLflow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from tests.helpers import REPO

DEPLOY = REPO / "deploy"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
# ${VAR:?message}, or ${VAR:-${OTHER:?message}}: a value only the environment can supply.
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+(:\?[^}]*|:-\$\{[A-Z0-9_]+:\?[^}]*\})\}$")
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+):\?")
LOOPBACK_PORT = re.compile(r"^\$\{BIND_ADDRESS:-127\.0\.0\.1\}:(\d+|\$\{[A-Z_]+:-\d+\}):(\d+)$")

# Every compose file under deploy/ and the secret-named environment variables of each of its services, exactly:
# a new file, service or secret has to be added here, and a service listed with none is one that holds none.
_RAY_NODE_SECRETS = {"RAY_AUTH_TOKEN"}
_RAY_WORKER_SECRETS = {"RAY_AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the scoped MinIO user
_RAY_SECRETS = {
    "ray-head": _RAY_NODE_SECRETS,
    "ray-worker-0": _RAY_WORKER_SECRETS,
    "ray-worker-1": _RAY_WORKER_SECRETS,
    "prometheus": set(),
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD"},
}
SECRET_VARIABLES: dict[str, dict[str, set[str]]] = {
    "mlflow/compose.yaml": {
        "postgres": {"POSTGRES_PASSWORD"},
        "minio": {"MINIO_ROOT_PASSWORD"},
        "minio-buckets": {
            "MINIO_ROOT_PASSWORD",
            "MINIO_MLFLOW_ACCESS_KEY",
            "MINIO_MLFLOW_SECRET_KEY",
            "MINIO_RAY_ACCESS_KEY",
            "MINIO_RAY_SECRET_KEY",
        },
        "mlflow": {
            "PGPASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY",
        },
    },
    "data/compose.yaml": {"food11-init": set()},
    "jupyter/compose.yaml": {"jupyter": {"JUPYTER_TOKEN", "MLFLOW_TRACKING_PASSWORD"}},
    "jupyter/compose.ray.yaml": {"jupyter": {"RAY_AUTH_TOKEN"}},
    "ray/compose.yaml": _RAY_SECRETS,
    "ray/compose.rocm.yaml": _RAY_SECRETS,
}
# Overlays, applied on top of their base file (-f BASE -f OVERLAY), never alone.
OVERLAYS = {"jupyter/compose.ray.yaml": "jupyter/compose.yaml"}
# The services that publish ports, and the container ports they publish; the others publish none.
_RAY_PORTS = {"ray-head": [8265], "prometheus": [9090], "grafana": [3000]}
PUBLISHED_PORTS: dict[str, dict[str, list[int]]] = {
    "mlflow/compose.yaml": {"minio": [9000, 9001], "mlflow": [5000]},
    "data/compose.yaml": {},
    "jupyter/compose.yaml": {"jupyter": [8888]},
    "jupyter/compose.ray.yaml": {},
    "ray/compose.yaml": _RAY_PORTS,
    "ray/compose.rocm.yaml": _RAY_PORTS,
}
# The names Compose and its users give compose files; find_compose_files also finds them by content.
COMPOSE_NAMES = ("compose*.y*ml", "docker-compose*.y*ml", "*.compose.y*ml")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def find_compose_files(folder: Path = DEPLOY) -> list[Path]:
    """Every compose file under ``folder``: by name, and any other YAML file with top-level ``services``."""
    by_name = {path for pattern in COMPOSE_NAMES for path in folder.rglob(pattern)}
    by_content = {
        path
        for path in folder.rglob("*.y*ml")
        if any(
            isinstance(document, dict) and "services" in document for document in yaml.safe_load_all(path.read_text())
        )
    }
    return sorted(by_name | by_content)


def compose_name(path: Path) -> str:
    """``path`` relative to deploy/, the key of the tables above."""
    return path.relative_to(DEPLOY).as_posix()


def required_variables(path: Path) -> set[str]:
    """The variables a compose file cannot do without (``${VAR:?message}``)."""
    return set(REQUIRED_VARIABLE.findall(path.read_text()))


ALL_COMPOSE_FILES = find_compose_files()


def _mlflow() -> dict[str, Any]:
    return _load(DEPLOY / "mlflow" / "compose.yaml")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def test_every_compose_file_is_known() -> None:
    found = {compose_name(path) for path in ALL_COMPOSE_FILES}
    assert found == set(SECRET_VARIABLES) == set(PUBLISHED_PORTS), "a compose file was added, renamed or removed"
    assert set(OVERLAYS) | set(OVERLAYS.values()) <= found
    stacks = {path.parent.name for path in ALL_COMPOSE_FILES if path.name == "compose.yaml"}
    assert stacks == {"mlflow", "data", "jupyter", "ray"}


def test_compose_files_are_found_by_name_and_by_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("compose.yml", "docker-compose.override.yaml", "a/stack.compose.yaml", "a/other.yaml"):
        (tmp_path / name).write_text("services: {}\n")
    (tmp_path / "a" / "not-compose.yaml").write_text("kind: Pod\n---\nspec: {}\n")
    found = [path.relative_to(tmp_path).as_posix() for path in find_compose_files(tmp_path)]
    assert found == ["a/other.yaml", "a/stack.compose.yaml", "compose.yml", "docker-compose.override.yaml"]


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=compose_name)
def test_no_literal_secrets(path: Path) -> None:
    services = _load(path)["services"]
    secrets = {
        name: {key for key in _environment(service) if SECRET_NAME.search(key)} for name, service in services.items()
    }
    assert secrets == SECRET_VARIABLES[compose_name(path)]
    for name, service in services.items():
        for key in secrets[name]:
            value = _environment(service)[key]
            assert REQUIRED_REF.match(value), f"{compose_name(path)}/{name}: {key}={value!r} is not ${{VAR:?…}}"
        if not secrets[name]:  # nor a credential under another name: nothing it needs from the env file
            assert not REQUIRED_VARIABLE.search(yaml.safe_dump(service)), f"{compose_name(path)}/{name}"


def _repository_files(folder: Path) -> list[Path]:
    """The files under ``folder`` that belong to the repository: all but the git-ignored env files.

    The env files `mltrain stack init` generates (deploy/mlflow/.env, deploy/ray/.env) hold real secrets by
    design and are git-ignored (``.env``, ``*.env``): they are the user's, not the repository's.
    """
    return sorted(file for file in folder.rglob("*") if file.is_file() and not file.name.endswith(".env"))


LITERAL_SECRET = re.compile(r"(?i)(password|secret|token|(?<!access_)key)[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9_\-]{8,}")
"""A secret-named setting with a value. An access key is a user name (env.example shows
MINIO_RAY_ACCESS_KEY=ray-worker); its secret key is not."""


def literal_secrets(deploy: Path) -> list[Path]:
    """The files under ``deploy`` (env files aside) that hold a literal secret."""
    return [file for file in _repository_files(deploy) if LITERAL_SECRET.search(file.read_text(errors="replace"))]


def test_no_secret_values_in_any_deploy_file() -> None:
    literal = LITERAL_SECRET
    assert literal.search("MINIO_RAY_SECRET_KEY=s3cr3t-of-ray"), "the pattern finds a literal secret"
    assert not literal.search("MINIO_RAY_ACCESS_KEY=ray-worker")
    ignored = set((REPO / ".gitignore").read_text().splitlines())
    assert {".env", "*.env"} <= ignored, "the env files this scan skips must be the ones git ignores"
    files = _repository_files(DEPLOY)
    must_scan = {*ALL_COMPOSE_FILES, DEPLOY / "mlflow" / "env.example", DEPLOY / "ray" / "env.example"}
    assert must_scan <= set(files), sorted(must_scan - set(files))
    assert DEPLOY / "mlflow" / "basic_auth.ini" in files and DEPLOY / "kuberay" / "raycluster.yaml" in files
    assert literal_secrets(DEPLOY) == []


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=compose_name)
def test_ports_publish_on_loopback_by_default(path: Path) -> None:
    published: dict[str, list[int]] = {}
    for name, service in _load(path)["services"].items():
        for port in service.get("ports", []):
            found = LOOPBACK_PORT.match(port) if isinstance(port, str) else None
            assert found, f"{compose_name(path)}/{name}: {port!r}"
            published.setdefault(name, []).append(int(found.group(2)))
    assert published == PUBLISHED_PORTS[compose_name(path)]


@pytest.mark.parametrize("path", ALL_COMPOSE_FILES, ids=compose_name)
def test_named_volumes_are_declared_and_used(path: Path) -> None:
    compose = _load(path)
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared, (used, declared)
    if compose_name(path) in OVERLAYS:
        assert not declared, "an overlay adds settings, its base file keeps the volumes"
    else:
        assert declared, "every stack keeps its state in a named volume"


def test_mlflow_stack_services_and_health() -> None:
    services = _mlflow()["services"]
    assert set(services) == {"postgres", "minio", "minio-buckets", "mlflow"}
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "minio-buckets": {"condition": "service_completed_successfully"},
    }
    assert services["minio-buckets"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert "ports" not in services["postgres"], "the database is reachable from the compose network only"


def test_bucket_creation_is_idempotent() -> None:
    buckets = _mlflow()["services"]["minio-buckets"]
    script = " ".join([*buckets.get("entrypoint", []), *buckets.get("command", [])])
    assert "mb --ignore-existing" in script
    assert "/mlflow-artifacts" in script and "/ray" in script
    assert buckets["restart"] == "no"


def test_mlflow_server_command() -> None:
    server = _mlflow()["services"]["mlflow"]
    command = " ".join(server["command"])
    for flag in (
        "--backend-store-uri postgresql+psycopg://mlflow@postgres:5432/mlflow",  # password from PGPASSWORD
        "--artifacts-destination s3://mlflow-artifacts/",
        "--serve-artifacts",
        "--app-name basic-auth",
    ):
        assert flag in command
    env = _environment(server)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert REQUIRED_REF.match(env[name]), name
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"], "the Jupyter container's Host header"


def test_mlflow_image_pins_the_mlflow_we_use() -> None:
    version = mlflow.__version__
    server = _mlflow()["services"]["mlflow"]
    assert server["image"].endswith(f":{version}")
    dockerfile = (DEPLOY / "mlflow" / server["build"]["dockerfile"]).read_text()
    assert f"FROM ghcr.io/mlflow/mlflow:v{version}\n" in dockerfile
    assert f'"mlflow[auth]=={version}"' in dockerfile
    assert "psycopg[binary]" in dockerfile and "boto3" in dockerfile


def test_auth_config_holds_no_password() -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(DEPLOY / "mlflow" / "basic_auth.ini")
    section = config["mlflow"]
    assert "admin_password" not in section
    assert re.match(r"^postgresql\+psycopg://mlflow@postgres:5432/mlflow_auth$", section["database_uri"])
    assert "mlflow_auth" in (DEPLOY / "mlflow" / "postgres-init" / "10-auth-database.sql").read_text()


def test_data_stack_fills_the_food11_volume() -> None:
    compose = _load(DEPLOY / "data" / "compose.yaml")
    init = compose["services"]["food11-init"]
    assert init["command"] == ["mltrain", "data", "prepare", "--dest", "/data/Food-11"]
    assert "food11:/data" in init["volumes"]
    assert compose["volumes"]["food11"]["name"] == "food11"
    context = (DEPLOY / "data" / init["build"]["context"]).resolve()
    assert context == REPO and (context / init["build"]["dockerfile"]).is_file()


def test_jupyter_client() -> None:
    compose = _load(DEPLOY / "jupyter" / "compose.yaml")
    jupyter = compose["services"]["jupyter"]
    env = _environment(jupyter)
    assert env["MLFLOW_TRACKING_URI"] == "${JUPYTER_MLFLOW_TRACKING_URI:-http://mlflow:5000}"
    assert env["FOOD11_DATA_DIR"] == "/data/Food-11"
    assert compose["volumes"]["food11"] == {"external": True, "name": "food11"}
    network = _mlflow()["networks"]["default"]["name"]
    assert compose["networks"]["default"] == {"name": network, "external": True}
    dockerfile = (DEPLOY / "jupyter" / "Dockerfile").read_text()
    assert "ARG RAY_VERSION=2.60." in dockerfile and '"ray[default]==${RAY_VERSION}"' in dockerfile
    assert "download.pytorch.org/whl/cpu" in dockerfile


# --- Scoped MinIO users ----------------------------------------------------------------------------------
POLICIES = DEPLOY / "mlflow" / "minio"
CONSUMERS = {  # MinIO user (its env variables) -> the one bucket it may use, through which policy file
    "MINIO_MLFLOW": ("mlflow-artifacts", "mlflow-artifacts-rw"),
    "MINIO_RAY": ("ray", "ray-rw"),
}


def _bucket_script() -> str:
    return "\n".join(_mlflow()["services"]["minio-buckets"]["command"])


def _policy(name: str) -> dict[str, Any]:
    import json

    return json.loads((POLICIES / f"{name}.json").read_text())


@pytest.mark.parametrize("prefix", sorted(CONSUMERS))
def test_each_minio_policy_grants_its_bucket_only(prefix: str) -> None:
    bucket, policy_name = CONSUMERS[prefix]
    policy = _policy(policy_name)
    assert policy["Version"] == "2012-10-17"
    allowed = {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    granted: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotResource" not in statement and "NotAction" not in statement
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert set(resources) <= allowed, f"{policy_name}: {resources} reach beyond bucket {bucket}"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        # Object and bucket actions only: no admin:*, no s3:* (which would include changing the bucket's policy).
        assert all(re.fullmatch(r"s3:[A-Z][A-Za-z]+", action) for action in actions), actions
        granted |= set(actions)
    # Read/write: what MLflow's artifact store and Ray's storage do with their bucket.
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= granted


def test_policy_files_are_the_ones_the_bucket_job_creates() -> None:
    files = {path.stem for path in POLICIES.glob("*.json")}
    assert files == {policy for _, policy in CONSUMERS.values()}
    buckets = _mlflow()["services"]["minio-buckets"]
    assert "./minio:/policies:ro" in buckets["volumes"]
    script = _bucket_script()
    for name in files:
        assert f"mc admin policy create store {name} /policies/{name}.json" in script


@pytest.mark.parametrize("prefix", sorted(CONSUMERS))
def test_bucket_job_creates_each_user_with_its_policy(prefix: str) -> None:
    _, policy_name = CONSUMERS[prefix]
    script = _bucket_script()
    user = f'"$${prefix}_ACCESS_KEY"'
    assert f'mc admin user add store {user} "$${prefix}_SECRET_KEY"' in script
    attached = re.findall(rf"mc admin policy attach store (\S+) --user {re.escape(user)}", script)
    assert attached == [policy_name], attached
    env = _environment(_mlflow()["services"]["minio-buckets"])
    for part in ("ACCESS_KEY", "SECRET_KEY"):
        assert REQUIRED_REF.match(env[f"{prefix}_{part}"]) and f"${{{prefix}_{part}:?" in env[f"{prefix}_{part}"]
    # Under `sh -e` a failing mc stops the job, and MLflow, which waits for it to succeed, does not start.
    assert _mlflow()["services"]["minio-buckets"]["entrypoint"] == ["/bin/sh", "-ec"]


def test_root_credentials_are_for_minio_and_the_bucket_job_only() -> None:
    for name, service in _mlflow()["services"].items():
        text = yaml.safe_dump(service)
        uses_root = "MINIO_ROOT_USER" in text or "MINIO_ROOT_PASSWORD" in text
        assert uses_root == (name in {"minio", "minio-buckets"}), name


def test_mlflow_server_uses_its_scoped_minio_user() -> None:
    env = _environment(_mlflow()["services"]["mlflow"])
    assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_MLFLOW_ACCESS_KEY:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_MLFLOW_SECRET_KEY:?")
    assert "--artifacts-destination s3://mlflow-artifacts/" in " ".join(_mlflow()["services"]["mlflow"]["command"])


# --- Capacity settings -----------------------------------------------------------------------------------
def test_credential_cache_is_on_with_a_short_ttl() -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(DEPLOY / "mlflow" / "basic_auth.ini")
    ttl = config.getint("mlflow", "auth_cache_ttl_seconds")
    # On: no password-hash check per request. Short: a revoked or changed password stops working on every
    # worker within minutes, not hours.
    assert 0 < ttl <= 300, ttl


def test_mlflow_workers_default_is_set_and_overridable() -> None:
    command = _mlflow()["services"]["mlflow"]["command"]
    workers = command[command.index("--workers") + 1]
    found = re.fullmatch(r"\$\{MLFLOW_WORKERS:-(\d+)\}", workers)
    assert found and int(found.group(1)) >= 2, workers


def test_database_pool_and_postgres_connections_fit_together() -> None:
    services = _mlflow()["services"]
    pool_setting = _environment(services["mlflow"])["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]
    pool = int(re.fullmatch(r"\$\{MLFLOW_DB_POOL_SIZE:-(\d+)\}", pool_setting).group(1))
    assert pool >= 10, "SQLAlchemy's default of 5 made a busy worker open a connection per request"
    limit = re.search(
        r"max_connections=\$\{POSTGRES_MAX_CONNECTIONS:-(\d+)\}", " ".join(services["postgres"]["command"])
    )
    command = services["mlflow"]["command"]
    workers = int(re.search(r"\d+", command[command.index("--workers") + 1]).group())
    # The connections the pools keep (tracking and auth store, per worker), for two replicas, with as many
    # again for overflow during bursts.
    assert limit and int(limit.group(1)) >= 2 * (2 * workers * 2 * pool), limit
