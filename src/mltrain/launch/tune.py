"""``mltrain tune``: an ASHA hyperparameter search on Ray Tune; every trial a ``train --engine ray``, in a child run.

A trial is not a new training loop: it is :func:`mltrain.training.train` with ``engine=ray``, called from a
Tune function trainable with the trial's sampled values. Inside the trial, ``train`` creates the trial's
MLflow run (nested under the search's run), launches the Lightning engine on Ray Train workers exactly as
``mltrain train --engine ray`` does, and logs the best model ``food11``. One extra Ray Train callback
(:class:`EpochReports`) forwards each epoch's metrics to Tune, so that the ASHA scheduler sees them.

Who does what:

* the **driver** (the process that called :func:`tune`) checks the search space and settings before any Ray
  work, joins or embeds Ray, sizes the concurrency from the cluster's resources, owns the **parent run**
  (search space, scheduler settings; at the end the best config, the best score, the trial-epochs run and
  ``tune_compute_fraction``) and ends it FINISHED, KILLED or FAILED;
* each **trial** owns its **child run** while it runs. ASHA stops a trial by ending its Tune actor, which
  takes the trial's Ray Train run with it and leaves the child run RUNNING;
* at the end the driver **reconciles** every child with Tune's outcome: a trial ASHA stopped gets its last
  reported checkpoint back, every epoch it ran, its best model and the tags ``mltrain.tune.stopped_early``
  / ``mltrain.tune.stopped_at_epoch``, and ends FINISHED; a trial that errored ends FAILED. On Ctrl+C or
  SIGTERM the driver shuts Ray down and ends every open child and the parent KILLED.

Failures: inside a trial, Ray Train restarts a lost worker from the trial's last checkpoint (the config's
``max_failures``, as for ``train --engine ray``). If the trial's own actor is lost (its node died), Tune
retries the trial (``FailureConfig(max_failures)``); the retry finds the trial's child run and resumes it from
its last checkpoint, in the same run. An attempt lost before its first epoch leaves no checkpoint: the retry
trains from the start in that same run (``mltrain.tune.lost_attempts`` counts such attempts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback, Stopper
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from mltrain import env, metrics
from mltrain.config import TrainConfig
from mltrain.errors import ConfigError, DataError, TrainingInterrupted
from mltrain.tracking import ERROR_TAG

log = logging.getLogger(__name__)

TRIAL_TAG = "mltrain.tune.trial_id"
"""Child-run tag: the Tune trial the run belongs to."""
OUTCOME_TAG = "mltrain.tune.outcome"
"""Child-run tag: ``completed`` (trained to the end), ``stopped`` (by ASHA), ``failed`` or ``killed``."""
STOPPED_TAG = "mltrain.tune.stopped_early"
"""Child-run tag: ``true`` when ASHA stopped the trial before the last epoch."""
STOPPED_AT_TAG = "mltrain.tune.stopped_at_epoch"
"""Child-run tag: the epochs the trial had reported when ASHA stopped it."""
EPOCHS_TAG = "mltrain.tune.epochs_run"
"""Child-run tag: the epochs the trial ran (what its metrics show)."""
LOST_ATTEMPTS_TAG = "mltrain.tune.lost_attempts"
"""Child-run tag: attempts of the trial that ended before their first epoch (each described in
``mltrain.tune.lost_attempt.<n>``); the retry trained from the start in the same run."""
COMPUTE_FRACTION = "tune_compute_fraction"
"""Parent-run metric: trial-epochs run / (samples x max epochs); 1.0 without early stopping."""
TRIAL_EPOCHS = "tune_trial_epochs"
"""Parent-run metric: epochs run, summed over every trial."""
EPOCHS_DONE = "epochs_done"
"""The time unit ASHA counts in: epochs a trial has completed (reported with each epoch)."""
BEST_CONFIG_ARTIFACT = "best-config.yaml"
"""Parent-run artifact: the best trial's whole config, usable as ``mltrain train --config``."""

DEFAULT_SEARCH = ("batch_size=choice(32,64)", "dropout_probability=uniform(0.1,0.8)")
"""The lab's search space."""
KINDS = ("choice", "uniform", "loguniform", "randint")
_NOT_SEARCHABLE = {
    "total_epochs": "it is --max-epochs, ASHA's max_t",
    "engine": "every trial runs on Ray Train (engine=ray)",
    "workers": "use --workers-per-trial",
    "min_workers": "use --workers-per-trial MIN-MAX",
    "resize_interval": "it is how often an elastic trial checks for resources, not a hyperparameter",
    "cpus_per_worker": "use --cpus-per-trial",
    "gpus_per_worker": "use --gpus-per-trial",
    "storage": "it is where the trials' checkpoints are kept, not a hyperparameter",
    "output_dir": "it is where the trials' checkpoints are kept, not a hyperparameter",
    "cache_dir": "it is where decoded images are cached, not a hyperparameter",
    "max_failures": "it is how failures are handled, not a hyperparameter",
}
_STOP_GRACE_S = 60
"""Seconds an interrupted search gives Tune to stop its trials before disconnecting from Ray."""
_TRIAL_DRIVER_MEMORY = 256 * 2**20
"""Bytes of Ray's logical ``memory`` a trial's driver reserves (it runs the trial function and Train's controller)."""
_EXPRESSION = re.compile(r"^\s*(?P<key>[A-Za-z_]\w*)\s*=\s*(?P<kind>\w+)\s*\((?P<args>.*)\)\s*$")


