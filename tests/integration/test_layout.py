"""A data folder with a bad layout, given to `mltrain train` as a user runs it (a subprocess)."""

from pathlib import Path

import pytest

from tests.helpers import TINY_TRAIN, run_cli

pytestmark = pytest.mark.integration


def test_cli_bad_layout_exits_2_before_any_run(tiny_copy: Path) -> None:
    import shutil

    shutil.rmtree(tiny_copy / "evaluation")
    # No store yet, as for a new user: the run's helper opens an existing store early (MLflow then adds its Default
    # experiment to a copy of the empty one), but never makes a new one before the checks have passed.
    Path("mlflow.db").unlink()
    done = run_cli("train", "--data", str(tiny_copy), *TINY_TRAIN)
    assert done.returncode == 2
    assert "missing split folder(s) evaluation" in done.stderr
    assert not Path("mlflow.db").exists()  # failed before touching MLflow
