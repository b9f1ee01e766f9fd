"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mlflow.tracking import MlflowClient

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
MLTRAIN = [sys.executable, "-m", "mltrain"]

# Smallest settings that still exercise both phases, the model log and the test pass.
TINY_TRAIN = [
    "--set", "initial_epochs=1",
    "--set", "total_epochs=2",
    "--set", "pretrained=false",
    "--set", "image_size=64",
    "--set", "batch_size=16",
]  # fmt: skip


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mltrain ARGS`` in the current directory and capture its output."""
    return subprocess.run(
        [*MLTRAIN, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def call_cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """Run ``mltrain ARGS`` in this process (``main([...])``) and return what :func:`run_cli` would: the exit
    status, stdout and stderr. For commands that start no process, no server and no training (the unit tier)."""
    from mltrain.cli import main

    capsys.readouterr()  # this command's output only
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([*MLTRAIN, *args], code, out, err)


def metric_steps(run_id: str, key: str) -> list[int]:
    """The steps of ``key`` the run logged, in the order MLflow returns them."""
    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


def metric_values(run_id: str, key: str) -> list[float]:
    """The values of ``key`` the run logged, by step."""
    return [m.value for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def wait_for(
    predicate: Callable[[], T],
    what: str,
    timeout: float = 60,
    interval: float = 0.5,
    process: subprocess.Popen | None = None,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout`` seconds, or
    as soon as ``process`` (the program whose work the test waits for) has ended, with the end of its output.

    The deadline only bounds a hang: tests wait for the event itself, never for a fixed time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.communicate()[0] if process.stdout is not None else ""
            raise AssertionError(f"waiting for {what}, the process ended ({process.returncode}):\n{output[-5000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_after_saves(monkeypatch: Any, module: Any, saves: int = 2, name: str = "save_checkpoint") -> list[Path]:
    """Make ``module.name`` (a checkpoint writer) raise KeyboardInterrupt right after its ``saves``-th write, as a
    Ctrl+C at the worst moment: the checkpoint is on disk, MLflow has not got the epoch yet. Returns the list the
    written paths go to."""
    real_save = getattr(module, name)
    saved: list[Path] = []

    def save_then_stop(*args: Any, **kwargs: Any) -> Any:
        saved.append(real_save(*args, **kwargs))
        if len(saved) == saves:
            raise KeyboardInterrupt
        return saved[-1]

    monkeypatch.setattr(module, name, save_then_stop)
    return saved
