"""Randomness derived from (seed, epoch): the same batches and augmentations whoever asks, whenever."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mltrain.config import TrainConfig
from mltrain.data.module import Food11Data
from mltrain.data.sampling import EpochSampler, seed_epoch


def _keys(sampler: EpochSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_an_epoch_is_a_function_of_seed_and_epoch_only() -> None:
    first, again = EpochSampler(50, seed=7), EpochSampler(50, seed=7)
    assert _keys(first, 3) == _keys(again, 3)  # a new process (a restart) rebuilds epoch 3 as it was
    assert _keys(first, 3) != _keys(first, 4)
    assert [i for i, _ in _keys(first, 3)] != [i for i, _ in _keys(EpochSampler(50, seed=8), 3)]
    assert sorted(i for i, _ in _keys(first, 5)) == list(range(50))


def test_ranks_share_one_order_and_each_sample_keeps_its_augmentation_seed() -> None:
    whole = dict(_keys(EpochSampler(23, seed=1), 2))
    shards = [_keys(EpochSampler(23, seed=1, rank=rank, world_size=3), 2) for rank in range(3)]
    assert len({len(shard) for shard in shards}) == 1  # padded: every rank takes the same number of steps
    seen = [index for shard in shards for index, _ in shard]
    assert set(seen) == set(range(23)) and len(seen) == 24  # one sample repeated to even out the ranks
    for shard in shards:
        assert all(whole[index] == seed for index, seed in shard)  # same augmentation whatever the world size


def test_evaluation_shards_count_every_sample_exactly_once() -> None:
    shards = [list(EpochSampler(23, seed=1, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(index for shard in shards for index, _ in shard) == list(range(23))
    assert [len(shard) for shard in shards] == [8, 8, 7]
    assert [len(EpochSampler(23, 1, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)] == [8, 8, 7]


def test_seed_epoch_differs_by_rank_and_repeats_exactly() -> None:
    draws = {}
    for rank in (0, 1):
        seed_epoch(3, 4, rank)
        draws[rank] = (torch.rand(3), np.random.rand())
    seed_epoch(3, 4, 0)
    assert torch.equal(torch.rand(3), draws[0][0]) and np.random.rand() == draws[0][1]
    assert not torch.equal(draws[0][0], draws[1][0])


@pytest.mark.parametrize("workers", [0])  # 2 loader processes: tests/integration/test_sampling.py
def test_augmented_batches_do_not_depend_on_loader_processes(tiny_data: Path, workers: int) -> None:
    _batches_match_the_in_process_loaders(tiny_data, workers)


def _batches_match_the_in_process_loaders(tiny_data: Path, workers: int) -> None:
    """An epoch's augmented batches with ``workers`` loader processes are those of a loader without any."""
    config = TrainConfig(image_size=64, batch_size=8, pretrained=False, seed=5, num_workers=workers)
    data = Food11Data(tiny_data, config, progress=False).setup()
    reference = Food11Data(tiny_data, config.with_overrides(num_workers=0), progress=False).setup()

    def epoch_batches(loader, epoch):
        loader.sampler.set_epoch(epoch)
        return [(images.clone(), labels.clone()) for images, labels in loader]

    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = epoch_batches(data.train_dataloader(), 2)
    assert torch.equal(torch.get_rng_state(), before)  # the training process's own stream is untouched
    expected = epoch_batches(reference.train_dataloader(), 2)
    for (images, labels), (want_images, want_labels) in zip(batches, expected, strict=True):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)
    assert not torch.equal(batches[0][0], epoch_batches(reference.train_dataloader(), 3)[0][0])