# --- the search space ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Domain:
    """One searched key: ``key=kind(args)``, e.g. ``dropout_probability=uniform(0.1,0.8)``.

    ``choice(a,b,...)`` picks one of the values; ``uniform(lo,hi)`` and ``loguniform(lo,hi)`` draw a float in
    [lo, hi); ``randint(lo,hi)`` draws an integer in [lo, hi) (Tune's meaning: ``hi`` is excluded).
    """

    key: str
    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.key}={self.kind}({','.join(str(arg) for arg in self.args)})"

    def to_tune(self) -> Any:
        """The Tune search-space object."""
        from ray import tune as ray_tune

        if self.kind == "choice":
            return ray_tune.choice(list(self.args))
        return getattr(ray_tune, self.kind)(*self.args)

    def probes(self) -> list[Any]:
        """Values that stand for every value the domain can draw: all choices, or both ends of a range."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high - (high - low) * 1e-9]  # hi itself is never drawn


def parse_search(expressions: Iterable[str], base: TrainConfig) -> dict[str, Domain]:
    """Parse ``key=kind(args)`` expressions and check each against ``base`` (ConfigError, before any Ray work).

    Every value a domain can draw must give a valid config with ``base`` for the other keys: an unknown key,
    a malformed expression or an impossible value (``dropout_probability=uniform(0.5,2)``) is a ConfigError
    naming the expression.
    """
    domains: dict[str, Domain] = {}
    for expression in expressions:
        domain = _parse_one(expression)
        if domain.key in domains:
            raise ConfigError(f"--search {expression!r}: {domain.key} is already searched ({domains[domain.key]})")
        for value in domain.probes():
            try:
                base.with_overrides(**{domain.key: value})
            except ConfigError as exc:
                raise ConfigError(f"--search {expression!r} can draw {domain.key}={value!r}, which is {exc}") from None
        domains[domain.key] = domain
    return domains


def _parse_one(expression: str) -> Domain:
    shape = "key=choice(a,b,...)|uniform(lo,hi)|loguniform(lo,hi)|randint(lo,hi)"
    match = _EXPRESSION.match(expression)
    if match is None:
        raise ConfigError(f"--search {expression!r} is not of the form {shape}")
    key, kind = match["key"], match["kind"]
    if key not in TrainConfig.model_fields:
        try:
            TrainConfig.from_mapping({key: None})  # the unknown-key error, with its did-you-mean hint
        except ConfigError as exc:
            raise ConfigError(f"--search {expression!r}: {exc}") from None
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"--search {expression!r}: {key} cannot be searched: {_NOT_SEARCHABLE[key]}")
    if kind not in KINDS:
        raise ConfigError(f"--search {expression!r}: unknown distribution {kind!r}; expected {shape}")
    raw = [part.strip() for part in match["args"].split(",")] if match["args"].strip() else []
    args = tuple(_scalar(part, expression) for part in raw)
    if kind == "choice":
        if not args:
            raise ConfigError(f"--search {expression!r}: choice() needs at least one value")
        return Domain(key, kind, args)
    if len(args) != 2 or not all(isinstance(arg, int | float) and not isinstance(arg, bool) for arg in args):
        raise ConfigError(f"--search {expression!r}: {kind}() takes two numbers, lo and hi")
    low, high = args
    if not low < high:
        raise ConfigError(f"--search {expression!r}: {kind}() needs lo < hi, found {low} and {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--search {expression!r}: loguniform() needs lo > 0, found {low}")
    if kind == "randint" and not all(isinstance(arg, int) for arg in args):
        raise ConfigError(f"--search {expression!r}: randint() takes two integers")
    return Domain(key, kind, (low, high) if kind == "randint" else (float(low), float(high)))


def _scalar(text: str, expression: str) -> Any:
    import yaml

    if not text:
        raise ConfigError(f"--search {expression!r} has an empty value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if not isinstance(value, str | int | float | bool):
        raise ConfigError(f"--search {expression!r}: {text!r} is not a plain value")
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


# --- the settings ----------------------------------------------------------------------------------------------
@dataclass
class SearchSettings:
    """How the search runs: samples, ASHA, the metric, each trial's resources, concurrency.

    ``workers_per_trial`` with ``min_workers_per_trial`` below it makes each trial elastic (``--workers-per-trial
    MIN-MAX``); concurrency is sized for the most workers. ``cpus_per_trial`` / ``gpus_per_trial`` are a trial's
    total, split evenly over its (most) workers. None means:
    the config's ``cpus_per_worker`` per worker; half a GPU per worker when the cluster has GPUs (and the
    config does not ask for the CPU). ``max_concurrent`` None: as many trials as the cluster can place at once.
    """

    samples: int = 16
    max_epochs: int | None = None
    """None: the config's total_epochs."""
    grace_period: int = 1
    reduction_factor: float = 2
    metric: str = metrics.VAL_ACCURACY
    mode: str = "max"
    workers_per_trial: int = 1
    min_workers_per_trial: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None

    def check(self) -> None:
        """ConfigError for any setting out of range, with what was expected."""
        problems = []
        if self.samples < 1:
            problems.append(f"--samples must be >= 1, found {self.samples}")
        if self.max_epochs is not None and self.max_epochs < 1:
            problems.append(f"--max-epochs must be >= 1, found {self.max_epochs}")
        if not 1 <= self.grace_period <= (self.max_epochs or self.grace_period):
            problems.append(f"--grace-period must be in [1, max epochs={self.max_epochs}], found {self.grace_period}")
        if not self.reduction_factor > 1:
            problems.append(f"--reduction-factor must be > 1, found {self.reduction_factor}")
        if self.metric not in metrics.EPOCH_METRICS:
            problems.append(f"--metric must be one of {', '.join(metrics.EPOCH_METRICS)}, found {self.metric!r}")
        if self.mode not in ("max", "min"):
            problems.append(f"--mode must be max or min, found {self.mode!r}")
        low = self.min_workers_per_trial
        if self.workers_per_trial < 1 or (low is not None and not 1 <= low <= self.workers_per_trial):
            shown = f"{low}-{self.workers_per_trial}" if low is not None else self.workers_per_trial
            problems.append(f"--workers-per-trial must be N >= 1 or MIN-MAX with 1 <= MIN <= MAX, found {shown}")
        if self.cpus_per_trial is not None and not self.cpus_per_trial > 0:
            problems.append(f"--cpus-per-trial must be > 0, found {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and not self.gpus_per_trial >= 0:
            problems.append(f"--gpus-per-trial must be >= 0, found {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            problems.append(f"--max-concurrent must be >= 1, found {self.max_concurrent}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class _Plan:
    """Everything decided before the parent run exists: the fixed config, the search space, the settings."""

    base: TrainConfig
    search: dict[str, Domain]
    settings: SearchSettings
    data_dir: Path


# --- the outcome ------------------------------------------------------------------------------------------------
@dataclass
class TrialSummary:
    """One trial as its child run shows it after the search."""

    name: str
    run_id: str | None
    values: dict[str, Any]
    epochs: int
    outcome: str
    score: float | None
    stopped_at: int | None = None


@dataclass
class TuneResult:
    """A finished search: its parent run, the trials (best first), the best config, the compute it took."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config: dict[str, Any] | None
    trial_epochs: int
    compute_fraction: float
    samples: int
    max_epochs: int
    wall_seconds: float

    def table(self) -> str:
        """The trials sorted by the metric: their searched values, epochs run and outcome."""
        keys = sorted({key for trial in self.trials for key in trial.values})
        header = ["trial", "run", *keys, self.metric, "epochs", "status"]
        rows = [
            [
                trial.name,
                (trial.run_id or "-")[:8],
                *(_show(trial.values.get(key)) for key in keys),
                "-" if trial.score is None else f"{trial.score:.4f}",
                str(trial.epochs),
                _status(trial, self.max_epochs),
            ]
            for trial in self.trials
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (header, *rows)
        ]
        return "\n".join(line.rstrip() for line in lines)

    def summary(self) -> str:
        """The table, the best config and the compute fraction, for people."""
        best = (
            f"best: trial {self.best.name} (run {self.best.run_id}), {self.metric} {self.best.score:.4f}: "
            + " ".join(f"{key}={_show(value)}" for key, value in self.best.values.items())
            if self.best is not None and self.best.score is not None
            else "best: none (no trial reported the metric)"
        )
        return "\n".join(
            [
                self.table(),
                "",
                best,
                f"compute: {self.trial_epochs} trial-epochs of {self.samples} x {self.max_epochs} = "
                f"{self.samples * self.max_epochs}: tune_compute_fraction {self.compute_fraction:.3f}",
                f"search run {self.parent_run_id} in experiment '{self.experiment}' at {self.tracking_uri}",
                f"compare the trials: mltrain compare --runs {','.join(t.run_id for t in self.trials[:4] if t.run_id)}",
            ]
        )


def _status(trial: TrialSummary, max_epochs: int) -> str:
    if trial.stopped_at is not None:
        return f"ASHA stopped it at epoch {trial.stopped_at}"
    if trial.outcome == "completed" and trial.epochs < max_epochs:
        return "completed (early stop: patience)"  # the training's own EarlyStopping, not the scheduler
    return trial.outcome


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


# --- the Python API -------------------------------------------------------------------------------------------
def tune(
    config: TrainConfig | None = None,
    *,
    search: Iterable[str] = (),
    overrides: Iterable[str] | Mapping[str, Any] = (),
    config_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    experiment: str = metrics.EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    settings: SearchSettings | None = None,
    address: str | None = None,
) -> TuneResult:
    """Search hyperparameters with ASHA on Ray Tune; each trial trains like ``mltrain train --engine ray``.

    The fixed part of the config is ``config`` (default: the lab's defaults), then ``config_file``, then
    ``overrides``; ``search`` expressions (default :data:`DEFAULT_SEARCH`) say which keys vary and how.
    The search draws its configs from the config's ``seed``: the same seed gives the same trials.

    Args:
        config: The fixed configuration, or None for the defaults.
        search: ``key=choice(a,b)|uniform(lo,hi)|loguniform(lo,hi)|randint(lo,hi)`` expressions.
        overrides: ``key=value`` strings or a mapping for the fixed part.
        config_file: A YAML file of config keys applied before ``overrides``.
        data_dir: Food-11 folder; default ``FOOD11_DATA_DIR`` or ``./Food-11``.
        experiment: MLflow experiment of the parent and child runs.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        run_name: Name of the parent run.
        settings: Samples, ASHA, metric, resources, concurrency (default: the lab's; ``max_epochs`` is the
            config's ``total_epochs`` unless set).
        address: The Ray cluster to join; default ``RAY_ADDRESS``, else ``mltrain cluster up``'s, else a Ray
            instance embedded in this process.

    Raises:
        ConfigError: A malformed search, a setting out of range, a trial no node can hold — before any run.
    """
    from mltrain.launch.ray import ray_session

    started = time.perf_counter()
    plan = _plan(config, search, overrides, config_file, data_dir, settings, address)
    with ray_session(plan.base, address, dashboard=True):  # see ray_session: Tune stops trials by killing them
        _place(plan)
        return _run_search(plan, experiment, tracking_uri, run_name, started)


def _plan(
    config: TrainConfig | None,
    search: Iterable[str],
    overrides: Iterable[str] | Mapping[str, Any],
    config_file: str | Path | None,
    data_dir: str | Path | None,
    settings: SearchSettings | None,
    address: str | None,
) -> _Plan:
    """Resolve and check everything that needs no Ray: config, search space, settings, data, device."""
    from mltrain.cluster import resolve_address
    from mltrain.data.module import Food11Data
    from mltrain.engines.common import select_device

    fixed = TrainConfig.build(config_file, overrides, base=config)
    chosen = dataclasses.replace(settings) if settings is not None else SearchSettings()
    if chosen.max_epochs is None:
        chosen.max_epochs = fixed.total_epochs
    chosen.check()
    workers = chosen.workers_per_trial
    cpus = chosen.cpus_per_trial / workers if chosen.cpus_per_trial is not None else fixed.cpus_per_worker
    gpus = chosen.gpus_per_trial / workers if chosen.gpus_per_trial is not None else 0.0
    # Trials run where the search runs from (Tune changes their working folder): every path is made absolute.
    storage = fixed.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    base = fixed.with_overrides(
        engine="ray",
        total_epochs=chosen.max_epochs,
        workers=workers,
        min_workers=chosen.min_workers_per_trial,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus,
        output_dir=str(Path(fixed.output_dir).expanduser().resolve()),
        cache_dir=str(env.cache_dir(fixed.cache_dir).expanduser().resolve()),
        storage=storage,
    )
    domains = parse_search(list(search) or DEFAULT_SEARCH, base)
    select_device(base)
    root = env.data_dir(data_dir).expanduser().resolve()
    # Without a cluster the trials read the data here: check it now. On a cluster it may be on the workers only.
    if root.is_dir() or resolve_address(address) is None:
        if not root.is_dir():
            raise DataError(f"expected a Food-11 folder at {root}, found nothing (--data, or FOOD11_DATA_DIR)")
        Food11Data(root, base, progress=False).setup()
    return _Plan(base, domains, chosen, root)


def _place(plan: _Plan) -> None:
    """Fit the trials to the cluster: GPUs by default where there are some, concurrency from the resources."""
    import ray

    settings, base = plan.settings, plan.base
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    has_gpus = any(node.get("Resources", {}).get("GPU", 0) > 0 for node in nodes)
    if settings.gpus_per_trial is None and has_gpus and base.accelerator != "cpu":
        plan.base = base = base.with_overrides(gpus_per_worker=0.5)
        settings.gpus_per_trial = 0.5 * settings.workers_per_trial
    settings.cpus_per_trial = base.cpus_per_worker * settings.workers_per_trial
    settings.gpus_per_trial = base.gpus_per_worker * settings.workers_per_trial
    worker = {"CPU": base.cpus_per_worker, "GPU": base.gpus_per_worker}
    slots = sum(_workers_fitting(node.get("Resources", {}), worker) for node in nodes)
    trials = slots // settings.workers_per_trial
    if trials < 1:
        wanted = ", ".join(f"{key}={value:g}" for key, value in worker.items() if value)
        raise ConfigError(
            f"a trial needs {settings.workers_per_trial} worker(s) of {wanted}; the cluster can place {slots} "
            "at once. Lower --workers-per-trial, --cpus-per-trial or --gpus-per-trial, or add nodes."
        )
    if settings.max_concurrent is None:
        settings.max_concurrent = min(trials, settings.samples)


def _workers_fitting(resources: Mapping[str, float], worker: Mapping[str, float]) -> int:
    return min(int(resources.get(key, 0) / amount + 1e-9) for key, amount in worker.items() if amount > 0)


# --- the driver -----------------------------------------------------------------------------------------------
@dataclass
class TrialJob:
    """What every trial needs from the driver (sent once through Ray's object store)."""

    config: dict[str, Any]
    data_dir: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)


def _run_search(
    plan: _Plan, experiment: str, tracking_uri: str | None, run_name: str | None, started: float
) -> TuneResult:
    import mlflow

    from mltrain.launch.ray import _absolute_tracking_uri
    from mltrain.tracking import RunTracker, open_client
    from mltrain.training import _run_tags, _sigterm_as_exception

    tags = _run_tags(plan.base)
    tracker = RunTracker(
        experiment=experiment,
        tracking_uri=tracking_uri,
        run_name=run_name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={**tags, "mltrain.tune.search": "asha"},
    )
    with _sigterm_as_exception(), tracker:
        _log_search(tracker, plan)
        client = open_client()
        job = TrialJob(
            config=plan.base.model_dump(),
            data_dir=str(plan.data_dir),
            experiment=experiment,
            tracking_uri=_absolute_tracking_uri(),
            parent_run_id=str(tracker.run_id),
            tags={key: value for key, value in tags.items() if "git" in key},
        )
        recorder, interrupt = _TrialRecorder(plan.search, int(plan.base.total_epochs)), _Interrupt()
        try:
            _fit_interruptibly(_tuner(plan, job, recorder, interrupt), interrupt)
            trials = _reconcile(client, tracker, plan, recorder)
        except BaseException as exc:  # whatever ends the search early, no trial's run is left RUNNING
            interrupted = isinstance(exc, KeyboardInterrupt | TrainingInterrupted)
            _end_open_children(client, tracker, "KILLED" if interrupted else "FAILED")
            raise
        result = _summarize(plan, tracker, trials, experiment, started)
        _log_outcome(tracker, plan, result)
    result.tracking_uri = mlflow.get_tracking_uri()
    return result


def _log_search(tracker: Any, plan: _Plan) -> None:
    """The parent run's params: the fixed config, the search space, the scheduler and resources."""
    settings = plan.settings
    fixed = {key: value for key, value in plan.base.to_params().items() if key not in plan.search}
    tracker.log_params(
        {
            **fixed,
            **{f"search.{key}": str(domain).partition("=")[2] for key, domain in plan.search.items()},
            "tune.scheduler": "ASHA",
            "tune.samples": settings.samples,
            "tune.max_epochs": settings.max_epochs,
            "tune.grace_period": settings.grace_period,
            "tune.reduction_factor": settings.reduction_factor,
            "tune.metric": settings.metric,
            "tune.mode": settings.mode,
            "tune.workers_per_trial": plan.base.workers_text(),
            "tune.cpus_per_trial": settings.cpus_per_trial,
            "tune.gpus_per_trial": settings.gpus_per_trial,
            "tune.max_concurrent": settings.max_concurrent,
        }
    )
    print(
        f"search run {tracker.run_id}: {settings.samples} trial(s) of "
        + ", ".join(str(domain) for domain in plan.search.values())
        + f"; ASHA on {settings.metric} ({settings.mode}), max {settings.max_epochs} epoch(s), grace "
        f"{settings.grace_period}, reduction {settings.reduction_factor:g}; {settings.max_concurrent} at a time",
        flush=True,
    )


def _tuner(plan: _Plan, job: TrialJob, recorder: Any, interrupt: _Interrupt) -> Any:
    from ray import tune as ray_tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    settings = plan.settings
    # The trial function only waits for its Ray Train run, whose workers hold the CPUs and GPUs: it reserves no
    # CPU (a share of one would leave a worker unplaceable), only memory, which Tune needs a non-empty bundle
    # for; max_concurrent_trials keeps the trials to what the cluster can place.
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, job=job), {"CPU": 0, "memory": _TRIAL_DRIVER_MEMORY}
    )
    scheduler = _FinishingASHA(
        max_t=settings.max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
        stop_last_trials=False,
    )
    return ray_tune.Tuner(
        trainable,
        param_space={key: domain.to_tune() for key, domain in plan.search.items()},
        tune_config=ray_tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            num_samples=settings.samples,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=plan.base.seed, max_concurrent=settings.max_concurrent),
        ),
        run_config=ray_tune.RunConfig(
            name=f"tune-{job.parent_run_id[:12]}",
            storage_path=str(Path(plan.base.output_dir) / "tune"),
            failure_config=ray_tune.FailureConfig(max_failures=plan.base.max_failures),
            callbacks=[recorder],
            stop=interrupt,
            verbose=0,  # the recorder prints a line per trial event; the table comes at the end
        ),
    )


