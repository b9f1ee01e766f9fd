"""Fetch the Food-11 archive, unpack it and sort each split into class folders."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mltrain.data.layout import CLASS_NAMES, SPLITS, check_layout, class_dir_name, count_per_class
from mltrain.errors import DataError, MltrainError

# The mirror the lab's data container downloads from (a zip of training/ validation/ evaluation/).
FOOD11_URL = "https://nyu.box.com/shared/static/m5kvcl25hfpljul3elhu6xz8y2w61op4.zip"
_FLAT_NAME = re.compile(r"^(\d+)_\d+\.[A-Za-z]+$")


@dataclass
class PrepareReport:
    """What `prepare` did and what the folder holds afterwards."""

    dest: Path
    downloaded: bool = False
    extracted: bool = False
    moved: int = 0
    unrecognised: list[str] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.downloaded or self.extracted or self.moved > 0


def prepare(
    dest: str | os.PathLike[str],
    archive: str | os.PathLike[str] | None = None,
    url: str = FOOD11_URL,
    progress: bool = True,
) -> PrepareReport:
    """Make ``dest`` a Food-11 tree; a no-op when it already is one.

    Args:
        dest: Target folder (created when missing).
        archive: A local copy of the zip; when given nothing is downloaded.
        url: Where to download the zip from when no archive is given.
        progress: Show progress bars.
    """
    root = Path(dest)
    report = PrepareReport(dest=root)
    if _is_prepared(root):
        report.counts = count_per_class(root)
        return report
    root.mkdir(parents=True, exist_ok=True)
    if not all((root / split).is_dir() for split in SPLITS):
        zip_path = Path(archive) if archive else None
        if zip_path is None:
            zip_path = download(url, root / ".download" / "food11.zip", progress=progress)
            report.downloaded = True
        _extract(zip_path, root, progress=progress)
        report.extracted = True
        if report.downloaded:
            shutil.rmtree(root / ".download", ignore_errors=True)
    report.moved, report.unrecognised = organise(root)
    check_layout(root)
    report.counts = count_per_class(root)
    return report


def download(url: str, target: Path, progress: bool = True, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``target`` with a progress bar; DataError naming ``--archive`` when offline."""
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with requests.get(url, stream=True, timeout=timeout, allow_redirects=True) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with (
                open(partial, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc="download Food-11", disable=None if progress else True
                ) as bar,
            ):
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download the Food-11 archive from {url} ({type(exc).__name__}: {exc}); "
            "without network, fetch the zip on another machine and run "
            "`mltrain data prepare --dest DIR --archive PATH/TO/food11.zip`"
        ) from None
    partial.replace(target)
    return target


def _extract(zip_path: Path, root: Path, progress: bool) -> None:
    if not zip_path.is_file():
        raise DataError(f"archive {zip_path} does not exist")
    if not zipfile.is_zipfile(zip_path):
        raise DataError(f"archive {zip_path} is not a zip file (expected the Food-11 zip)")
    staging = root / ".extract"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as bundle:
        members = bundle.infolist()
        for member in tqdm(members, desc="unpack", unit="file", disable=None if progress else True):
            bundle.extract(member, staging)  # zipfile strips absolute paths and '..' components
    source = _find_split_parent(staging)
    if source is None:
        found = sorted(p.name for p in staging.iterdir())
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"archive {zip_path} holds no {', '.join(SPLITS)} folders "
            f"(found at top level: {', '.join(found) or 'nothing'})"
        )
    for split in SPLITS:
        target = root / split
        if (source / split).is_dir() and not target.exists():
            shutil.move(str(source / split), str(target))
    shutil.rmtree(staging, ignore_errors=True)


def _find_split_parent(staging: Path) -> Path | None:
    for candidate in [staging, *sorted(p for p in staging.rglob("*") if p.is_dir())]:
        if all((candidate / split).is_dir() for split in SPLITS):
            return candidate
    return None


def organise(root: Path) -> tuple[int, list[str]]:
    """Move ``<k>_<n>.jpg`` files of each split into ``class_<kk>``; returns (moved, unrecognised names)."""
    moved = 0
    unrecognised: list[str] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for label in range(len(CLASS_NAMES)):
            (split_dir / class_dir_name(label)).mkdir(exist_ok=True)
        for path in sorted(p for p in split_dir.iterdir() if p.is_file()):
            match = _FLAT_NAME.match(path.name)
            if not match or int(match.group(1)) >= len(CLASS_NAMES):
                unrecognised.append(f"{split}/{path.name}")
                continue
            path.replace(split_dir / class_dir_name(int(match.group(1))) / path.name)
            moved += 1
    return moved, unrecognised


def _is_prepared(root: Path) -> bool:
    try:
        check_layout(root)
    except MltrainError:
        return False
    return not any(p.is_file() and _FLAT_NAME.match(p.name) for split in SPLITS for p in (root / split).iterdir())
