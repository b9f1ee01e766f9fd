"""Fixtures for tests that need a Ray cluster (see tests/ray_fixtures.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from mltrain.cluster.local import LocalCluster
from tests.ray_fixtures import local_cluster


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for a whole test module: a head and 2 workers, 1 CPU and 1 logical GPU each."""
    state_dir = tmp_path_factory.mktemp("ray-cluster")
    with local_cluster(state_dir, workers=2, cpus_per_worker=1, gpus_per_worker=1) as cluster:
        yield cluster


@pytest.fixture
def ray_cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters of any shape (``local_cluster``'s arguments) within a test; all stop at its end."""
    with ExitStack() as stack:
        count = 0

        def start(**shape: Any) -> LocalCluster:
            nonlocal count
            count += 1
            return stack.enter_context(local_cluster(tmp_path / f"ray-cluster-{count}", **shape))

        yield start
