"""One trial of a search: ``train()`` on the Ray launcher with the values it drew, in a child run of the search's.

A trial is not a new training loop: it is the same planned training as ``mltrain train --engine ray``, run from a
Tune function trainable. One extra Ray Train callback (:class:`EpochReports`) forwards each epoch's metrics to Tune,
so that the ASHA scheduler sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.launchers.ray import RayLauncher, RayOptions
from mltrain.launchers.ray.storage import bring_back_training
from mltrain.launchers.ray.tags import RUN_NAME_TAG
from mltrain.search.tags import EPOCHS_DONE, LOST_ATTEMPTS_TAG, TRIAL_TAG
from mltrain.tracking.children import ChildRuns
from mltrain.tracking.owner import END_REASON_TAG, ERROR_TAG, RunSpec
from mltrain.training import plan_training, run_training


@dataclass
class TrialJob:
    """What every trial needs from the driver (sent once through Ray's object store)."""

    config: dict[str, Any]
    data_dir: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    """Each trial's :class:`~mltrain.launchers.ray.RayOptions` (without the address: the trial is inside Ray)."""


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
    """One trial (a Tune function trainable): the Ray launcher's training with the trial's values, in a child run."""
    from ray import tune as ray_tune

    trial_id = ray_tune.get_context().get_trial_id()
    config = TrainConfig.from_mapping({**job.config, **{key: plain(value) for key, value in values.items()}})
    options = RayOptions.of(**job.options)
    resume, run_id = earlier_attempt(job, trial_id, config, options)
    plan = plan_training(config, (), None, job.data_dir, resume, RayLauncher(options, callbacks=[EpochReports()]))
    spec = RunSpec(
        job.experiment,
        job.tracking_uri,
        run_name=f"trial-{trial_id}",
        parent_run_id=job.parent_run_id,
        tags={**job.tags, TRIAL_TAG: trial_id},
        run_id=run_id,
    )
    run_training(plan, spec, progress=False)


def plain(value: Any) -> Any:
    """A Python scalar for a value Tune drew (numpy ints and floats are not valid config values)."""
    return value.item() if hasattr(value, "item") else value


def earlier_attempt(
    job: TrialJob, trial_id: str, config: TrainConfig, options: RayOptions
) -> tuple[Path | None, str | None]:
    """When Tune retries a trial (its actor or node was lost, or it raised): how the retry goes on.

    Returns ``(checkpoint folder, None)`` to resume the trial's run from its checkpoint; ``(None, run_id)`` to
    train from the start in the trial's run, when the lost attempt logged no epoch (so the trial stays one run,
    each epoch logged once); ``(None, None)`` for a first attempt. An earlier attempt that logged epochs but
    registered no checkpoint is ended FAILED, and the retry starts a new run.
    """
    children = ChildRuns(job.parent_run_id, job.tracking_uri)
    run = children.latest({TRIAL_TAG: trial_id})
    if run is None:
        return None, None
    run_id = run.info.run_id
    folder = Path(config.output_dir) / run_id
    name = run.data.tags.get(RUN_NAME_TAG)
    if name and bring_back_training(options.storage, config.output_dir, name, folder):
        print(f"trial {trial_id}: resuming run {run_id} from its checkpoint", flush=True)
        return folder, None
    if not any(key in run.data.metrics for key in metrics.EPOCH_METRICS):
        lost = int(run.data.tags.get(LOST_ATTEMPTS_TAG, "0")) + 1
        reason = run.data.tags.get(ERROR_TAG, "its process was lost")
        children.set_tags(run_id, {LOST_ATTEMPTS_TAG: str(lost), f"mltrain.tune.lost_attempt.{lost}": reason[-4000:]})
        children.delete_tag(run_id, ERROR_TAG)  # absent when the attempt's process was lost
        print(f"trial {trial_id}: run {run_id} starts again (its last attempt had no epoch)", flush=True)
        return None, run_id
    children.end(run_id, "FAILED", {END_REASON_TAG: "lost before its first checkpoint; retried"})
    return None, None
