"""Pieces every engine shares: device and precision choice, epoch statistics, timed batches, results."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.errors import ConfigError
from mltrain.tracking.runlog import RunLog

EpochHook = Callable[[int, dict[str, float], Path], None]
"""Called after each epoch with (epoch, metrics, checkpoint path), e.g. to report to Ray Train."""
HEAD, FINE_TUNE = "head", "fine-tune"
"""The two phases: the classifier head alone, then the whole network."""


@dataclass
class FitResult:
    """What a finished training produced (every engine's ``fit`` returns one)."""

    epochs_run: int
    best_epoch: int
    best_val_loss: float
    test_loss: float
    test_accuracy: float
    stopped_early: bool
    checkpoint: Path
    confusion: list[list[int]] | None = None
    """The test evaluation's confusion matrix (rows: true class, columns: predicted), every test image counted
    once over all processes; None where no test pass ran. The run's owner logs it (:mod:`mltrain.evaluation`)."""


def phase_of(config: TrainConfig, epoch: int) -> str:
    """HEAD for the first ``initial_epochs`` (0-based), FINE_TUNE after."""
    return HEAD if epoch < config.initial_epochs else FINE_TUNE


def prepare_model(config: TrainConfig) -> torch.nn.Module:
    """The shared model, seeded (every engine starts from the same weights) and in the configured layout."""
    from mltrain.model import build_model

    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return build_model(config).to(memory_format=memory_format)


def weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights (what a checkpoint keeps as best or latest)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_host_memory(config: TrainConfig) -> bool:
    """Make glibc malloc keep freed memory for reuse; True when the setting took effect.

    A training step on a CPU allocates and frees activations of tens to hundreds of MB. glibc serves
    blocks that large with mmap and gives them back with munmap, so every step page-faults and
    zeroes them again: measured on 2 cores, that doubled the head-only step time (17.5 -> 8.6 ms per
    image). Serving them from the heap and never trimming it keeps the memory mapped for the next
    step; the cost is that the process keeps its peak memory until it exits. This is what jemalloc
    or tcmalloc achieve when preloaded, without having to preload anything.
    """
    import ctypes
    import platform

    if not config.keep_host_memory or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - glibc under another name
        return False
    # Heap only (no mmap for large blocks), and never return the heap's top to the system.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30 - 1))


def select_device(config: TrainConfig) -> torch.device:
    """The device the config asks for; ConfigError when it is not there."""
    wanted = config.accelerator
    if wanted == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if wanted in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator={wanted} but torch sees no CUDA/ROCm GPU; use accelerator=auto or cpu")
        return torch.device("cuda")
    if wanted == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("accelerator=mps but this machine has no Apple GPU; use accelerator=auto or cpu")
        return torch.device("mps")
    return torch.device("cpu")


def check_devices(config: TrainConfig) -> torch.device:
    """The device to train on, after checking this machine has the ``devices`` asked for; ConfigError if not."""
    device = select_device(config)
    if device.type == "cuda" and config.devices != "auto" and int(config.devices) > torch.cuda.device_count():
        raise ConfigError(
            f"devices={config.devices} on accelerator={config.accelerator}, but torch sees "
            f"{torch.cuda.device_count()} GPU(s) here; lower devices (or use devices=auto for all of them)"
        )
    return device


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for mixed precision, or None for plain fp32."""
    if config.precision == "32":
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    if config.precision == "16":
        return torch.float16
    if device.type == "cuda":  # auto: mixed precision on GPUs only; CPUs without bf16 units get slower
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EpochStats:
    """Running sums for one pass over a loader.

    The sums stay tensors on the training device and are read once, at the end: converting them to
    Python numbers every step would make the CPU wait for the GPU after each batch.
    """

    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    seen: int = 0
    wait_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    classes: int = 0
    """Count a confusion matrix over this many classes too (0: don't)."""
    pairs: torch.Tensor | None = None
    """Counts of (true, predicted) class pairs, flattened (true * classes + predicted), on the training device."""

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        count = labels.shape[0]
        predicted = logits.detach().argmax(dim=1)
        self.loss_sum = self.loss_sum + loss.detach().float() * count
        self.correct = self.correct + (predicted == labels).sum()
        self.seen += count
        if self.classes:
            batch = torch.bincount(labels * self.classes + predicted, minlength=self.classes * self.classes)
            self.pairs = batch if self.pairs is None else self.pairs + batch

    def confusion(self) -> list[list[int]] | None:
        """The confusion matrix (rows: true class, columns: predicted class), if counted."""
        if not self.classes:
            return None
        if self.pairs is None:
            return [[0] * self.classes for _ in range(self.classes)]
        return self.pairs.view(self.classes, self.classes).cpu().tolist()

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return int(self.correct) / max(self.seen, 1)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def timed_batches(loader: Iterable, stats: EpochStats) -> Iterator:
    """Yield the loader's batches, adding the time spent waiting for each to ``stats.wait_seconds``."""
    iterator = iter(loader)
    while True:
        before = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        stats.wait_seconds += time.perf_counter() - before
        yield batch


def epoch_metrics(
    train: EpochStats, val: EpochStats, epoch_time: float, trainable_params: int, workers: int = 1
) -> dict[str, float]:
    """The per-epoch metrics in the shared vocabulary."""
    return {
        metrics.EPOCH_TIME: epoch_time,
        metrics.TRAIN_LOSS: train.loss,
        metrics.TRAIN_ACCURACY: train.accuracy,
        metrics.VAL_LOSS: val.loss,
        metrics.VAL_ACCURACY: val.accuracy,
        metrics.TRAINABLE_PARAMS: float(trainable_params),
        metrics.DATA_WAIT_FRACTION: (train.wait_seconds + val.wait_seconds) / max(epoch_time, 1e-9),
        metrics.WORKERS: float(workers),
    }


def format_epoch(epoch: int, total: int, phase: str, values: dict[str, float]) -> str:
    """One human line per epoch."""
    return (
        f"epoch {epoch + 1:>3}/{total} [{phase}] "
        f"train_loss {values[metrics.TRAIN_LOSS]:.4f} train_acc {values[metrics.TRAIN_ACCURACY]:.3f} "
        f"val_loss {values[metrics.VAL_LOSS]:.4f} val_acc {values[metrics.VAL_ACCURACY]:.3f} "
        f"time {values[metrics.EPOCH_TIME]:.1f}s data_wait {values[metrics.DATA_WAIT_FRACTION]:.0%}"
    )


DATA_WAIT_THRESHOLD = 0.2
"""An epoch that waits for data longer than this share of its time gets the advice of :class:`DataWaitAdvice`."""
DATA_WAIT_MIN_SECONDS = 1.0
"""... and at least this long: a few-second epoch of a tiny set is all start-up noise."""


class DataWaitAdvice:
    """Says once per run — one console line and the run tag ``mltrain.advice.data_wait`` — when the data path
    holds the training up: an epoch waited for its batches more than ``threshold`` of its time.

    The first epoch a process trains is not judged: it also starts the loader processes and reads the cache
    from disk into memory for the first time. Once given (the tag is set), a resumed or restarted training
    does not repeat it.

    Args:
        config: The resolved configuration (``num_workers``, ``cache_dir``).
        tracker: The run's logger (the advice is a tag of the run).
        device: The training device (decides what ``num_workers=auto`` means).
        threshold: The data_wait_fraction above which to advise.
    """

    def __init__(
        self, config: TrainConfig, tracker: RunLog, device: torch.device, threshold: float = DATA_WAIT_THRESHOLD
    ) -> None:
        self.config = config
        self.tracker = tracker
        self.device = device
        self.threshold = threshold
        self.done = tracker.run_id is None  # no run to tag (a NullLogger's process): no advice
        self._first_epoch: int | None = None

    def check(self, epoch: int, values: dict[str, float]) -> str | None:
        """Look at a finished epoch's metrics; returns the advice when it is given now."""
        if self.done:
            return None
        if self._first_epoch is None:
            self._first_epoch = epoch
            return None
        fraction = values[metrics.DATA_WAIT_FRACTION]
        waited = fraction * values[metrics.EPOCH_TIME]
        if fraction <= self.threshold or waited < DATA_WAIT_MIN_SECONDS:
            return None
        self.done = True
        if self.tracker.tag_value(metrics.DATA_WAIT_ADVICE_TAG):
            return None  # given before this resume or restart
        advice = self.text(epoch, fraction, waited)
        print(advice, flush=True)
        self.tracker.set_tags({metrics.DATA_WAIT_ADVICE_TAG: advice})
        return advice

    def text(self, epoch: int, fraction: float, waited: float) -> str:
        """The advice: what was measured, the settings to change, and the cores there are."""
        from mltrain import env
        from mltrain.data.cache import available_cpus
        from mltrain.data.module import LoaderPlan

        cores = available_cpus()
        workers = LoaderPlan.for_device(self.config, self.device).workers
        setting = f"num_workers={self.config.num_workers}"
        if self.config.num_workers == "auto":
            setting += f" ({workers})"
        if workers < cores:
            more = f"raise num_workers (e.g. --set num_workers={min(cores, max(2, 2 * workers))})"
        else:
            more = "num_workers already matches the cores: lighter augmentation or more cores would help"
        cache = env.cache_dir(self.config.cache_dir)
        return (
            f"advice: the training waited for data {fraction:.0%} of epoch {epoch + 1} ({waited:.1f} s): "
            f"{setting}, {cores} CPU core(s) available to this process. To feed it faster, {more}; if the "
            f"decoded-image cache ({cache}) is on a slow or network disk, move it to a fast local one "
            "(--set cache_dir=PATH)."
        )
