"""How a search runs: its settings, everything resolved before any Ray work, and fitting trials to the cluster."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain import env, metrics
from mltrain.config import TrainConfig, resolve
from mltrain.errors import ConfigError, DataError
from mltrain.launchers.ray.options import RayOptions
from mltrain.search.space import DEFAULT_SEARCH, Domain, parse_search


@dataclass
class SearchSettings:
    """How the search runs: samples, ASHA, the metric, each trial's resources, concurrency.

    ``workers_per_trial`` with ``min_workers_per_trial`` below it makes each trial elastic (``--workers-per-trial
    MIN-MAX``); concurrency is sized for the most workers. ``cpus_per_trial`` / ``gpus_per_trial`` are a trial's
    total, split evenly over its (most) workers. None means:
    the config's ``cpus_per_worker`` per worker; half a GPU per worker when the cluster has GPUs (and the
    config does not ask for the CPU). ``max_concurrent`` None: as many trials as the cluster can place at once.
    """

    samples: int = 16
    max_epochs: int | None = None
    """None: the config's total_epochs."""
    grace_period: int = 1
    reduction_factor: float = 2
    metric: str = metrics.VAL_ACCURACY
    mode: str = "max"
    workers_per_trial: int = 1
    min_workers_per_trial: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None

    def check(self) -> None:
        """ConfigError for any setting out of range, with what was expected."""
        problems = []
        if self.samples < 1:
            problems.append(f"--samples must be >= 1, found {self.samples}")
        if self.max_epochs is not None and self.max_epochs < 1:
            problems.append(f"--max-epochs must be >= 1, found {self.max_epochs}")
        if not 1 <= self.grace_period <= (self.max_epochs or self.grace_period):
            problems.append(f"--grace-period must be in [1, max epochs={self.max_epochs}], found {self.grace_period}")
        if not self.reduction_factor > 1:
            problems.append(f"--reduction-factor must be > 1, found {self.reduction_factor}")
        if self.metric not in metrics.EPOCH_METRICS:
            problems.append(f"--metric must be one of {', '.join(metrics.EPOCH_METRICS)}, found {self.metric!r}")
        if self.mode not in ("max", "min"):
            problems.append(f"--mode must be max or min, found {self.mode!r}")
        low = self.min_workers_per_trial
        if self.workers_per_trial < 1 or (low is not None and not 1 <= low <= self.workers_per_trial):
            shown = f"{low}-{self.workers_per_trial}" if low is not None else self.workers_per_trial
            problems.append(f"--workers-per-trial must be N >= 1 or MIN-MAX with 1 <= MIN <= MAX, found {shown}")
        if self.cpus_per_trial is not None and not self.cpus_per_trial > 0:
            problems.append(f"--cpus-per-trial must be > 0, found {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and not self.gpus_per_trial >= 0:
            problems.append(f"--gpus-per-trial must be >= 0, found {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            problems.append(f"--max-concurrent must be >= 1, found {self.max_concurrent}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class SearchPlan:
    """Everything decided before the search's run exists: the fixed config, each trial's Ray options, the search
    space, the settings, the data."""

    base: TrainConfig
    options: RayOptions
    """Each trial's Ray launcher options (its workers and what each reserves, failover, storage)."""
    search: dict[str, Domain]
    settings: SearchSettings
    data_dir: Path


def plan_search(
    config: TrainConfig | None,
    search: Iterable[str],
    overrides: Iterable[str] | Mapping[str, Any],
    config_file: str | Path | None,
    data_dir: str | Path | None,
    settings: SearchSettings | None,
    address: str | None,
) -> SearchPlan:
    """Resolve and check everything that needs no Ray: config, search space, settings, data, device."""
    from mltrain.cluster import resolve_address
    from mltrain.data.module import Food11Data
    from mltrain.engines.common import select_device

    fixed, keys = resolve(config_file, overrides, base=config)
    legacy = RayOptions.of(**keys.options)  # a config file of before 0.2 may name storage, max_failures ...
    chosen = dataclasses.replace(settings) if settings is not None else SearchSettings()
    if chosen.max_epochs is None:
        chosen.max_epochs = fixed.total_epochs
    chosen.check()
    workers = chosen.workers_per_trial
    cpus = chosen.cpus_per_trial / workers if chosen.cpus_per_trial is not None else legacy.cpus_per_worker
    gpus = chosen.gpus_per_trial / workers if chosen.gpus_per_trial is not None else 0.0
    # Trials run where the search runs from (Tune changes their working folder): every path is made absolute.
    storage = legacy.storage
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    base = fixed.with_overrides(
        engine="lightning",  # what the Ray launcher trains with
        total_epochs=chosen.max_epochs,
        output_dir=str(Path(fixed.output_dir).expanduser().resolve()),
        cache_dir=str(env.cache_dir(fixed.cache_dir).expanduser().resolve()),
    )
    options = RayOptions.of(
        workers=workers,
        min_workers=chosen.min_workers_per_trial,
        cpus_per_worker=cpus,
        gpus_per_worker=gpus,
        storage=storage,
        max_failures=legacy.max_failures,
        resize_interval=legacy.resize_interval,
        address=address,
    )
    domains = parse_search(list(search) or DEFAULT_SEARCH, base)
    select_device(base)
    root = env.data_dir(data_dir).expanduser().resolve()
    # Without a cluster the trials read the data here: check it now. On a cluster it may be on the workers only.
    if root.is_dir() or resolve_address(address) is None:
        if not root.is_dir():
            raise DataError(f"expected a Food-11 folder at {root}, found nothing (--data, or FOOD11_DATA_DIR)")
        Food11Data(root, base, progress=False).setup()
    return SearchPlan(base, options, domains, chosen, root)


def place(plan: SearchPlan, nodes: list[Any]) -> None:
    """Fit the trials to the cluster's live ``nodes`` (``ray.nodes()`` records): half a GPU per worker by default
    where there are GPUs, concurrency from the resources. ConfigError when not one trial fits."""
    from mltrain.cluster.capacity import from_ray_nodes, placeable

    settings, options = plan.settings, plan.options
    alive = [node for node in from_ray_nodes(nodes) if node.alive]
    has_gpus = any(node.total.get("GPU", 0) > 0 for node in alive)
    if settings.gpus_per_trial is None and has_gpus and plan.base.accelerator != "cpu":
        plan.options = options = options.model_copy(update={"gpus_per_worker": 0.5})
        settings.gpus_per_trial = 0.5 * settings.workers_per_trial
    settings.cpus_per_trial = options.cpus_per_worker * settings.workers_per_trial
    settings.gpus_per_trial = options.gpus_per_worker * settings.workers_per_trial
    slots = placeable(alive, options.per_worker())
    trials = slots // settings.workers_per_trial
    if trials < 1:
        wanted = ", ".join(f"{key}={value:g}" for key, value in options.per_worker().items())
        raise ConfigError(
            f"a trial needs {settings.workers_per_trial} worker(s) of {wanted}; the cluster can place {slots} "
            "at once. Lower --workers-per-trial, --cpus-per-trial or --gpus-per-trial, or add nodes."
        )
    if settings.max_concurrent is None:
        settings.max_concurrent = min(trials, settings.samples)
