"""Training engines. Each exposes ``fit(config, data, tracker, checkpoint_dir, resume, ...)``.

An engine adapts the shared model, data path and metric names to a training framework; it never
copies them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

_ENGINES = {
    "torch": "mltrain.engines.torch_engine",
    "lightning": "mltrain.engines.lightning",
    "ray": "mltrain.launch.ray",  # the Lightning engine, launched on Ray Train workers
}


def get_fit(name: str) -> Callable[..., Any]:
    """The ``fit`` function of engine ``name`` (imported on demand: Lightning is heavy)."""
    try:
        module = _ENGINES[name]
    except KeyError:
        from mltrain.errors import ConfigError

        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(_ENGINES)}") from None
    return import_module(module).fit
