"""What a training's run records about itself beside its metrics: where its code came from and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mltrain
from mltrain.tracking.runlog import RunLog
from mltrain.tracking.sysinfo import git_state

ENGINE_TAG = "mltrain.engine"
"""Run tag: how the model was trained — ``torch``, ``lightning``, or ``ray`` for the lightning engine launched on
Ray Train (the name it had before launchers existed, kept so that saved queries find the same runs)."""
LAUNCHER_TAG = "mltrain.launcher"
"""Run tag: where the training ran: ``local`` (this machine's processes) or ``ray`` (Ray Train workers)."""


def source_tags(folder: Path | None = None) -> dict[str, str]:
    """Tags naming the code: mltrain's version and, run from a git tree, its commit and whether it had changes."""
    commit, dirty = git_state(folder or Path.cwd())
    tags = {"mltrain.version": mltrain.__version__}
    if commit:
        tags.update({"mlflow.source.git.commit": commit, "mltrain.git_commit": commit, "mltrain.git_dirty": str(dirty)})
    return tags


def record_dataset(tracker: RunLog, data: Any) -> None:
    """Log the data folder as the run's ``mlflow.data`` input (name, fingerprint as digest, counts per class).

    Args:
        tracker: The run's logger.
        data: The :class:`~mltrain.data.module.Food11Data`, after ``setup()``.
    """
    from mltrain.tracking.datasets import CONTEXT, food11_dataset

    tracker.log_dataset(food11_dataset(data), CONTEXT)
