"""The model registry: promote the best run's model behind an alias, pull a version, list versions.

Aliases only (MLflow stages are deprecated). ``promote`` is a gate, not a push: the alias moves only
when the best finished run of the experiment beats the run behind the version the alias points at::

    from mltrain.registry import promote, pull
    result = promote(alias="staging", min_improvement=0.01)
    path = pull(alias="staging", dest="models")   # then mlflow.pytorch.load_model(path)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mltrain.errors import RegistryError
from mltrain.metrics import EXPERIMENT, MODEL_NAME, TEST_ACCURACY
from mltrain.tracking import open_client
from mltrain.tracking.owner import BEST_MODEL_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

MODES = ("max", "min")
SOURCE_RUN_TAG = "mltrain.source_run_id"
"""Model version tag: the run whose model the version holds."""
METRIC_TAG = "mltrain.metric"
"""Model version tag: the metric the version was promoted on (its value is under the metric's own name)."""


@dataclass
class PromoteResult:
    """What ``promote`` decided: the challenger (best run), the champion it met, and whether the alias moved."""

    model: str
    alias: str
    version: int | None
    """The version the alias points at afterwards (the new one, or the champion that stayed)."""
    run_id: str
    """The best run of the experiment (the challenger)."""
    metric: str
    value: float
    """The challenger's metric value."""
    promoted: bool
    previous_version: int | None
    """The version the alias pointed at before, if any."""
    previous_value: float | None
    """The metric value of the run behind ``previous_version``, if known."""
    message: str


@dataclass
class VersionInfo:
    """One registered version, as ``list_versions`` shows it."""

    version: int
    aliases: list[str]
    run_id: str | None
    metric: str
    value: float | None
    """The source run's metric value (or, if that run is gone, the value recorded at promotion)."""
    created: datetime
    source: str | None
    """Where the version's files were registered from (MLflow allows a version without one)."""


def best_run(experiment: str = EXPERIMENT, metric: str = TEST_ACCURACY, mode: str = "max") -> Run:
    """The FINISHED run of ``experiment`` with the best ``metric``; runs without the metric don't count.

    Args:
        experiment: MLflow experiment name.
        metric: Metric to rank runs by.
        mode: ``max`` (higher is better) or ``min``.

    Raises:
        RegistryError: No such experiment, an unknown mode, or no finished run with the metric.
    """
    _check_mode(mode)
    client = open_client()
    experiment_id = _experiment_id(client, experiment)
    # The range filter drops runs lacking the metric (and NaN values), which would otherwise sort last.
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'FINISHED' and metrics.`{metric}` > -1e308",
        order_by=[f"metrics.`{metric}` {'DESC' if mode == 'max' else 'ASC'}", "attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise RegistryError(
            f"expected a FINISHED run with metric {metric!r} in experiment {experiment!r}, found none "
            f"at {mlflow.get_tracking_uri()}"
        )
    return runs[0]


def promote(
    model: str = MODEL_NAME,
    experiment: str = EXPERIMENT,
    metric: str = TEST_ACCURACY,
    mode: str = "max",
    alias: str = "staging",
    min_improvement: float = 0.0,
) -> PromoteResult:
    """Point ``alias`` at the best run's model if it beats the version the alias points at now.

    The challenger is the best FINISHED run of ``experiment``; the champion is the run behind
    ``model@alias``. With ``mode="max"`` the challenger must exceed the champion's value by more than
    ``min_improvement`` (``min`` mirrors this). A model already registered from the same logged model
    is reused rather than registered twice.

    Args:
        model: Registered model name (created when missing).
        experiment: Experiment to take the best run from.
        metric: Metric that decides.
        mode: ``max`` or ``min``.
        alias: Alias to move, e.g. ``staging`` or ``production``.
        min_improvement: Margin the challenger must win by (in the metric's units, >= 0).

    Raises:
        RegistryError: Nothing to promote (see :func:`best_run`), or the best run logged no model.
    """
    if not (min_improvement >= 0 and math.isfinite(min_improvement)):
        raise RegistryError(f"expected min_improvement >= 0, found {min_improvement}")
    client = open_client()
    run = best_run(experiment, metric, mode)
    run_id, value = run.info.run_id, run.data.metrics[metric]
    champion = _version_by_alias(client, model, alias)
    champion_value = _version_metric(client, champion, metric) if champion else None
    outcome = PromoteResult(
        model=model,
        alias=alias,
        version=int(champion.version) if champion else None,
        run_id=run_id,
        metric=metric,
        value=value,
        promoted=False,
        previous_version=int(champion.version) if champion else None,
        previous_value=champion_value,
        message="",
    )
    if champion is not None and champion.run_id == run_id:
        outcome.message = (
            f"{model}@{alias} is already version {champion.version}, from the best run {run_id} "
            f"({metric} {value:.4f}); nothing changed"
        )
        return outcome
    if champion is not None and champion_value is not None and not _beats(value, champion_value, mode, min_improvement):
        outcome.message = (
            f"kept {model}@{alias} on version {champion.version} ({metric} {champion_value:.4f}): the best run "
            f"{run_id} has {metric} {value:.4f}, which does not {'exceed' if mode == 'max' else 'go below'} it "
            f"by more than {min_improvement:g}; nothing changed"
        )
        return outcome
    version, registered = _register(client, model, _logged_model_uri(client, run), run_id, metric, value, experiment)
    client.set_registered_model_alias(model, alias, str(version.version))
    outcome.version, outcome.promoted = int(version.version), True
    action = "registered" if registered else "reused"
    was = (
        f"; it was version {champion.version} ({metric} {_fmt(champion_value)})" if champion else " (the alias is new)"
    )
    outcome.message = (
        f"{action} {model} version {version.version} from run {run_id} ({metric} {value:.4f}) "
        f"and pointed {model}@{alias} at it{was}"
    )
    return outcome


def pull(
    model: str = MODEL_NAME, dest: str | Path = "models", alias: str | None = None, version: int | None = None
) -> Path:
    """Download one version of ``model`` into ``dest/<model>-v<version>``; returns that folder (absolute).

    The folder is an MLflow model: ``mlflow.pytorch.load_model(path)`` loads it.

    Args:
        model: Registered model name.
        dest: Parent folder (created when missing).
        alias: Take the version this alias points at.
        version: Take this version number. Default (neither given): the highest version.

    Raises:
        RegistryError: Both alias and version given, or no such model, alias or version.
    """
    client = open_client()
    chosen = _resolve_version(client, model, alias, version)
    target = (Path(dest) / f"{model}-v{chosen.version}").resolve()
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{chosen.version}", dst_path=str(target))
    return Path(local)


def list_versions(model: str = MODEL_NAME, metric: str = TEST_ACCURACY) -> list[VersionInfo]:
    """Every version of ``model``, newest first, with its aliases, source run and ``metric`` value.

    Raises:
        RegistryError: No registered model of that name.
    """
    client = open_client()
    registered = _registered_model(client, model)
    aliases: dict[int, list[str]] = {}
    # Versions from a search carry no aliases; the registered model holds the alias -> version map.
    for name, number in sorted(registered.aliases.items()):
        aliases.setdefault(int(number), []).append(name)
    return [
        VersionInfo(
            version=int(v.version),
            aliases=aliases.get(int(v.version), []),
            run_id=v.run_id,
            metric=metric,
            value=_version_metric(client, v, metric),
            created=datetime.fromtimestamp(v.creation_timestamp / 1000).astimezone(),
            source=v.source,
        )
        for v in sorted(_all_versions(client, model), key=lambda v: int(v.version), reverse=True)
    ]


# --- helpers ----------------------------------------------------------------------------------------------
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RegistryError(f"expected mode 'max' or 'min', found {mode!r}")


def _beats(challenger: float, champion: float, mode: str, min_improvement: float) -> bool:
    """Whether the challenger wins by more than the margin (a tie keeps the champion)."""
    if mode == "max":
        return challenger > champion + min_improvement
    return challenger < champion - min_improvement


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise RegistryError(
            f"expected an experiment named {experiment!r} at {mlflow.get_tracking_uri()}, found "
            f"{', '.join(repr(n) for n in names) if names else 'no experiments'}"
        )
    return found.experiment_id


def _logged_model_uri(client: MlflowClient, run: Run) -> str:
    """The model the run logged last (its best), from the run tag or else the run's logged models."""
    tagged = run.data.tags.get(BEST_MODEL_TAG)
    if tagged:
        return tagged
    logged = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    if not logged:
        raise RegistryError(
            f"expected run {run.info.run_id} to have logged a model (tag {BEST_MODEL_TAG} or a logged model), "
            "found none; was it trained with mltrain?"
        )
    return logged[0].model_uri


def _register(
    client: MlflowClient, model: str, model_uri: str, run_id: str, metric: str, value: float, experiment: str
) -> tuple[ModelVersion, bool]:
    """The version holding ``model_uri``: an existing one, else a new one; and whether it is new."""
    for existing in _all_versions(client, model, missing_ok=True):
        if existing.source == model_uri:
            return existing, False
    tags = {metric: f"{value}", METRIC_TAG: metric, SOURCE_RUN_TAG: run_id, "mltrain.experiment": experiment}
    return mlflow.register_model(model_uri, model, tags=tags), True


def _registered_model(client: MlflowClient, model: str) -> RegisteredModel:
    try:
        return client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(m.name for m in client.search_registered_models())
    raise RegistryError(
        f"expected a registered model named {model!r} at {mlflow.get_registry_uri()}, found "
        f"{', '.join(repr(n) for n in names) if names else 'no registered models'}"
        f"{'' if names else ' (run `mltrain registry promote` first)'}"
    ) from None


def _all_versions(client: MlflowClient, model: str, missing_ok: bool = False) -> list[ModelVersion]:
    if not missing_ok:
        _registered_model(client, model)
    return list(client.search_model_versions(f"name = '{model}'"))


def _version_by_alias(client: MlflowClient, model: str, alias: str) -> ModelVersion | None:
    """The version ``model@alias`` points at, or None when the model or the alias does not exist yet."""
    try:
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    number = registered.aliases.get(alias)
    return None if number is None else client.get_model_version(model, str(number))


def _resolve_version(client: MlflowClient, model: str, alias: str | None, version: int | None) -> ModelVersion:
    if alias is not None and version is not None:
        raise RegistryError(f"expected --alias or --version, found both (alias {alias!r}, version {version})")
    registered = _registered_model(client, model)
    if alias is not None:
        if alias not in registered.aliases:
            known = ", ".join(f"{a!r} (version {v})" for a, v in sorted(registered.aliases.items()))
            raise RegistryError(f"expected an alias of {model!r}, found no {alias!r}; aliases: {known or 'none'}")
        return client.get_model_version(model, str(registered.aliases[alias]))
    versions = sorted(_all_versions(client, model), key=lambda v: int(v.version))
    if not versions:
        raise RegistryError(f"expected at least one version of {model!r}, found none")
    if version is None:
        return versions[-1]
    for candidate in versions:
        if int(candidate.version) == version:
            return candidate
    numbers = ", ".join(str(v.version) for v in versions)
    raise RegistryError(f"expected a version of {model!r} among {numbers}, found no version {version}")


def _version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The metric of the version's source run; the value recorded at promotion if that run is gone."""
    if version.run_id:
        try:
            value = client.get_run(version.run_id).data.metrics.get(metric)
        except MlflowException:
            value = None
        if value is not None:
            return value
    recorded = (version.tags or {}).get(metric)
    try:
        return float(recorded) if recorded is not None else None
    except ValueError:
        return None
