"""Logging into a run that exists: :class:`RunLogger` attaches to it by id, logs, and never ends it.

A training process logs through a logger whatever owns the run: the process that started the training (its
:class:`~mltrain.tracking.owner.RunOwner` hands it one), a Ray Train worker (which attaches to its driver's run),
a resumed training. A process that must not log gets a :class:`~mltrain.tracking.runlog.NullLogger` instead.

Each (metric, step) is logged once per run, whatever restarts: a logger on a run that existed before it reads
which steps the run already has and skips them, so an epoch that a resumed training runs again, or a
checkpoint's history replayed by :meth:`RunLogger.log_history`, never appears twice.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from mltrain.errors import TrackingError
from mltrain.metrics import STARTUP, TRACKING_BLOCKED
from mltrain.tracking.store import open_client

log = logging.getLogger(__name__)

_UNIQUE_KEY_CLASH = re.compile(r"unique|duplicate", re.IGNORECASE)
"""How a SQL store's error reads when an insert hit a row another writer had just added (sqlite, PostgreSQL, MySQL)."""


class RunLogger:
    """Logs into the existing run ``run_id``; used as a context manager it attaches, then flushes and detaches.

    Args:
        run_id: The run to log into.
        tracking_uri: Its store; default MLflow's (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``).
        system_metrics: Sample this machine's CPU, memory and GPUs into the run while attached.
        fresh: The run was created just now and holds no metric yet: skip reading what it has.
        started_at: When the command started (``time.time()``): ``startup_seconds`` is logged from it and the
            first training batch (:meth:`training_started`) when the logger detaches.
        deferred: Attach only once MLflow has loaded behind the training loop: the load starts at the first batch
            (:meth:`training_started`), epochs that end before it is done are held and sent with the next, and the
            attach happens at the first call that needs it after that (the run's end at the latest) — so neither
            MLflow's import nor the store stands between the command and the first step, nor holds up an epoch.
    """

    def __init__(
        self,
        run_id: str,
        tracking_uri: str | None = None,
        *,
        system_metrics: bool = True,
        fresh: bool = False,
        started_at: float | None = None,
        deferred: bool = False,
    ) -> None:
        if not run_id:
            raise ValueError("a logger attaches to an existing run: its id is needed")
        self.run_id: str = run_id
        self.tracking_uri = tracking_uri
        self.system_metrics = system_metrics
        self.started_at = started_at
        self.blocked_seconds = 0.0
        """Seconds the caller spent inside logging calls (the time tracking held the training loop up)."""
        self.synchronous = False
        """Send metrics before returning (tests of the server path may want it); default: queue them."""
        self._fresh = fresh
        self._deferred = deferred
        self._on_attach: list[Callable[[], None]] = []
        self._warming: threading.Thread | None = None
        self._held: list[tuple[int, dict[str, float]]] = []
        self._first_batch: tuple[int, float] | None = None
        self._blocked_mark = 0.0
        self._logged: dict[str, set[int]] = {}
        self._client: Any = None
        self._monitor: Any = None

    # --- attaching -----------------------------------------------------------------------------------------
    def when_attached(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once attached: now, unless the logger is deferred and not attached yet."""
        if self._deferred:
            self._on_attach.append(callback)
        else:
            callback()

    def attach(self) -> RunLogger:
        """Open the run's store and check the run is there (TrackingError if not); start sampling the machine."""
        if self._client is not None:
            return self
        self._deferred = False
        with self._timed():
            if self._warming is not None:
                self._warming.join()
            client = open_client(self.tracking_uri)
            try:
                client.get_run(self.run_id)
            except Exception as exc:
                raise TrackingError(f"could not attach to run {self.run_id} at {client.tracking_uri}: {exc}") from None
            self._client = client
        if self.system_metrics:
            from mltrain.internals.mlflow import system_metrics_monitor

            self._monitor = system_metrics_monitor(str(self.run_id), client.tracking_uri)
            self._monitor.start()
        callbacks, self._on_attach = self._on_attach, []
        for callback in callbacks:
            callback()
        held, self._held = self._held, []
        for epoch, values in held:
            self.log_metrics(values, step=epoch)
        return self

    def close(self) -> None:
        """Log what is pending (a deferred logger attaches for it), stop sampling, wait until everything is sent."""
        self._live()
        if self._client is None:
            return
        if self._first_batch is not None and self.started_at is not None:
            epoch, at = self._first_batch
            try:
                self.log_metrics({STARTUP: at - self.started_at}, step=epoch)
            except Exception as exc:  # never in the way of the run's end
                log.warning("could not log %s: %s", STARTUP, exc)
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.flush()

    def __enter__(self) -> RunLogger:
        if not self._deferred:
            self.attach()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def training_started(self, epoch: int) -> None:
        """The loop has its first batch (in ``epoch``): a deferred logger now loads MLflow in the background.

        Not before: on a small machine that work would compete with building the model and the first batch.
        """
        if self._first_batch is None:
            self._first_batch = (epoch, time.time())
        if self._deferred and self._warming is None:
            self._warming = threading.Thread(target=self._warm_up, name="mltrain-mlflow-warm-up", daemon=True)
            self._warming.start()

    def _warm_up(self) -> None:
        try:
            from mltrain.internals.mlflow import import_system_metrics

            import_system_metrics()
            open_client(self.tracking_uri).get_run(self.run_id)  # opens the store: a sqlite schema check
        except Exception as exc:  # attaching reports what is wrong
            log.debug("warming up MLflow failed: %s", exc)

    def _live(self) -> bool:
        """Attach if this is the first call that needs the run (a deferred logger); True when attached."""
        if self._client is None:
            self.attach()
        return True

    # --- logging ---------------------------------------------------------------------------------------------
    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """Log one epoch's metrics at ``step=epoch``, plus ``tracking_blocked_seconds``: the seconds the training
        loop spent in tracking calls since the previous epoch was logged (what tracking cost this epoch).

        A deferred logger whose MLflow is still loading behind the loop keeps the epoch and sends it once attached
        (at the next epoch, or the run's end) rather than waiting for it.
        """
        if self._client is None and self._warming is not None and self._warming.is_alive():
            self._held.append((epoch, {**values, TRACKING_BLOCKED: self.blocked_seconds - self._blocked_mark}))
            self._blocked_mark = self.blocked_seconds
            return
        self._live()  # attaching now: that time counts as this epoch's
        blocked = self.blocked_seconds - self._blocked_mark
        self.log_metrics({**values, TRACKING_BLOCKED: blocked}, step=epoch)
        self._blocked_mark = self.blocked_seconds

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log numeric metrics at ``step``, each (metric, step) once per run: steps the run has are skipped."""
        self._live()
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

    def log_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]:
        """Log the epochs of a checkpoint's history that the run lacks (e.g. lost in a crash); returns them."""
        self._live()
        filled = []
        for step in sorted(history):
            if any(step not in self._steps(key) for key in history[step]):
                self.log_metrics(history[step], step=step)
                filled.append(step)
        return filled

    def verify_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]:
        """Wait for queued metrics, re-read what the run holds and log what is still missing; returns those steps.

        The end of a training calls this with its checkpoint's history: whatever a server outage longer
        than the client's retries swallowed is logged again, so the run ends with every epoch.
        """
        self.flush()
        self._logged.clear()
        self._fresh = False
        return self.log_history(history)

    def flush(self) -> None:
        """Wait until every queued metric has been sent (or given up on)."""
        if self._client is None:
            return
        import mlflow

        try:
            mlflow.flush_async_logging()
        except Exception as exc:  # pragma: no cover - depends on the server
            log.warning("could not flush pending MLflow logs: %s", exc)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (all at once; values become strings)."""
        self._live()
        from mlflow.entities import Param

        with self._timed():
            self._client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def tag_value(self, key: str) -> str | None:
        """The current value of one of the run's tags (None when unset)."""
        self._live()
        return self._client.get_run(self.run_id).data.tags.get(key)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (best effort: a failure is a warning, tags are set while a run may be torn down)."""
        self._live()
        from mlflow.entities import RunTag

        try:
            with self._timed():
                self._client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])
        except Exception as exc:
            log.warning("could not set tags %s: %s", sorted(tags), exc)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file of the run."""
        self._live()
        with self._timed():
            self._client.log_text(self.run_id, text, artifact_file)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Store a table (column name -> values) as a JSON artifact the MLflow UI shows as a table."""
        self._live()
        with self._timed():
            self._client.log_table(self.run_id, data=dict(columns), artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Store a matplotlib figure as an image artifact (e.g. ``confusion_matrix.png``)."""
        self._live()
        with self._timed():
            self._client.log_figure(self.run_id, figure, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Upload a local file as an artifact."""
        self._live()
        with self._timed():
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, dataset: Any, context: str) -> None:
        """Record an ``mlflow.data`` dataset as an input of the run (the UI's Dataset column and lineage).

        Args:
            dataset: An ``mlflow.data.dataset.Dataset``.
            context: What the run used it for (the input's ``mlflow.data.context`` tag), e.g. ``training``.
        """
        self._live()
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        described = dataset.to_dict()
        entity = Dataset(**{key: described.get(key) for key in _DATASET_FIELDS})
        entry = DatasetInput(entity, tags=[InputTag(_DATASET_CONTEXT_TAG, context)])
        with self._timed():
            try:
                self._client.log_inputs(self.run_id, datasets=[entry])
            except MlflowException as exc:
                # Trainings that start at once record the same dataset. MLflow's SQL store looks the dataset up
                # and then inserts it, so all but one of them can fail on its unique key (1 of 3 Ray jobs in CI;
                # 18 of 60 in a 3-process test). Once one has inserted it, a second try finds that row and links
                # it. A tracking server does this retry itself (HTTP 500).
                if not _UNIQUE_KEY_CLASH.search(str(exc)):
                    raise
                self._client.log_inputs(self.run_id, datasets=[entry])

    # --- helpers --------------------------------------------------------------------------------------------
    def _steps(self, key: str) -> set[int]:
        """Steps of ``key`` the run holds: read once from MLflow for a run that existed, then kept up to date."""
        if key not in self._logged:
            known: Iterable[Any] = () if self._fresh else self._client.get_metric_history(self.run_id, key)
            self._logged[key] = {metric.step for metric in known}
        return self._logged[key]

    def _timed(self) -> _Stopwatch:
        return _Stopwatch(self)


_DATASET_FIELDS = ("name", "digest", "source_type", "source", "schema", "profile")
"""The fields of MLflow's dataset entity (``mlflow.entities.Dataset``), as a dataset's public ``to_dict()`` names
them."""
_DATASET_CONTEXT_TAG = "mlflow.data.context"
"""The input tag the MLflow UI reads a dataset's role from (``mlflow.log_input``'s ``context``)."""


class _Stopwatch:
    """Adds the time spent in a ``with`` block to the logger's ``blocked_seconds``."""

    def __init__(self, owner: RunLogger) -> None:
        self.owner = owner
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.owner.blocked_seconds += time.perf_counter() - self.started
