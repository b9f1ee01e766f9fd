"""Randomness that a restart can rebuild: every random choice derives from (seed, epoch[, rank or sample]).

A training that is stopped and resumed must see, from the next epoch on, exactly the batches,
augmentations and dropout masks it would have seen without the stop. Saving random-generator states
cannot give that when loader processes are persistent (their streams live in processes that a restart
loses) or when the number of processes changes (a Ray worker lost, an elastic resize). Deriving instead
of carrying makes every epoch a pure function of its number:

* the order of an epoch's samples is a permutation drawn from ``(seed, epoch)``; process ``rank`` of
  ``world_size`` takes every ``world_size``-th position of it (see :class:`EpochSampler`);
* each sample's augmentation is drawn from its own seed, fixed by ``(seed, epoch, sample index)``, so it
  does not depend on which loader process, rank or batch the sample lands in, nor on ``num_workers``;
* the training process's own generators (dropout) are reseeded from ``(seed, epoch, rank)`` when an epoch
  starts (:func:`seed_epoch`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

SampleKey = tuple[int, int]
"""(sample index, augmentation seed): what :class:`EpochSampler` yields and the dataset receives."""


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence, so nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed torch (CPU and every GPU), numpy and Python's ``random`` for one epoch of one process."""
    value = derive_seed(seed, epoch, rank, 1)
    torch.manual_seed(value)  # also seeds every CUDA device
    np.random.seed(value % 2**32)
    random.seed(value)


class EpochSampler(Sampler[SampleKey]):
    """This process's share of an epoch, derived from ``(seed, epoch)`` only.

    Args:
        size: Number of samples in the split.
        seed: The training seed.
        shuffle: Draw a permutation per epoch (training); False keeps file order (evaluation).
        rank: This process's index among ``world_size`` data-parallel processes.
        world_size: Number of data-parallel processes.
        pad: Repeat samples from the start of the order so that every rank gets the same number (training
            under DDP needs equal step counts on every rank). Evaluation must not pad: each sample counts once.
    """

    def __init__(
        self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration yields (Lightning calls this before every epoch)."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """The whole epoch's sample order, the same on every rank."""
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0))
        return torch.randperm(self.size, generator=generator)

    def augment_seeds(self) -> torch.Tensor:
        """One seed per sample index for this epoch's augmentation (indexed by sample, not position)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        return torch.randint(0, 2**62, (self.size,), generator=generator, dtype=torch.int64)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[SampleKey]:
        order = self.order()
        if self.pad and self.size % self.world_size:
            total = len(self) * self.world_size
            order = order.repeat(-(-total // self.size))[:total]
        mine = order[self.rank :: self.world_size].tolist()
        seeds = self.augment_seeds().tolist() if self.shuffle else [0] * self.size
        return iter([(index, seeds[index]) for index in mine])


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Put a Food11Data loader's sampler at ``epoch`` (its order and augmentation derive from it)."""
    sampler = loader.sampler
    if not isinstance(sampler, EpochSampler):
        raise TypeError(f"expected a loader of Food11Data (EpochSampler), found a {type(sampler).__name__}")
    sampler.set_epoch(epoch)
