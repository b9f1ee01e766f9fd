"""Launchers: where a training runs. An engine is a loop (:mod:`mltrain.engines`); a launcher runs an engine's
loop somewhere, and the process that calls it owns the training's MLflow run whatever the launcher does.

* ``local`` (:mod:`.local`) — in this process, on this machine's devices (Lightning's DDP for several);
* ``ray`` (:mod:`.ray`) — on Ray Train workers: several machines, fractional GPUs, failover, elastic groups.

Each launcher has its own options (:class:`~mltrain.launchers.ray.RayOptions`); none of them is part of the
training config or its checkpoint. The interface is :class:`~mltrain.launchers.base.Launcher`.
"""

from __future__ import annotations

from importlib import import_module

from mltrain.config import LaunchKeys
from mltrain.errors import ConfigError
from mltrain.launchers.base import FitJob, Launcher, RunRef

LAUNCHERS = {
    "local": ("mltrain.launchers.local", "LocalLauncher"),
    "ray": ("mltrain.launchers.ray", "RayLauncher"),
}
"""Launcher name -> (module, class); imported on demand (Ray is heavy)."""
DEFAULT = "local"

__all__ = ["DEFAULT", "LAUNCHERS", "FitJob", "Launcher", "RunRef", "get_launcher", "select_launcher"]


def get_launcher(name: str) -> Launcher:
    """A launcher by name, with its default options; ConfigError for an unknown name."""
    try:
        module, cls = LAUNCHERS[name]
    except KeyError:
        raise ConfigError(f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}") from None
    launcher: Launcher = getattr(import_module(module), cls)()
    return launcher


def select_launcher(given: str | Launcher | None, keys: LaunchKeys) -> Launcher:
    """The launcher a training runs with: the one given (by name or with its options), else the one the config
    names (``engine: ray``, the alias), else ``local``."""
    if isinstance(given, Launcher):
        return given
    return get_launcher(given or keys.launcher or DEFAULT)
