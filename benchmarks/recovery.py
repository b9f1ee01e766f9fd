"""How fast a Ray training recovers: `cluster up`/`down`, failover to another node, an elastic group's resize.

Each measurement starts its own local cluster with mltrain's code (a head and 2 workers of 1 CPU, as
`mltrain cluster up --workers 2 --cpus-per-worker 1`), with Ray's default health checks unless
--fast-health-checks (Ray then notices a dead node in about 3 s instead of about 15 s). Each training is a
tiny `mltrain train --engine ray` driver on a synthetic set, with its own sqlite MLflow store:

- up: `cluster up` and `cluster down` times (every other measurement's cluster reports them too);
- failover (`--workers 1 --max-failures 2`): after 3 epochs, SIGKILL every process of the node the training
  worker runs on; seconds from the kill to the first training step after the restart (tag
  `mltrain.ray.restart.1`, written by the restarted worker); then Ctrl+C (SIGINT) ends the driver;
- elastic (`--workers 1-2 --resize-interval 5`): after 3 epochs, SIGKILL worker-1; seconds to the first step on
  1 worker and to the first epoch logged with `workers`=1; start worker-1 again; seconds from its being alive
  to the first step on 2 workers and to the first epoch logged with 2.

    .venv/bin/python benchmarks/recovery.py                         # all three, once
    .venv/bin/python benchmarks/recovery.py --only failover --runs 3 --json recovery.json
    .venv/bin/python benchmarks/recovery.py --fast-health-checks    # as the tests' clusters
    .venv/bin/python benchmarks/recovery.py --keep /tmp/recovery    # keep the drivers' logs and MLflow stores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from mltrain import metrics
from mltrain.cluster.local import LocalCluster
from mltrain.cluster.ports import free_port
from mltrain.cluster.spec import ClusterSpec
from mltrain.data.synth import synthesize
from mltrain.tracking import open_client

T = TypeVar("T")
TRAIN = [
    "--engine", "ray", "--accelerator", "cpu", "--no-progress",
    "--set", "pretrained=false", "--set", "image_size=32", "--set", "batch_size=16",
    "--set", "initial_epochs=1", "--set", "total_epochs=200", "--set", "patience=200",
]  # fmt: skip
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}  # tests/ray_fixtures.py
WAIT_S = 300.0
"""Longest wait for one event (a bound on a hang, not a timing)."""
RESTART_TAG = re.compile(r"epoch (\d+); first step at (\S+) on (\S+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), default=None, help="one measurement only")
    parser.add_argument("--fast-health-checks", action="store_true", help="Ray's health checks every 1 s, 3 misses")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this new folder and keep it (driver logs)")
    args = parser.parse_args()
    names = [args.only] if args.only else list(BENCHMARKS)
    rows = []
    with _scratch(args.keep) as root:
        # The nodes inherit this process's environment: the workers' decoded-image cache stays in the scratch folder.
        os.environ["MLTRAIN_CACHE_DIR"] = str(root / "cache")
        synthesize(root / "data", per_class=4, image_size="64x48")
        for index in range(args.runs):
            for name in names:
                folder = root / f"{name}-{index}"
                folder.mkdir()
                row = BENCHMARKS[name](folder, root / "data", args.fast_health_checks)
                rows.append({"benchmark": name, "run": index, **row})
                print(json.dumps(rows[-1]), flush=True)
    summary = _summary(rows)
    checks = "fast (1 s x 3)" if args.fast_health_checks else "Ray's defaults"
    print(f"\nhealth checks: {checks}; {args.runs} run(s)\n{'benchmark':<10} {'seconds':<36} min median max")
    for (name, key), (low, mid, high) in summary.items():
        print(f"{name:<10} {key:<36} {low:6.1f} {mid:6.1f} {high:6.1f}")
    if args.json:
        table = {f"{name}.{key}": values for (name, key), values in summary.items()}
        args.json.write_text(json.dumps({"health_checks": checks, "runs": rows, "summary": table}, indent=1))


# ---- the measurements ---------------------------------------------------------------------------------------


def measure_up(folder: Path, data: Path, fast: bool) -> dict[str, Any]:
    row: dict[str, Any] = {}
    with _cluster(folder, fast, row):
        pass
    return row


def measure_failover(folder: Path, data: Path, fast: bool) -> dict[str, Any]:
    row: dict[str, Any] = {}
    with _cluster(folder, fast, row) as cluster, _Driver(folder, data, cluster, "--workers", "1") as driver:
        run_id = driver.wait_for(lambda: driver.running_run_with_epochs(3), "3 epochs in MLflow")
        lost = _training_nodes(cluster)[0]
        cluster.stop_worker(int(lost.removeprefix("worker-")))
        killed = time.time()
        epoch, first_step = _restart(driver, run_id, 1)
        row.update(
            killed=lost,
            resumed_at_epoch=epoch,
            restarted_on=",".join(_training_nodes(cluster)),
            kill_to_first_step_s=first_step - killed,
        )
        row["driver_exit_on_sigint"] = driver.interrupt()
        row["run_status"] = driver.client().get_run(run_id).info.status
    return row


def measure_elastic(folder: Path, data: Path, fast: bool) -> dict[str, Any]:
    row: dict[str, Any] = {}
    args = ("--workers", "1-2", "--resize-interval", "5")
    with _cluster(folder, fast, row) as cluster, _Driver(folder, data, cluster, *args) as driver:
        run_id = driver.wait_for(lambda: driver.running_run_with_epochs(3), "3 epochs in MLflow")
        cluster.stop_worker(1)
        lost = time.time()
        _, shrunk = _restart(driver, run_id, 1)
        on_one = driver.wait_for(lambda: driver.first_epoch_on(run_id, 1, after=-1), "an epoch on 1 worker")
        began = time.time()
        cluster.start_worker(1)
        back = time.time()
        _, grown = _restart(driver, run_id, 2)
        on_two = driver.wait_for(lambda: driver.first_epoch_on(run_id, 2, after=on_one.step), "an epoch on 2 workers")
        tags = driver.client().get_run(run_id).data.tags
        row.update(
            kill_to_first_step_on_1_s=shrunk - lost,
            kill_to_first_epoch_on_1_s=on_one.timestamp / 1000 - lost,
            first_epoch_on_1=on_one.step,
            start_worker_s=back - began,
            alive_to_first_step_on_2_s=grown - back,
            alive_to_first_epoch_on_2_s=on_two.timestamp / 1000 - back,
            first_epoch_on_2=on_two.step,
            resize_1=tags.get("mltrain.ray.resize.1"),
            resize_2=tags.get("mltrain.ray.resize.2"),
        )
        row["driver_exit_on_sigint"] = driver.interrupt()
    return row


BENCHMARKS: dict[str, Callable[[Path, Path, bool], dict[str, Any]]] = {
    "up": measure_up,
    "failover": measure_failover,
    "elastic": measure_elastic,
}


@contextlib.contextmanager
def _scratch(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="mltrain-recovery-") as scratch:
        yield Path(scratch)


# ---- the cluster and the driver -----------------------------------------------------------------------------


@contextlib.contextmanager
def _cluster(folder: Path, fast: bool, row: dict[str, Any]) -> Iterator[LocalCluster]:
    """A head and 2 workers of 1 CPU, as the tests start them; `up_s` and `down_s` go into ``row``."""
    spec = ClusterSpec(
        workers=2,
        cpus_per_worker=1,
        object_store_mb=100,
        dashboard_port=free_port(),  # never the shared 8265
        system_config=FAST_HEALTH_CHECKS if fast else {},
        workdir=str(folder),
    )
    began = time.monotonic()
    cluster = LocalCluster.up(spec, folder / "cluster")
    row["up_s"] = time.monotonic() - began
    try:
        yield cluster
    finally:
        began = time.monotonic()
        cluster.down()
        row["down_s"] = time.monotonic() - began


class _Driver:
    """A `mltrain train --engine ray` driver on the cluster, its output in ``driver.log``; killed if still running
    when the block ends."""

    def __init__(self, folder: Path, data: Path, cluster: LocalCluster, *args: str) -> None:
        self.uri = f"sqlite:///{folder}/mlflow.db"
        self.log = folder / "driver.log"
        env = {**os.environ, **cluster.client_env(), "MLFLOW_TRACKING_URI": self.uri}
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mltrain", "train", "--data", str(data), *TRAIN, *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=folder,
                # Started from a background shell, SIGINT may be ignored; a terminal user's driver hears Ctrl+C.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    def __enter__(self) -> _Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> Any:
        return open_client(self.uri)  # the driver may be creating the store right now

    def wait_for(self, predicate: Callable[[], T | None], what: str) -> T:
        deadline = time.monotonic() + WAIT_S
        while True:
            value = predicate()
            if value:
                return value
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                raise SystemExit(f"no {what} (driver exit status {self.process.poll()}); its output ends:\n{tail}")
            time.sleep(0.25)

    def interrupt(self) -> int | None:
        """Ctrl+C: the driver ends its run KILLED; returns its exit status (None: it had to be killed)."""
        self.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=120)
        return None

    def running_run_with_epochs(self, count: int) -> str | None:
        client = self.client()
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            epochs = client.get_metric_history(run.info.run_id, metrics.VAL_LOSS)
            if run.info.status == "RUNNING" and len(epochs) >= count:
                return run.info.run_id
        return None

    def first_epoch_on(self, run_id: str, workers: int, after: int) -> Any:
        """The first `workers` metric (an epoch) after step ``after`` that says ``workers``, or None."""
        history = sorted(self.client().get_metric_history(run_id, metrics.WORKERS), key=lambda m: m.step)
        return next((m for m in history if m.step > after and m.value == workers), None)


def _restart(driver: _Driver, run_id: str, number: int) -> tuple[int, float]:
    """(epoch, POSIX time of the first step) of restart ``number``, from the tag its first step wrote."""
    key = f"mltrain.ray.restart.{number}"
    tag = driver.wait_for(lambda: driver.client().get_run(run_id).data.tags.get(key), f"tag {key}")
    found = RESTART_TAG.match(tag)
    if found is None:
        raise SystemExit(f"unexpected {key}: {tag!r}")
    return int(found.group(1)), datetime.fromisoformat(found.group(2)).timestamp()


def _training_nodes(cluster: LocalCluster) -> list[str]:
    """Names of the nodes the live Ray Train worker actors run on."""
    from ray.util.state.common import ListApiOptions, StateResource

    filters = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    client = cluster.connection().state_client()
    options = ListApiOptions(filters=filters)
    actors = client.list(StateResource.ACTORS, options=options, raise_on_missing_output=False)
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    return sorted(names.get(actor.node_id, actor.node_id) for actor in actors)


def _summary(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """(min, median, max) of every timing (`*_s`) per benchmark, over the runs."""
    values: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.endswith("_s") and isinstance(value, int | float):
                values.setdefault((row["benchmark"], key), []).append(value)
    return {key: [min(v), statistics.median(v), max(v)] for key, v in values.items()}


if __name__ == "__main__":
    main()
