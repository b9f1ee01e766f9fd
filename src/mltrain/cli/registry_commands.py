"""Subcommands for the model registry and the run comparison: parse options, call the API, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mltrain import metrics

ModelOption = Annotated[str, typer.Option("--model", help="Registered model name.")]
ExperimentOption = Annotated[str, typer.Option("--experiment", help="MLflow experiment.")]
MetricOption = Annotated[str, typer.Option("--metric", help="Metric that ranks runs and versions.")]


def registry_promote(
    model: ModelOption = metrics.MODEL_NAME,
    experiment: ExperimentOption = metrics.EXPERIMENT,
    metric: MetricOption = metrics.TEST_ACCURACY,
    mode: Annotated[Literal["max", "min"], typer.Option("--mode", help="Whether higher or lower is better.")] = "max",
    alias: Annotated[str, typer.Option("--alias", help="Alias to move to the better model.")] = "staging",
    min_improvement: Annotated[
        float, typer.Option("--min-improvement", help="Margin the best run must beat the current version by.")
    ] = 0.0,
) -> None:
    """Register the best finished run's model and point an alias at it, if it beats the current one.

    The best run of the experiment (by --metric) is compared with the run behind MODEL@ALIAS; the alias
    moves only when the best run is better by more than --min-improvement. Otherwise nothing changes.

    \b
    Examples:
      mltrain registry promote
      mltrain registry promote --alias production --min-improvement 0.01
      mltrain registry promote --metric test_loss --mode min
    """
    from mltrain.registry import promote

    result = promote(
        model=model, experiment=experiment, metric=metric, mode=mode, alias=alias, min_improvement=min_improvement
    )
    print(result.message)
    if result.promoted:
        print(f"{result.model}@{result.alias} -> version {result.version} (source run {result.run_id})")


def registry_pull(
    model: ModelOption = metrics.MODEL_NAME,
    alias: Annotated[str | None, typer.Option("--alias", help="Version this alias points at.")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Version number.")] = None,
    dest: Annotated[Path, typer.Option("--dest", help="Parent folder; the model goes to DEST/MODEL-vN.")] = Path(
        "models"
    ),
) -> None:
    """Download a registered version (default: the highest) into models/MODEL-vN (an MLflow model) and print its path.

    Load it with mlflow.pytorch.load_model(PATH).

    \b
    Examples:
      mltrain registry pull --alias staging --dest models
      mltrain registry pull --version 3
    """
    from mltrain.registry import pull

    print(pull(model=model, dest=dest, alias=alias, version=version))


def registry_list(model: ModelOption = metrics.MODEL_NAME, metric: MetricOption = metrics.TEST_ACCURACY) -> None:
    """List the versions of a registered model: aliases, metric, source run, creation time.

    \b
    Example:
      mltrain registry list --model food11
    """
    from mltrain.registry import list_versions

    rows = [
        [
            str(v.version),
            ",".join(v.aliases) or "-",
            "-" if v.value is None else f"{v.value:.4f}",
            v.run_id or "-",
            v.created.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for v in list_versions(model=model, metric=metric)
    ]
    _print_table(["version", "aliases", metric, "source run", "created"], rows)


def compare(
    experiment: ExperimentOption = metrics.EXPERIMENT,
    runs: Annotated[
        list[str] | None,
        typer.Option("--runs", help="Run ids to compare (repeatable, or several separated by commas)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for compare.png and compare.md.")] = Path("compare"),
    last: Annotated[int, typer.Option("--last", help="Without --runs: the last N finished runs.")] = 4,
) -> None:
    """Compare runs side by side: curves and system metrics in a PNG, differing params in markdown.

    \b
    Examples:
      mltrain compare --last 3
      mltrain compare --runs 1a2b3c --runs 4d5e6f --out reports/lr
      mltrain compare --runs 1a2b3c,4d5e6f
    """
    from mltrain.compare import compare as write_report

    run_ids = [part for value in runs or [] for part in value.replace(",", " ").split()]
    report = write_report(experiment=experiment, runs=run_ids or None, out=out, last=last)
    print(f"compared {len(report.run_ids)} run(s): {', '.join(report.run_ids)}")
    print(f"curves: {report.png}")
    print(f"table:  {report.markdown}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for cells in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
