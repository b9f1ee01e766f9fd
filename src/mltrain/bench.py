"""``mltrain bench``: the same training through a naive reference loop and through mltrain's path.

Both loops train the same model with the same hyperparameters, batch size, image size and images,
for the same head-only and fine-tune epochs, on the same device:

(a) **naive** — the plain way: torchvision ``ImageFolder``, the lab's PIL transforms on the fly,
    ``num_workers=0``, the default memory layout, fp32;
(b) **mltrain** — the engine users run (:class:`mltrain.engines.torch_engine.TorchRecipe`): the
    decoded-image cache, augmentation in a loader process, ``channels_last``, mixed precision on GPUs.

For each phase it reports training images/s (training passes only), ``data_wait_fraction`` (time
spent waiting for batches / epoch time) and the epoch times with validation; the cache build is a
one-off reported separately.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mltrain import metrics
from mltrain.config import TrainConfig
from mltrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mltrain.engines.common import FINE_TUNE, HEAD, EpochStats, phase_of, prepare_model, select_device, timed_batches
from mltrain.errors import ConfigError


@dataclass
class PhaseResult:
    """One phase (head-only or fine-tune) of one loop."""

    epochs: int = 0
    train_images: int = 0
    train_seconds: float = 0.0
    wait_seconds: float = 0.0
    epoch_seconds: float = 0.0
    """Sum of the epoch times, validation included."""

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.wait_seconds / self.epoch_seconds if self.epoch_seconds else 0.0

    def add(self, train: EpochStats, train_seconds: float, wait_seconds: float, epoch_seconds: float) -> None:
        self.epochs += 1
        self.train_images += train.seen
        self.train_seconds += train_seconds
        self.wait_seconds += wait_seconds
        self.epoch_seconds += epoch_seconds

    def as_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "images_per_second": self.images_per_second,
            "data_wait_fraction": self.data_wait_fraction,
        }


@dataclass
class LoopResult:
    """Both phases of one loop, and the accuracy it reached."""

    name: str
    phases: dict[str, PhaseResult] = field(default_factory=lambda: {HEAD: PhaseResult(), FINE_TUNE: PhaseResult()})
    val_accuracy: float = float("nan")
    setup_seconds: float = 0.0
    """One-off cost before the first epoch (mltrain: the decoded-image cache)."""

    @property
    def total_epoch_seconds(self) -> float:
        return sum(phase.epoch_seconds for phase in self.phases.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phases": {name: phase.as_dict() for name, phase in self.phases.items()},
            "val_accuracy": self.val_accuracy,
            "setup_seconds": self.setup_seconds,
            "total_epoch_seconds": self.total_epoch_seconds,
        }


@dataclass
class BenchResult:
    """The two loops side by side, with the machine they ran on."""

    naive: LoopResult
    mltrain: LoopResult
    machine: dict[str, Any]
    settings: dict[str, Any]

    def ratios(self) -> dict[str, float]:
        """mltrain / naive: images/s per phase, and overall (sum of epoch times, validation included)."""
        out = {}
        for phase in (HEAD, FINE_TUNE):
            ours, base = self.mltrain.phases[phase], self.naive.phases[phase]
            if ours.epochs and base.images_per_second:
                out[phase] = ours.images_per_second / base.images_per_second
        if self.mltrain.total_epoch_seconds:
            out["overall"] = self.naive.total_epoch_seconds / self.mltrain.total_epoch_seconds
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "naive": self.naive.as_dict(),
            "mltrain": self.mltrain.as_dict(),
            "ratios": self.ratios(),
        }

    def table(self) -> str:
        """A markdown table for people (and docs/PERFORMANCE.md)."""
        ratios = self.ratios()
        rows = [
            "| phase | naive images/s | mltrain images/s | ratio | naive data_wait | mltrain data_wait |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for phase in (HEAD, FINE_TUNE):
            base, ours = self.naive.phases[phase], self.mltrain.phases[phase]
            if not ours.epochs:
                continue
            rows.append(
                f"| {phase} ({ours.epochs} epoch{'s' if ours.epochs > 1 else ''}) | {base.images_per_second:.1f} "
                f"| {ours.images_per_second:.1f} | {ratios.get(phase, float('nan')):.2f}x "
                f"| {base.data_wait_fraction:.3f} | {ours.data_wait_fraction:.3f} |"
            )
        rows.append(
            f"| all epochs, validation included | {self.naive.total_epoch_seconds:.1f} s "
            f"| {self.mltrain.total_epoch_seconds:.1f} s | {ratios.get('overall', float('nan')):.2f}x | | |"
        )
        rows.append(f"| final val_accuracy | {self.naive.val_accuracy:.3f} | {self.mltrain.val_accuracy:.3f} | | | |")
        rows.append(f"| one-off set-up (cache build) | – | {self.mltrain.setup_seconds:.1f} s | | | |")
        return "\n".join(rows)


def bench_config(head_epochs: int, fine_tune_epochs: int, overrides: Iterable[str] = ()) -> TrainConfig:
    """The lab's hyperparameters for ``head_epochs`` + ``fine_tune_epochs``, no early stop, no download."""
    if head_epochs < 0 or fine_tune_epochs < 0 or head_epochs + fine_tune_epochs == 0:
        raise ConfigError(
            f"epochs must be HEAD+FINE_TUNE with non-negative parts, not {head_epochs}+{fine_tune_epochs}"
        )
    base = [
        f"initial_epochs={head_epochs}",
        f"total_epochs={head_epochs + fine_tune_epochs}",
        f"patience={head_epochs + fine_tune_epochs + 1}",
        "pretrained=false",
    ]
    return TrainConfig.build(overrides=[*base, *overrides])


