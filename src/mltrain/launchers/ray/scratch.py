"""Ray Train workers' scratch folders: where a worker writes the checkpoints it reports, on its own host.

A worker removes its folder when it ends. One that is killed (its node lost, its trial stopped by ASHA) cannot:
the next worker or driver on that host removes it (:func:`sweep_scratch`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


def scratch_root() -> Path:
    """The folder that holds this user's scratch folders on this host."""
    return Path(tempfile.gettempdir()) / f"mltrain-scratch-{os.getuid()}"


def scratch_folder(run_id: str, rank: int) -> Path:
    """A new folder for this worker process (named by its pid), after sweeping those of processes gone."""
    root = scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    sweep_scratch()
    return Path(tempfile.mkdtemp(prefix=f"{run_id[:12]}-rank{rank}-pid{os.getpid()}-", dir=root))


def sweep_scratch() -> list[Path]:
    """Remove the scratch folders of worker processes on this host that are gone; returns what it removed.

    They hold only copies: every checkpoint in them was uploaded to the run's storage when it was reported.
    """
    import psutil

    removed = []
    for folder in sorted(scratch_root().glob("*-pid*-*")):
        found = re.search(r"-pid(\d+)-", folder.name)
        if found and not psutil.pid_exists(int(found.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
