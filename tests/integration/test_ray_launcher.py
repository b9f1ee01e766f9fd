"""The Ray launcher's scratch sweep against a real process that has ended (no Ray processes)."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mltrain.launchers.ray import scratch as launch

pytestmark = pytest.mark.integration


def test_a_killed_workers_scratch_is_swept_a_live_ones_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that was there and is not any more, like a worker killed with its node

    mine = launch.scratch_folder("0123456789abcdef", 0)  # this (live) process's own
    assert mine.parent == tmp_path / launch.scratch_root().name and f"-pid{gone.pid}-" not in mine.name
    left = mine.parent / f"0123456789ab-rank1-pid{gone.pid}-x1y2"
    left.mkdir()
    (left / "checkpoint.pt").write_bytes(b"\0" * 1024)
    other = mine.parent / "not-a-worker-folder"
    other.mkdir()

    assert launch.sweep_scratch() == [left]
    assert mine.is_dir() and other.is_dir() and not left.exists()

    # A new worker sweeps before it makes its own folder.
    left.mkdir()
    second = launch.scratch_folder("fedcba9876543210", 1)
    assert not left.exists() and second.is_dir() and mine.is_dir()
