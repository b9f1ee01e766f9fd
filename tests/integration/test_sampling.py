"""Augmented batches made by real loader processes are those made in-process."""

from pathlib import Path

import pytest

from tests.unit.test_sampling import _batches_match_the_in_process_loaders

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [2])
def test_augmented_batches_do_not_depend_on_loader_processes(tiny_data: Path, workers: int) -> None:
    _batches_match_the_in_process_loaders(tiny_data, workers)
