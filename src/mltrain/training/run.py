"""Running a planned training: its MLflow run, the launcher's fit, what the run records, the result.

The process that runs this owns the training's MLflow run (:class:`~mltrain.tracking.owner.RunOwner`): it creates
it (or takes it over when resuming) only after :func:`~mltrain.training.plan.check_before_run`, and ends it
however the training ends. A data-parallel rank other than 0 (Lightning re-runs the command for those) runs the
same training with a :class:`~mltrain.tracking.logger.NullLogger` and owns nothing.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mltrain import env, metrics
from mltrain.errors import ConfigError
from mltrain.interrupts import resume_hint_on_interrupt, sigterm_as_exception
from mltrain.launchers import FitJob, RunRef
from mltrain.tracking.logger import RunLogger
from mltrain.tracking.owner import RunOwner, RunSpec
from mltrain.tracking.runlog import NullLogger, RunLog
from mltrain.tracking.store import absolute_tracking_uri, current_tracking_uri
from mltrain.training.finish import finalize_run
from mltrain.training.plan import TrainPlan, check_before_run
from mltrain.training.result import TrainResult

RESUMES_TAG = "mltrain.resumes"
"""Run tag: how many times the training was resumed; ``mltrain.resume.<n>`` says what changed the n-th time."""


def run_training(
    plan: TrainPlan, spec: RunSpec, *, progress: bool = True, launched_at: float | None = None
) -> TrainResult:
    """Check, then train ``plan`` in the run ``spec`` describes; see :func:`mltrain.training.train`.

    Args:
        plan: The resolved training.
        spec: Its run: experiment, store, name, parent, tags — or an existing run with no epoch yet to train in.
        progress: Show progress bars.
        launched_at: When the command started (``time.time()``): where ``startup_seconds`` counts from; default:
            this call.
    """
    if spec.run_id is not None and plan.checkpoint is not None:
        raise ConfigError("run_id starts an existing run from scratch; resume continues a checkpoint's run: not both")
    started = time.perf_counter()
    launched = time.time() if launched_at is None else launched_at
    # Lightning's DDP launcher re-runs this call for ranks 1..N-1 with its rank variables set: read them once,
    # here; below, the rank travels explicitly (as the logger each process gets).
    rank_zero = env.is_rank_zero()
    starter = _run_starter(plan, spec) if rank_zero else None
    try:
        check_before_run(plan)
        with plan.launcher.session():
            if not rank_zero:
                return _train_without_run(plan, spec, progress, started)
            return _train(plan, spec, progress, starter, launched=launched, started=started)
    finally:
        if starter is not None:
            starter.close()  # it exits; without a run, if the training stopped before creating one


def _run_starter(plan: TrainPlan, spec: RunSpec) -> Any:
    """A helper process that opens MLflow while this one imports torch, to create the new run on request.

    Only where it takes MLflow's import off the way to the first training step: a new run trained in this
    process, in a process that has not imported MLflow yet (one that has may also have a run active, or a
    tracking URI set in code, which only it knows). See :mod:`mltrain.tracking.starter`.
    """
    existing_run = plan.checkpoint is not None or spec.run_id is not None
    if existing_run or not plan.launcher.trains_here or "mlflow" in sys.modules:
        return None
    from mltrain.tracking.starter import RunStarter

    return RunStarter(spec.experiment, spec.tracking_uri)


def _data(plan: TrainPlan, progress: bool) -> Any:
    """The data, set up: data problems surface here, before any MLflow run exists. A Ray driver may not see the
    data (it can be on the workers' nodes only): then the workers check it."""
    from mltrain.data.module import Food11Data

    data = Food11Data(plan.data_dir, plan.config, progress=progress)
    if plan.launcher.trains_here or data.root.is_dir():
        data.setup()
    return data


def _owner(plan: TrainPlan, spec: RunSpec, starter: Any, launched: float) -> RunOwner:
    """The run's owner: of a run the helper creates now (its MLflow is open by now), of the resumed run, or of a
    new run created in this process."""
    from mltrain.tracking.records import source_tags

    here = plan.launcher.trains_here
    started_at = launched if here else None  # startup_seconds: where the engine's first batch happens
    if plan.checkpoint is not None or spec.run_id is not None:
        existing = dataclasses.replace(spec, run_id=plan.run_id or spec.run_id)
        return RunOwner(existing, system_metrics=here, started_at=started_at)
    tags = {**source_tags(), **plan.launcher.tags(plan.config), **spec.tags}
    if starter is None:
        return RunOwner(dataclasses.replace(spec, tags=tags), system_metrics=here, started_at=started_at)
    created = starter.create(tags, spec.run_name, spec.parent_run_id)
    return RunOwner(
        dataclasses.replace(spec, run_id=created.run_id),
        system_metrics=here,
        fresh=True,
        deferred=True,  # this process attaches once MLflow has loaded behind the training loop
        experiment_id=created.experiment_id,
        started_at=started_at,
    )


def _train(
    plan: TrainPlan, spec: RunSpec, progress: bool, starter: Any, *, launched: float, started: float
) -> TrainResult:
    """Data, run, launcher, records, result (rank 0: this process owns the run)."""
    from mltrain.evaluation import record_class_report

    config = plan.config
    data = _data(plan, progress)
    owner = _owner(plan, spec, starter, launched)
    with (
        sigterm_as_exception(),
        owner,
        resume_hint_on_interrupt(lambda: owner.run_id, lambda: plan.folder(owner.run_id)),
    ):
        folder = plan.folder(owner.run_id)
        run = RunRef(str(owner.run_id), spec.experiment, absolute_tracking_uri(current_tracking_uri(spec.tracking_uri)))
        _record_start(owner.logger, plan, data, folder)
        class_report = None
        try:
            result = plan.launcher.fit(FitJob(config, data, owner.logger, folder, plan.checkpoint, progress, run))
            if result.confusion is not None:
                step = max(result.epochs_run - 1, 0)
                class_report = record_class_report(owner.logger, result.confusion, step=step)
        finally:
            # However the training ends, the run gets its best model and every epoch before it is closed.
            model_uri = finalize_run(owner, folder, quiet=sys.exc_info()[0] is not None)
    from mltrain.tracking.webui import run_url

    uri = _final_tracking_uri()
    class_accuracy = (
        dict(zip(class_report.class_names, class_report.recall.tolist(), strict=True)) if class_report else {}
    )
    return TrainResult(
        run_id=owner.run_id,
        experiment=spec.experiment,
        tracking_uri=uri,
        test_accuracy=result.test_accuracy,
        test_loss=result.test_loss,
        best_val_loss=result.best_val_loss,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        model_uri=model_uri,
        checkpoint=result.checkpoint,
        skipped_images=data.skipped_images,
        wall_seconds=time.perf_counter() - started,
        class_accuracy=class_accuracy,
        run_url=run_url(uri, owner.experiment_id, owner.run_id) if owner.run_id else None,
    )


def _train_without_run(plan: TrainPlan, spec: RunSpec, progress: bool, started: float) -> TrainResult:
    """A data-parallel rank other than 0: the same training, logging nothing (rank 0 owns the run)."""
    data = _data(plan, progress)
    # A new run's folder is known to rank 0 only: the engine takes it from there (Lightning broadcasts it).
    folder = plan.folder(plan.run_id)
    with sigterm_as_exception():
        result = plan.launcher.fit(FitJob(plan.config, data, NullLogger(), folder, plan.checkpoint, progress, None))
    return TrainResult(
        run_id=None,
        experiment=spec.experiment,
        tracking_uri=_final_tracking_uri(),
        test_accuracy=result.test_accuracy,
        test_loss=result.test_loss,
        best_val_loss=result.best_val_loss,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        model_uri=None,
        checkpoint=result.checkpoint,
        skipped_images=data.skipped_images,
        wall_seconds=time.perf_counter() - started,
    )


def _final_tracking_uri() -> str:
    import mlflow  # loaded by now (behind the loop, or by the model's log): not before, off the first step's way

    return str(mlflow.get_tracking_uri())


def _record_start(tracker: RunLogger, plan: TrainPlan, data: Any, folder: Path) -> None:
    """What a run records before training: params, host, config (a new run) or what a resume changed; the data.

    The folder's ``config.yaml`` is written now; the rest goes to MLflow once the logger is attached.
    """
    from mltrain.tracking.records import record_dataset
    from mltrain.tracking.sysinfo import gpu_info_text

    config = plan.config
    config_file = config.save_yaml(folder / metrics.CONFIG_ARTIFACT)

    def record() -> None:
        if plan.checkpoint is not None:
            _record_resume(tracker, plan.changes)
        else:
            tracker.log_params({**config.to_params(), **plan.launcher.params()})
            if plan.launcher.trains_here:  # else the launcher's rank-0 process records its own machine
                tracker.log_text(gpu_info_text(), metrics.GPU_INFO_ARTIFACT)
            tracker.log_artifact(str(config_file))
            if data.splits:
                tracker.log_metrics({metrics.SKIPPED_IMAGES: data.skipped_images}, step=0)
        if data.splits:  # else (a Ray driver that does not see the data) the rank-0 worker records it
            record_dataset(tracker, data)

    tracker.when_attached(record)


def _record_resume(tracker: RunLog, changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Tags: params cannot change in MLflow, so what a resume changed is written down as the n-th resume."""
    count = int(tracker.tag_value(RESUMES_TAG) or 0) + 1
    described = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changes.items()) or "no changes"
    tracker.set_tags({RESUMES_TAG: str(count), f"mltrain.resume.{count}": described})
