"""mltrain: train the Food-11 classifier, track it in MLflow, promote it through the registry.

Importing the package has no side effects and does not import torch; the public API is loaded on
first use::

    from mltrain import TrainConfig, train
    result = train(TrainConfig.build(overrides=["total_epochs=2", "pretrained=false"]), data_dir="data")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "TrainConfig": "mltrain.config",
    "train": "mltrain.training",
    "TrainResult": "mltrain.training",
    "tune": "mltrain.launch.tune",
    "SearchSettings": "mltrain.launch.tune",
    "TuneResult": "mltrain.launch.tune",
    "build_model": "mltrain.model",
    "Food11Data": "mltrain.data.module",
    "prepare": "mltrain.data.prepare",
    "synthesize": "mltrain.data.synth",
    "RunTracker": "mltrain.tracking.session",
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
