"""Shared fixtures: tiny synthetic Food-11 sets, an isolated cache and MLflow store per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltrain.data.synth import synthesize


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """11 classes x 4 training images (2 for validation/evaluation), 80x60 JPEGs. Do not modify."""
    root = tmp_path_factory.mktemp("tiny") / "Food-11"
    synthesize(root, per_class=4, image_size=(80, 60), seed=1, eval_per_class=2)
    return root


@pytest.fixture
def tiny_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the tiny set."""
    target = tmp_path / "Food-11"
    shutil.copytree(tiny_data, target)
    return target


@pytest.fixture(scope="session")
def hue_tables_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hue lookup tables (128 MB), built once per session. Do not modify."""
    from mltrain.data.hue import ensure_hue_tables

    path = ensure_hue_tables(tmp_path_factory.mktemp("hue-cache"))
    assert path is not None
    return path


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hue_tables_file: Path) -> Iterator[Path]:
    """Each test gets its own MLflow sqlite store, cache folder and working directory.

    The cache folder starts with a hard link to the session's hue tables: they depend only on the
    installed Pillow, and building them per test would cost 1-2 s and 128 MB of disk each time.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    shared = tmp_path / "cache" / hue_tables_file.relative_to(hue_tables_file.parent.parent)
    shared.parent.mkdir(parents=True)
    os.link(hue_tables_file, shared)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    monkeypatch.delenv("FOOD11_DATA_DIR", raising=False)
    # The CLI run in-process (main([...])) quiets MLflow through this variable; it must not outlive the test.
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A developer's own `mltrain cluster up` must not be found (resolve_address reads its state file).
    monkeypatch.setenv("MLTRAIN_CLUSTER_DIR", str(tmp_path / "ray-cluster"))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    import mlflow

    # MLflow keeps a process-wide URI once anything sets it; pin it to this test's store.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path

    while mlflow.active_run() is not None:  # never leak a run into the next test
        mlflow.end_run()
