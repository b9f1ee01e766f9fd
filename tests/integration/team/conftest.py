"""Real parts for the team tracking-server tests, one set per session, all on 127.0.0.1 (see servers.py):
a throwaway PostgreSQL cluster, a moto S3 endpoint and ``mlflow server --app-name basic-auth`` set up like
deploy/mlflow. When a test fails, the server's and PostgreSQL's logs are attached to its report.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.team.servers import (  # the names tests imported from here before servers.py, kept
    ADMIN,  # noqa: F401
    BUCKET,  # noqa: F401
    DB_NAME,  # noqa: F401
    DB_ROLE,  # noqa: F401
    DEPLOY,  # noqa: F401
    LOGS,
    S3,
    Postgres,
    TrackingServer,
    free_port,  # noqa: F401
    log_tail,
    mlflow_server,
    postgres_cluster,
    s3_endpoint,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, path in LOGS.items():
            report.sections.append((f"{name} log (last lines of {path})", log_tail(path)))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 with the role and databases deploy/mlflow sets up."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """A moto S3 endpoint on 127.0.0.1 with the bucket MLflow stores artifacts in."""
    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def tracking_server(postgres: Postgres, s3: S3) -> Iterator[TrackingServer]:
    """The team tracking server (started once; the outage test kills and restarts it)."""
    with mlflow_server(postgres, s3) as server:
        yield server


@pytest.fixture
def team_env(tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this test's MLflow client (and any subprocess it starts) at the team server, as admin."""
    import mlflow

    values = tracking_server.client_env()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(tracking_server.url)
    return values