class _FinishingASHA(ASHAScheduler):
    """ASHA that lets a trial which has run every epoch finish on its own: test pass, best model, FINISHED.

    Ray's ASHA has a rung at ``max_t`` too, and stops the trials below its median there (also with
    ``stop_last_trials=False``): their training is done, but Tune would end them before their test pass.
    No trial runs past ``max_t``, so skipping that rung changes no other decision.
    """

    def __init__(self, *, max_t: int, **options: Any) -> None:
        super().__init__(time_attr=EPOCHS_DONE, max_t=max_t, **options)
        self.max_epochs = max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(EPOCHS_DONE, 0) >= self.max_epochs:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class _Interrupt(Stopper):
    """Tune stopper that ends the search when the driver is interrupted (Ctrl+C, SIGTERM)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials stop through ASHA, or all at once through stop_all

    def stop_all(self) -> bool:
        return self.event.is_set()

    def __reduce__(self) -> tuple[type, tuple]:
        return _Interrupt, ()  # Tune pickles its settings to disk: an event is state of this process only


def _fit_interruptibly(tuner: Any, interrupt: _Interrupt) -> Any:
    """``tuner.fit()`` in a thread, so that Ctrl+C and SIGTERM reach this (main) thread at once.

    On an interrupt, Tune is asked to stop every trial (each takes its Ray Train run with it) and given
    :data:`_STOP_GRACE_S` to do so; a second interrupt, or Tune taking longer, disconnects from Ray instead
    (an embedded Ray stops; on a cluster, the search's actors share the driver's fate). The caller then ends
    the runs KILLED.
    """
    import ray

    from mltrain.launch.ray import call_interruptibly

    def on_interrupt(thread: threading.Thread) -> None:
        print("interrupted: stopping every trial (interrupt again to stop at once)", flush=True)
        interrupt.event.set()
        with contextlib.suppress(BaseException):
            thread.join(timeout=_STOP_GRACE_S)
        if thread.is_alive():
            ray.shutdown()

    return call_interruptibly(tuner.fit, "ray-tune-fit", on_interrupt)


def _children(client: Any, parent: Any) -> list[Any]:
    run = client.get_run(parent.run_id)
    return client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'", max_results=5000
    )


def _end_open_children(client: Any, parent: Any, status: str) -> None:
    """End every child run still RUNNING with ``status`` (KILLED after an interrupt, FAILED after an error)."""
    for child in _children(client, parent):
        if child.info.status == "RUNNING":
            outcome = "killed" if status == "KILLED" else "failed"
            client.set_tag(child.info.run_id, OUTCOME_TAG, outcome)
            client.set_terminated(child.info.run_id, status)
            print(f"trial run {child.info.run_id} ended {status}", flush=True)


# --- watching the trials --------------------------------------------------------------------------------------
@dataclass
class _TrialRecord:
    name: str
    values: dict[str, Any]
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class _TrialRecorder(Callback):
    """Tune callback in the driver: what each trial was given and reported, and a line per trial event."""

    def __init__(self, search: Mapping[str, Domain], max_epochs: int) -> None:
        self.search = search
        self.max_epochs = max_epochs
        self.trials: dict[str, _TrialRecord] = {}

    def _record(self, trial: Any) -> _TrialRecord:
        if trial.trial_id not in self.trials:
            values = {key: _plain(trial.config.get(key)) for key in self.search}
            self.trials[trial.trial_id] = _TrialRecord(trial.trial_id, values)
        return self.trials[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        shown = " ".join(f"{key}={_show(value)}" for key, value in record.values.items())
        print(f"trial {record.name} started: {shown}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if EPOCHS_DONE in result:
            self._record(trial).last = dict(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        epochs = int(record.last.get(EPOCHS_DONE, 0))
        how = "trained all" if epochs >= self.max_epochs else "ended after"
        print(f"trial {record.name} {how} {epochs} epoch(s)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        error = str(trial.get_error() or "").strip()  # the trace's text: its last line names the exception
        record.error = error.splitlines()[-1] if error else f"see {trial.error_file}"
        print(f"trial {record.name} failed (see {trial.error_file or 'the log above'})", flush=True)


def _plain(value: Any) -> Any:
    """A Python scalar for a value Tune drew (numpy ints and floats are not valid config values)."""
    return value.item() if hasattr(value, "item") else value


# --- reconciling the children with Tune -----------------------------------------------------------------------
def _reconcile(client: Any, parent: Any, plan: _Plan, recorder: _TrialRecorder) -> list[TrialSummary]:
    """End every child as Tune's outcome says; return one summary per trial, from what its run shows."""
    by_trial = {child.data.tags.get(TRIAL_TAG): child for child in _children(client, parent)}
    summaries = []
    for trial_id, record in recorder.trials.items():
        child = by_trial.pop(trial_id, None)
        if child is None:  # the trial failed before its run existed (e.g. a config that fails validation)
            summaries.append(TrialSummary(trial_id, None, record.values, 0, "failed", None))
            continue
        run_id = child.info.run_id
        if record.error is not None:
            outcome = "failed"
            if child.info.status == "RUNNING":
                client.set_tag(run_id, ERROR_TAG, record.error[:4000])
                client.set_terminated(run_id, "FAILED")
        elif child.info.status == "FINISHED" and metrics.TEST_ACCURACY in child.data.metrics:
            outcome = "completed"  # its own train() ran to the end: test pass, model, FINISHED
        else:
            # ASHA stopped it: Tune ended the trial's process before its test pass. The run is left RUNNING, or
            # ended FAILED if the dying process got that far.
            outcome = "stopped"
            _close_stopped(client, child, record, plan)
        summaries.append(_summary(client, run_id, record, outcome, plan))
    for child in by_trial.values():  # not a trial Tune knows of (cannot happen unless Tune lost one)
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, "FAILED")
    return summaries


