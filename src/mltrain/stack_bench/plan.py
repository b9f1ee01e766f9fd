"""What a ``stack bench`` client does (:class:`LoadPlan`) and the records of what it did (:class:`Call`,
:class:`ClientResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mltrain.errors import MltrainError

SYSTEM_METRICS: tuple[str, ...] = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
)
"""What MLflow's system-metrics monitor logs on a machine without a GPU, one batch per sample."""
CALL_KINDS: tuple[str, ...] = ("create_run", "params", "epoch", "system", "artifact", "end_run")
"""Each timed client call, by what it does (``epoch``: one ``log_batch`` of the epoch metrics)."""
ARTIFACT_DIR = "load"


@dataclass(frozen=True)
class LoadPlan:
    """What each simulated training does; validated on construction."""

    clients: int = 16
    """Simulated trainings logging at once, each in its own process."""
    epochs: int = 100
    """Epochs per training: one batch of the epoch metrics each."""
    epoch_seconds: float = 0.0
    """Pause after each epoch. 0 logs back to back, which measures what the server can take; a real
    training's epoch lasts seconds to minutes."""
    system_interval: float = 5.0
    """Seconds between system-metric batches (MLflow's monitor samples every 10 s by default); 0: none."""
    artifact_every: int = 25
    """Epochs between file uploads; 0: none."""
    artifact_kib: int = 64
    """Size of each uploaded file."""
    params: int = 27
    """Parameters logged once per run (a training logs its 27 config fields)."""
    retries: int | None = None
    """Client retries per request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); None keeps MLflow's (7, with
    backoff), as a training has. Retries are counted either way, so none hides in a slow call."""
    experiment: str = "mltrain-load"
    """Experiment the runs go to (created when missing)."""

    def __post_init__(self) -> None:
        counts = {"clients": (self.clients, 1), "epochs": (self.epochs, 1), "artifact_every": (self.artifact_every, 0)}
        counts |= {"artifact_kib": (self.artifact_kib, 0), "retries": (0 if self.retries is None else self.retries, 0)}
        for name, (value, least) in counts.items():
            if value < least:
                raise MltrainError(f"load plan: expected {name} >= {least}, found {value}")
        if not 0 <= self.params <= 100:  # MLflow takes at most 100 params in one log_batch
            raise MltrainError(f"load plan: expected 0 <= params <= 100, found {self.params}")
        for name in ("epoch_seconds", "system_interval"):
            if getattr(self, name) < 0:
                raise MltrainError(f"load plan: expected {name} >= 0, found {getattr(self, name)}")
        if not self.experiment:
            raise MltrainError("load plan: expected an experiment name, found an empty one")


@dataclass(frozen=True)
class Call:
    """One timed client call."""

    kind: str
    started: float
    """Wall-clock start (``time.time()``), comparable across the client processes."""
    seconds: float
    error: str | None = None


@dataclass
class ClientResult:
    """What one simulated training did: its calls and everything it logged (to be looked for afterwards)."""

    index: int
    run_id: str | None = None
    calls: list[Call] = field(default_factory=list)
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    """Key -> step -> value of every point sent, whether or not its call succeeded."""
    params: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time the client process spent during its training (all threads)."""
    retried: int = 0
    """Requests the HTTP client sent again (a broken connection or a retryable status such as 503)."""
    retry_reasons: list[str] = field(default_factory=list)
    """The first few distinct reasons urllib3 gave for retrying."""
