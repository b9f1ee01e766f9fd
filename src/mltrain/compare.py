"""Side-by-side report of a few runs: one PNG of curves and a markdown table of what differs.

::

    from mltrain.compare import compare
    report = compare(last=3)                       # the last 3 finished runs of food11-classifier
    report = compare(runs=["<run id>", "<run id>"], out=Path("reports/lr-sweep"))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mltrain import metrics
from mltrain.errors import TrackingError
from mltrain.tracking import open_client

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from mlflow.entities import Metric, Run

PNG_NAME = "compare.png"
MARKDOWN_NAME = "compare.md"
EPOCH_PANELS: tuple[tuple[str, str], ...] = (
    (metrics.VAL_ACCURACY, "validation accuracy"),
    (metrics.VAL_LOSS, "validation loss"),
    (metrics.EPOCH_TIME, "epoch time (s)"),
    (metrics.DATA_WAIT_FRACTION, "data wait fraction"),
)
"""Top row: one curve per run over epochs."""
SYSTEM_PANELS: tuple[tuple[str, str], ...] = (
    (r"cpu_utilization_percentage", "CPU utilization (%)"),
    (r"system_memory_usage_percentage", "system memory (%)"),
    (r"gpu(?:_\d+)?_utilization_percentage", "GPU utilization (%)"),
    (r"gpu(?:_\d+)?_memory_usage_percentage", "GPU memory (%)"),
)
"""Bottom row: MLflow's system metrics (name patterns after ``system/`` and an optional ``node_<i>/``)."""


@dataclass
class CompareReport:
    """Where the report went and which runs it covers (in the order shown)."""

    png: Path
    markdown: Path
    run_ids: list[str]


@dataclass
class _RunView:
    run: Run
    label: str
    history: dict[str, list[Metric]]


def compare(
    experiment: str = metrics.EXPERIMENT, runs: list[str] | None = None, out: Path = Path("compare"), last: int = 4
) -> CompareReport:
    """Write ``out/compare.png`` (curves) and ``out/compare.md`` (differing params, final metrics).

    Args:
        experiment: Experiment to take the runs from when ``runs`` is not given.
        runs: Run ids to compare, in this order (any experiment).
        out: Folder for the two files (created when missing).
        last: Without ``runs``: how many of the most recent FINISHED runs, shown oldest first.

    Raises:
        TrackingError: An unknown run id, no such experiment, or no finished run in it.
    """
    client = open_client()
    chosen = _runs_by_id(client, runs) if runs else _last_finished(client, experiment, last)
    views = [_view(client, run) for run in chosen]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png, markdown = out / PNG_NAME, out / MARKDOWN_NAME
    _plot(views, png)
    markdown.write_text(_markdown(views, experiment if not runs else None), encoding="utf-8")
    return CompareReport(png=png, markdown=markdown, run_ids=[v.run.info.run_id for v in views])


# --- choosing runs ----------------------------------------------------------------------------------------
def _runs_by_id(client: MlflowClient, run_ids: list[str]) -> list[Run]:
    unique = list(dict.fromkeys(run_ids))
    found, unknown = [], []
    for run_id in unique:
        try:
            found.append(client.get_run(run_id))
        except MlflowException:
            unknown.append(run_id)
    if unknown:
        raise TrackingError(
            f"expected run ids known to {mlflow.get_tracking_uri()}, found unknown: {', '.join(unknown)}"
        )
    return found