def _close_stopped(client: Any, child: Any, record: _TrialRecord, plan: _Plan) -> None:
    """A trial ASHA stopped: its last reported checkpoint back, every epoch, its best model; FINISHED."""
    from ray.train import Checkpoint

    from mltrain.launch.ray import RUN_NAME_TAG, _bring_back, storage_for
    from mltrain.tracking import RunTracker
    from mltrain.training import finalize_run

    run_id = child.info.run_id
    folder = Path(plan.base.output_dir) / run_id
    storage_path, filesystem, _ = storage_for(plan.base)
    # The trial's latest registered checkpoint: the one ASHA judged, or a later one if the trial's workers
    # finished another epoch before they were ended; else the one reported to Tune.
    name = child.data.tags.get(RUN_NAME_TAG)
    reported = record.last.get("checkpoint_path")
    try:
        if not (name and _bring_back(f"{storage_path}/{name}", filesystem, folder)) and reported:
            Checkpoint(reported, filesystem=filesystem).to_directory(str(folder))
    except Exception as exc:  # the run keeps its metrics; only the model is missing
        log.warning("could not fetch the checkpoint of stopped trial %s (run %s): %s", record.name, run_id, exc)
    if ERROR_TAG in child.data.tags:  # what the trial's process said while Tune ended it
        client.delete_tag(run_id, ERROR_TAG)
    # Re-opened here (nested under the search's run, which is active in this process) and ended FINISHED.
    with RunTracker(run_id=run_id, system_metrics=False) as tracker:
        finalize_run(tracker, folder, quiet=True)
        tracker.set_tags(
            {
                STOPPED_AT_TAG: str(int(record.last.get(EPOCHS_DONE, 0))),
                "mltrain.end_reason": "stopped by ASHA",
            }
        )


