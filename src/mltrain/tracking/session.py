"""The seam between training and MLflow: start or re-attach a run, log, end it — from rank 0 only.

Every engine talks to MLflow through :class:`RunTracker`, so that a local run, a Lightning run and a
Ray Train worker log the same things the same way. The process that starts a training *owns* its run:
used as a context manager, its tracker ends the run FINISHED, KILLED (Ctrl+C, SIGTERM) or FAILED (an
exception) — a run is never left RUNNING. A worker *attaches* to the owner's run by id
(``owner=False``): it logs into it and never ends it.

Each (metric, step) is logged once per run, whatever restarts: a tracker on a run that existed before
it started reads which steps the run already has and skips them, so an epoch that a resumed training
runs again, or a checkpoint's history replayed by :meth:`RunTracker.log_history`, never appears twice.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from mltrain.errors import TrackingError, TrainingInterrupted
from mltrain.metrics import EXPERIMENT, MODEL_NAME, TRACKING_BLOCKED
from mltrain.tracking.store import open_client

log = logging.getLogger(__name__)

_UNIQUE_KEY_CLASH = re.compile(r"unique|duplicate", re.IGNORECASE)
"""How a SQL store's error reads when an insert hit a row another writer had just added (sqlite, PostgreSQL, MySQL)."""

ERROR_TAG = "mltrain.error"
"""Run tag holding what ended a FAILED run (the exception's type and message)."""

BEST_MODEL_TAG = "mltrain.best_model_uri"
"""Run tag holding the URI of the best model the run logged (what `registry promote` registers)."""


