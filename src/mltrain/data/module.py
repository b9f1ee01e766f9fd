"""Food-11 for every engine: layout check, decoded cache, DataLoaders yielding uint8 batches."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mltrain import env
from mltrain.config import TrainConfig
from mltrain.data.cache import DecodedSplit, available_cpus, cache_entry_dir, load_or_build
from mltrain.data.layout import CLASS_NAMES, SPLITS, check_layout, list_samples
from mltrain.data.sampling import EpochSampler, SampleKey
from mltrain.data.transforms import Augment, build_augment
from mltrain.errors import DataError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
TRAIN, VAL, TEST = SPLITS  # "training", "validation", "evaluation"


class CachedImages(Dataset[Batch]):
    """One split of decoded images; ``__getitems__`` returns a whole uint8 batch at once.

    The memory map is opened lazily in each process, so the dataset pickles cheaply into
    DataLoader workers and Ray workers. Given (index, seed) keys, as :class:`EpochSampler` yields them,
    each image is augmented from its own seed: the result does not depend on the process that does it.
    """

    def __init__(self, split: DecodedSplit, augment: Augment | None = None) -> None:
        self.split = split
        self.augment = augment
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.split)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    def _pixels(self) -> np.ndarray:
        if self._images is None:
            self._images = self.split.open()
        return self._images

    def __getitem__(self, index: int) -> Batch:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, keys: list[int] | list[SampleKey]) -> Batch:
        # A batch holds plain indices or (index, seed) keys, never both; the per-key isinstance tells the type
        # checker which one each key is.
        seeded = bool(keys) and isinstance(keys[0], tuple)
        indices = [key[0] if isinstance(key, tuple) else key for key in keys]
        slots = self.split.valid[np.asarray(indices, dtype=np.int64)]
        pixels = self._pixels()[slots]  # (B, S, S, 3) copy out of the memory map
        if self.augment is not None:
            seeds = [key[1] for key in keys if isinstance(key, tuple)] if seeded else None
            pixels = np.stack(_augmented(self.augment, pixels, seeds))
        images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
        labels = torch.from_numpy(self.split.labels[slots])
        return images, labels


def _augmented(augment: Augment, pixels: np.ndarray, seeds: list[int] | None) -> list[np.ndarray]:
    if seeds is None:
        return [augment(image) for image in pixels]
    # torchvision draws from torch's default CPU generator; borrow it per image and give it back, so that
    # with num_workers=0 the training process's own stream (dropout) is not disturbed.
    with torch.random.fork_rng(devices=[]):
        augmented = []
        for image, seed in zip(pixels, seeds, strict=True):
            torch.default_generator.manual_seed(seed)
            augmented.append(augment(image))
    return augmented


def pass_batch(batch: Batch) -> Batch:
    """Collate function for datasets that already return whole batches."""
    return batch


def _worker_init(_: int) -> None:
    # Each loader process decodes/augments on one core; the training process owns the rest.
    torch.set_num_threads(1)


@dataclass
class LoaderPlan:
    """How the training loader is fed, sized from the cores this process really has."""

    workers: int
    pin_memory: bool
    prefetch_factor: int | None

    @classmethod
    def for_device(cls, config: TrainConfig, device: torch.device) -> LoaderPlan:
        cores = available_cpus()
        if config.num_workers != "auto":
            workers = int(config.num_workers)
        elif device.type == "cuda":
            workers = min(max(cores - 1, 1), 16)
        else:
            # On a CPU the model's own compute needs the cores; one loader process hides the
            # per-image augmentation (~1.3 ms) behind a step (>= 6 ms per image).
            workers = 1 if cores > 1 else 0
        return cls(workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


class Food11Data:
    """The Food-11 splits of one data folder, decoded once and served as uint8 batches.

    Engines call :meth:`setup` once, then ask for loaders; the images reach the model through
    :func:`mltrain.data.transforms.to_model_input` on the training device.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        config: TrainConfig,
        progress: bool = True,
    ) -> None:
        self.root = env.data_dir(root)
        self.config = config
        self.progress = progress
        self.splits: dict[str, DecodedSplit] = {}

    def setup(self) -> Food11Data:
        """Check the layout (fails in seconds, not hours in) and load or build the caches."""
        check_layout(self.root)
        cache_root = env.cache_dir(self.config.cache_dir)
        for split in SPLITS:
            samples = list_samples(self.root, split)
            entry = cache_entry_dir(cache_root, self.root, split, self.config.image_size)
            self.splits[split] = load_or_build(
                samples,
                self.config.image_size,
                entry,
                progress=self.progress,
                description=f"decode {split}",
            )
            if len(self.splits[split]) == 0:
                raise DataError(
                    f"{self.root / split} has no readable images "
                    f"({len(samples)} file(s), {len(self.splits[split].skipped)} skipped)"
                )
        return self

    @property
    def skipped_images(self) -> int:
        """Files in any split that were not usable images (logged as ``skipped_images``)."""
        return sum(len(split.skipped) for split in self.splits.values())

    def counts(self) -> dict[str, int]:
        """Usable images per split."""
        return {name: len(split) for name, split in self.splits.items()}

    def class_counts(self) -> dict[str, list[int]]:
        """Usable images per class (index order of :data:`~mltrain.data.layout.CLASS_NAMES`) for each split."""
        return {
            name: np.bincount(split.labels[split.valid], minlength=len(CLASS_NAMES)).tolist()
            for name, split in self.splits.items()
        }

    @property
    def fingerprint(self) -> str:
        """Identity of the data: changes when a file of any split is added, removed, renamed, rewritten or
        relabelled (the files' names, labels, sizes and modification times; not the cache's image size)."""
        if not self.splits:
            raise RuntimeError("Food11Data.setup() must run before asking for its fingerprint")
        digest = hashlib.sha256()
        for name in SPLITS:
            digest.update(f"{name}:{self.splits[name].files_digest}\n".encode())
        return digest.hexdigest()

    def train_dataloader(self, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> DataLoader:
        """Shuffled, augmented training batches of ``batch_size`` uint8 images: this rank's share.

        The order and the augmentation of an epoch derive from (seed, epoch) alone (see
        :mod:`mltrain.data.sampling`): call ``loader.sampler.set_epoch(epoch)`` before each epoch (Lightning
        does), and a resumed training sees exactly the batches it would have seen without the stop.
        """
        plan = LoaderPlan.for_device(self.config, torch.device(device))
        split = self._split(TRAIN)
        return DataLoader(
            CachedImages(split, build_augment(self.config)),
            batch_size=self.config.batch_size,
            sampler=EpochSampler(len(split), self.config.seed, rank=rank, world_size=world_size),
            # The loader's own generator: drawing its worker seed from torch's global one would shift the
            # dropout stream by one draw whenever a loader starts (only after a restart, with persistent workers).
            generator=torch.Generator().manual_seed(self.config.seed),
            # torch types collate_fn as taking a list of samples; with __getitems__ it gets that method's batch.
            collate_fn=pass_batch,  # type: ignore[arg-type]
            num_workers=plan.workers,
            pin_memory=plan.pin_memory,
            prefetch_factor=plan.prefetch_factor,
            persistent_workers=plan.workers > 0,
            worker_init_fn=_worker_init if plan.workers else None,
        )

    def val_dataloader(self, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> DataLoader:
        """Validation batches in file order, no augmentation; with several ranks, each sample on one rank only."""
        return self._eval_loader(VAL, device, rank, world_size)

    def test_dataloader(self, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> DataLoader:
        """Evaluation (test) batches in file order, no augmentation; each sample on one rank only."""
        return self._eval_loader(TEST, device, rank, world_size)

    def _eval_loader(self, split: str, device: torch.device | str, rank: int, world_size: int) -> DataLoader:
        # Without augmentation a batch is one slice of the memory map: no worker processes needed.
        # No padding: a sample repeated to even out the ranks would count twice in val/test metrics.
        size = len(self._split(split))
        return DataLoader(
            CachedImages(self._split(split)),
            # The training batch size: larger eval batches measured slower on CPUs (new kernel shapes).
            batch_size=self.config.batch_size,
            sampler=EpochSampler(size, self.config.seed, shuffle=False, rank=rank, world_size=world_size, pad=False),
            generator=torch.Generator().manual_seed(self.config.seed),
            collate_fn=pass_batch,  # type: ignore[arg-type]  # see train_dataloader
            num_workers=0,
            pin_memory=torch.device(device).type == "cuda",
        )

    def _split(self, name: str) -> DecodedSplit:
        if name not in self.splits:
            raise RuntimeError("Food11Data.setup() must run before asking for loaders")
        return self.splits[name]
