"""What the ``mltrain`` command shows on the console: mltrain's own lines, not its libraries' chatter.

MLflow, Lightning and Ray each print INFO lines of their own (database migrations, "Started monitoring
system metrics", "GPU available: False", Lightning's tips, Ray's start-up lines) and MLflow warns about the
pickle format mltrain chooses on purpose (see :func:`mltrain.tracking.models.log_model`). The CLI hides
them unless ``--verbose``; warnings and errors of every library still show. The Python API leaves logging
alone: a notebook keeps its own configuration.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from mltrain.internals import ray as ray_internals

_LIBRARY_LEVEL_VARIABLES = {"MLFLOW_LOGGING_LEVEL": "WARNING"}
"""Read by MLflow when it is imported (it installs its own handler then, in this process and in every child
process: Lightning's DDP ranks, the Ray workers of an embedded Ray, `mlflow ui`)."""
_LIGHTNING_INFO_LOGGERS = tuple(
    f"lightning.{package}.{module}"
    for package in ("pytorch", "fabric")
    for module in ("utilities", "trainer", "loops", "callbacks", "accelerators", "strategies", "plugins")
)
"""Lightning's INFO lines ("GPU available: False", tips, "Restoring states from ...") come from these packages.
Lightning gives the ``lightning`` logger a console handler of its own and resets the levels of ``lightning``,
``lightning.pytorch`` and ``lightning.fabric`` when imported, but leaves those of their sub-packages alone."""
_EXPECTED_WARNINGS = {
    "mlflow.pytorch": ("Pickle or CloudPickle",),
    # An embedded Ray turns token authentication on by default, as mltrain wants (README, docs/RAY_CLUSTER.md).
    ray_internals.TOKEN_SETUP_LOGGER: (ray_internals.TOKEN_AUTH_ENABLED_WARNING,),
}
"""Warnings about choices mltrain made deliberately and documents: logger -> message fragments."""
_LIBRARY_PY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
"""Python warnings that libraries raise about each other (Lightning about torch's pytree API): nothing to act on."""


class _MltrainFormatter(logging.Formatter):
    """mltrain's INFO lines as they are; warnings and errors with their level and, for libraries, their origin."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno < logging.WARNING:
            return message if record.name.startswith("mltrain") else f"{record.name}: {message}"
        origin = "" if record.name.startswith("mltrain") else f" ({record.name})"
        return f"{record.levelname.lower()}{origin}: {message}"


class _ConsoleHandler(logging.StreamHandler):
    """The console handler :func:`configure` installs (and replaces when called again)."""


class _OwnLinesOnly(logging.Filter):
    """INFO and above from mltrain; WARNING and above from everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("mltrain")


class _DropExpected(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


_verbose = False
_quiet = False
"""The CLI configured a quiet console (no ``--verbose``); the Python API leaves it False."""


def is_verbose() -> bool:
    """Whether the command runs with ``--verbose``."""
    return _verbose


def configure(verbose: bool = False) -> None:
    """Set up the console for a CLI command (before MLflow, Lightning or Ray are imported).

    A handler on the root logger makes Lightning propagate to it instead of installing its own; MLflow's
    level comes from its variable, set here for this process and its children unless the user set it.

    Args:
        verbose: Show every library's INFO lines and the expected warnings too.
    """
    global _verbose, _quiet
    _verbose = verbose
    _quiet = not verbose
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _ConsoleHandler):
            root.removeHandler(old)
    handler = _ConsoleHandler(sys.stderr)
    handler.setFormatter(_MltrainFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if verbose:
        return
    handler.addFilter(_OwnLinesOnly())
    _quiet_libraries()


def _quiet_libraries() -> None:
    for name, value in _LIBRARY_LEVEL_VARIABLES.items():
        os.environ.setdefault(name, value)  # an explicit setting of the user's wins
    for name, fragments in _EXPECTED_WARNINGS.items():
        logging.getLogger(name).addFilter(_DropExpected(fragments))
    for name in _LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _LIBRARY_PY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


RAY_WORKER_SETUP_HOOK = "mltrain.console.quiet_ray_worker"
"""Ray's ``worker_process_setup_hook`` for the workers of a command run without ``--verbose``."""
_RAY_WORKER_LOGGERS = {
    "ray.train": logging.WARNING,  # "Reporting training result ..." per epoch and rank
    # Polls the state API every few seconds; an embedded Ray without a dashboard answers with a warning each time.
    ray_internals.PLACEMENT_GROUP_CLEANER_LOGGER: logging.ERROR,
}


def ray_runtime_env() -> dict[str, str]:
    """Runtime-env entries that give a Ray training's worker processes the CLI's quiet console (none with
    ``--verbose``, or from the Python API).

    Ray Train workers, Tune trials and Ray Train's own actors are processes of their own: their lines reach the
    console through Ray's log forwarding, so the libraries are quieted in each of them as here.
    """
    return {"worker_process_setup_hook": RAY_WORKER_SETUP_HOOK} if _quiet else {}


def quiet_ray_worker() -> None:
    """Run by Ray in each worker process (see :func:`ray_runtime_env`): library INFO lines off, warnings on."""
    _quiet_libraries()
    for name, level in _RAY_WORKER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Ray Train's per-report line: its logger is named after a file path, outside the "ray.train" hierarchy.
    report_logger = ray_internals.train_report_logger_name()
    if report_logger is not None:
        logging.getLogger(report_logger).setLevel(logging.WARNING)
