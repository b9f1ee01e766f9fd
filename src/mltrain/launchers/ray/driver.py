"""The driver of a Ray training: starts Ray Train's workers for the run it owns, waits, brings the checkpoint back.

The driver (the process that called ``train()``) created the MLflow run before any worker starts. It tags the
run (Ray run name, storage, workers, resources), and after Ray Train returns — finished, failed beyond
``max_failures``, or interrupted — it brings the latest checkpoint back to ``outputs/<run_id>/`` (so ``--resume``
works and the best model is logged from it). The run's owner then ends the run: never RUNNING.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mltrain import metrics
from mltrain.engines.common import FitResult
from mltrain.errors import TrainingFailed
from mltrain.interrupts import call_interruptibly
from mltrain.launchers.base import FitJob
from mltrain.launchers.ray import tags
from mltrain.launchers.ray.options import RayOptions
from mltrain.launchers.ray.placement import PlacementWatch
from mltrain.launchers.ray.storage import bring_back, run_name, storage_for, upload_initial

_KEEP_CHECKPOINTS = 3


def fit(job: FitJob, options: RayOptions, callbacks: Sequence[Any] = ()) -> FitResult:
    """Run ``job`` on Ray Train workers and wait for it (inside :func:`~mltrain.launchers.ray.session.ray_session`).

    Args:
        job: The training; its ``tracker`` is the driver's (it owns the run), its ``folder`` is where the latest
            checkpoint is brought back whatever the outcome.
        options: Workers, resources, failover, storage.
        callbacks: Extra Ray Train ``RunConfig`` callbacks (``mltrain tune`` forwards each epoch to Tune).
    """
    from ray.exceptions import RayError
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from mltrain.internals.ray import quiet_worker_prints
    from mltrain.launchers.ray.worker import train_loop_per_worker

    config, folder, run = job.config, job.folder, job.run
    if run is None:
        raise ValueError("a Ray training needs its run: its rank-0 worker logs into it")
    quiet_worker_prints()
    storage_path, filesystem, storage_uri = storage_for(options.storage, config.output_dir)
    name = run_name(run.run_id, resumed=job.resume is not None)
    initial = upload_initial(job.resume["folder"], storage_path, filesystem, name) if job.resume else None
    job.tracker.set_tags(
        {
            tags.RUN_NAME_TAG: name,
            tags.STORAGE_TAG: f"{storage_uri}/{name}",
            tags.WORKERS_TAG: options.workers_text(),
            tags.RESOURCES_TAG: ", ".join(f"{k}={v:g}" for k, v in options.per_worker().items()),
            tags.ATTEMPTS_TAG: "0",
            tags.RESTARTS_TAG: "0",
        }
    )
    use_gpu = options.gpus_per_worker > 0
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(),
            "run_id": run.run_id,
            "experiment": run.experiment,
            "tracking_uri": run.tracking_uri,
            "data_dir": str(job.data.root.resolve()) if job.data.root.is_dir() else str(job.data.root),
            "initial": initial,
            "filesystem": filesystem,
            "record_dataset": not job.data.splits,  # the driver did not see the data folder: rank 0 records it
        },
        scaling_config=_scaling(options, use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=options.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=_KEEP_CHECKPOINTS),
            # not a line per report and checkpoint (ray.train's classes are Train V2's at run time; mypy sees V1's)
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            callbacks=list(callbacks) or None,
        ),
        # gloo unless the workers really train on GPUs: logical GPUs (tests, CPU-only clusters) have no NCCL.
        torch_config=TorchConfig(backend="nccl" if use_gpu and config.accelerator != "cpu" else "gloo"),
    )
    workers = f"{options.workers_text()} worker(s){' (elastic)' if options.elastic else ''}"
    print(f"Ray Train run {name}: {workers}, checkpoints in {storage_uri}/{name}", flush=True)
    try:
        result = _fit_interruptibly(trainer, PlacementWatch(options, job.tracker))
    except BaseException as exc:
        kept = bring_back(f"{storage_path}/{name}", filesystem, folder)
        if isinstance(exc, (TrainingFailedError, RayError)):  # Ray's own errors: restarts used up, a lost actor
            where = (
                f"the last checkpoint is in {folder} — continue with: mltrain train --resume {folder}"
                if kept
                else "no epoch had finished, so there is no checkpoint"
            )
            raise TrainingFailed(f"Ray Train gave up after {options.max_failures} restart(s): {exc}\n{where}") from exc
        raise
    if result.checkpoint is not None:
        result.checkpoint.to_directory(str(folder))
    return _fit_result(result.metrics or {}, folder)


def _fit_result(final: dict[str, Any], folder: Path) -> FitResult:
    """What the workers' final report says (the rank-0 worker's test numbers, summed confusion matrix)."""
    return FitResult(
        epochs_run=int(final.get("epochs_run", 0)),
        best_epoch=int(final.get("best_epoch", -1)),
        best_val_loss=float(final.get("best_val_loss", float("nan"))),
        test_loss=float(final.get(metrics.TEST_LOSS, float("nan"))),
        test_accuracy=float(final.get(metrics.TEST_ACCURACY, float("nan"))),
        stopped_early=bool(final.get("stopped_early", False)),
        checkpoint=folder / "checkpoint.pt",
        confusion=json.loads(final["confusion"]) if final.get("confusion") else None,
    )


def _fit_interruptibly(trainer: Any, watch: PlacementWatch) -> Any:
    """``trainer.fit()`` in a thread, so that Ctrl+C and SIGTERM reach this (main) thread at once.

    In the main thread, ``fit`` would block in ``ray.get``, where a SIGTERM turned into an exception is
    swallowed, and Ray Train's own Ctrl+C handler asks the controller to abort — which a controller still
    waiting for its workers' resources only hears after up to a minute. Here the main thread waits in
    Python; on an interrupt it stops the Train controller (its workers share its fate), waits for ``fit``
    to return, and re-raises, so the run's owner ends the run KILLED. In a Tune trial signals belong to Tune.
    """
    from mltrain.internals.ray import kill_train_controllers

    stop = threading.Event()
    threading.Thread(target=watch.run, args=(stop,), name="ray-placement-watch", daemon=True).start()
    if threading.current_thread() is not threading.main_thread():
        try:
            return trainer.fit()
        finally:
            stop.set()

    def on_interrupt(thread: threading.Thread) -> None:
        kill_train_controllers()
        thread.join(timeout=60)  # fit returns once its controller is gone

    try:
        return call_interruptibly(trainer.fit, "ray-train-fit", on_interrupt)
    finally:
        stop.set()


def _scaling(options: RayOptions, use_gpu: bool) -> Any:
    """Ray's ScalingConfig: a fixed group, or (elastic) a (min, max) range with a resize monitor."""
    from ray.train import ScalingConfig

    # ray.train's ScalingConfig is Train V2's at run time (a (min, max) range, the resize monitor); mypy sees V1's.
    return ScalingConfig(
        num_workers=(options.fewest_workers, options.workers) if options.elastic else options.workers,  # type: ignore[arg-type]
        elastic_resize_monitor_interval_s=options.resize_interval,  # type: ignore[call-arg]
        use_gpu=use_gpu,
        resources_per_worker=options.per_worker(),
    )
