"""A search's outcome: one summary per trial, the ranking, the table, and what the search's run records."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mltrain.search.settings import SearchPlan
from mltrain.search.tags import BEST_CONFIG_ARTIFACT, COMPUTE_FRACTION, TRIAL_EPOCHS
from mltrain.tracking.runlog import RunLog


@dataclass
class TrialSummary:
    """One trial as its child run shows it after the search."""

    name: str
    run_id: str | None
    values: dict[str, Any]
    epochs: int
    outcome: str
    score: float | None
    stopped_at: int | None = None


@dataclass
class TuneResult:
    """A finished search: its parent run, the trials (best first), the best config, the compute it took."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config: dict[str, Any] | None
    trial_epochs: int
    compute_fraction: float
    samples: int
    max_epochs: int
    wall_seconds: float

    def table(self) -> str:
        """The trials sorted by the metric: their searched values, epochs run and outcome."""
        keys = sorted({key for trial in self.trials for key in trial.values})
        header = ["trial", "run", *keys, self.metric, "epochs", "status"]
        rows = [
            [
                trial.name,
                (trial.run_id or "-")[:8],
                *(show(trial.values.get(key)) for key in keys),
                "-" if trial.score is None else f"{trial.score:.4f}",
                str(trial.epochs),
                status(trial, self.max_epochs),
            ]
            for trial in self.trials
        ]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in (header, *rows)
        ]
        return "\n".join(line.rstrip() for line in lines)

    def summary(self) -> str:
        """The table, the best config and the compute fraction, for people."""
        best = (
            f"best: trial {self.best.name} (run {self.best.run_id}), {self.metric} {self.best.score:.4f}: "
            + " ".join(f"{key}={show(value)}" for key, value in self.best.values.items())
            if self.best is not None and self.best.score is not None
            else "best: none (no trial reported the metric)"
        )
        return "\n".join(
            [
                self.table(),
                "",
                best,
                f"compute: {self.trial_epochs} trial-epochs of {self.samples} x {self.max_epochs} = "
                f"{self.samples * self.max_epochs}: tune_compute_fraction {self.compute_fraction:.3f}",
                f"search run {self.parent_run_id} in experiment '{self.experiment}' at {self.tracking_uri}",
                f"compare the trials: mltrain compare --runs {','.join(t.run_id for t in self.trials[:4] if t.run_id)}",
            ]
        )


def status(trial: TrialSummary, max_epochs: int) -> str:
    if trial.stopped_at is not None:
        return f"ASHA stopped it at epoch {trial.stopped_at}"
    if trial.outcome == "completed" and trial.epochs < max_epochs:
        return "completed (early stop: patience)"  # the training's own EarlyStopping, not the scheduler
    return trial.outcome


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def summarize(
    plan: SearchPlan, parent_run_id: str, trials: list[TrialSummary], experiment: str, started: float
) -> TuneResult:
    """The search's result: the trials best first (by their last value, ties to the one that ran longer)."""
    settings = plan.settings
    sign = 1 if settings.mode == "max" else -1
    scored = [(trial.score, trial) for trial in trials if trial.score is not None]
    # Best by the last value, as Tune's default scope: ties go to the trial that ran longer.
    ranked = [trial for _, trial in sorted(scored, key=lambda pair: (sign * pair[0], pair[1].epochs), reverse=True)]
    ordered = ranked + [trial for trial in trials if trial.score is None]
    best = ranked[0] if ranked else None
    best_config = plan.base.with_overrides(**best.values).model_dump() if best else None
    trial_epochs = sum(trial.epochs for trial in trials)
    return TuneResult(
        parent_run_id=parent_run_id,
        experiment=experiment,
        tracking_uri="",
        metric=settings.metric,
        mode=settings.mode,
        trials=ordered,
        best=best,
        best_config=best_config,
        trial_epochs=trial_epochs,
        compute_fraction=trial_epochs / (settings.samples * int(settings.max_epochs or 1)),
        samples=settings.samples,
        max_epochs=int(settings.max_epochs or 0),
        wall_seconds=time.perf_counter() - started,
    )


def log_outcome(tracker: RunLog, result: TuneResult) -> None:
    """The parent run's results: compute used, the best trial and its config, the table."""
    import yaml

    counts = {outcome: sum(t.outcome == outcome for t in result.trials) for outcome in ("completed", "stopped")}
    values = {
        COMPUTE_FRACTION: result.compute_fraction,
        TRIAL_EPOCHS: result.trial_epochs,
        "tune_trials_completed": counts["completed"],
        "tune_trials_stopped_early": counts["stopped"],
        "tune_trials_failed": len(result.trials) - sum(counts.values()),
    }
    if result.best is not None and result.best.score is not None:
        values[f"tune_best_{result.metric}"] = result.best.score
    tracker.log_metrics(values, step=0)
    tracker.log_text(result.table() + "\n", "trials.txt")
    if result.best is None or result.best_config is None:
        return
    tracker.log_params({f"best.{key}": value for key, value in result.best.values.items()})
    tracker.set_tags(
        {
            "mltrain.tune.best_run_id": str(result.best.run_id),
            "mltrain.tune.best_config": json.dumps(result.best.values, sort_keys=True),
        }
    )
    tracker.log_text(yaml.safe_dump(result.best_config, sort_keys=False), BEST_CONFIG_ARTIFACT)
