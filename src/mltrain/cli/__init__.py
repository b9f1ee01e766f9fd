"""The ``mltrain`` command: a thin layer over the Python API, one table of subcommands.

User mistakes (:class:`mltrain.errors.MltrainError`) print one ``error:`` line and exit with status 2;
an interrupted training exits 130 (Ctrl+C) or 143 (SIGTERM) after ending its MLflow run as KILLED.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, cast

import click
import typer

from mltrain.cli import cluster_commands, commands, registry_commands, stack_commands, tune_commands
from mltrain.errors import MltrainError, TrainingFailed, TrainingInterrupted

app = typer.Typer(
    name="mltrain",
    help="Train the Food-11 classifier, track it in MLflow and manage its models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# The one subcommand table: (group or None, name, function). Each function's docstring is its help.
SUBCOMMANDS: list[tuple[str | None, str, Callable[..., Any]]] = [
    (None, "train", commands.train),
    (None, "tune", tune_commands.tune),
    ("data", "prepare", commands.data_prepare),
    ("data", "synth", commands.data_synth),
    (None, "ui", commands.ui),
    (None, "bench", commands.bench),
    ("config", "show", commands.config_show),
    ("registry", "promote", registry_commands.registry_promote),
    ("registry", "pull", registry_commands.registry_pull),
    ("registry", "list", registry_commands.registry_list),
    (None, "compare", registry_commands.compare),
    ("stack", "init", stack_commands.stack_init),
    ("stack", "bench", stack_commands.stack_bench),
    ("stack", "init-ray", stack_commands.stack_init_ray),
    ("cluster", "up", cluster_commands.cluster_up),
    ("cluster", "status", cluster_commands.cluster_status),
    ("cluster", "env", cluster_commands.cluster_env),
    ("cluster", "down", cluster_commands.cluster_down),
    ("cluster", "stop-worker", cluster_commands.cluster_stop_worker),
    ("cluster", "start-worker", cluster_commands.cluster_start_worker),
    (None, "submit", cluster_commands.submit),
    ("jobs", "list", cluster_commands.jobs_list),
    ("jobs", "logs", cluster_commands.jobs_logs),
    ("jobs", "stop", cluster_commands.jobs_stop),
]
GROUP_HELP = {
    "data": "Get Food-11 ready: download and organise it, or synthesise a look-alike.",
    "config": "Inspect the training configuration.",
    "registry": "Promote the best run's model behind an alias, pull a version, list versions.",
    "stack": "Set up the team tracking server (deploy/mlflow) and the Ray cluster (deploy/ray); measure the server.",
    "cluster": "A local Ray cluster on this machine: up, status, down, stop-worker/start-worker.",
    "jobs": "Jobs on a Ray cluster: list, logs, stop (see also `ray job …`).",
}


def _register() -> None:
    groups: dict[str, typer.Typer] = {}
    for group, name, function in SUBCOMMANDS:
        target = app
        if group is not None:
            if group not in groups:
                groups[group] = typer.Typer(help=GROUP_HELP.get(group), no_args_is_help=True, rich_markup_mode=None)
                app.add_typer(groups[group], name=group)
            target = groups[group]
        target.command(name=name)(function)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show MLflow's, Lightning's and Ray's INFO lines and expected warnings."
    ),
) -> None:
    """Train the Food-11 classifier, track it in MLflow and manage its models."""
    from mltrain import console

    console.configure(verbose)


_register()


# Typer vendors its own copy of click: accept the exception classes of both. The copy's ClickException is found
# by name at run time, so the checker sees a plain type; it has click's show() and exit_code, hence the cast.
_USAGE_ERRORS = cast(
    "tuple[type[click.ClickException], ...]",
    tuple({click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")}),
)
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mltrain`` console script."""
    if argv is None:  # the command's own process (not main([...]) called from Python)
        from mltrain.internals.mlflow import skip_lightning_autolog_import

        skip_lightning_autolog_import()
    try:
        # Without standalone mode Typer returns exit codes (130 for Ctrl+C) instead of exiting.
        code = app(args=_verbose_first(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    except (MltrainError, TrainingFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:  # usage errors: exit status 2
        exc.show()
        sys.exit(exc.exit_code)
    except _ABORTS:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except TrainingInterrupted as exc:
        print(f"terminated ({exc})", file=sys.stderr)
        sys.exit(128 + exc.signum)
    if isinstance(code, int) and code != 0:
        if code == 130:
            print("interrupted", file=sys.stderr)
        sys.exit(code)


def _verbose_first(argv: list[str]) -> list[str]:
    """Accept ``--verbose``/``-v`` after the subcommand too (``mltrain train -v``), not after ``--``."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [arg for arg in argv[:end] if arg not in ("--verbose", "-v")]
    return (["--verbose"] if len(head) < end else []) + head + argv[end:]
