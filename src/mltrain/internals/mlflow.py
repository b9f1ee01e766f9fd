"""What mltrain takes from MLflow beyond its documented API. ``tests/unit/test_internals.py`` checks each use
against the installed MLflow. MLflow is imported inside the functions only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.data.dataset_source import DatasetSource

log = logging.getLogger(__name__)

LOCAL_SOURCE_TYPE = "local"
"""The ``source_type`` MLflow records for a dataset source on the local filesystem."""


def local_dataset_source(folder: Path) -> DatasetSource:
    """MLflow's dataset source for a local folder, as ``mlflow.log_input`` records it.

    MLflow documents no constructor for it: its class is generated per artifact-repository scheme and reached
    only through ``mlflow.data.dataset_source_registry.resolve_dataset_source``, an undocumented module, which
    also warns that two registered sources claim plain paths. The documented ``mlflow.data.get_source``
    rebuilds a source from a recorded dataset (``mlflow.entities.Dataset``) instead, so the source is built
    from its recorded form: type ``local`` and ``{"uri": path}``, what every run that logged a local
    dataset stores (MLflow must keep reading it).
    """
    import mlflow.data
    from mlflow.entities import Dataset

    recorded = Dataset(
        name=folder.name, digest="", source_type=LOCAL_SOURCE_TYPE, source=json.dumps({"uri": str(folder.resolve())})
    )
    return mlflow.data.get_source(recorded)


def context_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` plus the context tags ``mlflow.start_run`` gives a new run (source name and type, user, git commit).

    ``mlflow.start_run`` is the public way to get them, but it also makes the run MLflow's *active* run in this
    process (stacked on a notebook's or a search's) — mltrain's run owners create runs through the client and
    leave the active run alone, so they ask the same context registry ``start_run`` asks.
    """
    from mlflow.tracking.context import registry

    resolved: dict[str, str] = registry.resolve_tags(tags)
    return resolved


def warm_up_imports(sql_store: bool) -> None:
    """Import what creating a run will need ahead of time: the context providers (git), and with ``sql_store``
    MLflow's SQL store (for a sqlite database not created yet, which opening would create).

    The start-up helper (``mltrain.tracking.starter``) does this while the training imports torch, so that the run
    is created in milliseconds when asked; without it, the imports would land on that moment instead.
    """
    if sql_store:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from mlflow.tracking.context import registry

    registry.resolve_tags({})


def import_system_metrics() -> None:
    """Import MLflow's system-metrics monitor (the slow part of attaching a logger), e.g. in a background thread."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # noqa: F401


def system_metrics_monitor(run_id: str, tracking_uri: str) -> Any:
    """MLflow's system-metrics monitor for run ``run_id``, logging at least one sample however short the process.

    The public switch (``mlflow.start_run(log_system_metrics=True)``) samples only a run that this process started
    as its active run; a Ray Train worker, or a run owner that works through the client, samples a run it attached
    to by id, which only the monitor class itself does. MLflow's monitor publishes after its sampling interval
    and drops what it holds when stopped, so a process that trains for less than the interval would leave no
    trace of its machine: :meth:`finish` publishes once if nothing was. Steps go on from the run's last sample
    (``resume_logging``): a resumed training or a restarted Ray worker does not log step 0 again.
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


LIGHTNING_AUTOLOG_MODULE = "mlflow.pytorch._lightning_autolog"
"""The module ``mlflow.pytorch`` imports at its end, inside ``try: ... except ImportError``, for its Lightning
autologging callback. It imports ``pytorch_lightning`` (installed with ``lightning``): 2-9 s of CPU on a 2-core
machine in every process that logs or loads a model, none of which uses MLflow's Lightning autologging."""


def skip_lightning_autolog_import() -> None:
    """Make ``import mlflow.pytorch`` skip its Lightning autologging module (see ``LIGHTNING_AUTOLOG_MODULE``).

    A module set to None in ``sys.modules`` raises ImportError on import, which ``mlflow.pytorch`` catches: it then
    lacks ``MlflowModelCheckpointCallback`` and Lightning autologging, which mltrain does not use (its trackers log
    each epoch once, also after a resume). Only the ``mltrain`` command calls this, before anything imports
    ``mlflow.pytorch``: a notebook that imports mltrain keeps all of MLflow. No public switch does it.
    """
    import sys

    sys.modules.setdefault(LIGHTNING_AUTOLOG_MODULE, None)  # type: ignore[arg-type]
