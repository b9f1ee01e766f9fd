"""Training engines: a loop each. ``fit(config, data, tracker, checkpoint_dir, resume, on_epoch_end, progress)``.

An engine adapts the shared model, data path and metric names to a training framework; it never copies them,
and it does not know where it runs: that is the launcher's business (:mod:`mltrain.launchers`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from mltrain.errors import ConfigError

ENGINES = {
    "torch": "mltrain.engines.torch_engine",
    "lightning": "mltrain.engines.lightning",
}
"""Engine name -> the module whose ``fit`` trains with it."""


def get_fit(name: str) -> Callable[..., Any]:
    """The ``fit`` function of engine ``name`` (imported on demand: Lightning is heavy)."""
    try:
        module = ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}") from None
    fit: Callable[..., Any] = import_module(module).fit
    return fit