def _last_finished(client: MlflowClient, experiment: str, last: int) -> list[Run]:
    if last < 1:
        raise TrackingError(f"expected --last of at least 1, found {last}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"expected an experiment named {experiment!r} at {mlflow.get_tracking_uri()}, found none")
    recent = client.search_runs(
        [found.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=last,
    )
    if not recent:
        raise TrackingError(f"expected at least one FINISHED run in experiment {experiment!r}, found none")
    return list(reversed(recent))


def _view(client: MlflowClient, run: Run) -> _RunView:
    keys = [key for key, _ in EPOCH_PANELS] + [key for key in run.data.metrics if key.startswith("system/")]
    history = {key: _by_step(client.get_metric_history(run.info.run_id, key)) for key in keys}
    name = run.info.run_name or "run"
    return _RunView(run=run, label=f"{name} ({run.info.run_id[:8]})", history=history)


def _by_step(points: list[Metric]) -> list[Metric]:
    """One point per step (the last logged: a resumed run may log an epoch twice), in step order."""
    latest: dict[int, Metric] = {}
    for point in sorted(points, key=lambda p: (p.step, p.timestamp)):
        latest[point.step] = point
    return [latest[step] for step in sorted(latest)]


# --- the picture ------------------------------------------------------------------------------------------
def _plot(views: list[_RunView], path: Path) -> None:
    # The Figure API without pyplot renders with Agg and leaves the process-wide backend alone.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(20, 9), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 4, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(views))]
    for ax, (key, title) in zip(top, EPOCH_PANELS, strict=True):
        for view, color in zip(views, colors, strict=True):
            points = view.history.get(key, [])
            # Steps count epochs from 0; the console and people count from 1.
            steps = [p.step + 1 for p in points]
            ax.plot(steps, [p.value for p in points], marker="o", color=color, label=view.label)
        _decorate(ax, title, "epoch", has_data=any(view.history.get(key) for view in views))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, (pattern, title) in zip(bottom, SYSTEM_PANELS, strict=True):
        drawn = False
        for view, color in zip(views, colors, strict=True):
            drawn |= _plot_system(ax, view, pattern, color)
        _decorate(ax, title, "seconds since run start", has_data=drawn)
    handles, labels = top[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 4))
    figure.suptitle(f"{len(views)} run(s): per-epoch metrics (top), system metrics (bottom)")
    figure.savefig(path)


def _plot_system(ax: Axes, view: _RunView, pattern: str, color: str) -> bool:
    """Plot every matching system metric of one run (one line per GPU, same color); whether any was."""
    matcher = re.compile(rf"^system/(?:node_\d+/)?{pattern}$")
    start = view.run.info.start_time or 0
    drawn = False
    for index, key in enumerate(sorted(k for k in view.history if matcher.match(k))):
        points = view.history[key]
        seconds = [(p.timestamp - start) / 1000 for p in points]
        # Markers because MLflow samples every 10 s by default: a short run may have one point.
        style = ("-", "--", ":", "-.")[index % 4]
        ax.plot(seconds, [p.value for p in points], color=color, linestyle=style, marker=".", markersize=5)
        drawn = drawn or bool(points)
    return drawn


def _decorate(ax: Axes, title: str, xlabel: str, has_data: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if not has_data:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")


# --- the table --------------------------------------------------------------------------------------------
def _markdown(views: list[_RunView], experiment: str | None) -> str:
    source = f" of experiment `{experiment}`" if experiment else ""
    lines = [f"# Comparison of {len(views)} run(s){source}", "", f"![curves]({PNG_NAME})", "", "## Final metrics", ""]
    header = [
        "run",
        "run id",
        "status",
        "test_accuracy",
        "test_loss",
        "best val_accuracy",
        "epochs",
        "mean epoch_time (s)",
    ]
    lines += _table(header, [_final_row(view) for view in views])
    lines += _class_accuracy(views)
    differing, equal = _param_differences([view.run for view in views])
    lines += ["", "## Parameters that differ", ""]
    if differing:
        rows = [[key, *values] for key, values in differing.items()]
        lines += _table(["param", *(view.label for view in views)], rows)
    else:
        lines.append("None: every run has the same parameters.")
    lines += ["", f"{equal} other parameter(s) are the same in every run.", ""]
    return "\n".join(lines)


def _final_row(view: _RunView) -> list[str]:
    run = view.run
    val_accuracy = [p.value for p in view.history.get(metrics.VAL_ACCURACY, [])]
    epoch_times = [p.value for p in view.history.get(metrics.EPOCH_TIME, [])]
    epochs = max(len(val_accuracy), len(epoch_times))
    return [
        view.label,
        f"`{run.info.run_id}`",
        run.info.status,
        _number(run.data.metrics.get(metrics.TEST_ACCURACY)),
        _number(run.data.metrics.get(metrics.TEST_LOSS)),
        _number(max(val_accuracy) if val_accuracy else None),
        str(epochs),
        _number(sum(epoch_times) / len(epoch_times) if epoch_times else None, digits=1),
    ]


def _class_accuracy(views: list[_RunView]) -> list[str]:
    """Per-class test accuracy side by side (``test_class_accuracy/<class>``); nothing when no run has it."""
    from mltrain.data.layout import CLASS_NAMES

    if not any(key.startswith(metrics.TEST_CLASS_ACCURACY_PREFIX) for view in views for key in view.run.data.metrics):
        return []
    rows = [
        [name, *(_number(view.run.data.metrics.get(metrics.class_accuracy_key(name)), digits=2) for view in views)]
        for name in CLASS_NAMES
    ]
    lines = ["", "## Test accuracy per class", ""]
    return lines + _table(["class", *(view.label for view in views)], rows)


def _param_differences(runs: list[Run]) -> tuple[dict[str, list[str]], int]:
    """Params whose values (a missing param counts as a value) differ across runs; and how many are equal."""
    keys = sorted({key for run in runs for key in run.data.params})
    differing = {}
    for key in keys:
        values = [run.data.params.get(key) for run in runs]
        if len(set(values)) > 1:
            differing[key] = ["—" if value is None else value for value in values]
    return differing, len(keys) - len(differing)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:
        # A pipe inside a value would split the cell.
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [row(header), "|" + "---|" * len(header), *(row(cells) for cells in rows)]
