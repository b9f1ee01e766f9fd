"""``train()``: the Python API behind ``mltrain train`` — checks, data, MLflow run, engine, summary.

The process that calls :func:`train` owns the training's MLflow run: it creates it (or re-attaches to it
when resuming) only after everything that can be checked has been — config, checkpoint, data, device —
so a mistake leaves no run behind and a resume that cannot start leaves its run exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mltrain
from mltrain import env, metrics
from mltrain.config import TrainConfig, resolve_resume
from mltrain.errors import ConfigError, TrainingInterrupted

log = logging.getLogger(__name__)

RESUMES_TAG = "mltrain.resumes"
"""Run tag: how many times the training was resumed; ``mltrain.resume.<n>`` says what changed the n-th time."""


@dataclass
class TrainResult:
    """A finished training: where it was logged and how well the model did."""

    run_id: str | None
    experiment: str
    tracking_uri: str
    test_accuracy: float
    test_loss: float
    best_val_loss: float
    """The lowest validation loss of the fine-tuning phase (the epoch whose weights were kept and tested)."""
    epochs_run: int
    stopped_early: bool
    model_uri: str | None
    checkpoint: Path
    skipped_images: int
    wall_seconds: float
    class_accuracy: dict[str, float] = field(default_factory=dict)
    """Test accuracy of each class (its recall); NaN for a class without test images."""
    run_url: str | None = None
    """The run in the web app's model-training view, when the store has one reachable now (a tracking server,
    or a running ``mltrain ui``)."""

    def summary(self) -> str:
        """A few lines for people: run, accuracy, weakest classes, model location, how to look at it."""
        if self.run_id is None:  # a DDP worker (rank > 0); rank 0 prints the run
            return "worker process finished; rank 0 logged the run"
        lines = [
            f"run {self.run_id} in experiment '{self.experiment}' FINISHED after {self.epochs_run} epoch(s)"
            f"{' (early stop)' if self.stopped_early else ''} in {self.wall_seconds:.0f}s",
            f"test_accuracy {self.test_accuracy:.4f}  test_loss {self.test_loss:.4f}  "
            f"best fine-tune val_loss {self.best_val_loss:.4f}  skipped images {self.skipped_images}",
        ]
        weakest = sorted((value, name) for name, value in self.class_accuracy.items() if not math.isnan(value))[:3]
        if weakest:
            listed = ", ".join(f"{name} {value:.2f}" for value, name in weakest)
            lines.append(f"weakest classes: {listed} (per class: per_class.json, confusion_matrix.png)")
        lines += [
            f"model:      {self.model_uri}",
            f"checkpoint: {self.checkpoint}",
            f"tracking:   {self.tracking_uri}",
        ]
        if self.run_url:
            lines.append(f"the run:    {self.run_url}")
        elif self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
            lines.append("open the UI: mltrain ui")
        else:
            lines.append(f"open the UI: {self.tracking_uri}")
        return "\n".join(lines)


@dataclass
class ResumeHint:
    """Attached to an interrupt that stopped a training (``exc.resume_hint``): how to continue it."""

    run_id: str
    folder: Path

    def __str__(self) -> str:
        return (
            f"run {self.run_id} ended KILLED; its checkpoint is in {self.folder}\n"
            f"continue it with: mltrain train --resume {self.folder}"
        )


@dataclass
class _Plan:
    """Everything decided before any MLflow run is touched."""

    config: TrainConfig
    changes: dict[str, tuple[Any, Any]]
    checkpoint: dict[str, Any] | None
    data_dir: Path


def train(
    config: TrainConfig | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    config_file: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    experiment: str = metrics.EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    address: str | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    launched_at: float | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Train a Food-11 classifier and track it in MLflow.

    The config is ``config`` (default: the lab's defaults), then ``config_file``, then ``overrides``. When
    resuming, it starts from the checkpoint's config instead, and only the keys in
    :data:`mltrain.config.CHANGEABLE_ON_RESUME` may differ from it (ConfigError otherwise).

    Args:
        config: The configuration, or None for the defaults (or, when resuming, the checkpoint's).
        overrides: ``key=value`` strings or a mapping applied on top, e.g. ``{"total_epochs": 12}``.
        config_file: A YAML file of config keys applied before ``overrides``.
        data_dir: Food-11 folder; default: when resuming, the checkpoint's; else ``FOOD11_DATA_DIR`` or
            ``./Food-11``.
        experiment: MLflow experiment name.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        run_name: Name for a new run.
        resume: A checkpoint folder (or its ``checkpoint.pt``, or a run id under ``output_dir``) to
            continue, in its own MLflow run: the next epochs run exactly as they would have without the stop.
        address: engine=ray: the Ray cluster to join; default ``RAY_ADDRESS``, else the cluster of
            ``mltrain cluster up``, else a Ray instance embedded in this process.
        progress: Show progress bars.
        parent_run_id: Nest a new run under this run (e.g. a Tune trial's under its search's run).
        tags: Extra tags for a new run (e.g. the Tune trial it belongs to).
        launched_at: When the command started (``time.time()``): where ``startup_seconds`` counts from;
            default: this call.
        run_id: Train from the start in this existing run, which holds no epoch yet, instead of a new run
            (a Tune trial retried after its first attempt was lost before its first epoch).
    """
    if run_id is not None and resume is not None:
        raise ConfigError("run_id starts an existing run from scratch; resume continues a checkpoint's run: not both")
    started = time.perf_counter()
    launched = time.time() if launched_at is None else launched_at
    plan = _plan(config, overrides, config_file, data_dir, resume)
    # Lightning's DDP launcher re-runs this call for ranks 1..N-1 with its rank variables set: read them
    # once, here; below, the rank travels explicitly (the tracker is enabled on rank 0 only).
    rank_zero = env.is_rank_zero()
    run = _RunSpec(experiment, tracking_uri, run_name, parent_run_id, dict(tags or {}), run_id)
    starter = _run_starter(plan, run, rank_zero)
    try:
        _check_before_run(plan)
        with _launcher(plan.config, address):
            return _run(plan, run, progress, rank_zero, starter, launched=launched, started=started)
    finally:
        if starter is not None:
            starter.close()  # it exits; without a run, if the training stopped before creating one


