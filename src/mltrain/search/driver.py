"""The search's driver: checks before any Ray work, owns the search's run, runs Tune, closes out the trials.

The driver (the process that called :func:`tune`) checks the search space and settings before any Ray work,
joins or embeds Ray, sizes the concurrency from the cluster's resources, owns the **parent run** (search space,
scheduler settings; at the end the best config, the best score, the trial-epochs run and
``tune_compute_fraction``) and ends it FINISHED, KILLED or FAILED. On Ctrl+C or SIGTERM it stops the trials,
shuts Ray down and ends every open child and the parent KILLED.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.errors import TrainingInterrupted
from mltrain.interrupts import call_interruptibly, sigterm_as_exception
from mltrain.launchers.ray.session import ray_session
from mltrain.search.reconcile import TrialRecorder, reconcile
from mltrain.search.results import TuneResult, log_outcome, summarize
from mltrain.search.settings import SearchPlan, SearchSettings, place, plan_search
from mltrain.search.tags import EPOCHS_DONE, OUTCOME_TAG
from mltrain.search.trial import TrialJob, run_trial
from mltrain.tracking.children import ChildRuns
from mltrain.tracking.owner import RunOwner, RunSpec
from mltrain.tracking.records import source_tags
from mltrain.tracking.runlog import RunLog
from mltrain.tracking.store import absolute_tracking_uri, current_tracking_uri

_STOP_GRACE_S = 60
"""Seconds an interrupted search gives Tune to stop its trials before disconnecting from Ray."""
_TRIAL_DRIVER_MEMORY = 256 * 2**20
"""Bytes of Ray's logical ``memory`` a trial's driver reserves (it runs the trial function and Train's controller)."""


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
    ``overrides``; ``search`` expressions (default :data:`~mltrain.search.space.DEFAULT_SEARCH`) say which keys
    vary and how. The search draws its configs from the config's ``seed``: the same seed gives the same trials.

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
    import ray

    started = time.perf_counter()
    plan = plan_search(config, search, overrides, config_file, data_dir, settings, address)
    with ray_session(plan.options, dashboard=True):  # see ray_session: Tune stops trials by killing them
        place(plan, [node for node in ray.nodes() if node.get("Alive")])
        return _run_search(plan, RunSpec(experiment, tracking_uri, run_name), started)


def _run_search(plan: SearchPlan, spec: RunSpec, started: float) -> TuneResult:
    import mlflow

    tags = source_tags()
    spec.run_name = spec.run_name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    spec.tags = {**tags, "mltrain.tune.search": "asha"}
    owner = RunOwner(spec)
    with sigterm_as_exception(), owner:
        _log_search(owner.logger, plan, str(owner.run_id))
        children = ChildRuns(str(owner.run_id), spec.tracking_uri)
        job = TrialJob(
            config=plan.base.model_dump(),
            data_dir=str(plan.data_dir),
            experiment=spec.experiment,
            tracking_uri=absolute_tracking_uri(current_tracking_uri(spec.tracking_uri)),
            parent_run_id=str(owner.run_id),
            tags={key: value for key, value in tags.items() if "git" in key},
            options=plan.options.model_dump(exclude={"address"}),  # a trial runs inside Ray already
        )
        recorder, interrupt = TrialRecorder(plan.search, int(plan.base.total_epochs)), _Interrupt()
        try:
            _fit_interruptibly(_tuner(plan, job, recorder, interrupt), interrupt)
            trials = reconcile(children, plan, recorder)
        except BaseException as exc:  # whatever ends the search early, no trial's run is left RUNNING
            status = "KILLED" if isinstance(exc, KeyboardInterrupt | TrainingInterrupted) else "FAILED"
            for run_id in children.end_open(status, {OUTCOME_TAG: "killed" if status == "KILLED" else "failed"}):
                print(f"trial run {run_id} ended {status}", flush=True)
            raise
        result = summarize(plan, str(owner.run_id), trials, spec.experiment, started)
        log_outcome(owner.logger, result)
    result.tracking_uri = mlflow.get_tracking_uri()
    return result


def _log_search(tracker: RunLog, plan: SearchPlan, run_id: str) -> None:
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
            "tune.workers_per_trial": plan.options.workers_text(),
            "tune.cpus_per_trial": settings.cpus_per_trial,
            "tune.gpus_per_trial": settings.gpus_per_trial,
            "tune.max_concurrent": settings.max_concurrent,
        }
    )
    print(
        f"search run {run_id}: {settings.samples} trial(s) of "
        + ", ".join(str(domain) for domain in plan.search.values())
        + f"; ASHA on {settings.metric} ({settings.mode}), max {settings.max_epochs} epoch(s), grace "
        f"{settings.grace_period}, reduction {settings.reduction_factor:g}; {settings.max_concurrent} at a time",
        flush=True,
    )


def _tuner(plan: SearchPlan, job: TrialJob, recorder: TrialRecorder, interrupt: _Interrupt) -> Any:
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
        max_t=int(settings.max_epochs or plan.base.total_epochs),
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
            search_alg=BasicVariantGenerator(random_state=plan.base.seed, max_concurrent=settings.max_concurrent or 0),
        ),
        run_config=ray_tune.RunConfig(
            name=f"tune-{job.parent_run_id[:12]}",
            storage_path=str(Path(plan.base.output_dir) / "tune"),
            failure_config=ray_tune.FailureConfig(max_failures=plan.options.max_failures),
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
        decision: str = super().on_trial_result(tune_controller, trial, result)
        return decision


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

    def on_interrupt(thread: threading.Thread) -> None:
        print("interrupted: stopping every trial (interrupt again to stop at once)", flush=True)
        interrupt.event.set()
        with contextlib.suppress(BaseException):
            thread.join(timeout=_STOP_GRACE_S)
        if thread.is_alive():
            ray.shutdown()

    return call_interruptibly(tuner.fit, "ray-tune-fit", on_interrupt)
