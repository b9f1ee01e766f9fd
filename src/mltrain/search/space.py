"""The search-space language of ``mltrain tune --search``: ``key=choice(a,b)|uniform(lo,hi)|loguniform(lo,hi)|
randint(lo,hi)``, checked against the config before any Ray work."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mltrain.config import TrainConfig
from mltrain.errors import ConfigError

DEFAULT_SEARCH = ("batch_size=choice(32,64)", "dropout_probability=uniform(0.1,0.8)")
"""The lab's search space."""
KINDS = ("choice", "uniform", "loguniform", "randint")
NOT_SEARCHABLE = {
    "total_epochs": "it is --max-epochs, ASHA's max_t",
    "engine": "every trial runs on Ray Train (the lightning engine)",
    "workers": "use --workers-per-trial",
    "min_workers": "use --workers-per-trial MIN-MAX",
    "resize_interval": "it is how often an elastic trial checks for resources, not a hyperparameter",
    "cpus_per_worker": "use --cpus-per-trial",
    "gpus_per_worker": "use --gpus-per-trial",
    "storage": "it is where the trials' checkpoints are kept, not a hyperparameter",
    "output_dir": "it is where the trials' checkpoints are kept, not a hyperparameter",
    "cache_dir": "it is where decoded images are cached, not a hyperparameter",
    "max_failures": "it is how failures are handled, not a hyperparameter",
}
"""Keys (config keys, and the Ray launcher's options that were config keys) a search may not vary, and why."""
_EXPRESSION = re.compile(r"^\s*(?P<key>[A-Za-z_]\w*)\s*=\s*(?P<kind>\w+)\s*\((?P<args>.*)\)\s*$")


@dataclass(frozen=True)
class Domain:
    """One searched key: ``key=kind(args)``, e.g. ``dropout_probability=uniform(0.1,0.8)``.

    ``choice(a,b,...)`` picks one of the values; ``uniform(lo,hi)`` and ``loguniform(lo,hi)`` draw a float in
    [lo, hi); ``randint(lo,hi)`` draws an integer in [lo, hi) (Tune's meaning: ``hi`` is excluded).
    """

    key: str
    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return f"{self.key}={self.kind}({','.join(str(arg) for arg in self.args)})"

    def to_tune(self) -> Any:
        """The Tune search-space object."""
        from ray import tune as ray_tune

        if self.kind == "choice":
            return ray_tune.choice(list(self.args))
        return getattr(ray_tune, self.kind)(*self.args)

    def probes(self) -> list[Any]:
        """Values that stand for every value the domain can draw: all choices, or both ends of a range."""
        if self.kind == "choice":
            return list(self.args)
        low, high = self.args
        if self.kind == "randint":
            return [low, high - 1]
        return [low, high - (high - low) * 1e-9]  # hi itself is never drawn


def parse_search(expressions: Iterable[str], base: TrainConfig) -> dict[str, Domain]:
    """Parse ``key=kind(args)`` expressions and check each against ``base`` (ConfigError, before any Ray work).

    Every value a domain can draw must give a valid config with ``base`` for the other keys: an unknown key,
    a malformed expression or an impossible value (``dropout_probability=uniform(0.5,2)``) is a ConfigError
    naming the expression.
    """
    domains: dict[str, Domain] = {}
    for expression in expressions:
        domain = _parse_one(expression)
        if domain.key in domains:
            raise ConfigError(f"--search {expression!r}: {domain.key} is already searched ({domains[domain.key]})")
        for value in domain.probes():
            try:
                base.with_overrides(**{domain.key: value})
            except ConfigError as exc:
                raise ConfigError(f"--search {expression!r} can draw {domain.key}={value!r}, which is {exc}") from None
        domains[domain.key] = domain
    return domains


def _parse_one(expression: str) -> Domain:
    shape = "key=choice(a,b,...)|uniform(lo,hi)|loguniform(lo,hi)|randint(lo,hi)"
    match = _EXPRESSION.match(expression)
    if match is None:
        raise ConfigError(f"--search {expression!r} is not of the form {shape}")
    key, kind = match["key"], match["kind"]
    if key in NOT_SEARCHABLE:
        raise ConfigError(f"--search {expression!r}: {key} cannot be searched: {NOT_SEARCHABLE[key]}")
    if key not in TrainConfig.model_fields:
        try:
            TrainConfig.from_mapping({key: None})  # the unknown-key error, with its did-you-mean hint
        except ConfigError as exc:
            raise ConfigError(f"--search {expression!r}: {exc}") from None
    if kind not in KINDS:
        raise ConfigError(f"--search {expression!r}: unknown distribution {kind!r}; expected {shape}")
    raw = [part.strip() for part in match["args"].split(",")] if match["args"].strip() else []
    args = tuple(_scalar(part, expression) for part in raw)
    if kind == "choice":
        if not args:
            raise ConfigError(f"--search {expression!r}: choice() needs at least one value")
        return Domain(key, kind, args)
    if len(args) != 2 or not all(isinstance(arg, int | float) and not isinstance(arg, bool) for arg in args):
        raise ConfigError(f"--search {expression!r}: {kind}() takes two numbers, lo and hi")
    low, high = args
    if not low < high:
        raise ConfigError(f"--search {expression!r}: {kind}() needs lo < hi, found {low} and {high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--search {expression!r}: loguniform() needs lo > 0, found {low}")
    if kind == "randint" and not all(isinstance(arg, int) for arg in args):
        raise ConfigError(f"--search {expression!r}: randint() takes two integers")
    return Domain(key, kind, (low, high) if kind == "randint" else (float(low), float(high)))


def _scalar(text: str, expression: str) -> Any:
    import yaml

    if not text:
        raise ConfigError(f"--search {expression!r} has an empty value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if not isinstance(value, str | int | float | bool):
        raise ConfigError(f"--search {expression!r}: {text!r} is not a plain value")
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value
