"""The shape of a local Ray cluster (:class:`ClusterSpec`), checked when it is made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mltrain.errors import ClusterError

DEFAULT_OBJECT_STORE_MB = 150
"""Per node. Ray's default (30% of RAM per node) is far too much for several nodes on one laptop."""
MIN_OBJECT_STORE_MB = 80  # Ray refuses less than 75 MiB

_RESERVED_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


@dataclass(frozen=True)
class ClusterSpec:
    """The shape of a local cluster."""

    workers: int = 2
    """Worker nodes (the head comes on top and runs no tasks)."""
    cpus_per_worker: int | None = None
    """Logical CPUs each worker offers; None: this machine's cores shared among the workers (at least 1)."""
    gpus_per_worker: int = 0
    """GPUs each worker offers. Real GPUs are split between workers when there are enough of them (each
    worker sees its own through ``CUDA_VISIBLE_DEVICES``); otherwise the GPUs are logical only, which is
    what tests of scheduling need on a machine without one."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources each worker offers, e.g. ``{"bigmem": 1}``."""
    object_store_mb: int = DEFAULT_OBJECT_STORE_MB
    """Object store size per node, in MiB."""
    auth: bool = True
    """Token authentication (``RAY_AUTH_MODE=token``) on every node."""
    dashboard_port: int | None = None
    """None: 8265 (the lab's) when free, else any free port."""
    system_config: dict[str, Any] = field(default_factory=dict)
    """Ray system settings for the head (``ray start --system-config``), e.g. faster health checks in tests."""
    workdir: str | None = None
    """Working folder of the nodes, where a job without ``--working-dir`` runs (relative paths such as
    ``outputs/`` land there); None: the folder ``up`` is called from."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ClusterError(f"expected at least 1 worker, found workers={self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 0:
            raise ClusterError(f"expected cpus_per_worker >= 0, found {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ClusterError(f"expected gpus_per_worker >= 0, found {self.gpus_per_worker}")
        if self.object_store_mb < MIN_OBJECT_STORE_MB:
            raise ClusterError(f"expected object_store_mb >= {MIN_OBJECT_STORE_MB}, found {self.object_store_mb}")
        for name, amount in self.resources.items():
            if name in _RESERVED_RESOURCES:
                raise ClusterError(f"resource {name!r} has its own option; custom resources are other names")
            if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
                raise ClusterError(f"expected a positive number for resource {name!r}, found {amount!r}")

    def worker_cpus(self) -> int:
        """Logical CPUs each worker offers: ``cpus_per_worker``, or this machine's cores shared among them."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        return max(1, (os.cpu_count() or 1) // self.workers)
