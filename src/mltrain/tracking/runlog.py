"""What training code logs through (:class:`RunLog`), and the logger of a process that does not log.

Engines and launchers log through a :class:`RunLog`: a :class:`~mltrain.tracking.logger.RunLogger` in the process
that logs for the training (rank 0), a :class:`NullLogger` in every other one (a data-parallel rank other than 0),
so that engine code never asks which process it is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RunLog(Protocol):
    """What training code logs through: a :class:`RunLogger`, or a :class:`NullLogger` on ranks that do not log."""

    @property
    def run_id(self) -> str | None: ...

    def training_started(self, epoch: int) -> None: ...
    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def log_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]: ...
    def tag_value(self, key: str) -> str | None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_dataset(self, dataset: Any, context: str) -> None: ...
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...


class NullLogger:
    """The logger of a process that does not log (a data-parallel rank other than 0): every call does nothing."""

    run_id: str | None = None

    def __enter__(self) -> NullLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def training_started(self, epoch: int) -> None:
        pass

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        pass

    def log_history(self, history: Mapping[int, Mapping[str, float]]) -> list[int]:
        return []

    def tag_value(self, key: str) -> str | None:
        return None

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_dataset(self, dataset: Any, context: str) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass
