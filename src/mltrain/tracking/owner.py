"""Owning a run: :class:`RunOwner` creates it (or takes it over), hands out its logger, and ends it.

The process that starts a training owns its run. Used as a context manager, its owner ends the run FINISHED,
KILLED (Ctrl+C, SIGTERM) or FAILED (an exception, recorded in the tag ``mltrain.error``): a run is never left
RUNNING by an owner that got to its end. Everything else that logs into the run — a Ray Train worker, say —
attaches a :class:`~mltrain.tracking.logger.RunLogger` to it by id and never ends it.

The owner works through ``MlflowClient`` alone and never makes its run MLflow's *active* run: a run active in the
process (a notebook's) stays active, and becomes the new run's parent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from mltrain.errors import TrackingError, TrainingInterrupted
from mltrain.metrics import EXPERIMENT, MODEL_NAME
from mltrain.tracking.logger import RunLogger
from mltrain.tracking.store import open_client

log = logging.getLogger(__name__)

ERROR_TAG = "mltrain.error"
"""Run tag holding what ended a FAILED run (the exception's type and message)."""
END_REASON_TAG = "mltrain.end_reason"
"""Run tag: why the run ended other than FINISHED (``interrupted``, ``error``, ``stopped by ASHA`` ...)."""
BEST_MODEL_TAG = "mltrain.best_model_uri"
"""Run tag holding the URI of the best model the run logged (what `registry promote` registers)."""
PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's tag for a nested run's parent (what the UI nests runs by)."""


@dataclass
class RunSpec:
    """Which run a training logs into: where, under which name and parent, or an existing one to take over."""

    experiment: str = EXPERIMENT
    """Experiment of a new run (created the mltrain way when missing)."""
    tracking_uri: str | None = None
    """The store; default MLflow's (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``). An explicit one is also
    set as MLflow's for this process."""
    run_name: str | None = None
    parent_run_id: str | None = None
    """Nest a new run under this one (else under the run active in this process, if any)."""
    tags: dict[str, str] = field(default_factory=dict)
    """Tags of a new run."""
    run_id: str | None = None
    """An existing run to take over instead of creating one (a resume, a retried trial, a run made elsewhere)."""


class RunOwner:
    """Creates the run of ``spec`` (or takes over ``spec.run_id``) and ends it however the block ends.

    Args:
        spec: The run.
        system_metrics: Its logger samples this machine into the run.
        fresh: ``spec.run_id`` was created just now (by the start-up helper): nothing to take over, no history.
        deferred: MLflow is not loaded until the training's first batch (see :class:`RunLogger`); only with a
            ``fresh`` run, whose ``experiment_id`` is given.
        experiment_id: The experiment of a ``fresh`` run.
        started_at: When the command started: its logger logs ``startup_seconds`` from it.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        system_metrics: bool = True,
        fresh: bool = False,
        deferred: bool = False,
        experiment_id: str | None = None,
        started_at: float | None = None,
    ) -> None:
        if deferred and not (fresh and spec.run_id and experiment_id):
            raise ValueError("a deferred owner takes over a fresh run whose id and experiment it is given")
        self.spec = spec
        self.run_id = spec.run_id
        self.experiment_id = experiment_id
        self.parent_run_id = spec.parent_run_id
        self._system_metrics = system_metrics
        self._fresh = fresh
        self._deferred = deferred
        self._started_at = started_at
        self._borrowed = False  # the run is active in this process already: someone else ends it
        self._created = False  # created by this owner just now: no history to read
        self._logger: RunLogger | None = None

    @property
    def logger(self) -> RunLogger:
        """This process's logger into the run (after :meth:`start`)."""
        if self._logger is None:
            raise RuntimeError("the run is not started yet")
        return self._logger

    def start(self) -> RunLogger:
        """Create or take over the run (TrackingError when the store refuses); returns its logger."""
        if not self._deferred:
            self._open()
        if self.run_id is None:  # pragma: no cover - _open always sets it
            raise RuntimeError("no run to log into")
        self._logger = RunLogger(
            self.run_id,
            self.spec.tracking_uri,
            system_metrics=self._system_metrics,
            fresh=self._fresh or self._created,
            started_at=self._started_at,
            deferred=self._deferred,
        )
        if not self._deferred:
            self._logger.attach()
        return self._logger

    def _open(self) -> None:
        import mlflow

        self._use_store()
        client = open_client()
        active = mlflow.active_run()
        if self.run_id is None:
            if self.parent_run_id is None and active is not None:
                # A run is open in this process (a notebook's, a script's): this training becomes its child
                # rather than writing into someone else's run.
                self.parent_run_id = active.info.run_id
            self.run_id, self.experiment_id = create_run(client, self.spec, self.parent_run_id)
            self._created = True
            return
        try:
            run = client.get_run(self.run_id)
            self.experiment_id = run.info.experiment_id
            if active is not None and active.info.run_id == self.run_id:
                self._borrowed = True  # opened by someone else in this process: log into it, leave ending to them
            elif not self._fresh:
                client.update_run(self.run_id, status="RUNNING")  # taken over: running again until ended
        except Exception as exc:
            raise TrackingError(f"could not take over run {self.run_id} at {client.tracking_uri}: {exc}") from None

    def _use_store(self) -> None:
        if self.spec.tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(self.spec.tracking_uri)

    def end(self, status: str = "FINISHED") -> None:
        """Send what is pending and end the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if self._logger is None:
            return
        self._logger.close()  # a deferred logger attaches now: the run still gets its start records
        if self._borrowed:
            return
        try:
            open_client(self.spec.tracking_uri).set_terminated(str(self.run_id), status)
        except Exception as exc:
            # Ending must not hide the training's own outcome; the run id is printed for a retry.
            log.error("could not end MLflow run %s as %s: %s", self.run_id, status, exc)

    def log_model(self, model: Any, image_size: int, step: int | None = None, name: str = MODEL_NAME) -> str:
        """Log the classifier as the run's model (see :func:`mltrain.tracking.models.log_model`); returns its URI
        and records it in the tag ``mltrain.best_model_uri``."""
        from mltrain.tracking.models import log_model

        self._use_store()
        uri = log_model(str(self.run_id), model, image_size, step=step, name=name)
        self.logger.set_tags({BEST_MODEL_TAG: uri})
        return uri

    def __enter__(self) -> RunOwner:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._logger is None:
            return
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, (KeyboardInterrupt, TrainingInterrupted)):
            self._logger.set_tags({END_REASON_TAG: "interrupted"})
            self.end("KILLED")
        else:
            self._logger.set_tags({END_REASON_TAG: "error", ERROR_TAG: f"{exc_type.__name__}: {exc}"[:4000]})
            self.end("FAILED")


def create_run(client: Any, spec: RunSpec, parent_run_id: str | None) -> tuple[str, str]:
    """Create a run as ``mlflow.start_run`` would (with its context tags: source, user, git), in ``spec``'s
    experiment under ``parent_run_id``; returns (run id, experiment id). TrackingError when the store refuses."""
    from mltrain.internals.mlflow import context_tags
    from mltrain.tracking.experiments import ensure_experiment

    tags = dict(spec.tags)
    if spec.run_name:
        tags["mlflow.runName"] = spec.run_name
    if parent_run_id:
        tags[PARENT_RUN_TAG] = parent_run_id
    try:
        experiment_id = ensure_experiment(client, spec.experiment)
        run = client.create_run(experiment_id, tags=context_tags(tags), run_name=spec.run_name)
    except TrackingError:
        raise
    except Exception as exc:
        where = client.tracking_uri
        raise TrackingError(f"could not start a run in experiment {spec.experiment!r} at {where}: {exc}") from None
    return run.info.run_id, run.info.experiment_id
