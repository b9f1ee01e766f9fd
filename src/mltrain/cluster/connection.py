"""Which Ray cluster to talk to, and with which token.

Two addresses name a Ray cluster: the GCS address (``host:6379``) that ``ray.init`` and ``ray start``
join, and the dashboard URL (``http://host:8265``) that the Jobs and State APIs answer on. Both come from,
in order: an explicit argument, ``RAY_ADDRESS``, the state file of ``mltrain cluster up``. The token comes
from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` if set, else the state file's token when the address is
that cluster's, else ``~/.ray/auth_token`` (Ray's own order).

HTTP clients get the token as an explicit ``Authorization`` header, so nothing in this process's Ray
configuration changes; :func:`client_auth` prepares a process for ``ray.init`` instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests

from mltrain import env
from mltrain.cluster.state import ClusterState, load_state
from mltrain.errors import ClusterError
from mltrain.internals.ray import reset_auth_token_cache

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import StateApiClient

DEFAULT_DASHBOARD_PORT = 8265
HTTP_TIMEOUT_S = 10


@dataclass(frozen=True)
class ClusterConnection:
    """How to reach one Ray cluster: its addresses, its token and where they were found."""

    dashboard_url: str | None
    """``http://host:port`` of the dashboard / Jobs API; None if only a GCS address is known."""
    address: str | None
    """What ``ray.init(address=…)`` takes (``host:port``, ``ray://…``, ``auto``); None if unknown."""
    source: str
    """Where the address came from, for messages."""
    token: str | None = field(default=None, repr=False)
    token_source: str | None = None
    state: ClusterState | None = field(default=None, repr=False, compare=False)
    """The local cluster's state, when the address is the one ``cluster up`` recorded."""

    def headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard: the bearer token, if any."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def auth_env(self) -> dict[str, str]:
        """Environment variables with which a Ray client process (``ray.init``, ``ray job``) authenticates.

        A token file is named rather than the token copied where one is known.
        """
        if self.state is not None and self.state.token_path and self.token_source == "state file":
            return {env.RAY_AUTH_MODE_VAR: "token", env.RAY_AUTH_TOKEN_PATH_VAR: self.state.token_path}
        if self.token:
            return {env.RAY_AUTH_MODE_VAR: "token", env.RAY_AUTH_TOKEN_VAR: self.token}
        if self.state is not None:
            return self.state.auth_env()  # started with --no-auth
        return {}

    def require_dashboard(self) -> str:
        if not self.dashboard_url:
            raise ClusterError(f"no dashboard URL known for the cluster at {self.address} ({self.source})")
        return self.dashboard_url

    def jobs_client(self) -> JobSubmissionClient:
        """Ray's Jobs SDK client for this cluster, authenticated."""
        from ray.job_submission import JobSubmissionClient

        url = self.require_dashboard()
        with explain_errors(self):
            return JobSubmissionClient(url, headers=self.headers())

    def state_client(self) -> StateApiClient:
        """Ray's State API client (nodes, actors, jobs) for this cluster, authenticated."""
        from ray.util.state import StateApiClient

        url = self.require_dashboard()
        with explain_errors(self):
            return StateApiClient(address=url, headers={**self.headers(), "Content-Type": "application/json"})

    def get_json(self, path: str) -> dict[str, Any]:
        """GET ``path`` from the dashboard and decode the JSON answer."""
        url = self.require_dashboard().rstrip("/") + path
        try:
            response = requests.get(url, headers=self.headers(), timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as exc:
            raise ClusterError(
                f"cannot reach the Ray dashboard at {self.dashboard_url} ({self.source}): {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise ClusterError(_auth_message(self, response.status_code))
        response.raise_for_status()
        return response.json()


def resolve_cluster(
    address: str | None = None, cluster_dir: str | os.PathLike[str] | None = None
) -> ClusterConnection | None:
    """The cluster to use: ``address``, else ``RAY_ADDRESS``, else the state file of ``cluster up``.

    Args:
        address: A dashboard URL (``http://host:8265``) or a GCS address (``host:6379``).
        cluster_dir: Folder of the state file (default ``MLTRAIN_CLUSTER_DIR`` or
            ``~/.local/state/mltrain/cluster``).

    Returns:
        None when nothing names a cluster (callers then run Ray embedded, or refuse).
    """
    state = load_state(cluster_dir)
    if address:
        source = "--address"
    elif env.ray_address():
        address, source = env.ray_address(), env.RAY_ADDRESS_VAR
    elif state is not None:
        return _with_token(
            ClusterConnection(state.dashboard_url, state.address, f"state file {state.path}", state=state), state
        )
    else:
        return None
    assert address is not None
    mine = state if state is not None and _names(address, state) else None
    if address.startswith(("http://", "https://")):
        gcs = mine.address if mine else None
        connection = ClusterConnection(address.rstrip("/"), gcs, source, state=mine)
    elif "://" in address or address in ("auto", "local"):
        connection = ClusterConnection(mine.dashboard_url if mine else None, address, source, state=mine)
    else:
        host = address.rsplit(":", 1)[0]
        # Ray's default dashboard port on the GCS's host, unless this is our own cluster.
        dashboard = mine.dashboard_url if mine else f"http://{host}:{DEFAULT_DASHBOARD_PORT}"
        connection = ClusterConnection(dashboard, address, source, state=mine)
    return _with_token(connection, mine)


def resolve_address(explicit: str | None = None, cluster_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The address ``ray.init`` should join: ``explicit``, ``RAY_ADDRESS``, the state file's, or None.

    None means no cluster is named: run Ray embedded (``ray.init(address="local")``). Inside a job that
    ``mltrain submit`` started, Ray has set ``RAY_ADDRESS`` to the cluster's GCS address.

    Raises:
        ClusterError: the address given is a dashboard URL of a cluster other than ``cluster up``'s, which
            ``ray.init`` cannot join.
    """
    connection = resolve_cluster(explicit, cluster_dir)
    if connection is None:
        return None
    if connection.address is None:
        stale = ""
        if connection.source == env.RAY_ADDRESS_VAR:
            # Typically left in the shell by `eval "$(mltrain cluster env)"` after its cluster went down.
            stale = (
                f" If that cluster is gone (`mltrain cluster down`), `unset {env.RAY_ADDRESS_VAR}` to train on an "
                "embedded Ray."
            )
        raise ClusterError(
            f"{connection.dashboard_url} ({connection.source}) is a dashboard / Jobs API address and no "
            "`mltrain cluster up` cluster recorded here has it; ray.init joins a cluster by its GCS address "
            f"(host:6379). Pass that, or submit the command as a job with `mltrain submit -- …`.{stale}"
        )
    return connection.address


@contextmanager
def client_auth(connection: ClusterConnection | None) -> Iterator[None]:
    """Within the block, this process authenticates to ``connection``'s cluster in ``ray.init``.

    Ray reads ``RAY_AUTH_MODE`` once, when it is first imported, and caches the token; this sets the
    variables, refreshes Ray's view the way Ray itself does when it turns token auth on, and restores
    both on exit (so a later embedded ``ray.init`` does not expect a token). Call ``ray.shutdown()``
    inside the block. A process started with the variables already set needs none of this.
    """
    updates = connection.auth_env() if connection is not None else {}
    if not updates:
        yield
        return
    with _auth_variables(updates):
        yield


@contextmanager
def embedded_auth() -> Iterator[None]:
    """Within the block, an embedded Ray (``ray.init(address="local")``) has a token and leaves ``~`` alone.

    Ray turns token authentication on for a new local instance and, when it finds no token (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), writes a new one to ``~/.ray/auth_token`` for good. Here the
    instance gets a fresh token through ``RAY_AUTH_TOKEN`` instead, which its processes inherit and which is gone
    with the block. A token the user gave, or ``RAY_AUTH_MODE=disabled``, is left to Ray.
    """
    if os.environ.get(env.RAY_AUTH_MODE_VAR, "").strip().lower() == "disabled" or env.ray_auth_token() is not None:
        yield
        return
    with _auth_variables({env.RAY_AUTH_MODE_VAR: "token", env.RAY_AUTH_TOKEN_VAR: secrets.token_hex(32)}):
        yield


@contextmanager
def _auth_variables(updates: dict[str, str]) -> Iterator[None]:
    """Ray's token variables set to ``updates`` (the others unset) within the block, and Ray's view refreshed."""
    try:
        with env.restored(*updates, env.RAY_AUTH_TOKEN_VAR, env.RAY_AUTH_TOKEN_PATH_VAR):
            for name in (env.RAY_AUTH_TOKEN_VAR, env.RAY_AUTH_TOKEN_PATH_VAR):
                os.environ.pop(name, None)
            os.environ.update(updates)
            reset_auth_token_cache()
            yield
    finally:
        reset_auth_token_cache()  # Ray re-reads the variables as they were


def _names(address: str, state: ClusterState) -> bool:
    """Whether ``address`` (dashboard URL or GCS address) is the local cluster's."""
    if address.startswith(("http://", "https://")):
        return _same_endpoint(address, state.dashboard_url)
    port = address.rsplit(":", 1)[-1]
    return port == state.address.rsplit(":", 1)[-1] and _local_host(address.rsplit(":", 1)[0], state)


def _same_endpoint(a: str, b: str) -> bool:
    first, second = urlparse(a), urlparse(b)
    return first.port == second.port and _loopback(first.hostname) == _loopback(second.hostname)


def _local_host(host: str, state: ClusterState) -> bool:
    return _loopback(host) in ("127.0.0.1", state.address.rsplit(":", 1)[0])


def _loopback(host: str | None) -> str | None:
    return "127.0.0.1" if host in ("localhost", "127.0.0.1", "::1") else host


def _with_token(connection: ClusterConnection, state: ClusterState | None) -> ClusterConnection:
    from dataclasses import replace

    explicit = env.ray_auth_token(include_default_file=False)
    if explicit is not None:
        return replace(connection, token=explicit[0], token_source=explicit[1])
    if state is not None and state.token_path is None:
        return connection  # the local cluster runs without authentication
    if state is not None and state.token_path:
        try:
            token = Path(state.token_path).read_text().strip()
        except OSError as exc:
            raise ClusterError(
                f"the token file of the local cluster, {state.token_path}, cannot be read: {exc}"
            ) from exc
        return replace(connection, token=token, token_source="state file")
    default = env.ray_auth_token(include_default_file=True)
    if default is not None:
        return replace(connection, token=default[0], token_source=default[1])
    return connection


def _auth_message(connection: ClusterConnection, status: int) -> str:
    what = "refused the token" if status == 403 else "requires a token"
    given = f" (token from {connection.token_source})" if connection.token else ""
    return (
        f"the Ray cluster at {connection.dashboard_url} ({connection.source}) {what}{given}: set "
        f"{env.RAY_AUTH_TOKEN_VAR} or {env.RAY_AUTH_TOKEN_PATH_VAR} to its token (`mltrain cluster up` writes it to "
        "auth_token beside its state file; deploy/ray keeps it in deploy/ray/.env)"
    )


@contextmanager
def explain_errors(connection: ClusterConnection) -> Iterator[None]:
    """Turn Ray's connection and authentication errors within the block into one-line ClusterErrors."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        status = 403 if "Forbidden" in str(exc) or "invalid" in str(exc).lower() else 401
        raise ClusterError(_auth_message(connection, status)) from exc
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot reach the Ray dashboard at {connection.dashboard_url} ({connection.source}): {exc}"
        ) from exc