def run_bench(
    data_dir: str | os.PathLike[str],
    config: TrainConfig,
    progress: bool = True,
    loops: Iterable[str] = ("naive", "mltrain"),
) -> BenchResult:
    """Train ``config`` through both loops on ``data_dir`` and measure them.

    Each loop runs in a fresh Python process, so neither inherits the other's warmed-up state
    (allocator, thread pools, kernel caches) and mltrain's process-wide settings cannot speed up
    the naive loop.
    """
    root = Path(data_dir)
    device = select_device(config)
    results = {name: LoopResult(name) for name in ("naive", "mltrain")}
    for name in loops:
        if name not in results:
            raise ConfigError(f"unknown loop {name!r}; choose naive or mltrain")
        results[name] = _run_isolated(name, root, config, progress)
    return BenchResult(
        naive=results["naive"],
        mltrain=results["mltrain"],
        machine=machine_info(device),
        settings=_settings(config, root),
    )


def run_loop(name: str, root: Path, config: TrainConfig, progress: bool = True) -> LoopResult:
    """Run one loop in this process."""
    if name == "naive":
        return naive_loop(root, config, select_device(config), progress)
    return mltrain_loop(root, config, progress)


def _run_isolated(name: str, root: Path, config: TrainConfig, progress: bool) -> LoopResult:
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mltrain-bench-") as scratch:
        out = Path(scratch) / "loop.json"
        command = [sys.executable, "-m", "mltrain.bench", name, str(root), config.model_dump_json(), str(out)]
        if not progress:
            command.append("--no-progress")
        done = subprocess.run(command, check=False)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the {name} loop failed (exit status {done.returncode}); its output is above")
        return _loop_from_dict(json.loads(out.read_text()))


def _loop_from_dict(raw: dict[str, Any]) -> LoopResult:
    result = LoopResult(raw["name"], val_accuracy=raw["val_accuracy"], setup_seconds=raw["setup_seconds"])
    for phase, numbers in raw["phases"].items():
        fields = {
            key: numbers[key] for key in ("epochs", "train_images", "train_seconds", "wait_seconds", "epoch_seconds")
        }
        result.phases[phase] = PhaseResult(**fields)
    return result


