"""The one model builder: torchvision MobileNetV2 with a Dropout + Linear head for Food-11."""

from __future__ import annotations

import pickle

import torch
from torch import nn
from torchvision import models

from mltrain.config import NUM_CLASSES, TrainConfig
from mltrain.errors import ConfigError

WEIGHTS = models.MobileNet_V2_Weights.DEFAULT


def build_model(config: TrainConfig, num_classes: int = NUM_CLASSES) -> nn.Module:
    """MobileNetV2 whose classifier is replaced by Dropout + Linear(last_channel, num_classes).

    The model stays a plain torchvision ``MobileNetV2`` so that a saved model loads wherever
    torchvision is installed, without mltrain.
    """
    if config.model_architecture != "MobileNetV2":  # pragma: no cover - the schema allows only this
        raise ConfigError(f"model_architecture {config.model_architecture!r} is not supported")
    model = models.mobilenet_v2(weights=None)
    if config.pretrained:
        model.load_state_dict(_imagenet_state_dict())
    model.classifier = nn.Sequential(
        nn.Dropout(p=config.dropout_probability),
        nn.Linear(model.last_channel, num_classes),
    )
    return model


def check_pretrained_weights(config: TrainConfig) -> None:
    """ConfigError now, not after a run has started, when ``pretrained=true`` and the ImageNet weights are not
    available (not in torch's cache and no network). Downloads them into the cache when they can be."""
    if config.pretrained:
        _imagenet_state_dict()


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    try:
        return WEIGHTS.get_state_dict(progress=True, check_hash=False)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:  # URLError is an OSError
        target = f"{torch.hub.get_dir()}/checkpoints/{WEIGHTS.url.rsplit('/', 1)[-1]}"
        raise ConfigError(
            f"the ImageNet weights for MobileNetV2 are not available ({type(exc).__name__}: {exc}); "
            f"download {WEIGHTS.url} on a machine with network and place it at {target} "
            "(or point TORCH_HOME at a folder holding hub/checkpoints/), or train from scratch with "
            "--set pretrained=false"
        ) from None


def backbone(model: nn.Module) -> nn.Module:
    """The convolutional feature extractor (everything but the classifier head)."""
    return model.get_submodule("features")


def head(model: nn.Module) -> nn.Module:
    """The classifier head trained in phase 1."""
    return model.get_submodule("classifier")


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze (phase 1) or unfreeze (phase 2) the backbone's parameters."""
    for parameter in backbone(model).parameters():
        parameter.requires_grad = trainable


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
