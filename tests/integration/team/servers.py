"""The team tracking server's real parts, all on 127.0.0.1: the fixtures in conftest.py use them, and so
can a person, to measure the server (docs/TEAM_SERVER.md, "Capacity").

A throwaway PostgreSQL cluster (Debian's server binaries), a moto S3 endpoint with the
``mlflow-artifacts`` bucket, and ``mlflow server --app-name basic-auth`` in front of both — set up
like deploy/mlflow: the tracked basic_auth.ini and postgres-init SQL, the password from PGPASSWORD.
The server can be killed and started again (same arguments) for the outage test.

Run as a program, it starts the three, runs one command against them and stops them::

    python -m tests.integration.team.servers -- mltrain stack bench --clients 16
    python -m tests.integration.team.servers --workers 1 --auth-cache-ttl 0 -- mltrain stack bench --clients 16
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import glob
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO

DEPLOY = REPO / "deploy" / "mlflow"
BUCKET = "mlflow-artifacts"
DB_ROLE = "mlflow"  # as in deploy/mlflow/compose.yaml (POSTGRES_USER)
DB_NAME = "mlflow"
ADMIN = "admin"
LOGS: dict[str, Path] = {}
"""Name -> log file of each running part (conftest.py attaches their tails to failing tests' reports)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# --- PostgreSQL -------------------------------------------------------------------------------------------
@dataclass
class Postgres:
    port: int
    password: str
    """Password of the ``mlflow`` role (MLflow gets it as PGPASSWORD, never in a URI)."""
    data: Path | None = None
    """The cluster's data folder."""

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://{DB_ROLE}@127.0.0.1:{self.port}/{database}"


def _postgres_bin() -> Path:
    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
            "run scripts/system-deps.sh (`make system-deps`), which installs Debian's postgresql package",
            pytrace=False,
        )
    return Path(initdb).parent


