"""Everything decided and checked before a training's MLflow run is touched: config, launcher, checkpoint, data.

A mistake found here leaves no run and no ``outputs/<run_id>/`` behind, and a resume that cannot start leaves
its run exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain import env
from mltrain.config import TrainConfig, resolve, resolve_resume
from mltrain.errors import ConfigError
from mltrain.launchers import Launcher, select_launcher


@dataclass
class TrainPlan:
    """A training, resolved: what to train, where, from which checkpoint, on which data."""

    config: TrainConfig
    launcher: Launcher
    changes: dict[str, tuple[Any, Any]]
    """What a resume changed in the checkpoint's config (``{key: (checkpointed, new)}``)."""
    checkpoint: dict[str, Any] | None
    """The checkpoint a resume continues (:func:`~mltrain.engines.checkpoint.load_checkpoint`'s), or None."""
    data_dir: Path

    @property
    def run_id(self) -> str | None:
        """The run a resume continues (None for a new training)."""
        return self.checkpoint["state"].run_id if self.checkpoint is not None else None

    def folder(self, run_id: str | None) -> Path:
        """The training's checkpoint folder: the one resumed from, else ``<output_dir>/<run_id>``."""
        if self.checkpoint is not None:
            return Path(self.checkpoint["folder"])
        return Path(self.config.output_dir) / str(run_id) if run_id else Path(self.config.output_dir)


def plan_training(
    config: TrainConfig | None,
    overrides: Iterable[str] | Mapping[str, Any],
    config_file: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None,
    resume: str | os.PathLike[str] | None,
    launcher: str | Launcher | None,
) -> TrainPlan:
    """Resolve the config, the launcher, the checkpoint and the data folder (:func:`check_before_run` checks the
    rest). See :func:`mltrain.training.train` for the arguments."""
    if resume is None:
        resolved, keys = resolve(config_file, overrides, base=config)
        checkpoint, changes = None, dict[str, tuple[Any, Any]]()
    else:
        from mltrain.engines.checkpoint import find_checkpoint, load_checkpoint  # torch: only when resuming

        output_dir = config.output_dir if config is not None else TrainConfig().output_dir
        checkpoint = load_checkpoint(find_checkpoint(resume, output_dir))
        state = checkpoint["state"]
        resolved, changes, keys = resolve_resume(state.config, config_file, overrides, given=config)
        _check_something_to_do(state, resolved)
        saved_data = Path(state.data_dir) if state.data_dir else None
        if data_dir is None and saved_data is not None and saved_data.is_dir():
            data_dir = saved_data
    resolved, chosen = select_launcher(launcher, keys).configure(resolved, keys)
    return TrainPlan(resolved, chosen, changes, checkpoint, env.data_dir(data_dir))


def check_before_run(plan: TrainPlan) -> None:
    """Usage mistakes found now leave no MLflow run and no ``outputs/<run_id>/`` behind (data: see the run)."""
    from mltrain.model import check_pretrained_weights

    config = plan.config
    plan.launcher.check(config)
    check_pretrained_weights(config)
    _check_writable(Path(config.output_dir), "output_dir")
    if plan.checkpoint is not None and config.engine == "lightning":
        from mltrain.engines.lightning.callbacks import LAST_CHECKPOINT

        last = plan.checkpoint["folder"] / LAST_CHECKPOINT
        if not last.is_file():
            raise ConfigError(
                f"cannot resume with engine={config.engine}: {last} does not exist (the Lightning engine continues "
                "from it; a checkpoint of the torch engine resumes with engine=torch)"
            )


def _check_writable(folder: Path, key: str) -> None:
    existing = next((parent for parent in (folder, *folder.absolute().parents) if parent.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={folder}: cannot create folders there ({existing} is not a writable folder)")


def _check_something_to_do(state: Any, config: TrainConfig) -> None:
    if not state.finished:
        return
    if state.next_epoch >= config.total_epochs:
        raise ConfigError(
            f"run {state.run_id} already finished after {state.next_epoch} epoch(s); to train it further, resume "
            f"with a larger total_epochs, e.g. --set total_epochs={state.next_epoch + 5}"
        )
    if state.stale_epochs >= config.patience:
        raise ConfigError(
            f"run {state.run_id} stopped early: {state.stale_epochs} fine-tuning epoch(s) without a lower val_loss "
            f"(patience {config.patience}); to train it further, resume with a larger patience, e.g. "
            f"--set patience={state.stale_epochs + 3}"
        )