def _summary(client: Any, run_id: str, record: _TrialRecord, outcome: str, plan: _Plan) -> TrialSummary:
    """The trial as its run shows it: epochs logged, the metric's last value; tags say how it ended."""
    history = client.get_metric_history(run_id, plan.settings.metric)
    latest = {point.step: point.value for point in sorted(history, key=lambda p: (p.step, p.timestamp))}
    epochs = len(latest)
    score = latest[max(latest)] if latest else None
    stopped_at = int(record.last.get(EPOCHS_DONE, 0)) if outcome == "stopped" else None
    tags = {OUTCOME_TAG: outcome, STOPPED_TAG: str(outcome == "stopped").lower(), EPOCHS_TAG: str(epochs)}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    score = None if score is None or math.isnan(score) else score
    return TrialSummary(record.name, run_id, record.values, epochs, outcome, score, stopped_at)


def _summarize(plan: _Plan, parent: Any, trials: list[TrialSummary], experiment: str, started: float) -> TuneResult:
    settings = plan.settings
    sign = 1 if settings.mode == "max" else -1
    scored = [trial for trial in trials if trial.score is not None]
    # Best by the last value, as Tune's default scope: ties go to the trial that ran longer.
    ranked = sorted(scored, key=lambda t: (sign * t.score, t.epochs), reverse=True)
    ordered = ranked + [trial for trial in trials if trial.score is None]
    best = ranked[0] if ranked else None
    best_config = plan.base.with_overrides(**best.values).model_dump() if best else None
    trial_epochs = sum(trial.epochs for trial in trials)
    return TuneResult(
        parent_run_id=str(parent.run_id),
        experiment=experiment,
        tracking_uri="",
        metric=settings.metric,
        mode=settings.mode,
        trials=ordered,
        best=best,
        best_config=best_config,
        trial_epochs=trial_epochs,
        compute_fraction=trial_epochs / (settings.samples * settings.max_epochs),
        samples=settings.samples,
        max_epochs=settings.max_epochs,
        wall_seconds=time.perf_counter() - started,
    )


