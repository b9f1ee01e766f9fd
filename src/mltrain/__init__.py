"""mltrain: train the Food-11 classifier, track it in MLflow, promote it through the registry.

Importing the package has no side effects and does not import torch; the public API is loaded on
first use::

    from mltrain import TrainConfig, train
    result = train(TrainConfig.build(overrides=["total_epochs=2", "pretrained=false"]), data_dir="data")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_API = {
    "TrainConfig": "mltrain.config",
    "train": "mltrain.training",
    "TrainResult": "mltrain.training",
    "LocalLauncher": "mltrain.launchers.local",
    "RayLauncher": "mltrain.launchers.ray",
    "RayOptions": "mltrain.launchers.ray",
    "tune": "mltrain.search",
    "SearchSettings": "mltrain.search",
    "TuneResult": "mltrain.search",
    "build_model": "mltrain.model",
    "Food11Data": "mltrain.data.module",
    "prepare": "mltrain.data.prepare",
    "synthesize": "mltrain.data.synth",
    "RunOwner": "mltrain.tracking",
    "RunLogger": "mltrain.tracking",
    "MltrainError": "mltrain.errors",
    "promote": "mltrain.registry",
    "pull": "mltrain.registry",
    "list_versions": "mltrain.registry",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'mltrain' has no attribute {name!r}")
