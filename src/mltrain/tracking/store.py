"""Every mltrain process gets its MLflow client here, so that a new sqlite store is created once, not raced.

The first process to open a new sqlite database creates MLflow's tables in it: ``SqlAlchemyStore`` creates
the initial tables and runs the schema migrations. MLflow 3.17 does nothing to stop a second process from
doing the same to the same file at the same time. When that happens, one of them fails with "table ...
already exists", "duplicate column name" or an alembic "Online migration expected to match one row" error.
That can happen to the trainings Tune or Ray start together, to a training and ``mltrain ui``, or to a
training and whoever watches it.

So mltrain opens a sqlite store under an exclusive file lock next to the database (``<database>.lock``):
the first opener creates the tables, and the others wait and then find them there. Taking a free lock
costs about 0.14 ms, and MLflow keeps the opened store for the rest of the process (its later clients and
its fluent calls). A tracking server creates its tables once, when it starts, and needs no lock here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mltrain import env
from mltrain.tracking.experiments import sqlite_database

if TYPE_CHECKING:
    from mlflow import MlflowClient


def open_client(tracking_uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` on ``tracking_uri`` (default: MLflow's own, ``MLFLOW_TRACKING_URI`` or sqlite).

    A sqlite store is opened under its lock.
    """
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    database = sqlite_database(uri)
    if database is None or not database.parent.is_dir():
        return mlflow.MlflowClient(uri)  # (a missing folder: MLflow says so)
    with _locked(database):
        return mlflow.MlflowClient(uri)  # opens the store: creates the tables of a new database


DEFAULT_STORE = "sqlite:///mlflow.db"
"""MLflow 3's store when nothing names one: a sqlite database in the working folder."""


def current_tracking_uri(explicit: str | None = None) -> str:
    """The store a run goes to: ``explicit``, else MLflow's (without importing MLflow when it is not loaded yet:
    ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_STORE`)."""
    if explicit:
        return explicit
    if "mlflow" in sys.modules:  # loaded: it may have been told another store in code (mlflow.set_tracking_uri)
        import mlflow

        return str(mlflow.get_tracking_uri())
    return env.tracking_uri() or DEFAULT_STORE


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` as it reads from any working folder (another process, maybe on another node)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:  # a plain folder (file store)
        return str(Path(uri).resolve())
    return uri


@contextmanager
def _locked(database: Path) -> Iterator[None]:
    from filelock import FileLock

    lock = FileLock(f"{database}.lock")
    try:
        lock.acquire()
    except OSError:  # a folder this user can't write to: nobody here can create the tables either
        yield
        return
    try:
        yield
    finally:
        lock.release()
