"""The launcher interface: where an engine's training loop runs, apart from what the loop does."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mltrain.config import LaunchKeys, TrainConfig
from mltrain.tracking.runlog import RunLog

if TYPE_CHECKING:  # torch: choosing a launcher must not import it (see mltrain.tracking.starter)
    from mltrain.engines.common import FitResult


@dataclass(frozen=True)
class RunRef:
    """The training's MLflow run as another process finds it: id, experiment, and a store URI valid anywhere."""

    run_id: str
    experiment: str
    tracking_uri: str


@dataclass
class FitJob:
    """One training for a launcher to run: the engine's inputs, and the run it logs into."""

    config: TrainConfig
    data: Any
    """The :class:`~mltrain.data.module.Food11Data` (set up when this process sees the data folder)."""
    tracker: RunLog
    """This process's logger into the run (the run's owner's)."""
    folder: Path
    """The training's checkpoint folder here: where the latest checkpoint is, whatever the outcome."""
    resume: dict[str, Any] | None
    """A checkpoint to continue from (:func:`~mltrain.engines.checkpoint.load_checkpoint`'s), or None."""
    progress: bool
    run: RunRef | None
    """The run, for processes elsewhere to attach to (None on a rank that does not log)."""


class Launcher(ABC):
    """Runs an engine's training somewhere. The process that calls :meth:`fit` owns the run; the launcher decides
    which processes train, on which machines, and how they reach the run.

    Subclasses set :attr:`name` and :attr:`trains_here`, and implement :meth:`fit`; the rest has defaults.
    """

    name: ClassVar[str]
    """What ``--launcher`` calls it."""
    trains_here: ClassVar[bool]
    """The engine's rank 0 runs in this process: it samples this machine, writes ``gpu-info.txt`` and measures
    ``startup_seconds``; otherwise the launcher's own rank-0 process does what applies."""

    def configure(self, config: TrainConfig, keys: LaunchKeys) -> tuple[TrainConfig, Launcher]:
        """The config and launcher to train with, given what a config file or checkpoint said about where to
        train (``keys``: pre-0.2 keys). ConfigError for what this launcher cannot do."""
        return config, self

    def check(self, config: TrainConfig) -> None:
        """Before any run exists: ConfigError if the training cannot run here (devices, requests)."""
        return None

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """What the launcher needs around the whole training (e.g. joining a Ray cluster)."""
        return contextlib.nullcontext()

    def params(self) -> dict[str, str]:
        """The launcher's options as run params (only those that shaped the training's numbers)."""
        return {}

    def tags(self, config: TrainConfig) -> dict[str, str]:
        """Run tags saying where the training ran."""
        from mltrain.tracking.records import ENGINE_TAG, LAUNCHER_TAG

        return {ENGINE_TAG: config.engine, LAUNCHER_TAG: self.name}

    @abstractmethod
    def fit(self, job: FitJob) -> FitResult:
        """Train ``job`` and return what the engine produced; the checkpoint ends up in ``job.folder``."""
