"""The console of a CLI command: mltrain's own lines; the libraries' INFO lines only with --verbose."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mltrain import console
from tests.helpers import TINY_TRAIN, run_cli

pytestmark = pytest.mark.integration

CHATTER = ("GPU available:", "Started monitoring system metrics", "Pickle or CloudPickle", "💡 Tip")


@pytest.mark.timeout(300)
def test_a_training_shows_its_own_lines_and_the_libraries_only_with_verbose(tiny_data: Path) -> None:
    args = ["train", "--data", str(tiny_data), *TINY_TRAIN, "--engine", "lightning", "--set", "total_epochs=1"]
    quiet = run_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    shown = quiet.stdout + quiet.stderr
    assert "epoch   1/" in shown and "FINISHED after" in shown
    assert not [line for line in CHATTER if line in shown], shown
    verbose = run_cli(*args, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "GPU available:" in verbose.stdout + verbose.stderr


def test_ray_workers_get_the_quiet_console_of_the_command_only() -> None:
    try:
        console.configure(verbose=False)
        assert console.ray_runtime_env() == {"worker_process_setup_hook": "mltrain.console.quiet_ray_worker"}
        console.quiet_ray_worker()  # what Ray runs in each worker process
        assert logging.getLogger("lightning.pytorch.utilities").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("ray.train").getEffectiveLevel() == logging.WARNING
        console.configure(verbose=True)
        assert console.ray_runtime_env() == {}
    finally:
        console._quiet = False  # as for the Python API, which leaves logging alone
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_mltrain", False):
                logging.getLogger().removeHandler(handler)
        for name in ("lightning.pytorch.utilities", "ray.train"):
            logging.getLogger(name).setLevel(logging.NOTSET)