def _as_cluster_owner(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs the tests as root, so the cluster belongs to `postgres`.
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, but there is no `postgres` user to own the test cluster", pytrace=False)
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        if log is not None:
            detail += "\n" + log_tail(log)
        pytest.fail(f"{what} failed ({done.returncode}): {detail}", pytrace=False)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 with the role and databases deploy/mlflow sets up."""
    import psycopg
    from psycopg import sql

    bin_dir = _postgres_bin()
    # Under /tmp with mode 0755: the cluster's owner must be able to reach it (pytest's tmp dirs are 0700).
    base = Path(tempfile.mkdtemp(prefix="mltrain-pg-", dir="/tmp"))
    base.chmod(0o755)
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    sockets.mkdir()
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    LOGS["postgres"] = log
    try:
        if os.geteuid() == 0:
            _as_cluster_owner([])  # fails with a clear message when there is no `postgres` user
            owner = pwd.getpwnam("postgres")
            for path in (base, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(
            _as_cluster_owner(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"]
            ),
            "initdb",
        )  # fmt: skip
        port = free_port()
        # Durability off: a throwaway cluster, and the tests' only cost is time.
        options = (
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        _run(_as_cluster_owner([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o", options, "start"]), "pg_ctl", log)
        password = secrets.token_urlsafe(24)
        with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres", autocommit=True) as db:
            db.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(DB_ROLE), sql.Literal(password)
                )
            )
            db.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB_NAME), sql.Identifier(DB_ROLE)))
        # What the postgres image runs once at its first start, as the same role (password over TCP).
        with psycopg.connect(
            host="127.0.0.1", port=port, user=DB_ROLE, password=password, dbname=DB_NAME, autocommit=True
        ) as db:
            for script in sorted((DEPLOY / "postgres-init").glob("*.sql")):
                db.execute(script.read_text())
        yield Postgres(port=port, password=password, data=data)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_cluster_owner([*pg_ctl, "-m", "fast", "-w", "stop"]), capture_output=True, timeout=60)
        LOGS.pop("postgres", None)
        shutil.rmtree(base, ignore_errors=True)


# --- S3 -----------------------------------------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    access_key: str = "mltrain-test-access"
    secret_key: str = "mltrain-test-secret"  # a moto test value, not a secret
    region: str = "us-east-1"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def keys(self, bucket: str = BUCKET) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextlib.contextmanager
def s3_endpoint() -> Iterator[S3]:
    """A moto S3 endpoint on 127.0.0.1 with the bucket MLflow stores artifacts in."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = S3(endpoint=f"http://127.0.0.1:{port}")
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


# --- MLflow server ------------------------------------------------------------------------------------------
@dataclass
class TrackingServer:
    """``mlflow server`` with basic auth over PostgreSQL + S3; start/kill/start again with the same arguments."""

    workdir: Path
    postgres: Postgres
    s3: S3
    workers: int = field(default_factory=lambda: compose_workers())
    """Server worker processes; by default the compose server's (``${MLFLOW_WORKERS:-N}``), as its
    database-pool settings are."""
    auth_cache_ttl: int | None = None
    """Override basic_auth.ini's ``auth_cache_ttl_seconds`` (0 turns the credential cache off)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for the server (e.g. ``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE``), over the defaults."""
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mlflow-server.log"

    @property
    def auth(self) -> tuple[str, str]:
        return (ADMIN, self.admin_password)

    def client_env(self) -> dict[str, str]:
        """What a user exports to work against this server."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.admin_password,
        }

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.postgres.uri(DB_NAME),
            "--artifacts-destination", f"s3://{BUCKET}/",
            "--serve-artifacts",
            "--app-name", "basic-auth",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(self.workers),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        # The test process's MLflow/AWS settings (isolated_env's sqlite URI among them) must not leak in.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PG"))}
        return {
            **base,
            "PGPASSWORD": self.postgres.password,
            "MLFLOW_AUTH_CONFIG_PATH": str(self._auth_config()),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": self.s3.region,
            **compose_server_settings(),
            **self.extra_env,
        }

    def _auth_config(self) -> Path:
        # deploy/mlflow/basic_auth.ini itself, pointed at this cluster instead of the compose service.
        config = configparser.ConfigParser()
        config.read(DEPLOY / "basic_auth.ini")
        uri = config["mlflow"]["database_uri"]
        config["mlflow"]["database_uri"] = uri.replace("@postgres:5432/", f"@127.0.0.1:{self.postgres.port}/")
        assert config["mlflow"]["database_uri"] != uri, "basic_auth.ini no longer points at postgres:5432"
        if self.auth_cache_ttl is not None:
            config["mlflow"]["auth_cache_ttl_seconds"] = str(self.auth_cache_ttl)
        path = self.workdir / "basic_auth.ini"
        with path.open("w") as handle:
            config.write(handle)
        return path

    def start(self, timeout: float = 120) -> None:
        assert self.process is None or self.process.poll() is not None, "server already running"
        with self.log.open("a") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes the workers down too
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = log_tail(self.log)
                pytest.fail(f"mlflow server exited with {self.process.returncode}:\n{detail}", pytrace=False)
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server not healthy after {timeout:.0f} s:\n{log_tail(self.log)}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL the server and its workers: an outage without any goodbye."""
        self._signal_group(signal.SIGKILL)

    def stop(self) -> None:
        self._signal_group(signal.SIGTERM, grace=20)

    def _signal_group(self, signum: int, grace: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        # Workers that outlive the parent (same group) must not keep the port.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextlib.contextmanager
def mlflow_server(
    postgres: Postgres,
    s3: S3,
    workers: int | None = None,
    auth_cache_ttl: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[TrackingServer]:
    """A started tracking server in a fresh work folder; stopped and removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="mltrain-mlflow-"))
    server = TrackingServer(
        workdir=workdir, postgres=postgres, s3=s3, auth_cache_ttl=auth_cache_ttl, extra_env=extra_env or {}
    )
    if workers is not None:
        server.workers = workers
    LOGS["mlflow server"] = server.log
    try:
        server.start()
        yield server
    finally:
        server.stop()
        LOGS.pop("mlflow server", None)
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants, those that already ended included."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            # children_*: descendants this process has waited for (e.g. PostgreSQL's ended backends).
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _cpu_use(server: TrackingServer, postgres: Postgres) -> dict[str, float]:
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    return {
        "MLflow server": cpu_seconds(server.process.pid),
        "PostgreSQL": cpu_seconds(postmaster),
        "S3 (moto, in this process)": time.process_time(),
    }


def compose_server_settings() -> dict[str, str]:
    """The compose server's database-pool settings (``MLFLOW_SQLALCHEMYSTORE_*: ${VAR:-default}``), as defaults."""
    import yaml

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    settings = {}
    for name, value in compose["services"]["mlflow"]["environment"].items():
        found = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", str(value))
        if name.startswith("MLFLOW_SQLALCHEMYSTORE_") and found:
            settings[name] = found.group(1)
    return settings


def compose_workers() -> int:
    """The compose server's default worker count, so that the test stack runs what deploy/mlflow runs."""
    found = re.search(r"\$\{MLFLOW_WORKERS:-(\d+)\}", (DEPLOY / "compose.yaml").read_text())
    assert found, "deploy/mlflow/compose.yaml no longer sets --workers ${MLFLOW_WORKERS:-N}"
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    """Start PostgreSQL, S3 and the tracking server, run COMMAND with the server's URI and admin login in
    its environment (``MLFLOW_TRACKING_URI``/``_USERNAME``/``_PASSWORD``), stop everything; exit with its status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.integration.team.servers",
        description=main.__doc__,
        epilog="example: python -m tests.integration.team.servers --workers 1 -- mltrain stack bench --clients 16",
    )
    parser.add_argument("--workers", type=int, default=None, help="server workers [default: the compose server's]")
    parser.add_argument(
        "--auth-cache-ttl", type=int, default=None, help="credential cache TTL (s), 0: off [default: basic_auth.ini's]"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="server environment (repeatable)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... (default: wait for Ctrl+C)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not all("=" in item for item in args.env):
        parser.error(f"--env wants NAME=VALUE, found {args.env}")
    extra_env = dict(item.split("=", 1) for item in args.env)
    # A plain `kill` must still stop PostgreSQL and the server: SystemExit unwinds the `with` below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise
    try:
        with (
            postgres_cluster() as postgres,
            s3_endpoint() as s3,
            mlflow_server(postgres, s3, args.workers, args.auth_cache_ttl, extra_env) as server,
        ):
            print(f"tracking server {server.url} ({server.workers} workers, log {server.log})", flush=True)
            if not command:
                print("\n".join(f"export {name}={value}" for name, value in server.client_env().items()), flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    signal.pause()
                return 0
            before = _cpu_use(server, postgres)
            code = subprocess.run(command, env={**os.environ, **server.client_env()}).returncode
            used = {name: seconds - before[name] for name, seconds in _cpu_use(server, postgres).items()}
            print("CPU time while it ran: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in used.items()))
            return code
    except pytest.fail.Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
