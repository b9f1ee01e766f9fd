"""Decode each image once into a memory-mapped uint8 array, reused until the data changes.

Decoding and resizing a JPEG costs more than a head-only training step on a CPU, and on a GPU it is
most of the epoch. Resize and centre crop are deterministic, so their result is cached exactly; the
random augmentations run later on the cached pixels. A cache entry is one folder per (data folder,
split, image size): ``images.u8`` (N x S x S x 3) and ``meta.json``, written last, with a fingerprint
of the files (path, size, mtime) and a CRC of the pixels, so a changed dataset or a damaged cache
file is detected and rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mltrain.data.images import BadImageError, decode_square
from mltrain.data.layout import Sample
from mltrain.env import CACHE_DIR_VAR
from mltrain.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_PARALLEL_MIN_IMAGES = 64
_CHUNK = 32


@dataclass
class DecodedSplit:
    """The decoded pixels of one split and which files could not be read."""

    path: Path
    """The ``images.u8`` file (opened lazily, per process)."""
    size: int
    """Side of each square image."""
    labels: np.ndarray
    """Class index per cached slot."""
    valid: np.ndarray
    """Indices of the slots that hold an image (bad files leave a slot empty)."""
    skipped: list[str]
    """Files that were not images, with the reason."""
    files_digest: str = ""
    """Digest of the split's files (names, labels, sizes, modification times), whatever the image size."""

    def __len__(self) -> int:
        return len(self.valid)

    def open(self) -> np.ndarray:
        """A read-only memory map of all slots, shape (N, S, S, 3)."""
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self.labels), self.size, self.size, 3))


def cache_entry_dir(cache_root: Path, data_root: Path, split: str, size: int) -> Path:
    """The folder that caches ``split`` of ``data_root`` at ``size`` pixels."""
    key = hashlib.sha256(str(data_root.resolve()).encode()).hexdigest()[:12]
    return cache_root / f"{data_root.resolve().name}-{key}" / f"{split}-{size}px"


def fingerprint(samples: Sequence[Sample], size: int) -> str:
    """Changes whenever a file is added, removed, renamed, rewritten or relabelled (or the cache's size)."""
    return fingerprints(samples, size)[0]


def fingerprints(samples: Sequence[Sample], size: int) -> tuple[str, str]:
    """(the cache entry's fingerprint, the files' own digest): one pass over the files' metadata.

    The files' digest is the cache fingerprint without the image size and cache format: what a run records
    as its data's identity (see :attr:`mltrain.data.module.Food11Data.fingerprint`).
    """
    cache = hashlib.sha256(f"format={CACHE_FORMAT};size={size}".encode())
    files = hashlib.sha256()
    for sample in samples:
        stat = sample.path.stat()
        line = f"{sample.path.name}|{sample.label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        cache.update(line)
        files.update(line)
    return cache.hexdigest(), files.hexdigest()


def load_or_build(
    samples: Sequence[Sample],
    size: int,
    entry: Path,
    progress: bool = True,
    workers: int | None = None,
    description: str = "cache",
) -> DecodedSplit:
    """Return the cached split when it is current and intact, else (re)build it.

    Args:
        samples: Files of the split with their labels.
        size: Side of the cached squares.
        entry: Cache folder for this split (see :func:`cache_entry_dir`).
        progress: Show a progress bar while building.
        workers: Decoding processes; default: the CPU cores this process may use.
        description: Label of the progress bar.
    """
    expected, files_digest = fingerprints(samples, size)
    split = _load_valid(entry, expected, size, len(samples))
    if split is None:
        split = _build(samples, size, entry, expected, progress, workers, description)
    split.files_digest = files_digest
    return split


