"""The unit tier's rule, enforced: no subprocess, no server, no training (`make test-fast`, ≤ 90 s).

Every test under ``tests/unit`` runs with these doors shut; a test that needs one belongs in
``tests/integration`` (which pytest marks ``integration`` by folder, see ``tests/conftest.py``). The guard is
itself tested (``test_unit_tier.py``): each door raises :class:`UnitTierViolation`.
"""

from __future__ import annotations

import multiprocessing.process
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


class UnitTierViolation(AssertionError):
    """A unit test started a process, a server or a training."""


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnitTierViolation(f"a unit test may not {what}: move it to tests/integration")

    return refuse


DOORS: list[tuple[Any, str, str]] = [
    (subprocess.Popen, "__init__", "start a subprocess"),
    (os, "fork", "fork"),
    (os, "posix_spawn", "spawn a process"),
    (multiprocessing.process.BaseProcess, "start", "start a process"),
    (socket.socket, "listen", "listen on a socket (a server)"),
]


def _training_doors() -> list[tuple[Any, str, str]]:
    from lightning.pytorch import Trainer

    import mltrain.engines.lightning as lightning_engine
    import mltrain.engines.torch_engine as torch_engine
    import mltrain.training as training
    import mltrain.training.run as training_run

    return [
        (training, "run_training", "train"),
        (training_run, "run_training", "train"),
        (torch_engine, "fit", "train"),
        (lightning_engine, "fit", "train"),
        (torch_engine.TorchRecipe, "run", "train"),
        (Trainer, "fit", "train"),
    ]


@pytest.fixture(autouse=True)
def unit_tier_doors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for owner, name, what in [*DOORS, *_training_doors()]:
        monkeypatch.setattr(owner, name, _refuse(what))
    yield
