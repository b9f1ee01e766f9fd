"""``run_load``: the whole benchmark, from the experiment and the logins to the clients and the read-back."""

from __future__ import annotations

from typing import Any

from mltrain import env
from mltrain.errors import MltrainError
from mltrain.stack_bench.client import run_clients
from mltrain.stack_bench.plan import LoadPlan
from mltrain.stack_bench.report import LoadResult, read_back
from mltrain.stack_bench.users import throwaway_logins


def run_load(tracking_uri: str | None, plan: LoadPlan, own_users: bool = False) -> LoadResult:
    """Run ``plan.clients`` simulated trainings against a tracking server at once, then read everything back.

    Args:
        tracking_uri: An ``http(s)://`` server; None takes ``MLFLOW_TRACKING_URI``. The caller's login comes
            from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, as for any MLflow client.
        plan: What each training logs, and how fast.
        own_users: Give each client a login of its own, as a team has: creates throwaway users through the
            auth API (the caller must be an admin), grants them EDIT on the experiment, deletes them after.

    Raises:
        MltrainError: No http(s) tracking URI, or the server refused the caller.
    """
    uri = env.tracking_uri(tracking_uri)
    if not uri or not uri.startswith(("http://", "https://")):
        raise MltrainError(
            f"expected the URI of a tracking server (http:// or https://), found {uri!r}; "
            "pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        experiment_id = _experiment_id(client, plan.experiment)
    except MlflowException as exc:
        raise MltrainError(f"the tracking server at {uri} refused the load run's experiment: {exc}") from exc
    with throwaway_logins(uri, plan.clients if own_users else 0, experiment_id) as logins:
        results = run_clients(uri, plan, experiment_id, logins)
    calls = [call for result in results for call in result.calls]
    first = min((c.started for c in calls), default=0.0)
    last = max((c.started + c.seconds for c in calls), default=0.0)
    return LoadResult(
        plan=plan,
        tracking_uri=uri,
        calls=calls,
        seconds=last - first,
        stored=read_back(client, results),
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
        retried=sum(r.retried for r in results),
        retry_reasons=sorted({reason for r in results for reason in r.retry_reasons}),
        users=len(set(logins)) if logins else 1,
    )


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)
