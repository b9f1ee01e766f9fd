"""Throwaway logins for ``stack bench --own-users``: one user per client, made through the tracking server's
auth API with EDIT on the load experiment, and deleted afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from mltrain.errors import MltrainError


@contextmanager
def throwaway_logins(uri: str, count: int, experiment_id: str) -> Iterator[list[tuple[str, str]]]:
    """``count`` throwaway users with EDIT on the experiment, deleted on exit; none for count 0."""
    if count == 0:
        yield []
        return
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=uri)
    prefix = f"load-{secrets.token_hex(3)}"
    made: list[tuple[str, str]] = []
    try:
        try:
            for index in range(count):
                login = (f"{prefix}-{index:02d}", secrets.token_urlsafe(18))
                users.create_user(username=login[0], password=login[1])
                made.append(login)
                users.grant_user_permission(login[0], "experiment", experiment_id, "EDIT")
        except MlflowException as exc:
            raise MltrainError(f"could not create the load users (own users need an admin login): {exc}") from exc
        yield made
    finally:
        for username, _ in made:
            users.delete_user(username)
