"""The experiments mltrain creates, and links into MLflow's web app that open on its model-training view.

An experiment mltrain creates is marked as model training (``mlflow.experimentKind``, the tag MLflow's web
app writes when a user picks "Machine learning" as the experiment's type) and, on an embedded sqlite store,
keeps its artifacts next to the database (``<db folder>/mlruns/<experiment>``) instead of ``./mlruns`` of
whatever folder the first training ran in.

MLflow 3.17's web app decides between its GenAI view (traces, evaluations) and its model-training view (runs,
models, registry) from the ``workflowType`` query parameter of the page (else the last choice in the
browser); the links built here carry ``workflowType=machine_learning``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
"""What MLflow's web app calls "Machine learning" (against ``genai_development``)."""
WORKFLOW_QUERY = "workflowType=machine_learning"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:`` tracking URI, as an absolute path; None for other stores."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    # SQLAlchemy's forms: sqlite:///relative.db and sqlite:////absolute.db (three slashes, then the path).
    return Path(unquote(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])).absolute()


def store_key(tracking_uri: str) -> str:
    """The tracking URI with a sqlite database as an absolute path: the same store from any folder."""
    database = sqlite_database(tracking_uri)
    return f"sqlite:///{database}" if database is not None else tracking_uri.rstrip("/")


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: next to a sqlite database; None lets MLflow decide."""
    database = sqlite_database(tracking_uri)
    if database is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return str(database.parent / "mlruns" / folder)


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``; created the mltrain way when missing (kind tag, artifact location).

    Several trainings starting at once may all try to create it: one wins, the others find it.
    """
    from mlflow.exceptions import MlflowException

    from mltrain.errors import TrackingError

    existing = client.get_experiment_by_name(name)
    if existing is not None and existing.lifecycle_stage == "active":
        return existing.experiment_id
    if existing is not None:
        raise TrackingError(
            f"experiment {name!r} is deleted at {client.tracking_uri}; restore it in the UI or choose another "
            "--experiment"
        )
    try:
        return client.create_experiment(
            name,
            artifact_location=artifact_location(client.tracking_uri, name),
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
    except MlflowException as exc:
        again = client.get_experiment_by_name(name)
        if again is not None and again.lifecycle_stage == "active":
            return again.experiment_id
        raise TrackingError(f"could not create experiment {name!r} at {client.tracking_uri}: {exc}") from None


def experiment_url(base: str, experiment_id: str | None, run_id: str | None = None) -> str:
    """A link into the web app at ``base``: the experiment's runs, or one run, in the model-training view."""
    page = "/#/experiments"
    if experiment_id is not None:
        page += f"/{experiment_id}"
        if run_id is not None:
            page += f"/runs/{run_id}"
    return f"{base.rstrip('/')}{page}?{WORKFLOW_QUERY}"


def is_server(tracking_uri: str) -> bool:
    """True for a tracking server (its web app is at the same address)."""
    return tracking_uri.startswith(("http://", "https://"))