def _log_outcome(tracker: Any, plan: _Plan, result: TuneResult) -> None:
    """The parent run's results: compute used, the best trial and its config, the table."""
    import yaml

    counts = {outcome: sum(t.outcome == outcome for t in result.trials) for outcome in ("completed", "stopped")}
    values = {
        COMPUTE_FRACTION: result.compute_fraction,
        TRIAL_EPOCHS: result.trial_epochs,
        "tune_trials_completed": counts["completed"],
        "tune_trials_stopped_early": counts["stopped"],
        "tune_trials_failed": len(result.trials) - sum(counts.values()),
    }
    if result.best is not None and result.best.score is not None:
        values[f"tune_best_{result.metric}"] = result.best.score
    tracker.log_metrics(values, step=0)
    tracker.log_text(result.table() + "\n", "trials.txt")
    if result.best is None or result.best_config is None:
        return
    tracker.log_params({f"best.{key}": value for key, value in result.best.values.items()})
    tracker.set_tags(
        {
            "mltrain.tune.best_run_id": str(result.best.run_id),
            "mltrain.tune.best_config": json.dumps(result.best.values, sort_keys=True),
        }
    )
    tracker.log_text(yaml.safe_dump(result.best_config, sort_keys=False), BEST_CONFIG_ARTIFACT)


