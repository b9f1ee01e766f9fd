"""``train()``: the Python API behind ``mltrain train`` — plan and checks, the run, the launcher, the summary.

* :mod:`.plan` — resolve the config, the launcher, a resume's checkpoint and the data; check before any run;
* :mod:`.run` — own the MLflow run, let the launcher train, record what the run holds, return the result;
* :mod:`.finish` — complete a run from its checkpoint folder (every epoch, the best model), however it ended;
* :mod:`.result` — :class:`TrainResult` and its summary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.launchers import Launcher
from mltrain.tracking.owner import RunSpec
from mltrain.training.finish import finalize_run
from mltrain.training.plan import TrainPlan, plan_training
from mltrain.training.result import TrainResult
from mltrain.training.run import RESUMES_TAG, run_training

__all__ = ["RESUMES_TAG", "TrainPlan", "TrainResult", "finalize_run", "plan_training", "run_training", "train"]


def train(
    config: TrainConfig | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    config_file: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    experiment: str = metrics.EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    launcher: str | Launcher | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a Food-11 classifier and track it in MLflow: one training, one run.

    The config is ``config`` (default: the lab's defaults), then ``config_file``, then ``overrides``. When
    resuming, it starts from the checkpoint's config instead, and only the keys in
    :data:`mltrain.config.CHANGEABLE_ON_RESUME` may differ from it (ConfigError otherwise).

    Args:
        config: The configuration, or None for the defaults (or, when resuming, the checkpoint's).
        overrides: ``key=value`` strings or a mapping applied on top, e.g. ``{"total_epochs": 12}``.
        config_file: A YAML file of config keys applied before ``overrides``.
        data_dir: Food-11 folder; default: when resuming, the checkpoint's; else ``FOOD11_DATA_DIR`` or
            ``./Food-11``.
        experiment: MLflow experiment.
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        run_name: Name for a new run.
        resume: A checkpoint folder (or its ``checkpoint.pt``, or a run id under ``output_dir``) to
            continue, in its own MLflow run: the next epochs run exactly as they would have without the stop.
        launcher: Where it trains: ``"local"`` (this process and, for several devices, Lightning's), ``"ray"``
            (Ray Train workers), or a launcher with its options, e.g. ``RayLauncher(RayOptions(workers=2))``.
            Default: ``ray`` if the config says ``engine: ray`` (the alias), else ``local``.
        progress: Show progress bars.
    """
    plan = plan_training(config, overrides, config_file, data_dir, resume, launcher)
    return run_training(plan, RunSpec(experiment, tracking_uri, run_name), progress=progress)
