"""Ray Train's storage for a training: where it is, what goes in (a resume's checkpoint), what comes back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mltrain import env

log = logging.getLogger(__name__)


def storage_for(storage: str | None, output_dir: str) -> tuple[str, Any, str]:
    """(path, pyarrow filesystem or None, URI to show) of Ray Train's storage.

    ``s3://bucket/prefix`` gets an explicit ``S3FileSystem`` built from the standard AWS variables
    (``AWS_ENDPOINT_URL`` for MinIO or another S3 endpoint): Ray's default filesystem resolution does not
    read the endpoint variable. A plain path is made absolute; on a multi-node cluster it must be a
    folder every node sees (NFS), else use S3. None: ``<output_dir>/ray``.
    """
    if storage and storage.startswith("s3://"):
        from pyarrow import fs

        endpoint, key, secret, region = env.s3_settings()
        options: dict[str, Any] = {"region": region}
        if endpoint:
            parsed = urlparse(endpoint)
            options["endpoint_override"] = parsed.netloc or parsed.path
            options["scheme"] = parsed.scheme or "https"
        if key and secret:
            options.update(access_key=key, secret_key=secret)
        return storage.removeprefix("s3://").rstrip("/"), fs.S3FileSystem(**options), storage
    path = Path(storage) if storage else Path(output_dir) / "ray"
    path = path.expanduser().resolve()
    return str(path), None, str(path)


def run_name(run_id: str, resumed: bool) -> str:
    """Ray Train's name for one driver's training of run ``run_id``: a fresh one per driver, since reusing a name
    (and its storage) would make Ray resume that old training by itself."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"mltrain-{run_id[:12]}-resumed-{stamp}" if resumed else f"mltrain-{run_id[:12]}-{stamp}"


def upload_initial(local: Path, storage_path: str, filesystem: Any, name: str) -> str:
    """Copy a checkpoint folder to the training's storage, where every worker's node can read it."""
    from pyarrow import fs

    target = f"{storage_path}/{name}/initial-checkpoint"
    destination = filesystem or fs.LocalFileSystem()
    destination.create_dir(target, recursive=True)
    fs.copy_files(
        str(local.resolve()), target, source_filesystem=fs.LocalFileSystem(), destination_filesystem=destination
    )
    return target


def bring_back(run_path: str, filesystem: Any, folder: Path) -> bool:
    """Copy the training's latest registered checkpoint to ``folder`` (nothing is lost when Ray gives up);
    False when there is none."""
    from ray.train import Result

    try:
        latest = Result.from_path(run_path, storage_filesystem=filesystem).checkpoint
    except Exception as exc:  # no checkpoint was ever registered (or the storage is unreachable)
        log.warning("no checkpoint to bring back from %s: %s", run_path, exc)
        return False
    if latest is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    latest.to_directory(str(folder))
    return True


def bring_back_training(storage: str | None, output_dir: str, name: str, folder: Path) -> bool:
    """:func:`bring_back` for the Ray Train training ``name`` (the run's ``mltrain.ray.run_name`` tag)."""
    path, filesystem, _ = storage_for(storage, output_dir)
    return bring_back(f"{path}/{name}", filesystem, folder)
