"""The unit tier's doors (tests/unit/conftest.py) are shut: each way out raises."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys

import pytest

from tests.unit.conftest import UnitTierViolation


def test_a_subprocess_is_refused() -> None:
    with pytest.raises(UnitTierViolation, match="subprocess"):
        subprocess.run([sys.executable, "-c", "pass"])


def test_a_fork_or_a_process_is_refused() -> None:
    with pytest.raises(UnitTierViolation, match="fork"):
        os.fork()
    with pytest.raises(UnitTierViolation, match="process"):
        multiprocessing.get_context("spawn").Process(target=print).start()


def test_a_server_is_refused() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        with pytest.raises(UnitTierViolation, match="listen"):
            server.listen()


@pytest.mark.parametrize("engine", ["torch", "lightning"])
def test_a_training_is_refused(tiny_data, engine: str) -> None:
    from mltrain import train

    with pytest.raises(UnitTierViolation, match="train"):
        train(overrides={"engine": engine, "pretrained": False, "image_size": 32}, data_dir=tiny_data, progress=False)
