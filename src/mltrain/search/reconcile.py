"""Watching the trials from the driver, and closing out their child runs as Tune's outcome says.

Each trial owns its child run while it runs. ASHA stops a trial by ending its Tune actor, which takes the trial's
Ray Train run with it and leaves the child run RUNNING. At the end the driver reconciles every child with Tune's
outcome: a trial ASHA stopped gets its last reported checkpoint back, every epoch it ran, its best model and the
tags ``mltrain.tune.stopped_early`` / ``mltrain.tune.stopped_at_epoch``, and ends FINISHED; a trial that errored
ends FAILED.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mltrain import metrics
from mltrain.launchers.ray.storage import bring_back_training, storage_for
from mltrain.launchers.ray.tags import RUN_NAME_TAG
from mltrain.search.results import TrialSummary, show
from mltrain.search.settings import SearchPlan
from mltrain.search.space import Domain
from mltrain.search.tags import EPOCHS_DONE, EPOCHS_TAG, OUTCOME_TAG, STOPPED_AT_TAG, STOPPED_TAG, TRIAL_TAG
from mltrain.search.trial import plain
from mltrain.tracking.children import ChildRuns
from mltrain.tracking.owner import END_REASON_TAG, ERROR_TAG, RunOwner, RunSpec
from mltrain.training import finalize_run

log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """What the driver heard of one trial: the values it drew, its last epoch report, its error."""

    name: str
    values: dict[str, Any]
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class TrialRecorder(Callback):
    """Tune callback in the driver: what each trial was given and reported, and a line per trial event."""

    def __init__(self, search: Mapping[str, Domain], max_epochs: int) -> None:
        self.search = search
        self.max_epochs = max_epochs
        self.trials: dict[str, TrialRecord] = {}

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.trials:
            values = {key: plain(trial.config.get(key)) for key in self.search}
            self.trials[trial.trial_id] = TrialRecord(trial.trial_id, values)
        return self.trials[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        shown = " ".join(f"{key}={show(value)}" for key, value in record.values.items())
        print(f"trial {record.name} started: {shown}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if EPOCHS_DONE in result:
            self._record(trial).last = dict(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        epochs = int(record.last.get(EPOCHS_DONE, 0))
        how = "trained all" if epochs >= self.max_epochs else "ended after"
        print(f"trial {record.name} {how} {epochs} epoch(s)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        error = str(trial.get_error() or "").strip()  # the trace's text: its last line names the exception
        record.error = error.splitlines()[-1] if error else f"see {trial.error_file}"
        print(f"trial {record.name} failed (see {trial.error_file or 'the log above'})", flush=True)


def reconcile(children: ChildRuns, plan: SearchPlan, recorder: TrialRecorder) -> list[TrialSummary]:
    """End every child as Tune's outcome says; return one summary per trial, from what its run shows."""
    by_trial = {child.data.tags.get(TRIAL_TAG): child for child in children.all()}
    summaries = []
    for trial_id, record in recorder.trials.items():
        child = by_trial.pop(trial_id, None)
        if child is None:  # the trial failed before its run existed (e.g. a config that fails validation)
            summaries.append(TrialSummary(trial_id, None, record.values, 0, "failed", None))
            continue
        run_id = child.info.run_id
        if record.error is not None:
            outcome = "failed"
            children.end(run_id, "FAILED", {ERROR_TAG: record.error[:4000]})
        elif child.info.status == "FINISHED" and metrics.TEST_ACCURACY in child.data.metrics:
            outcome = "completed"  # its own training ran to the end: test pass, model, FINISHED
        else:
            # ASHA stopped it: Tune ended the trial's process before its test pass. The run is left RUNNING, or
            # ended FAILED if the dying process got that far.
            outcome = "stopped"
            close_stopped(children, child, record, plan)
        summaries.append(_summary(children, run_id, record, outcome, plan))
    for child in by_trial.values():  # not a trial Tune knows of (cannot happen unless Tune lost one)
        children.end(child.info.run_id, "FAILED")
    return summaries


def close_stopped(children: ChildRuns, child: Any, record: TrialRecord, plan: SearchPlan) -> None:
    """A trial ASHA stopped: its last reported checkpoint back, every epoch, its best model; FINISHED."""
    from ray.train import Checkpoint

    run_id = child.info.run_id
    folder = Path(plan.base.output_dir) / run_id
    # The trial's latest registered checkpoint: the one ASHA judged, or a later one if the trial's workers
    # finished another epoch before they were ended; else the one reported to Tune.
    name = child.data.tags.get(RUN_NAME_TAG)
    reported = record.last.get("checkpoint_path")
    storage = plan.options.storage
    try:
        if not (name and bring_back_training(storage, plan.base.output_dir, name, folder)) and reported:
            filesystem = storage_for(storage, plan.base.output_dir)[1]
            Checkpoint(reported, filesystem=filesystem).to_directory(str(folder))
    except Exception as exc:  # the run keeps its metrics; only the model is missing
        log.warning("could not fetch the checkpoint of stopped trial %s (run %s): %s", record.name, run_id, exc)
    if ERROR_TAG in child.data.tags:  # what the trial's process said while Tune ended it
        children.delete_tag(run_id, ERROR_TAG)
    # Taken over here and ended FINISHED, with its best model.
    with RunOwner(RunSpec(run_id=run_id, tracking_uri=children.tracking_uri), system_metrics=False) as owner:
        finalize_run(owner, folder, quiet=True)
        owner.logger.set_tags(
            {STOPPED_AT_TAG: str(int(record.last.get(EPOCHS_DONE, 0))), END_REASON_TAG: "stopped by ASHA"}
        )


def _summary(children: ChildRuns, run_id: str, record: TrialRecord, outcome: str, plan: SearchPlan) -> TrialSummary:
    """The trial as its run shows it: epochs logged, the metric's last value; tags say how it ended."""
    latest = children.last_values(run_id, plan.settings.metric)
    epochs = len(latest)
    score = latest[max(latest)] if latest else None
    stopped_at = int(record.last.get(EPOCHS_DONE, 0)) if outcome == "stopped" else None
    tags = {OUTCOME_TAG: outcome, STOPPED_TAG: str(outcome == "stopped").lower(), EPOCHS_TAG: str(epochs)}
    children.set_tags(run_id, tags)
    score = None if score is None or math.isnan(score) else score
    return TrialSummary(record.name, run_id, record.values, epochs, outcome, score, stopped_at)