# --- the trials -----------------------------------------------------------------------------------------------
class EpochReports(TuneReportCallback):
    """Tune's report callback for a trial's Ray Train run, epoch reports only, each with ``epochs_done``.

    Runs in the trial's Ray Train controller. ``epochs_done`` (epoch + 1) is ASHA's time: Tune's own
    iteration count would also count the final test report, and restart at 1 if a trial were retried. The
    final report (test metrics) is not forwarded: ASHA judges epochs, and the trial's run has the test metrics.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or "epoch" not in metrics[0]:
            return
        first = {**metrics[0], EPOCHS_DONE: int(metrics[0]["epoch"]) + 1}
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def run_trial(values: dict[str, Any], job: TrialJob) -> None:
    """One trial (a Tune function trainable): ``train(engine=ray)`` with the trial's values, in a child run."""
    from ray import tune as ray_tune

    from mltrain.launch.ray import run_config_callbacks
    from mltrain.training import train

    context = ray_tune.get_context()
    trial_id = context.get_trial_id()
    config = TrainConfig.from_mapping({**job.config, **{key: _plain(value) for key, value in values.items()}})
    resume, run_id = _earlier_attempt(job, trial_id, config)
    with run_config_callbacks(EpochReports()):
        train(
            config,
            data_dir=job.data_dir,
            experiment=job.experiment,
            tracking_uri=job.tracking_uri,
            run_name=f"trial-{trial_id}",
            resume=resume,
            run_id=run_id,
            progress=False,
            parent_run_id=job.parent_run_id,
            tags={**job.tags, TRIAL_TAG: trial_id},
        )


