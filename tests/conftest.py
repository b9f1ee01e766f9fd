"""Shared fixtures: tiny synthetic Food-11 sets, an isolated cache and MLflow store per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltrain.data.synth import synthesize


def pytest_configure(config: pytest.Config) -> None:
    """The suite's own home folder: nothing a test or what it starts (Ray's token, IPython's profile, caches)
    writes under ``~`` reaches the user's. Removed when the session ends."""
    home = Path(tempfile.mkdtemp(prefix="mltrain-tests-home-"))
    config.stash[_REAL_HOME] = os.environ.get("HOME", "")
    config.stash[_TEST_HOME] = home
    os.environ["HOME"] = str(home)
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEST_HOME in config.stash:
        shutil.rmtree(config.stash[_TEST_HOME], ignore_errors=True)
        os.environ["HOME"] = config.stash[_REAL_HOME]


_REAL_HOME = pytest.StashKey[str]()
_TEST_HOME = pytest.StashKey[Path]()

TIERS = Path(__file__).parent
"""Where a test lives says what it may do; its marks follow (``pytest -m "not ray"`` ...)."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(TIERS).parts
        if where[0] == "integration":
            item.add_marker(pytest.mark.integration)
            if where[1] == "ray":
                item.add_marker(pytest.mark.ray)
    if _xdist_worker():  # `pytest -n N`: the groups and their order; one process keeps the files' order
        _group_for_xdist(items)


SHARED_GROUPS = {
    "session_cluster": "ray-cluster",
    "postgres": "team",
    "s3": "team",
    "tracking_server": "team",
}
"""Session fixtures too costly to start once per pytest-xdist worker: their tests run on one worker, in order."""
FIRST = ("ray-cluster", "integration/test_readme.py", "integration/ray/test_tune.py", "team")
"""The longest groups, started first so that no worker is left with one of them at the end."""


def _group_for_xdist(items: list[pytest.Item]) -> None:
    """``pytest -n N --dist loadgroup`` (``make test TEST_WORKERS=N``) runs the suite on N processes: each test file is
    one unit of work (its module fixtures are made once), except the tests of a shared session fixture, which
    share one unit whatever their file."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        shared = [group for fixture, group in SHARED_GROUPS.items() if fixture in fixtures]
        group = shared[0] if shared else item.path.relative_to(TIERS).as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
        item.stash[_GROUP] = group
    rank = {group: index for index, group in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.stash[_GROUP], len(FIRST)))  # stable: file order within a group


_GROUP = pytest.StashKey[str]()


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's ``tmp_path``, one folder deeper under a name no other test had.

    pytest names a test's folder after the first 30 characters of its name and the next free number, and removes
    it when the test passes: two parametrized cases then get the same path, one after the other. MLflow keeps one
    store per tracking URI for the process's lifetime, with its connections to the database file it opened first,
    so an in-process test on a reused path wrote through a stale connection ("attempt to write a readonly database").
    """
    unique = tmp_path / uuid.uuid4().hex[:8]
    unique.mkdir()
    return unique


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
    from filelock import FileLock

    from mltrain.data.hue import ensure_hue_tables

    # Under pytest-xdist every worker has a base folder of its own under one shared parent: build them once there.
    shared = tmp_path_factory.getbasetemp().parent if _xdist_worker() else tmp_path_factory.getbasetemp()
    folder = shared / "hue-cache"
    with FileLock(str(shared / "hue-cache.lock")):
        path = ensure_hue_tables(folder)
    assert path is not None
    return path


def _xdist_worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite database with its tables made and no experiment yet, as MLflow leaves a new one before
    its first use creates the ``Default`` experiment. Do not modify.

    MLflow makes a new database's tables by running its ~60 alembic migrations: 3 s on an idle 2-core machine,
    over 15 s on a busy one, in every process that opens a new store. Each test starts from a copy of this one
    instead. What a brand-new store does (made at first use, also by several processes at once) is tested where
    it matters: tests/integration/test_tracking.py (new stores opened at once) and the README test (a fresh sandbox).
    """
    import sqlite3

    from mlflow.tracking import MlflowClient

    database = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()  # creates the tables and the Default experiment
    with sqlite3.connect(database) as connection:  # without it, each copy's first use makes its own Default
        connection.execute("DELETE FROM experiment_tags")
        connection.execute("DELETE FROM experiments")
    with sqlite3.connect(database) as connection:
        connection.execute("VACUUM")
    return database


@pytest.fixture(autouse=True)
def isolated_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hue_tables_file: Path, empty_store: Path
) -> Iterator[Path]:
    """Each test gets its own MLflow sqlite store (a copy of ``empty_store``), cache folder and working directory.

    The cache folder starts with a hard link to the session's hue tables: they depend only on the
    installed Pillow, and building them per test would cost 1-2 s and 128 MB of disk each time.
    """
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
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