class RunTracker:
    """One MLflow run seen from training code.

    Args:
        experiment: Experiment name (created when missing).
        tracking_uri: Explicit tracking URI; default ``MLFLOW_TRACKING_URI`` or MLflow's local sqlite.
        run_id: Re-attach to this existing run (e.g. after a restart) instead of starting one.
        run_name: Name of a new run.
        enabled: False on every process but rank 0: all calls become no-ops.
        system_metrics: Sample CPU/memory/GPU of this machine into the run while it is open (attached too).
        tags: Extra tags for the run.
        owner: True for the process that starts and ends the run; False for a worker that attaches to an
            existing run (``run_id``) to log into it, leaving its status alone.
        parent_run_id: Nest a new run under this run (``mlflow.parentRunId``), which may belong to another
            process — e.g. a Tune trial's run under its search's run. A run active in this process, if any,
            is the parent instead.
        lazy: ``run_id`` is a run just created for this tracker (by :class:`~mltrain.tracking.starter.RunStarter`):
            MLflow is loaded in a background thread once the loop runs (:meth:`training_started`), and the
            run is attached, and what :meth:`when_started` registered is logged, at the first call that needs
            it once MLflow has loaded (an epoch's end; the run's end at the latest) — so MLflow's import is
            not between the command and the first step, nor does an epoch wait for it.
    """

    def __init__(
        self,
        experiment: str = EXPERIMENT,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        enabled: bool = True,
        system_metrics: bool = True,
        tags: Mapping[str, str] | None = None,
        owner: bool = True,
        parent_run_id: str | None = None,
        lazy: bool = False,
    ) -> None:
        if not owner and run_id is None:
            raise ValueError("a tracker that does not own its run needs the run_id to attach to")
        self.experiment = experiment
        # Only an explicit URI is set globally; otherwise MLflow reads MLFLOW_TRACKING_URI itself.
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.run_name = run_name
        self.enabled = enabled
        self.system_metrics = system_metrics
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.experiment_id: str | None = None
        """The run's experiment (known once the run is started or attached)."""
        self.owner = owner
        self.blocked_seconds = 0.0
        """Seconds the caller spent inside logging calls (the time tracking held the training loop up)."""
        self.synchronous = False
        """Send metrics before returning (tests of the server path may want it); default: queue them."""
        self._blocked_mark = 0.0
        # A run that existed before this tracker may already hold steps that must not be logged again.
        self._existing = run_id is not None and not lazy
        self._lazy = lazy and enabled and run_id is not None
        self._on_start: list[Callable[[], None]] = []
        self._warming: threading.Thread | None = None
        self._held: list[tuple[int, dict[str, float]]] = []  # epochs logged while MLflow was still loading
        self.first_batch: tuple[int, float] | None = None
        """(epoch, time.time()) of the training's first batch in this process, once the engine has said so."""
        self._logged: dict[str, set[int]] = {}
        self._owns_run = False
        self._active = False
        self._client: Any = None
        self._monitor: Any = None

    # --- lifecycle ------------------------------------------------------------------------------------
    def when_started(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the run is attached: now, unless the tracker is lazy and not attached yet."""
        if self._lazy:
            self._on_start.append(callback)
        else:
            callback()

    def training_started(self, epoch: int) -> None:
        """The loop has its first batch (in ``epoch``): a lazy tracker now loads MLflow in the background.

        Not before: on a small machine that work would compete with building the model and the first batch.
        The first call's time and epoch are kept in ``first_batch`` (for ``startup_seconds``).
        """
        if self.first_batch is None:
            self.first_batch = (epoch, time.time())
        if self._lazy and self._warming is None:
            self._warming = threading.Thread(target=self._warm_up, name="mltrain-mlflow-warm-up", daemon=True)
            self._warming.start()

    def _warm_up(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # noqa: F401

            open_client(self.tracking_uri).get_run(self.run_id)  # opens the store: a sqlite schema check
        except Exception as exc:  # attaching reports what is wrong
            log.debug("warming up MLflow failed: %s", exc)

    def _attach_lazily(self) -> bool:
        """The first call that needs a lazy tracker's run: attach to it (timed as blocked), then run the callbacks."""
        if not self._lazy:
            return False
        self._lazy = False
        with self._timed():
            if self._warming is not None:
                self._warming.join()
            self.start()
        callbacks, self._on_start = self._on_start, []
        for callback in callbacks:
            callback()
        held, self._held = self._held, []
        for epoch, values in held:
            self.log_metrics(values, step=epoch)
        return True

    def start(self) -> str | None:
        """Start (or re-attach to) the run; returns its id. Nested under a run already active here."""
        if not self.enabled:
            return self.run_id
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        self._client = open_client()
        if not self.owner:
            self._attach()
            return self.run_id
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.experiment_id = active.info.experiment_id
            self._active = True  # someone else opened exactly this run: log into it, leave ending to them
            return self.run_id
        experiment_id = self._experiment_id(mlflow) if self.run_id is None else None
        if active is not None:
            # A run is already open in this process (a notebook, a Tune parent run): this
            # training becomes its child rather than writing into someone else's run.
            self.parent_run_id = active.info.run_id
        try:
            run = mlflow.start_run(
                run_id=self.run_id,
                experiment_id=experiment_id,
                run_name=self.run_name if self.run_id is None else None,
                nested=active is not None,
                parent_run_id=self.parent_run_id if self.run_id is None else None,
                log_system_metrics=False,  # sampled below, as for an attached run
                tags=self.tags or None,
            )
        except mlflow.exceptions.MlflowException as exc:
            target = f"run {self.run_id}" if self.run_id else f"a run in experiment {self.experiment!r}"
            raise TrackingError(f"could not start {target} at {mlflow.get_tracking_uri()}: {exc}") from None
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._owns_run = True
        self._active = True
        self._sample_machine()
        return self.run_id

    def _attach(self) -> None:
        try:
            self.experiment_id = self._client.get_run(self.run_id).info.experiment_id
        except Exception as exc:
            where = self._client.tracking_uri
            raise TrackingError(f"could not attach to run {self.run_id} at {where}: {exc}") from None
        self._active = True
        self._sample_machine()  # this process's machine: a Ray worker's node rather than the driver's

    def _sample_machine(self) -> None:
        if self.system_metrics:
            self._monitor = _system_monitor(self.run_id, self._client.tracking_uri)
            self._monitor.start()

    def end(self, status: str = "FINISHED") -> None:
        """Flush pending logs and end the run with ``status`` (FINISHED, FAILED or KILLED)."""
        self._attach_lazily()  # a lazy run that nothing has used yet still gets its start records and its status
        if not (self.enabled and self._active):
            return
        import mlflow

        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.flush()
        self._active = False
        if not self._owns_run:
            return
        try:
            mlflow.end_run(status=status)
        except Exception as exc:
            # Ending must not hide the training's own outcome; the run id is printed for a retry.
            log.error("could not end MLflow run %s as %s: %s", self.run_id, status, exc)

    def __enter__(self) -> RunTracker:
        if not self._lazy:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
            return
        if issubclass(exc_type, (KeyboardInterrupt, TrainingInterrupted)):
            self.set_tags({"mltrain.end_reason": "interrupted"})
            self.end("KILLED")
            return
        self.set_tags({"mltrain.end_reason": "error", ERROR_TAG: f"{exc_type.__name__}: {exc}"[:4000]})
        self.end("FAILED")

    # --- logging ----------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (all at once; values become strings)."""
        if self._live():
            from mlflow.entities import Param

            with self._timed():
                self._client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log numeric metrics at ``step``, each (metric, step) once per run: steps the run has are skipped."""
        if not self._live():
            return
        from mlflow.entities import Metric

        fresh = {key: float(value) for key, value in metrics.items() if step not in self._steps(key)}
        if not fresh:
            return
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in fresh.items()]
        with self._timed():
            # Queued, not sent: a slow or unreachable server never holds up a training step. The queue is
            # flushed when the run ends; verify_history() then fills in anything that never arrived.
            self._client.log_batch(self.run_id, metrics=batch, synchronous=self.synchronous)
        for key in fresh:
            self._logged[key].add(step)

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """Log one epoch's metrics at ``step=epoch``, plus ``tracking_blocked_seconds``: the seconds the training
        loop spent in tracking calls since the previous epoch was logged (what tracking cost this epoch).

        A lazy tracker whose MLflow is still loading behind the loop keeps the epoch and sends it once attached
        (at the next epoch, or the run's end) rather than waiting for it.
        """
        if self._lazy and self._warming is not None and self._warming.is_alive():
            self._held.append((epoch, {**values, TRACKING_BLOCKED: self.blocked_seconds - self._blocked_mark}))
            self._blocked_mark = self.blocked_seconds
            return
        if not self._live():  # this attaches a lazy tracker: that time counts as this epoch's
            return
        blocked = self.blocked_seconds - self._blocked_mark
        self.log_metrics({**values, TRACKING_BLOCKED: blocked}, step=epoch)
        self._blocked_mark = self.blocked_seconds

    def verify_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]:
        """Wait for queued metrics, re-read what the run holds and log what is still missing; returns those steps.

        The end of a training calls this with its checkpoint's history: whatever a server outage longer
        than the client's retries swallowed is logged again, so the run ends with every epoch.
        """
        if not self._live():
            return []
        self.flush()
        self._logged.clear()
        self._existing = True
        return self.log_history(history)

    def flush(self) -> None:
        """Wait until every queued metric has been sent (or given up on)."""
        if not self._live():
            return
        import mlflow

        try:
            mlflow.flush_async_logging()
        except Exception as exc:  # pragma: no cover - depends on the server
            log.warning("could not flush pending MLflow logs: %s", exc)

    def log_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]:
        """Log the epochs of a checkpoint's history that the run lacks (e.g. lost in a crash); returns them."""
        if not self._live():
            return []
        filled = []
        for step in sorted(history):
            if any(step not in self._steps(key) for key in history[step]):
                self.log_metrics(history[step], step=step)
                filled.append(step)
        return filled

    def tag_value(self, key: str) -> str | None:
        """The current value of one of the run's tags (None when unset or not tracking)."""
        if not self._live():
            return None
        return self._client.get_run(self.run_id).data.tags.get(key)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""
        if self._live():
            from mlflow.entities import RunTag

            try:
                with self._timed():
                    self._client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
            except Exception as exc:  # tags are best-effort while a run is being torn down
                log.warning("could not set tags %s: %s", sorted(tags), exc)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file of the run."""
        if self._live():
            with self._timed():
                self._client.log_text(self.run_id, text, artifact_file)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Store a table (column name -> values) as a JSON artifact the MLflow UI shows as a table."""
        if self._live():
            with self._timed():
                self._client.log_table(self.run_id, data=dict(columns), artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as an image artifact (e.g. ``confusion_matrix.png``)."""
        if self._live():
            with self._timed():
                self._client.log_figure(self.run_id, figure, artifact_file)

    def log_dataset(self, dataset: Any, context: str) -> None:
        """Record an ``mlflow.data`` dataset as an input of the run (the UI's Dataset column and lineage).

        Args:
            dataset: An ``mlflow.data.dataset.Dataset``.
            context: What the run used it for (the input's ``mlflow.data.context`` tag), e.g. ``training``.
        """
        if self._live():
            from mlflow.entities import DatasetInput, InputTag
            from mlflow.exceptions import MlflowException
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
            with self._timed():
                try:
                    self._client.log_inputs(self.run_id, datasets=[entry])
                except MlflowException as exc:
                    # Trainings that start at once record the same dataset. MLflow's SQL store looks the
                    # dataset up and then inserts it, so all but one of them can fail on its unique key
                    # (1 of 3 Ray jobs in CI; 18 of 60 in a 3-process test). Once one has inserted it, a second
                    # try finds that row and links it. A tracking server does this retry itself (HTTP 500).
                    if not _UNIQUE_KEY_CLASH.search(str(exc)):
                        raise
                    self._client.log_inputs(self.run_id, datasets=[entry])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a local file as an artifact."""
        if self._live():
            with self._timed():
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, model: Any, image_size: int, step: int | None = None, name: str = MODEL_NAME) -> str | None:
        """Log a PyTorch image classifier that accepts any batch size and image size; returns its URI.

        Saved pickled (``serialization_format="pickle"``): ``mlflow.pytorch.load_model`` returns the plain
        torchvision module — ``.eval()``, ``.to()``, fine-tuning all work — where MLflow 3's default, a
        ``torch.export`` graph, returns an ``fx.GraphModule`` whose ``.eval()`` raises. Measured here
        (MobileNetV2, 2 cores): 0.13-1.6 s to write against 6-7.6 s (20 s cold) for pt2, 0.02 s to load
        against 2 s. The price: unpickling runs code, so load only models from a registry you trust (your
        team's), as with any pickled PyTorch model. The signature declares batch and spatial dimensions
        dynamic (-1), so serving accepts any batch and image size.
        """
        if not self._live():
            return None
        import mlflow
        import numpy as np
        import torch
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        export_model = copy.deepcopy(model).to("cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
        export_model.eval()
        num_classes = int(export_model(torch.zeros(1, 3, 64, 64)).shape[-1])
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
        )
        # Zeros are the dataset mean after normalisation: a neutral example that stores compactly.
        example = np.zeros((2, 3, min(image_size, 64), min(image_size, 64)), dtype=np.float32)
        info = mlflow.pytorch.log_model(
            export_model,
            name=name,
            signature=signature,
            input_example=example,
            serialization_format="pickle",
            pip_requirements=_pip_requirements(),
            step=step or 0,
        )
        self.set_tags({BEST_MODEL_TAG: info.model_uri})
        return info.model_uri

    # --- helpers ------------------------------------------------------------------------------------------
    def _live(self) -> bool:
        if self._lazy:
            self._attach_lazily()
        return self.enabled and self._active

    def _steps(self, key: str) -> set[int]:
        """Steps of ``key`` the run holds: read once from MLflow for a pre-existing run, then kept up to date."""
        if key not in self._logged:
            known: Iterable[Any] = self._client.get_metric_history(self.run_id, key) if self._existing else ()
            self._logged[key] = {metric.step for metric in known}
        return self._logged[key]

    def _timed(self) -> _Stopwatch:
        return _Stopwatch(self)

    def _experiment_id(self, mlflow: Any) -> str:
        from mltrain.tracking.experiments import ensure_experiment

        try:
            experiment_id = ensure_experiment(self._client, self.experiment)
            return mlflow.set_experiment(experiment_id=experiment_id).experiment_id
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(
                f"could not open experiment {self.experiment!r} at {mlflow.get_tracking_uri()}: {exc}"
            ) from None


class _Stopwatch:
    """Adds the time spent in a ``with`` block to the tracker's ``blocked_seconds``."""

    def __init__(self, tracker: RunTracker) -> None:
        self.tracker = tracker
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.tracker.blocked_seconds += time.perf_counter() - self.started


def _pip_requirements() -> list[str]:
    # Listed explicitly: MLflow's inference would load the model in a subprocess at every improvement.
    import mlflow
    import torch
    import torchvision

    def release(version: str) -> str:
        return version.split("+", 1)[0]

    return [
        f"torch=={release(torch.__version__)}",
        f"torchvision=={release(torchvision.__version__)}",
        f"mlflow=={release(mlflow.__version__)}",
    ]


def _system_monitor(run_id: str, tracking_uri: str) -> Any:
    """MLflow's system-metrics monitor, logging at least one sample into the run however short the process.

    MLflow's monitor publishes after its sampling interval and drops what it holds when stopped, so a
    process that trains for less than the interval would leave no trace of its machine in the run. Steps go
    on from the run's last sample: a resumed training or a restarted Ray worker does not log step 0 again.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class AtLeastOnce(SystemMetricsMonitor):
        published = 0

        def publish_metrics(self, metrics: dict[str, float]) -> None:
            super().publish_metrics(metrics)
            self.published += 1

        def finish(self) -> None:
            super().finish()
            if self.published:
                return
            try:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()
            except Exception as exc:  # the run keeps its training metrics; only this sample is missing
                log.warning("could not log a system-metrics sample for run %s: %s", run_id, exc)

    return AtLeastOnce(run_id, resume_logging=True, tracking_uri=tracking_uri)
