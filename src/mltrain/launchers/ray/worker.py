"""What each Ray Train worker runs: the Lightning engine's own recipe, with Ray's strategy, reporting each epoch.

Ray *launches* the Lightning engine rather than copying its loop: each worker builds the same
:class:`~mltrain.engines.lightning.recipe.LightningRecipe`, handing it Ray's DDP strategy and cluster environment
instead of Lightning's own launcher, and an epoch hook that reports the checkpoint folder to Ray Train.

* every worker knows its rank from Ray's train context, trains its shard, and reports each epoch (rank 0 with
  the checkpoint folder; the others metrics only, as Ray Train V2 wants every rank to report);
* the rank-0 worker attaches a :class:`~mltrain.tracking.logger.RunLogger` to the driver's run by id and logs the
  epochs; the others get a NullLogger. After a failover, the new rank 0 restores the checkpoint Ray hands back
  (``ray.train.get_checkpoint()``), attaches again and logs from the next epoch on: the logger skips steps the
  run already has and fills in any the checkpoint has but MLflow lacks — no step twice, no gap.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mltrain import env, metrics
from mltrain.config import TrainConfig
from mltrain.launchers.ray import tags
from mltrain.launchers.ray.scratch import scratch_folder
from mltrain.tracking.logger import RunLogger
from mltrain.tracking.runlog import NullLogger, RunLog


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: restore, build the Lightning recipe with Ray's strategy, train, report."""
    import ray.train

    from mltrain.data.module import Food11Data
    from mltrain.tracking.records import record_dataset

    context = ray.train.get_context()
    rank = context.get_world_rank()
    config = TrainConfig.from_mapping(loop_config["config"])
    local = scratch_folder(loop_config["run_id"], rank)
    resume, source = _restore(local, loop_config)
    data = Food11Data(_worker_data_dir(loop_config["data_dir"]), config, progress=False).setup()
    # Rank 0 logs into the driver's run; the other ranks log nothing.
    tracker = RunLogger(loop_config["run_id"], loop_config["tracking_uri"]) if rank == 0 else NullLogger()
    try:
        with tracker:
            restart = _record_start(tracker, resume, source, context.get_world_size()) if rank == 0 else None
            if rank == 0 and restart is None and loop_config.get("record_dataset"):
                record_dataset(tracker, data)
            _train(tracker, config, data, local, resume, restart, rank)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _train(
    tracker: RunLog,
    config: TrainConfig,
    data: Any,
    local: Path,
    resume: dict[str, Any] | None,
    restart: int | None,
    rank: int,
) -> None:
    """The Lightning recipe with Ray's strategy and cluster environment; the final report."""
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from mltrain.engines.lightning.recipe import LightningRecipe

    recipe = LightningRecipe(
        config,
        data,
        tracker,
        local,
        progress=False,
        on_epoch_end=_Reporter(rank, local),
        resume=resume,
        strategy=_strategy(config),
        plugins=[RayLightningEnvironment()],
        devices="auto",
        callbacks=[_first_step_after_restart(tracker, restart)] if restart is not None else (),
    )
    prepare_trainer(recipe.trainer)
    result = recipe.run()
    final = {
        metrics.TEST_LOSS: result.test_loss,
        metrics.TEST_ACCURACY: result.test_accuracy,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        # As text: a report's values are scalars; the matrix is already summed over the workers.
        "confusion": json.dumps(result.confusion) if result.confusion is not None else "",
    }
    ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(str(local)) if rank == 0 else None)


def _strategy(config: TrainConfig) -> Any:
    """Ray's DDP strategy, on the device the config picks (Ray's own choice is cuda whenever it assigned GPUs,
    also to a worker told to train on the CPU, or on a node whose GPUs are only declared)."""
    from ray.train.lightning import RayDDPStrategy

    from mltrain.engines.common import select_device

    class Strategy(RayDDPStrategy):
        @property
        def root_device(self) -> Any:
            return super().root_device if select_device(config).type == "cuda" else torch.device("cpu")

    # The frozen backbone takes no part in phase 1's backward pass; DDP must be told to expect that.
    return Strategy(find_unused_parameters=config.initial_epochs > 0)


