"""Completing a run from its checkpoint folder before it ends: every epoch, then the best model."""

from __future__ import annotations

import logging
from pathlib import Path

from mltrain.config import TrainConfig
from mltrain.tracking.owner import RunOwner

log = logging.getLogger(__name__)


def finalize_run(owner: RunOwner, folder: Path, quiet: bool = False) -> str | None:
    """Complete a run from its checkpoint folder before the run ends: every epoch, then the best model.

    The training loop only keeps the best weights (in ``checkpoint.pt``) and queues its metrics; this runs
    once, off the loop, in the process that owns the run — also when the training was interrupted or
    failed, so a KILLED run still has its best model. Returns the model's URI (None without a checkpoint).

    Args:
        owner: The run's owner (the run still open).
        folder: The training's checkpoint folder.
        quiet: An exception is already on its way: report a failure here as a warning instead of raising it.
    """
    from mltrain.engines.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from mltrain.model import build_model

    if not (folder / CHECKPOINT_FILE).is_file():
        return None
    try:
        payload = load_checkpoint(folder)
        state = payload["state"]
        filled = owner.logger.verify_history(state.history)
        if filled:
            log.warning("epoch(s) %s had not reached MLflow; logged them from the checkpoint", filled)
        weights = payload.get("best_weights") or payload["model"]
        config = TrainConfig.from_saved(state.config)
        model = build_model(config.with_overrides(pretrained=False))  # the weights come from the checkpoint
        model.load_state_dict(weights)
        return owner.log_model(model, config.image_size, step=max(state.best_epoch, 0))
    except Exception as exc:
        if not quiet:
            raise
        log.warning("could not log the best model of run %s: %s (it stays in %s)", owner.run_id, exc, folder)
        return None
