"""Every environment variable mltrain reads, in one place. Explicit arguments always win."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_VAR = "FOOD11_DATA_DIR"
TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"
RAY_ADDRESS_VAR = "RAY_ADDRESS"
CACHE_DIR_VAR = "MLTRAIN_CACHE_DIR"

DEFAULT_DATA_DIR = Path("Food-11")


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the Food-11 folders are: the argument, else ``FOOD11_DATA_DIR``, else ``./Food-11``."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(DATA_DIR_VAR)
    return Path(from_env) if from_env else DEFAULT_DATA_DIR


def tracking_uri(explicit: str | None = None) -> str | None:
    """The MLflow tracking URI, or None to let MLflow use its own default (``sqlite:///mlflow.db``)."""
    return explicit or os.environ.get(TRACKING_URI_VAR) or None


def ray_address(explicit: str | None = None) -> str | None:
    """The Ray cluster to join, or None for an embedded local instance."""
    return explicit or os.environ.get(RAY_ADDRESS_VAR) or None


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where decoded-image caches live: the argument, ``MLTRAIN_CACHE_DIR``, or the user cache folder."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CACHE_DIR_VAR)
    if from_env:
        return Path(from_env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mltrain"
