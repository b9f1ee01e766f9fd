"""Training checkpoints: everything needed to resume a run where it stopped, in the same MLflow run.

A checkpoint is a folder, self-contained so it can be copied to another machine (or handed back by Ray
Train) and resumed there: ``checkpoint.pt`` holds the state every engine shares (config, data folder,
progress, per-epoch metrics, MLflow run id, latest and best weights, optimizer); an engine may keep its
own files beside it (Lightning's ``last.ckpt``). Randomness is not stored: every epoch's random draws
derive from (seed, epoch) (see :mod:`mltrain.data.sampling`).
"""

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
    stopped_early: bool = False
    finished: bool = False
    """The training ran to its end, test evaluation included (a resume may only extend it)."""
    run_id: str | None = None
    """MLflow run this training logs into; a resumed training re-attaches to it."""
    config: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    """The data folder it trained on (absolute); a resume uses it unless told otherwise."""
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    """Every finished epoch's metrics: what MLflow must hold, so a resume can fill in what never arrived."""


def save_checkpoint(
    path: str | os.PathLike[str],
    state: TrainState,
    model: torch.nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    best_weights: dict[str, torch.Tensor] | None,
) -> Path:
    """Write atomically, so a crash mid-write never replaces a good checkpoint with half a file.

    Args:
        path: The ``checkpoint.pt`` file.
        state: Progress and metrics.
        model: The latest weights (a module or its state dict): what the next epoch continues from.
        optimizer: Its state continues too (None where an engine keeps it in its own file).
        best_weights: The best fine-tuning weights so far (what the MLflow model and the test use).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state": asdict(state),
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else model,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "best_weights": best_weights,
    }
    partial = target.with_suffix(".tmp")
    torch.save(payload, partial)
    partial.replace(target)
    return target


def find_checkpoint(resume: str | os.PathLike[str], output_dir: str | os.PathLike[str] = "outputs") -> Path:
    """The checkpoint folder ``resume`` names: a folder, its ``checkpoint.pt``, or a run id under ``output_dir``."""
    given = Path(resume)
    candidates = [given, Path(output_dir) / given] if len(given.parts) == 1 else [given]
    for candidate in candidates:
        if candidate.is_file() and candidate.name == CHECKPOINT_FILE:
            return candidate.parent
        if (candidate / CHECKPOINT_FILE).is_file():
            return candidate
    tried = " or ".join(str(candidate / CHECKPOINT_FILE) for candidate in candidates)
    raise ConfigError(f"cannot resume from {resume}: found no {tried}")


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
    known = {name for name in TrainState.__dataclass_fields__}
    payload["state"] = TrainState(**{key: value for key, value in payload["state"].items() if key in known})
    payload["folder"] = source.parent
    return payload
