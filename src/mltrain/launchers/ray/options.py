"""The Ray launcher's options: how many workers, what each reserves, failover, storage, the cluster."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mltrain.errors import ConfigError


class RayOptions(BaseModel):
    """Where and how Ray Train runs a training's workers. Validated when constructed (ConfigError via :meth:`of`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    workers: int = Field(1, ge=1)
    """Ray Train workers (data-parallel processes, each on any node with the resources); with `min_workers`, the
    most the elastic group grows to."""
    min_workers: int | None = Field(None, ge=1)
    """Set below `workers` for elastic training: the group shrinks to the workers the cluster can place (down to
    this many) instead of waiting for a lost node, and grows back when resources return."""
    resize_interval: float = Field(60, gt=0)
    """Elastic: seconds between checks whether the group can grow again."""
    cpus_per_worker: float = Field(1, gt=0)
    """Logical CPUs each worker reserves."""
    gpus_per_worker: float = Field(0, ge=0)
    """GPUs each worker reserves; a fraction (e.g. 0.5) lets several trainings share a GPU."""
    max_failures: int = Field(2, ge=-1)
    """Worker-group failures to recover from (restart from the last checkpoint); -1: no limit."""
    storage: str | None = None
    """Where Ray Train keeps checkpoints: a path every node sees, or s3://bucket[/prefix] (endpoint and keys from
    AWS_* variables); default `<output_dir>/ray` on this machine."""
    address: str | None = None
    """The Ray cluster to join; default `RAY_ADDRESS`, else the cluster of `mltrain cluster up`, else a Ray
    instance embedded in this process."""

    @model_validator(mode="after")
    def _consistent(self) -> RayOptions:
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers={self.min_workers} is more than workers={self.workers}")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker}: Ray takes a fraction below 1 or whole GPUs")
        return self

    @classmethod
    def of(cls, **values: Any) -> RayOptions:
        """Validated options; ConfigError naming what is wrong."""
        from mltrain.config import explain

        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(explain(exc, "invalid Ray launcher options")) from None

    def defaulted(self, values: dict[str, Any]) -> RayOptions:
        """These options, with ``values`` for the fields not set explicitly (a config file's pre-0.2 keys)."""
        unset = {key: value for key, value in values.items() if key not in self.model_fields_set}
        return self.of(**{**self.model_dump(exclude_unset=True), **unset}) if unset else self

    @property
    def elastic(self) -> bool:
        """A range of workers (``min_workers`` < ``workers``)."""
        return self.min_workers is not None and self.min_workers < self.workers

    @property
    def fewest_workers(self) -> int:
        """The workers the training cannot go on without: ``min_workers`` when elastic, else ``workers``."""
        return self.min_workers if self.elastic and self.min_workers is not None else self.workers

    def workers_text(self) -> str:
        """``N``, or ``MIN-MAX`` for an elastic group: the form ``--workers`` takes."""
        return f"{self.min_workers}-{self.workers}" if self.elastic else str(self.workers)

    def per_worker(self) -> dict[str, float]:
        """The resources each worker reserves (Ray's names)."""
        wanted = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            wanted["GPU"] = self.gpus_per_worker
        return wanted

    def to_params(self) -> dict[str, str]:
        """The options as MLflow params, under the names they had as config keys (``address`` is not one)."""
        return {key: str(value) for key, value in self.model_dump(exclude={"address"}).items()}


def parse_workers(text: str) -> dict[str, int | None]:
    """``"2"`` → ``{"workers": 2, "min_workers": None}``; ``"1-2"`` → ``{"workers": 2, "min_workers": 1}``."""
    low, sep, high = text.strip().partition("-")
    try:
        numbers = (int(low), int(high)) if sep else (int(low), int(low))
    except ValueError:
        raise ConfigError(f"--workers {text!r}: expected a number of workers (2) or a range MIN-MAX (1-2)") from None
    if numbers[0] < 1 or numbers[0] > numbers[1]:
        raise ConfigError(f"--workers {text!r}: expected 1 <= MIN <= MAX")
    return {"workers": numbers[1], "min_workers": numbers[0] if sep else None}
