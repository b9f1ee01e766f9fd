"""The Ray launcher: the lightning engine on Ray Train workers — several machines, fractional GPUs, failover,
elastic groups — one MLflow run whatever restarts.

* :mod:`.options` — :class:`RayOptions` (workers, resources per worker, failover, storage, cluster address);
* :mod:`.session` — joining a cluster or embedding Ray, and refusing a worker no node could hold;
* :mod:`.driver` — the process that owns the run: starts Ray Train, waits, brings the checkpoint back;
* :mod:`.worker` — each worker: the Lightning engine's own recipe with Ray's strategy; rank 0 logs;
* :mod:`.placement`, :mod:`.storage`, :mod:`.scratch`, :mod:`.tags` — what those share.

Importing this package does not import Ray: the modules that need it import it when called.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mltrain.config import LaunchKeys, TrainConfig
from mltrain.errors import ConfigError
from mltrain.launchers.base import FitJob, Launcher
from mltrain.launchers.ray.options import RayOptions, parse_workers
from mltrain.tracking.records import ENGINE_TAG, LAUNCHER_TAG

if TYPE_CHECKING:
    from mltrain.engines.common import FitResult

__all__ = ["RayLauncher", "RayOptions", "parse_workers"]


class RayLauncher(Launcher):
    """Train with the lightning engine on Ray Train workers.

    Args:
        options: Workers, resources, failover, storage and cluster (default: one worker of 1 CPU, embedded Ray or
            the cluster ``RAY_ADDRESS`` / ``mltrain cluster up`` names).
        callbacks: Extra Ray Train ``RunConfig`` callbacks (``mltrain tune`` forwards each epoch to Tune).
        dashboard: An embedded Ray also runs its dashboard (see :func:`~mltrain.launchers.ray.session.ray_session`).
    """

    name: ClassVar[str] = "ray"
    trains_here: ClassVar[bool] = False

    def __init__(
        self, options: RayOptions | None = None, callbacks: Sequence[Any] = (), dashboard: bool = False
    ) -> None:
        self.options = options if options is not None else RayOptions()
        self.callbacks = tuple(callbacks)
        self.dashboard = dashboard

    def configure(self, config: TrainConfig, keys: LaunchKeys) -> tuple[TrainConfig, Launcher]:
        # Ray launches the lightning engine (Ray's DDP strategy in Lightning's trainer): the default engine here.
        if config.engine != "lightning":
            if "engine" in config.model_fields_set:
                raise ConfigError(
                    f"engine={config.engine}: the Ray launcher trains with the lightning engine (engine=lightning; "
                    "a checkpoint of the torch engine resumes with the local launcher)"
                )
            config = config.with_overrides(engine="lightning")
        options = self.options.defaulted(keys.options)
        return config, RayLauncher(options, self.callbacks, self.dashboard)

    def check(self, config: TrainConfig) -> None:
        # The training runs where its workers run (the cluster's resources are checked when joining it); a
        # worker sees a GPU only when it reserves one.
        if config.accelerator in ("gpu", "cuda") and not self.options.gpus_per_worker:
            raise ConfigError(
                f"accelerator={config.accelerator} on the Ray launcher needs GPUs per worker, e.g. --gpus-per-worker 1"
            )

    def session(self) -> contextlib.AbstractContextManager[Any]:
        from mltrain.launchers.ray.session import ray_session

        return ray_session(self.options, dashboard=self.dashboard)

    def params(self) -> dict[str, str]:
        return self.options.to_params()

    def tags(self, config: TrainConfig) -> dict[str, str]:
        # "ray" is what mltrain.engine said for these runs before launchers existed: saved queries keep working.
        return {ENGINE_TAG: self.name, LAUNCHER_TAG: self.name}

    def fit(self, job: FitJob) -> FitResult:
        from mltrain.launchers.ray.driver import fit

        return fit(job, self.options, self.callbacks)