def _launcher(config: TrainConfig, address: str | None) -> contextlib.AbstractContextManager:
    """engine=ray: a Ray session for the training (joining, checking the request fits); else nothing."""
    if config.engine != "ray":
        if address is not None:
            raise ConfigError(f"--address is for engine=ray (a Ray cluster); this training uses engine={config.engine}")
        return contextlib.nullcontext()
    from mltrain.launch.ray import ray_session

    return ray_session(config, address)


def _plan(
    config: TrainConfig | None,
    overrides: Iterable[str] | Mapping[str, Any],
    config_file: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
    resume: str | os.PathLike[str] | None,
) -> _Plan:
    """Resolve the config, the checkpoint and the data folder (``_check_before_run`` checks the rest)."""
    if resume is None:
        return _Plan(TrainConfig.build(config_file, overrides, base=config), {}, None, env.data_dir(data_dir))
    from mltrain.engines.checkpoint import find_checkpoint, load_checkpoint  # torch

    output_dir = config.output_dir if config is not None else TrainConfig().output_dir
    checkpoint = load_checkpoint(find_checkpoint(resume, output_dir))
    state = checkpoint["state"]
    resolved, changes = resolve_resume(state.config, config_file, overrides, given=config)
    _check_something_to_do(state, resolved)
    saved_data = Path(state.data_dir) if state.data_dir else None
    if data_dir is None and saved_data is not None and saved_data.is_dir():
        data_dir = saved_data
    return _Plan(resolved, changes, checkpoint, env.data_dir(data_dir))


def _run_starter(plan: _Plan, spec: _RunSpec, rank_zero: bool) -> Any:
    """A helper process that opens MLflow while this one imports torch, to create the new run on request.

    Only where it takes MLflow's import off the way to the first training step: a new run of a local
    engine, on rank 0, in a process that has not imported MLflow yet (one that has may also have a run
    active, or a tracking URI set in code, which only it knows). See :mod:`mltrain.tracking.starter`.
    """
    existing_run = plan.checkpoint is not None or spec.run_id is not None
    if not rank_zero or existing_run or plan.config.engine == "ray" or "mlflow" in sys.modules:
        return None
    from mltrain.tracking.starter import RunStarter

    return RunStarter(spec.experiment, spec.tracking_uri)


def _check_before_run(plan: _Plan) -> None:
    """Usage mistakes found now leave no MLflow run and no ``outputs/<run_id>/`` behind (data: see ``_run``)."""
    from mltrain.engines.common import check_devices
    from mltrain.model import check_pretrained_weights

    config = plan.config
    if config.engine != "ray":
        check_devices(config)
    elif config.accelerator in ("gpu", "cuda") and not config.gpus_per_worker:
        # engine=ray trains where its workers run (the cluster's resources are checked when joining it); a worker
        # sees a GPU only when it reserves one.
        raise ConfigError(
            f"accelerator={config.accelerator} with engine=ray needs GPUs per worker, e.g. --gpus-per-worker 1"
        )
    check_pretrained_weights(config)
    _check_writable(Path(config.output_dir), "output_dir")
    if plan.checkpoint is not None and config.engine in ("lightning", "ray"):
        from mltrain.engines.lightning.callbacks import LAST_CHECKPOINT

        last = plan.checkpoint["folder"] / LAST_CHECKPOINT
        if not last.is_file():
            raise ConfigError(
                f"cannot resume with engine={config.engine}: {last} does not exist (the Lightning engine continues "
                "from it; a checkpoint of the torch engine resumes with engine=torch)"
            )


