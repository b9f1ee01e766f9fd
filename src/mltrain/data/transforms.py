"""Augmentation and normalisation: the lab's transforms, split into a cached and a per-step part.

The lab's training transform is Resize -> flip -> rotation -> colour jitter -> ToTensor -> Normalize
(with a centre crop to make the image square). Resize and crop are deterministic and live in the
decoded-image cache; the random part runs per image with the same torchvision transforms on the same
PIL images as the lab, so the augmentation is exactly the lab's (the hue step goes through lookup
tables that give the same bytes, see :mod:`mltrain.data.hue`); ToTensor/Normalize run batched on the
training device, in the memory layout the model wants.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from mltrain import env
from mltrain.config import TrainConfig
from mltrain.data.hue import ColorJitter, ensure_hue_tables

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Augment = Callable[[np.ndarray], np.ndarray]


def build_augment(config: TrainConfig) -> Augment:
    """The random training augmentation, as a function on one (S, S, 3) uint8 image."""
    tables = ensure_hue_tables(env.cache_dir(config.cache_dir)) if config.color_jitter_hue else None
    pipeline = v2.Compose(
        [
            v2.RandomHorizontalFlip(p=config.random_horizontal_flip),
            v2.RandomRotation(degrees=config.random_rotation),
            ColorJitter(
                brightness=config.color_jitter_brightness,
                contrast=config.color_jitter_contrast,
                saturation=config.color_jitter_saturation,
                hue=config.color_jitter_hue,
                tables=tables,
            ),
        ]
    )
    return _PilAugment(pipeline)


class _PilAugment:
    """Picklable wrapper (DataLoader workers may be spawned) running a v2 pipeline on PIL images."""

    def __init__(self, pipeline: v2.Compose) -> None:
        self.pipeline = pipeline

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipeline(Image.fromarray(image)))


def to_model_input(
    images: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) batch -> normalised float tensor on ``device``, in the model's layout."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True)
    mean, std = _pixel_mean_std(images.device)
    # (x/255 - mean)/std == (x - 255*mean) / (255*std): one pass instead of three over the batch.
    normalised = (images.to(torch.float32) - mean) / std
    return normalised.to(dtype=dtype, memory_format=memory_format)


@functools.cache
def _pixel_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std in 0-255 units on ``device``, made once (not per batch: a host-to-device copy)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return mean.to(device), std.to(device)
