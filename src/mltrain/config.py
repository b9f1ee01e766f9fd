"""The training configuration: one typed schema, YAML defaults, ``key=value`` overrides.

The hyperparameter names and defaults are the ones the Food-11 lab uses, so that its notebooks and
MLflow queries keep working. Each field's docstring is its help text (``mltrain train --help-config``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    }
)
"""Keys a resumed training may change: they extend the training or steer where and how fast it runs. Every
other key decides the model, the data or the optimisation already done, and must keep its checkpointed value.
(Where it runs — the launcher and its options — is not part of the config and may always change.)"""

LEGACY_LAUNCHER_KEYS = (
    "workers",
    "min_workers",
    "resize_interval",
    "cpus_per_worker",
    "gpus_per_worker",
    "max_failures",
    "storage",
)
"""Options of the Ray launcher that were config keys before mltrain 0.2 (with ``engine: ray`` for "the lightning
engine on Ray Train"). A config file, ``--set`` or checkpoint that holds them still works: :func:`resolve` and
:func:`resolve_resume` hand them to the launcher (:class:`LaunchKeys`); a :class:`TrainConfig` never holds them."""
RAY_ALIAS = "ray"
"""``engine: ray``, kept as an alias: the lightning engine, launched on Ray Train workers (``--launcher ray``)."""


@dataclass(frozen=True)
class LaunchKeys:
    """What a config file, ``--set`` or a checkpoint said about where to train (the pre-0.2 keys)."""

    launcher: str | None = None
    """``ray`` when it said ``engine: ray``; None when it did not say."""
    options: dict[str, Any] = field(default_factory=dict)
    """The :data:`LEGACY_LAUNCHER_KEYS` it set, with their values."""

    def merged(self, later: LaunchKeys) -> LaunchKeys:
        """These keys with ``later``'s on top (a resume's request over its checkpoint's)."""
        return LaunchKeys(later.launcher or self.launcher, {**self.options, **later.options})


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
    engine: Literal["torch", "lightning"] = "torch"
    """Training engine: `torch` (a plain loop, one device) or `lightning` (PyTorch Lightning: one or several devices,
    and what the Ray launcher runs). `ray` is an alias: the lightning engine on Ray Train (`--launcher ray`)."""
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
        return self

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
            base: A config to start from instead of the defaults (the keys it set; the rest stay defaults, and
                unchosen: a launcher may pick the engine the config did not choose).
        """
        values: dict[str, Any] = base.model_dump(exclude_unset=True) if base is not None else {}
        if config_file is not None:
            values.update(load_yaml(config_file))
        values.update(parse_overrides(overrides))
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Validate a plain mapping (e.g. ``mlflow`` params or Ray Tune samples) into a config.

        Launcher options (:data:`LEGACY_LAUNCHER_KEYS`, ``engine: ray``) are a ConfigError here, saying where they
        go; :func:`resolve` and :meth:`from_saved` are the readers that accept them.
        """
        _reject_launch_keys(values)
        _reject_unknown_keys(values)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(explain(exc)) from None

    @classmethod
    def from_saved(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The training config of a saved one (a checkpoint's, a ``config.yaml``), also one written before 0.2:
        launcher keys are left out."""
        return cls.from_mapping(split_launch_keys(values)[0])

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


def resolve(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    base: TrainConfig | None = None,
) -> tuple[TrainConfig, LaunchKeys]:
    """Like :meth:`TrainConfig.build`, for files and ``--set`` values that may hold launcher keys (written before
    0.2, or ``engine=ray``): returns the config and, apart, what they said about where to train."""
    values: dict[str, Any] = base.model_dump(exclude_unset=True) if base is not None else {}
    if config_file is not None:
        values.update(load_yaml(config_file))
    values.update(parse_overrides(overrides))
    training, launch = split_launch_keys(values)
    return TrainConfig.from_mapping(training), launch


def split_launch_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], LaunchKeys]:
    """Separate the training keys from the launcher's: ``engine: ray`` becomes ``engine: lightning`` and launcher
    ``ray``; the :data:`LEGACY_LAUNCHER_KEYS` go to the launcher's options."""
    training = dict(values)
    options = {key: training.pop(key) for key in LEGACY_LAUNCHER_KEYS if key in training}
    launcher = None
    if training.get("engine") == RAY_ALIAS:
        training["engine"], launcher = "lightning", RAY_ALIAS
    return training, LaunchKeys(launcher, options)


def resolve_resume(
    saved: Mapping[str, Any],
    config_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    given: TrainConfig | None = None,
) -> tuple[TrainConfig, dict[str, tuple[Any, Any]], LaunchKeys]:
    """The config of a resumed training: the checkpoint's, then ``given``, the YAML file and the overrides.

    Returns the config, what changed (``{key: (checkpointed, new)}``) and the launcher keys (the checkpoint's, then
    the request's). Raises ConfigError, before anything else happens, when a change touches a key outside
    :data:`CHANGEABLE_ON_RESUME`, naming the key and its checkpointed value.
    """
    saved_training, saved_launch = split_launch_keys(saved)
    base = TrainConfig.from_mapping(saved_training)
    requested: dict[str, Any] = given.model_dump(exclude_unset=True) if given is not None else {}
    if config_file is not None:
        requested.update(load_yaml(config_file))
    requested.update(parse_overrides(overrides))
    requested, asked_launch = split_launch_keys(requested)
    if "engine" in requested and asked_launch.launcher is None:
        saved_launch = LaunchKeys(None, saved_launch.options)  # an engine asked for by name: no alias to keep
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
    return resolved, changes, saved_launch.merged(asked_launch)


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


def _reject_launch_keys(values: Mapping[str, Any]) -> None:
    found = [key for key in LEGACY_LAUNCHER_KEYS if key in values]
    if values.get("engine") == RAY_ALIAS:
        found.insert(0, "engine=ray")
    if found:
        raise ConfigError(
            f"{', '.join(found)}: where a training runs is the launcher's business, not the training config's "
            "(mltrain train --launcher ray --workers 2 ...; from Python: train(config, launcher=RayLauncher(...)))"
        )


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


def explain(exc: ValidationError, what: str = "invalid config") -> str:
    """A pydantic validation error as one line for people: ``<what>: key=value: problem; ...``."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "config"
        found = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        if location == "config":
            problems.append(message)
        else:
            problems.append(f"{location}={found!r}: {message}")
    return f"{what}: " + "; ".join(problems)