def _load_valid(entry: Path, expected: str, size: int, count: int) -> DecodedSplit | None:
    meta_path = entry / "meta.json"
    data_path = entry / "images.u8"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("cache %s: unreadable meta.json, rebuilding", entry)
        return None
    if meta.get("fingerprint") != expected:
        log.info("cache %s: the data changed, rebuilding", entry)
        return None
    expected_bytes = count * size * size * 3
    if not data_path.is_file() or data_path.stat().st_size != expected_bytes:
        log.warning("cache %s: images.u8 has the wrong size (damaged), rebuilding", entry)
        return None
    if _crc32(data_path) != meta.get("crc32"):
        log.warning("cache %s: images.u8 fails its checksum (damaged), rebuilding", entry)
        return None
    return DecodedSplit(
        path=data_path,
        size=size,
        labels=np.asarray(meta["labels"], dtype=np.int64),
        valid=np.asarray(meta["valid"], dtype=np.int64),
        skipped=list(meta["skipped"]),
    )


def _build(
    samples: Sequence[Sample],
    size: int,
    entry: Path,
    expected: str,
    progress: bool,
    workers: int | None,
    description: str,
) -> DecodedSplit:
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True, exist_ok=True)
    data_path = entry / "images.u8"
    count = len(samples)
    # Preallocate so that workers can write their slots directly; an empty split still gets a file.
    reserve(data_path, count * size * size * 3, "the image cache")
    paths = [str(sample.path) for sample in samples]
    chunks = [(str(data_path), count, size, start, paths[start : start + _CHUNK]) for start in range(0, count, _CHUNK)]
    failures: dict[int, str] = {}
    bar = tqdm(total=count, desc=description, unit="img", disable=None if progress else True)
    workers = workers or available_cpus()
    try:
        if count >= _PARALLEL_MIN_IMAGES and workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done, bad in pool.map(_decode_chunk, chunks):
                    failures.update(bad)
                    bar.update(done)
        else:
            for chunk in chunks:
                done, bad = _decode_chunk(chunk)
                failures.update(bad)
                bar.update(done)
    finally:
        bar.close()
    for reason in failures.values():
        log.warning("skipping a file that is not a usable image: %s", reason)
    skipped = [failures[i] for i in sorted(failures)]
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": expected,
        "size": size,
        "labels": [sample.label for sample in samples],
        "valid": [i for i in range(count) if i not in failures],
        "skipped": skipped,
        "crc32": _crc32(data_path),
    }
    # meta.json last and atomically: an interrupted build leaves no meta, so it is never trusted.
    tmp = entry / "meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    tmp.replace(entry / "meta.json")
    return DecodedSplit(
        path=data_path,
        size=size,
        labels=np.asarray(meta["labels"], dtype=np.int64),
        valid=np.asarray(meta["valid"], dtype=np.int64),
        skipped=skipped,
    )


def reserve(path: Path, nbytes: int, what: str) -> None:
    """Create ``path`` with ``nbytes`` of disk blocks allocated now, for writing through a memory map.

    A file only truncated to size is sparse: when the disk fills up, a write through its memory map kills
    the process with SIGBUS. Allocated up front, a full disk is an error here, before any work is done.
    """
    with open(path, "wb") as handle:
        if nbytes <= 0:
            return
        try:
            os.posix_fallocate(handle.fileno(), 0, nbytes)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system that cannot: sparse
                handle.truncate(nbytes)
                return
            if exc.errno != errno.ENOSPC:
                raise
            path.unlink(missing_ok=True)
            raise DataError(
                f"no room on disk for {what} ({nbytes / 1e6:.0f} MB) at {path.parent}: free some space, or "
                f"put the cache on a disk that has it (--set cache_dir=... or {CACHE_DIR_VAR})"
            ) from exc


def _decode_chunk(task: tuple[str, int, int, int, list[str]]) -> tuple[int, dict[int, str]]:
    data_path, count, size, start, paths = task
    images = np.memmap(data_path, dtype=np.uint8, mode="r+", shape=(count, size, size, 3))
    bad: dict[int, str] = {}
    for offset, path in enumerate(paths):
        try:
            images[start + offset] = decode_square(path, size)
        except BadImageError as exc:
            bad[start + offset] = str(exc)
    images.flush()
    del images
    return len(paths), bad


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc


def available_cpus() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)