def _restore(local: Path, loop_config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The checkpoint Ray hands back after a restart, else the one the driver resumes from, copied to ``local``."""
    import ray.train

    from mltrain.engines.checkpoint import load_checkpoint

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("initial"):
        checkpoint = ray.train.Checkpoint(loop_config["initial"], filesystem=loop_config.get("filesystem"))
    if checkpoint is None:
        return None, None
    checkpoint.to_directory(str(local))
    payload = load_checkpoint(local)
    payload["folder"] = local
    return payload, checkpoint.path


def _worker_data_dir(driver_dir: str) -> str:
    """The driver's data folder when this node sees it; else this node's ``FOOD11_DATA_DIR``."""
    if Path(driver_dir).is_dir():
        return driver_dir
    return str(env.data_dir(None)) if os.environ.get(env.DATA_DIR_VAR) else driver_dir


def _record_start(tracker: RunLog, resume: dict[str, Any] | None, source: str | None, world_size: int) -> int | None:
    """Count the worker group's starts; a start after the first is a restart (returns its number).

    A start with another number of workers than the previous one is also a resize (an elastic group that
    shrank after losing a node, or grew when resources returned): counted in ``mltrain.ray.resizes`` and
    described in ``mltrain.ray.resize.<n>``.
    """
    import ray

    from mltrain.tracking.sysinfo import gpu_info_text

    attempt = int(tracker.tag_value(tags.ATTEMPTS_TAG) or 0) + 1
    previous = tracker.tag_value(tags.WORLD_SIZE_TAG)
    values = {
        tags.ATTEMPTS_TAG: str(attempt),
        tags.RESTARTS_TAG: str(attempt - 1),
        tags.WORLD_SIZE_TAG: str(world_size),
    }
    epoch = resume["state"].next_epoch if resume else 0
    if previous is not None and int(previous) != world_size:
        resizes = int(tracker.tag_value(tags.RESIZES_TAG) or 0) + 1
        when = datetime.now(UTC).isoformat(timespec="seconds")
        values |= {
            tags.RESIZES_TAG: str(resizes),
            f"mltrain.ray.resize.{resizes}": f"{previous} -> {world_size} workers at epoch {epoch} ({when})",
        }
        print(f"resized: {previous} -> {world_size} worker(s), continuing at epoch {epoch + 1}", flush=True)
    tracker.set_tags(values)
    if attempt == 1:
        node = ray.util.get_node_ip_address()
        tracker.log_text(f"Ray Train rank-0 worker on node {node}\n\n{gpu_info_text()}", metrics.GPU_INFO_ARTIFACT)
        return None
    print(f"restart {attempt - 1}: continuing at epoch {epoch + 1} from {source or 'the start'}", flush=True)
    tracker.set_tags({f"mltrain.ray.restart.{attempt - 1}.checkpoint": source or "none"})
    return attempt - 1


class _Reporter:
    """The recipe's epoch hook in a Ray worker: every rank reports; rank 0 with the checkpoint folder."""

    def __init__(self, rank: int, folder: Path) -> None:
        self.rank = rank
        self.folder = folder

    def __call__(self, epoch: int, values: dict[str, float], _index: Path) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(self.folder)) if self.rank == 0 else None
        ray.train.report({**values, "epoch": epoch}, checkpoint=checkpoint)


def _first_step_after_restart(tracker: RunLog, restart: int) -> Any:
    """A callback that tags when a restarted worker group trains again, and from which epoch (what failover cost).

    Built here, not at import: the driver imports this module for ``train_loop_per_worker`` and need not pay for
    Lightning's import (~9 s of CPU on a 2-core machine) in each driver and Tune trial process.
    """
    from lightning.pytorch.callbacks import Callback

    class FirstStepAfterRestart(Callback):
        def __init__(self) -> None:
            self.done = False

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            import ray

            if self.done:
                return
            self.done = True
            now = datetime.now(UTC).isoformat(timespec="milliseconds")
            node = ray.util.get_node_ip_address()
            tracker.set_tags(
                {f"mltrain.ray.restart.{restart}": f"epoch {trainer.current_epoch}; first step at {now} on {node}"}
            )

    return FirstStepAfterRestart()
