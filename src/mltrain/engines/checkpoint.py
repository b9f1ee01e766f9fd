"""Training checkpoints: everything needed to resume a run where it stopped, in the same MLflow run."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mltrain.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainState:
    """Progress of a training, saved after every epoch."""

    next_epoch: int = 0
    """First epoch still to run."""
    best_val_loss: float = math.inf
    """Lowest fine-tuning val_loss so far."""
    best_epoch: int = -1
    """Epoch that reached it."""
    stale_epochs: int = 0
    """Fine-tuning epochs since the last improvement (early stopping counts these)."""
    model_uri: str | None = None
    """URI of the last model logged to MLflow."""
    stopped_early: bool = False
    run_id: str | None = None
    """MLflow run this training logs into; a resumed training re-attaches to it."""
    config: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike[str],
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    best_weights: dict[str, torch.Tensor] | None,
) -> Path:
    """Write atomically, so a crash mid-write never replaces a good checkpoint with half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state": asdict(state),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "best_weights": best_weights,
        "torch_rng": torch.get_rng_state(),
    }
    partial = target.with_suffix(".tmp")
    torch.save(payload, partial)
    partial.replace(target)
    return target


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; ConfigError when unusable."""
    source = Path(path)
    if source.is_dir():
        source = source / CHECKPOINT_FILE
    if not source.is_file():
        raise ConfigError(f"checkpoint {source} does not exist")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"checkpoint {source} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "state" not in payload or "model" not in payload:
        raise ConfigError(f"{source} is not an mltrain checkpoint")
    payload["state"] = TrainState(**payload["state"])
    return payload
