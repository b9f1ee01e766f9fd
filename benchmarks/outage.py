"""A tracking-server outage in the middle of a training: does the loop keep its pace, and does every epoch arrive?

Starts `mlflow server` on 127.0.0.1 (sqlite backend store and artifact folder in a scratch folder), runs a tiny
`mltrain train` (torch engine) against it, and once the training has trained a few epochs and its run has an
epoch logged, SIGKILLs the server (its whole process group) for --outage seconds, then starts it again on the
same port with the same store and lets the training finish. Prints the epochs trained before, during and
after the outage (the outage lasts from the kill until the restarted server answers `/health`), the median
seconds per epoch in each (from when each `epoch N/M` line reached stdout), the run's
`tracking_blocked_seconds` (time the loop spent in MLflow calls, per epoch; max and median without the one
epoch that attached to the run), and whether every epoch's metrics reached the run once.

    .venv/bin/python benchmarks/outage.py                                 # 40 epochs, 30 s outage
    .venv/bin/python benchmarks/outage.py --outage 60 --epochs 400 --json outage.json   # training goes on after it
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from mltrain import metrics
from mltrain.cluster.ports import free_port
from mltrain.data.synth import synthesize

TRAIN = [
    "--engine", "torch", "--accelerator", "cpu", "--no-progress",
    "--set", "pretrained=false", "--set", "image_size=32", "--set", "batch_size=16", "--set", "initial_epochs=1",
]  # fmt: skip
EPOCH_LINE = re.compile(r"epoch\s+(\d+)/(\d+) ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server is down")
    parser.add_argument("--epochs", type=int, default=40, help="total_epochs of the training")
    parser.add_argument("--before", type=int, default=5, help="epochs to train before the outage (the pace before)")
    parser.add_argument("--server-workers", type=int, default=1, help="`mlflow server --workers` (MLflow's: 4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mltrain-outage-") as scratch:
        root = Path(scratch)
        synthesize(root / "data", per_class=4, image_size="64x48")
        server = _Server(root, args.server_workers)
        server.start()
        _say(f"mlflow server answers at {server.url}")
        try:
            result = _train_through_outage(root, server, args)
            result.update(_read_run(server.url, args.epochs))
        finally:
            server.kill()
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


class _Server:
    """`mlflow server` on loopback, in its own process group so that a kill takes its workers down too."""

    def __init__(self, root: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{root}/server.db",
            "--default-artifact-root", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        with self.log.open("a") as sink:
            self.process = subprocess.Popen(
                self.command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                sys.exit(f"mlflow server did not come up:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _healthy(self) -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
            return answer.status == 200
        return False


def _train_through_outage(root: Path, server: _Server, args: argparse.Namespace) -> dict[str, Any]:
    """Run the training, take the server down for ``args.outage`` seconds; the arrival time of each epoch line."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.url, MLTRAIN_CACHE_DIR=str(root / "cache"))
    settings = ["--set", f"total_epochs={args.epochs}", "--set", f"patience={args.epochs}"]
    command = [sys.executable, "-m", "mltrain", "train", "--data", str(root / "data"), *TRAIN, *settings]
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    lines: list[tuple[float, str]] = []
    warmed_up = threading.Event()

    def read() -> None:
        for line in trainer.stdout or ():
            lines.append((time.monotonic(), line))
            found = EPOCH_LINE.match(line)
            if found and int(found.group(1)) >= args.before:
                warmed_up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait(lambda: warmed_up.is_set() and _run_has_an_epoch(server.url), trainer, lines)
        server.kill()
        killed = time.monotonic()
        _say(f"server killed after {sum(1 for _, line in lines if EPOCH_LINE.match(line))} epoch(s)")
        time.sleep(args.outage)
        restarted = time.monotonic()
        server.start()
        back = time.monotonic()
        _say(f"server back after {back - killed:.1f} s")
        trainer.wait(timeout=900)
        _say("training finished")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    reader.join(timeout=10)
    if trainer.returncode != 0:
        sys.exit(f"the training failed ({trainer.returncode}):\n{''.join(line for _, line in lines)[-3000:]}")
    epochs = [at for at, line in lines if EPOCH_LINE.match(line)]
    return {"outage_s": back - killed, "server_restart_s": back - restarted, **_pace(epochs, killed, back)}


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _wait(ready: Any, trainer: subprocess.Popen, lines: list[tuple[float, str]], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if trainer.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"no epoch before the outage:\n{''.join(line for _, line in lines)[-3000:]}")
        time.sleep(0.2)


