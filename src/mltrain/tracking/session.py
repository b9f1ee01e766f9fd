"""The seam between training and MLflow: start or re-attach a run, log, end it — from rank 0 only.

Every engine talks to MLflow through :class:`RunTracker`, so that a local run, a Lightning run and
(later) a Ray Train worker log the same things the same way. Used as a context manager it ends the
run FINISHED, KILLED (Ctrl+C, SIGTERM) or FAILED (an exception) — a run is never left RUNNING.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from mltrain.errors import TrackingError, TrainingInterrupted
from mltrain.metrics import EXPERIMENT, MODEL_NAME

log = logging.getLogger(__name__)

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
        system_metrics: Sample CPU/memory/GPU into the run while it is open.
        tags: Extra tags for the run.
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
    ) -> None:
        self.experiment = experiment
        # Only an explicit URI is set globally; otherwise MLflow reads MLFLOW_TRACKING_URI itself.
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.run_name = run_name
        self.enabled = enabled
        self.system_metrics = system_metrics
        self.tags = dict(tags or {})
        self.parent_run_id: str | None = None
        self._owns_run = False
        self._active = False

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> str | None:
        """Start (or re-attach to) the run; returns its id. Nested under a run already active here."""
        if not self.enabled:
            return self.run_id
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
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
                log_system_metrics=self.system_metrics,
                tags=self.tags or None,
            )
        except mlflow.exceptions.MlflowException as exc:
            target = f"run {self.run_id}" if self.run_id else f"a run in experiment {self.experiment!r}"
            raise TrackingError(f"could not start {target} at {mlflow.get_tracking_uri()}: {exc}") from None
        self.run_id = run.info.run_id
        self._owns_run = True
        self._active = True
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        """Flush pending logs and end the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if not (self.enabled and self._active):
            return
        import mlflow

        self._active = False
        try:
            mlflow.flush_async_logging()
        except Exception as exc:  # pragma: no cover - depends on the server
            log.warning("could not flush pending MLflow logs: %s", exc)
        if not self._owns_run:
            return
        try:
            mlflow.end_run(status=status)
        except Exception as exc:
            # Ending must not hide the training's own outcome; the run id is printed for a retry.
            log.error("could not end MLflow run %s as %s: %s", self.run_id, status, exc)

    def __enter__(self) -> RunTracker:
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
        self.set_tags({"mltrain.end_reason": "error", "mltrain.error": f"{exc_type.__name__}: {exc}"[:4000]})
        self.end("FAILED")

    # --- logging ----------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (all at once; values become strings)."""
        if self._live():
            import mlflow

            mlflow.log_params(dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step``."""
        if self._live():
            import mlflow

            mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""
        if self._live():
            import mlflow

            try:
                mlflow.set_tags(dict(tags))
            except Exception as exc:  # tags are best-effort while a run is being torn down
                log.warning("could not set tags %s: %s", sorted(tags), exc)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file of the run."""
        if self._live():
            import mlflow

            mlflow.log_text(text, artifact_file)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a local file as an artifact."""
        if self._live():
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def log_model(self, model: Any, image_size: int, step: int | None = None, name: str = MODEL_NAME) -> str | None:
        """Log a PyTorch image classifier that accepts any batch size and image size; returns its URI.

        MLflow 3 saves PyTorch models as ``torch.export`` graphs, traced on the input example; the
        batch and spatial dimensions are declared dynamic (-1) in the signature so the graph keeps
        them symbolic. The example has batch 2 because export specialises size-1 dimensions.
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
            serialization_format="pt2",
            pip_requirements=_pip_requirements(),
            step=step or 0,
        )
        self.set_tags({BEST_MODEL_TAG: info.model_uri})
        return info.model_uri

    # --- helpers ------------------------------------------------------------------------------------------
    def _live(self) -> bool:
        return self.enabled and self._active

    def _experiment_id(self, mlflow: Any) -> str:
        try:
            return mlflow.set_experiment(self.experiment).experiment_id
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(
                f"could not open experiment {self.experiment!r} at {mlflow.get_tracking_uri()}: {exc}"
            ) from None


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