# --- (a) the naive reference loop -------------------------------------------------------------------------
def naive_loop(root: Path, config: TrainConfig, device: torch.device, progress: bool = True) -> LoopResult:
    """The plain loop: ImageFolder + on-the-fly PIL transforms, no workers, default layout, fp32."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from mltrain.model import head, set_backbone_trainable

    size = config.image_size
    train_tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.RandomHorizontalFlip(config.random_horizontal_flip),
            transforms.RandomRotation(config.random_rotation),
            transforms.ColorJitter(
                config.color_jitter_brightness,
                config.color_jitter_contrast,
                config.color_jitter_saturation,
                config.color_jitter_hue,
            ),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        datasets.ImageFolder(root / "training", train_tf),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=0,
    )
    val_loader = DataLoader(
        datasets.ImageFolder(root / "validation", eval_tf), batch_size=config.batch_size, num_workers=0
    )
    # The same weights as mltrain's loop, but the plain way: default memory layout.
    model = prepare_model(config.with_overrides(channels_last=False)).to(device)
    criterion = nn.CrossEntropyLoss()
    result = LoopResult("naive")
    for epoch in range(config.total_epochs):
        phase = phase_of(config, epoch)
        if epoch in (0, config.initial_epochs):
            set_backbone_trainable(model, phase == FINE_TUNE)
            params = head(model).parameters() if phase == HEAD else model.parameters()
            optimizer = torch.optim.Adam(params, lr=config.lr if phase == HEAD else config.fine_tune_lr)
        started = time.perf_counter()
        model.train()
        train = EpochStats()
        for images, labels in timed_batches(_bar(train_loader, f"naive {epoch + 1}", progress), train):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss = criterion(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train.update(loss, logits, labels)
        train_seconds = time.perf_counter() - started
        val = _naive_evaluate(model, val_loader, criterion, device)
        epoch_seconds = time.perf_counter() - started
        result.phases[phase].add(train, train_seconds, train.wait_seconds + val.wait_seconds, epoch_seconds)
        result.val_accuracy = val.accuracy
        _print_epoch("naive", epoch, config.total_epochs, phase, train, val, epoch_seconds)
    return result


@torch.no_grad()
def _naive_evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module, device: torch.device) -> EpochStats:
    model.eval()
    stats = EpochStats()
    for images, labels in timed_batches(loader, stats):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        stats.update(criterion(logits, labels), logits, labels)
    return stats


# --- (b) mltrain's path -----------------------------------------------------------------------------------
def mltrain_loop(root: Path, config: TrainConfig, progress: bool = True) -> LoopResult:
    """The torch engine as ``mltrain train`` runs it, without an MLflow run (nothing to log here)."""
    from mltrain.data.module import Food11Data
    from mltrain.engines.torch_engine import TorchRecipe
    from mltrain.tracking.runlog import NullLogger

    result = LoopResult("mltrain")
    started = time.perf_counter()
    data = Food11Data(root, config, progress=progress).setup()
    result.setup_seconds = time.perf_counter() - started

    class MeasuredRecipe(TorchRecipe):
        """The engine's recipe, also timing each epoch's training pass apart from its validation."""

        def _train_epoch(self, epoch: int) -> EpochStats:
            began = time.perf_counter()
            self.train_pass = super()._train_epoch(epoch), time.perf_counter() - began
            return self.train_pass[0]

    def record(epoch: int, values: dict[str, float], _checkpoint: Path) -> None:
        stats, train_seconds = recipe.train_pass
        epoch_seconds = values[metrics.EPOCH_TIME]
        wait = values[metrics.DATA_WAIT_FRACTION] * epoch_seconds
        result.phases[phase_of(config, epoch)].add(stats, train_seconds, wait, epoch_seconds)
        result.val_accuracy = values[metrics.VAL_ACCURACY]

    import tempfile

    with tempfile.TemporaryDirectory(prefix="mltrain-bench-") as scratch:
        recipe = MeasuredRecipe(config, data, NullLogger(), Path(scratch), progress, record)
        recipe.run()  # the test pass at the end runs too, but outside the measured epochs
    return result


# --- reporting --------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    from mltrain.data.cache import available_cpus

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus_available": available_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write the result as JSON; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return target


def _settings(config: TrainConfig, root: Path) -> dict[str, Any]:
    return {
        "data": str(root),
        "head_epochs": config.initial_epochs,
        "fine_tune_epochs": config.total_epochs - config.initial_epochs,
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "lr": config.lr,
        "fine_tune_lr": config.fine_tune_lr,
        "num_workers": config.num_workers,
        "channels_last": config.channels_last,
        "precision": config.precision,
        "compile": config.compile,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _bar(loader: Iterable, desc: str, progress: bool) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, disable=None if progress else True)


def _print_epoch(
    loop: str, epoch: int, total: int, phase: str, train: EpochStats, val: EpochStats, seconds: float
) -> None:
    print(
        f"[{loop}] epoch {epoch + 1}/{total} [{phase}] train_loss {train.loss:.4f} "
        f"val_acc {val.accuracy:.3f} time {seconds:.1f}s",
        flush=True,
    )


def _main(argv: list[str]) -> None:
    """``python -m mltrain.bench LOOP DATA CONFIG_JSON OUT_JSON [--no-progress]``: one loop, in this process."""
    name, root, config_json, out = argv[:4]
    config = TrainConfig.model_validate_json(config_json)
    result = run_loop(name, Path(root), config, progress="--no-progress" not in argv)
    Path(out).write_text(json.dumps(result.as_dict()))


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