def _earlier_attempt(job: TrialJob, trial_id: str, config: TrainConfig) -> tuple[Path | None, str | None]:
    """When Tune retries a trial (its actor or node was lost, or it raised): how the retry goes on.

    Returns ``(checkpoint folder, None)`` to resume the trial's run from its checkpoint; ``(None, run_id)`` to
    train from the start in the trial's run, when the lost attempt logged no epoch (so the trial stays one run,
    each epoch logged once); ``(None, None)`` for a first attempt. An earlier attempt that logged epochs but
    registered no checkpoint is ended FAILED, and the retry starts a new run.
    """
    from mltrain.launch.ray import RUN_NAME_TAG, _bring_back, storage_for
    from mltrain.tracking import open_client

    client = open_client(job.tracking_uri)
    experiment = client.get_experiment_by_name(job.experiment)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{job.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None, None
    run = found[0]
    folder = Path(config.output_dir) / run.info.run_id
    storage_path, filesystem, _ = storage_for(config)
    name = run.data.tags.get(RUN_NAME_TAG)
    if name and _bring_back(f"{storage_path}/{name}", filesystem, folder):
        print(f"trial {trial_id}: resuming run {run.info.run_id} from its checkpoint", flush=True)
        return folder, None
    if not any(key in run.data.metrics for key in metrics.EPOCH_METRICS):
        lost = int(run.data.tags.get(LOST_ATTEMPTS_TAG, "0")) + 1
        reason = run.data.tags.get(ERROR_TAG, "its process was lost")
        client.set_tag(run.info.run_id, LOST_ATTEMPTS_TAG, str(lost))
        client.set_tag(run.info.run_id, f"mltrain.tune.lost_attempt.{lost}", reason[-4000:])
        with contextlib.suppress(Exception):  # the tag is absent when the attempt's process was lost
            client.delete_tag(run.info.run_id, ERROR_TAG)
        print(f"trial {trial_id}: run {run.info.run_id} starts again (its last attempt had no epoch)", flush=True)
        return None, run.info.run_id
    if run.info.status == "RUNNING":
        client.set_tag(run.info.run_id, "mltrain.end_reason", "lost before its first checkpoint; retried")
        client.set_terminated(run.info.run_id, "FAILED")
    return None, None