def _run_has_an_epoch(url: str) -> bool:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(metrics.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
    return any(metrics.VAL_LOSS in run.data.metrics for run in runs)


def _pace(epochs: list[float], killed: float, back: float) -> dict[str, Any]:
    """Epochs and median seconds per epoch before, during and after the outage, from the epoch lines' times."""
    before = [at for at in epochs if at < killed]
    during = [at for at in epochs if killed <= at < back]
    after = [at for at in epochs if at >= back]

    def median_gap(times: list[float]) -> float | None:
        return statistics.median(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else None

    return {
        "epochs_before": len(before),
        "epochs_during": len(during),
        "epochs_after": len(after),
        "s_per_epoch_before": median_gap(before),
        # The outage's first epoch is timed from the kill.
        "s_per_epoch_during": median_gap([killed, *during]) if during else None,
        "s_per_epoch_after": median_gap(after),
    }


def _read_run(url: str, epochs: int) -> dict[str, Any]:
    """The run's status, its tracking_blocked_seconds per epoch, and whether every epoch arrived exactly once."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    [run] = client.search_runs([client.get_experiment_by_name(metrics.EXPERIMENT).experiment_id])
    run_id = run.info.run_id
    history = sorted(client.get_metric_history(run_id, metrics.TRACKING_BLOCKED), key=lambda m: m.step)
    blocked = [m.value for m in history]
    # One early epoch attaches the training to the run the start-up helper created and sends its start records.
    attach = max(range(len(blocked)), key=blocked.__getitem__)
    others = [value for epoch, value in enumerate(blocked) if epoch != attach]
    steps = {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in metrics.EPOCH_METRICS}
    once = all(value == list(range(epochs)) for value in steps.values()) and all(
        len(client.get_metric_history(run_id, key)) == 1 for key in metrics.FINAL_METRICS
    )
    return {
        "run_status": run.info.status,
        "epochs_logged": len(steps[metrics.VAL_LOSS]),
        "every_epoch_once": once,
        "blocked_attach_epoch": attach,
        "blocked_attach_s": blocked[attach],
        "blocked_max_other_s": max(others, default=0.0),
        "blocked_median_other_s": statistics.median(others) if others else 0.0,
        "blocked_s": blocked,
    }


def _print(result: dict[str, Any]) -> None:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"outage {result['outage_s']:.1f} s (restarted server healthy after {result['server_restart_s']:.1f} s)")
    print(f"{'':<16} {'before':>8} {'during':>8} {'after':>8}")
    print(f"{'epochs':<16} {result['epochs_before']:>8} {result['epochs_during']:>8} {result['epochs_after']:>8}")
    paces = [number(result[f"s_per_epoch_{when}"]) for when in ("before", "during", "after")]
    print(f"{'median s/epoch':<16} {paces[0]:>8} {paces[1]:>8} {paces[2]:>8}")
    print(
        f"tracking_blocked_seconds: attach (epoch {result['blocked_attach_epoch']}) {result['blocked_attach_s']:.3f}, "
        f"other epochs max {result['blocked_max_other_s']:.3f}, median {result['blocked_median_other_s']:.3f}"
    )
    print(
        f"run {result['run_status']}, {result['epochs_logged']} epochs logged, "
        f"every epoch's metrics once: {result['every_epoch_once']}"
    )


if __name__ == "__main__":
    main()
