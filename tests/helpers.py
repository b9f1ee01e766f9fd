"""Helpers shared by the tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
