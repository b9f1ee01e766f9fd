"""The local launcher: the engine trains in this process (Lightning starts its own DDP processes for several
devices, re-running the command for ranks 1..N-1; each knows its rank from Lightning's variables)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mltrain.config import LaunchKeys, TrainConfig
from mltrain.engines import get_fit
from mltrain.errors import ConfigError
from mltrain.launchers.base import FitJob, Launcher

if TYPE_CHECKING:
    from mltrain.engines.common import FitResult


class LocalLauncher(Launcher):
    """Train in this process, on this machine's devices (``devices``, ``accelerator``)."""

    name: ClassVar[str] = "local"
    trains_here: ClassVar[bool] = True

    def configure(self, config: TrainConfig, keys: LaunchKeys) -> tuple[TrainConfig, Launcher]:
        # A config file of before 0.2 lists the Ray keys at their defaults: those mean nothing here. A group of
        # workers does, and only a Ray launcher has one.
        workers, low = keys.options.get("workers", 1), keys.options.get("min_workers")
        if (workers is not None and int(workers) > 1) or low is not None:
            shown = f"{low}-{workers}" if low is not None else workers
            raise ConfigError(f"workers={shown} needs the Ray launcher (--launcher ray; engine=ray is its alias)")
        return config, self

    def check(self, config: TrainConfig) -> None:
        from mltrain.engines.common import check_devices  # torch: not before the run's helper has started

        check_devices(config)

    def fit(self, job: FitJob) -> FitResult:
        fit = get_fit(job.config.engine)
        result: FitResult = fit(job.config, job.data, job.tracker, job.folder, resume=job.resume, progress=job.progress)
        return result
