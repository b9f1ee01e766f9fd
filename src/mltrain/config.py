"""The training configuration: one typed schema, YAML defaults, ``key=value`` overrides.

The hyperparameter names and defaults are the ones the Food-11 lab uses, so that its notebooks and
MLflow queries keep working. Each field's docstring is its help text (``mltrain train --help-config``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mltrain.errors import ConfigError

NUM_CLASSES = 11

CHANGEABLE_ON_RESUME = frozenset(
    {
        "total_epochs",
        "patience",
        "num_workers",
        "devices",
        "accelerator",
        "precision",
        "channels_last",
        "compile",
        "keep_host_memory",
        "cache_dir",
        "output_dir",
        "workers",
        "min_workers",
        "resize_interval",
        "cpus_per_worker",
        "gpus_per_worker",
        "max_failures",
        "storage",
    }
)
"""Keys a resumed training may change: they extend the training or steer where and how fast it runs. Every
other key decides the model, the data or the optimisation already done, and must keep its checkpointed value."""


class TrainConfig(BaseModel):
    """Everything that decides how a model is trained. Validated when constructed."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True, frozen=False)

    # --- the lab's hyperparameters -------------------------------------------------------------------
    initial_epochs: int = Field(5, ge=0)
    """Epochs of phase 1: backbone frozen, only the classifier head trains at `lr`."""
    total_epochs: int = Field(20, ge=1)
    """Epochs in all; phase 2 (everything unfrozen, `fine_tune_lr`) runs from `initial_epochs` to here."""
    patience: int = Field(5, ge=1)
    """Fine-tuning epochs without a lower val_loss before training stops early."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Images per training step."""
    lr: float = Field(1e-4, gt=0, le=10)
    """Adam learning rate of the head in phase 1."""
    fine_tune_lr: float = Field(1e-5, gt=0, le=10)
    """Adam learning rate of the whole network in phase 2."""
    model_architecture: Literal["MobileNetV2"] = "MobileNetV2"
    """Backbone; MobileNetV2 is the only one so far."""
    dropout_probability: float = Field(0.5, ge=0, lt=1)
    """Dropout before the classifier's Linear layer."""
    random_horizontal_flip: float = Field(0.5, ge=0, le=1)
    """Probability of flipping a training image left-right."""
    random_rotation: float = Field(15, ge=0, le=180)
    """Training images rotate by a uniform angle in [-x, x] degrees."""
    color_jitter_brightness: float = Field(0.2, ge=0)
    """Brightness factor drawn from [1-x, 1+x]."""
    color_jitter_contrast: float = Field(0.2, ge=0)
    """Contrast factor drawn from [1-x, 1+x]."""
    color_jitter_saturation: float = Field(0.2, ge=0)
    """Saturation factor drawn from [1-x, 1+x]."""
    color_jitter_hue: float = Field(0.1, ge=0, le=0.5)
    """Hue shift drawn from [-x, x] (a fraction of the colour circle)."""

    # --- what a real run needs ------------------------------------------------------------------------
    image_size: int = Field(224, ge=32, le=1024)
    """Side of the square the model sees: images are resized (short side) and centre-cropped to it."""
    num_workers: int | Literal["auto"] = "auto"
    """Data-loading worker processes; `auto` sizes them from the CPU cores this process may use."""
    pretrained: bool = True
    """Start from torchvision's ImageNet weights (needs the weights file cached or a network)."""
    seed: int = Field(42, ge=0)
    """Seed for weights init, shuffling and augmentation."""
    engine: Literal["torch", "lightning", "ray"] = "torch"
    """Training engine: `torch` (a plain loop), `lightning` (PyTorch Lightning, one or several local devices) or
    `ray` (the Lightning engine on Ray Train workers: several machines, fractional GPUs, failover)."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """Where to train: `auto` picks a GPU when there is one."""
    devices: int | Literal["auto"] = "auto"
    """Number of devices (processes) to train on; more than one needs the lightning engine."""
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    """Arithmetic: `auto` is mixed precision on GPUs (bf16 where supported, else fp16) and fp32 on CPUs."""
    channels_last: bool = True
    """Keep activations in NHWC memory layout (several times faster convolutions on CPUs)."""
    compile: bool = False
    """Wrap the model in `torch.compile` (measured: no gain on 2-core CPUs; can help on GPUs)."""
    keep_host_memory: bool = True
    """Keep freed host memory for reuse (glibc malloc: no mmap/trim) instead of page-faulting it back each step."""
    workers: int = Field(1, ge=1)
    """engine=ray: Ray Train workers (data-parallel processes, each on any node with the resources); with
    `min_workers`, the most the elastic group grows to."""
    min_workers: int | None = Field(None, ge=1)
    """engine=ray: set below `workers` for elastic training: the group shrinks to the workers the cluster can
    place (down to this many) instead of waiting for a lost node, and grows back when resources return."""
    resize_interval: float = Field(60, gt=0)
    """engine=ray, elastic: seconds between checks whether the group can grow again."""
    cpus_per_worker: float = Field(1, gt=0)
    """engine=ray: logical CPUs each worker reserves."""
    gpus_per_worker: float = Field(0, ge=0)
    """engine=ray: GPUs each worker reserves; a fraction (e.g. 0.5) lets several trainings share a GPU."""
    max_failures: int = Field(2, ge=-1)
    """engine=ray: worker-group failures to recover from (restart from the last checkpoint); -1: no limit."""
    storage: str | None = None
    """engine=ray: where Ray Train keeps checkpoints: a path every node sees, or s3://bucket[/prefix]
    (endpoint and keys from AWS_* variables); default `<output_dir>/ray` on this machine."""
    cache_dir: str | None = None
    """Folder for decoded-image caches; default `MLTRAIN_CACHE_DIR` or ~/.cache/mltrain."""
    output_dir: str = "outputs"
    """Where checkpoints and the resolved config are written (one sub-folder per MLflow run)."""

    @field_validator("num_workers", "devices")
    @classmethod
    def _non_negative_count(cls, value: int | str, info: Any) -> int | str:
        if isinstance(value, int) and value < (0 if info.field_name == "num_workers" else 1):
            low = 0 if info.field_name == "num_workers" else 1
            raise ValueError(f"must be 'auto' or an integer >= {low}")
        return value

    @model_validator(mode="after")
    def _epochs_consistent(self) -> TrainConfig:
        if self.total_epochs < self.initial_epochs:
            raise ValueError(
                f"total_epochs ({self.total_epochs}) must be >= initial_epochs ({self.initial_epochs}): "
                "phase 2 runs from initial_epochs up to total_epochs"
            )
        if self.engine == "torch" and isinstance(self.devices, int) and self.devices > 1:
            raise ValueError(
                f"devices={self.devices}: the torch engine trains on one device; use engine=lightning for several"
            )
        if self.engine != "ray" and (self.workers > 1 or self.min_workers is not None):
            raise ValueError(f"workers={self.workers_text()} needs engine=ray (Ray Train workers)")
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers={self.min_workers} is more than workers={self.workers}")
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker}: Ray takes a fraction below 1 or whole GPUs")
        return self

    @property
    def elastic(self) -> bool:
        """engine=ray with a range of workers (``min_workers`` < ``workers``)."""
        return self.min_workers is not None and self.min_workers < self.workers

    def workers_text(self) -> str:
        """``N``, or ``MIN-MAX`` for an elastic group: the form ``--workers`` takes."""
        return f"{self.min_workers}-{self.workers}" if self.elastic else str(self.workers)

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """All valid configuration keys, in schema order."""
        return list(cls.model_fields)

    @classmethod
    def build(
        cls,
        config_file: str | os.PathLike[str] | None = None,
        overrides: Iterable[str] | Mapping[str, Any] = (),
        base: TrainConfig | None = None,
    ) -> TrainConfig:
        """Defaults (or ``base``), then the YAML file, then ``key=value`` overrides; ConfigError when invalid.

        Args:
            config_file: Optional YAML mapping of keys to values.
            overrides: ``"key=value"`` strings (values parsed as YAML scalars) or a mapping.
            base: A config to start from instead of the defaults.
        """
        values: dict[str, Any] = base.model_dump() if base is not None else {}
        if config_file is not None:
            values.update(load_yaml(config_file))
        values.update(parse_overrides(overrides))
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Validate a plain mapping (e.g. ``mlflow`` params or Ray Tune samples) into a config."""
        _reject_unknown_keys(values)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A validated copy with some keys changed."""
        return self.from_mapping({**self.model_dump(), **changes})

    def to_params(self) -> dict[str, str]:
        """The resolved configuration as MLflow params (every key, values as strings)."""
        return {key: str(value) for key, value in self.model_dump().items()}

    def save_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved configuration, loadable again with ``--config``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.model_dump(), sort_keys=False))
        return target


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


def resolve_resume(
    saved: Mapping[str, Any],
    config_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    given: TrainConfig | None = None,
) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """The config of a resumed training: the checkpoint's, then ``given``, the YAML file and the overrides.

    Returns the config and what changed (``{key: (checkpointed, new)}``). Raises ConfigError, before anything
    else happens, when a change touches a key outside :data:`CHANGEABLE_ON_RESUME`, naming the key and its
    checkpointed value.
    """
    base = TrainConfig.from_mapping(saved)
    requested: dict[str, Any] = dict(given.model_dump()) if given is not None else {}
    if config_file is not None:
        requested.update(load_yaml(config_file))
    requested.update(parse_overrides(overrides))
    resolved = TrainConfig.from_mapping({**base.model_dump(), **requested})
    before, after = base.model_dump(), resolved.model_dump()
    changes = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    forbidden = [key for key in changes if key not in CHANGEABLE_ON_RESUME]
    if forbidden:
        detail = "; ".join(f"{key}: checkpoint has {changes[key][0]!r}, asked {changes[key][1]!r}" for key in forbidden)
        raise ConfigError(
            f"cannot change {', '.join(forbidden)} when resuming ({detail}): it decides the model, the data or the "
            f"optimisation already done. Keys that may change on resume: {', '.join(sorted(CHANGEABLE_ON_RESUME))}"
        )
    return resolved, changes


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a mapping; ConfigError when missing or not a mapping."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {file} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {file} must hold a mapping of keys to values, found {type(loaded).__name__}")
    return loaded


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``["lr=0.001", "pretrained=false"]`` into ``{"lr": 0.001, "pretrained": False}``."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. --set lr=0.001)")
        parsed[key] = _parse_scalar(raw.strip())
    return parsed


def _parse_scalar(raw: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; pydantic then coerces numeric strings, so either form works.
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (str, int, float, bool)) or value is None else raw


def _reject_unknown_keys(values: Mapping[str, Any]) -> None:
    valid = TrainConfig.keys()
    unknown = [key for key in values if key not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown config key {', '.join(hints)}; valid keys: {', '.join(valid)}")


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "config"
        found = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        if location == "config":
            problems.append(message)
        else:
            problems.append(f"{location}={found!r}: {message}")
    return "invalid config: " + "; ".join(problems)