def _check_writable(folder: Path, key: str) -> None:
    existing = next((parent for parent in (folder, *folder.absolute().parents) if parent.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={folder}: cannot create folders there ({existing} is not a writable folder)")


def _check_something_to_do(state: Any, config: TrainConfig) -> None:
    if not state.finished:
        return
    if state.next_epoch >= config.total_epochs:
        raise ConfigError(
            f"run {state.run_id} already finished after {state.next_epoch} epoch(s); to train it further, resume "
            f"with a larger total_epochs, e.g. --set total_epochs={state.next_epoch + 5}"
        )
    if state.stale_epochs >= config.patience:
        raise ConfigError(
            f"run {state.run_id} stopped early: {state.stale_epochs} fine-tuning epoch(s) without a lower val_loss "
            f"(patience {config.patience}); to train it further, resume with a larger patience, e.g. "
            f"--set patience={state.stale_epochs + 3}"
        )


@dataclass
class _RunSpec:
    """Where and how the training's MLflow run is created."""

    experiment: str
    tracking_uri: str | None
    run_name: str | None
    parent_run_id: str | None
    tags: dict[str, str]
    run_id: str | None = None
    """An existing run with no epoch yet to train in, instead of creating one."""


def _run(
    plan: _Plan, spec: _RunSpec, progress: bool, rank_zero: bool, starter: Any, *, launched: float, started: float
) -> TrainResult:
    """Data, run, engine, summary. ``launched``: ``time.time()`` at the command's start; ``started``:
    ``time.perf_counter()`` at the ``train()`` call."""
    from mltrain.data.module import Food11Data
    from mltrain.engines import get_fit
    from mltrain.evaluation import record_class_report
    from mltrain.tracking import RunTracker
    from mltrain.tracking.webui import run_url

    config, checkpoint = plan.config, plan.checkpoint
    fit = get_fit(config.engine)
    # Data problems surface here, before any MLflow run exists. A Ray driver may not see the data (it can be on
    # the workers' nodes only): then the workers check it.
    data = Food11Data(plan.data_dir, config, progress=progress)
    if config.engine != "ray" or data.root.is_dir():
        data.setup()
    tags = {**_run_tags(config), **spec.tags} if checkpoint is None else None
    # Everything is checked: the helper creates the run now (its MLflow is open by now), this process attaches
    # to it at the first epoch's end.
    created = starter.create(tags or {}, spec.run_name, spec.parent_run_id) if starter is not None else None
    tracker = RunTracker(
        experiment=spec.experiment,
        tracking_uri=spec.tracking_uri,
        run_id=created.run_id if created else checkpoint["state"].run_id if checkpoint else spec.run_id,
        run_name=spec.run_name,
        enabled=rank_zero,
        # A Ray training's machine is its rank-0 worker's node: that worker samples it into the run.
        system_metrics=config.engine != "ray",
        tags=None if created else tags,
        parent_run_id=spec.parent_run_id,
        lazy=created is not None,
    )
    if created is not None:
        tracker.experiment_id = created.experiment_id
    with _sigterm_as_exception(), tracker, _resume_hint_on_interrupt(tracker, checkpoint, config):
        folder = checkpoint["folder"] if checkpoint else Path(config.output_dir) / str(tracker.run_id)
        _record_start(tracker, plan, data, folder)
        class_report = None
        try:
            result = fit(config, data, tracker, folder, resume=checkpoint, progress=progress)
            if result.confusion is not None and tracker.enabled:
                class_report = record_class_report(tracker, result.confusion, step=max(result.epochs_run - 1, 0))
        finally:
            _record_startup(tracker, launched)
            # However the training ends, the run gets its best model and every epoch before it is closed.
            model_uri = finalize_run(tracker, folder, quiet=sys.exc_info()[0] is not None)
    import mlflow  # not before: the way to the first step stays clear of MLflow's import

    uri = mlflow.get_tracking_uri()
    return TrainResult(
        run_id=tracker.run_id if rank_zero else None,  # a DDP worker, also on resume (it knows the id then)
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
        class_accuracy=dict(zip(class_report.class_names, class_report.recall.tolist(), strict=True))
        if class_report is not None
        else {},
        run_url=run_url(uri, tracker.experiment_id, tracker.run_id) if tracker.run_id else None,
    )


def _record_start(tracker: Any, plan: _Plan, data: Any, folder: Path) -> None:
    """What a run records before training: params, host, config (a new run) or what a resume changed; the data.

    The folder's ``config.yaml`` is written now; the rest goes to MLflow once the tracker is attached.
    """
    from mltrain.tracking import gpu_info_text

    config = plan.config
    config_file = config.save_yaml(folder / metrics.CONFIG_ARTIFACT) if tracker.enabled else None

    def record() -> None:
        if plan.checkpoint is not None:
            _record_resume(tracker, plan.changes)
        elif tracker.enabled:
            tracker.log_params(config.to_params())
            if config.engine != "ray":  # a Ray training records its rank-0 worker's node instead
                tracker.log_text(gpu_info_text(), metrics.GPU_INFO_ARTIFACT)
            tracker.log_artifact(config_file)
            if data.splits:
                tracker.log_metrics({metrics.SKIPPED_IMAGES: data.skipped_images}, step=0)
        if data.splits:  # else (a Ray driver that does not see the data) the rank-0 worker records it
            record_dataset(tracker, data)

    tracker.when_started(record)


def _record_startup(tracker: Any, launched: float) -> None:
    """``startup_seconds``, if the engine trained in this process (a Ray driver does not)."""
    if tracker.first_batch is None:
        return
    epoch, at = tracker.first_batch
    try:
        tracker.log_metrics({metrics.STARTUP: at - launched}, step=epoch)
    except Exception as exc:  # never in the way of the model and the run's end
        log.warning("could not log %s: %s", metrics.STARTUP, exc)


def record_dataset(tracker: Any, data: Any) -> None:
    """Log the data folder as the run's ``mlflow.data`` input (name, fingerprint as digest, counts per class).

    Args:
        tracker: The run's tracker.
        data: The :class:`~mltrain.data.module.Food11Data`, after ``setup()``.
    """
    if tracker.enabled:
        from mltrain.tracking.datasets import CONTEXT, food11_dataset

        tracker.log_dataset(food11_dataset(data), CONTEXT)


def finalize_run(tracker: Any, folder: Path, quiet: bool = False) -> str | None:
    """Complete a run from its checkpoint folder before the run ends: every epoch, then the best model.

    The training loop only keeps the best weights (in ``checkpoint.pt``) and queues its metrics; this runs
    once, off the loop, in the process that owns the run — also when the training was interrupted or
    failed, so a KILLED run still has its best model. Returns the model's URI (None without a checkpoint
    or on a rank that does not track).

    Args:
        tracker: The run's tracker (still open).
        folder: The training's checkpoint folder.
        quiet: An exception is already on its way: report a failure here as a warning instead of raising it.
    """
    from mltrain.engines.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from mltrain.model import build_model

    if not (tracker.enabled and (folder / CHECKPOINT_FILE).is_file()):
        return None
    try:
        payload = load_checkpoint(folder)
        state = payload["state"]
        filled = tracker.verify_history(state.history)
        if filled:
            log.warning("epoch(s) %s had not reached MLflow; logged them from the checkpoint", filled)
        weights = payload.get("best_weights") or payload["model"]
        config = TrainConfig.from_mapping(state.config)
        model = build_model(config.with_overrides(pretrained=False))  # the weights come from the checkpoint
        model.load_state_dict(weights)
        return tracker.log_model(model, config.image_size, step=max(state.best_epoch, 0))
    except Exception as exc:
        if not quiet:
            raise
        log.warning("could not log the best model of run %s: %s (it stays in %s)", tracker.run_id, exc, folder)
        return None


def _run_tags(config: TrainConfig) -> dict[str, str]:
    from mltrain.tracking import git_state

    commit, dirty = git_state(Path.cwd())
    tags = {"mltrain.version": mltrain.__version__, "mltrain.engine": config.engine}
    if commit:
        tags.update({"mlflow.source.git.commit": commit, "mltrain.git_commit": commit, "mltrain.git_dirty": str(dirty)})
    return tags


def _record_resume(tracker: Any, changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Tags: params cannot change in MLflow, so what a resume changed is written down as the n-th resume."""
    if not tracker.enabled:
        return
    count = int(tracker.tag_value(RESUMES_TAG) or 0) + 1
    described = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in changes.items()) or "no changes"
    tracker.set_tags({RESUMES_TAG: str(count), f"mltrain.resume.{count}": described})


@contextlib.contextmanager
def _resume_hint_on_interrupt(tracker: Any, checkpoint: dict[str, Any] | None, config: TrainConfig) -> Iterator[None]:
    """Give an interrupt the run id and the folder to resume from (the CLI prints them)."""
    try:
        yield
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        if tracker.run_id is not None:
            folder = checkpoint["folder"] if checkpoint else Path(config.output_dir) / str(tracker.run_id)
            exc.resume_hint = ResumeHint(tracker.run_id, folder)  # type: ignore[union-attr]
        raise


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into TrainingInterrupted in the main thread, so the run ends KILLED, not RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise TrainingInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
