"""Start-up and tracking cost of `mltrain train` on the demo: startup_seconds and tracking_blocked_seconds.

Runs the demo training N times (each in a fresh store under a scratch folder) and reads the two metrics back
from MLflow: `startup_seconds` (command to first training batch) and, per epoch, `tracking_blocked_seconds`
(time the training loop spent in MLflow calls since the previous epoch).

    .venv/bin/python benchmarks/startup.py --runs 3 [-- extra mltrain train arguments]
    .venv/bin/python benchmarks/startup.py --src /tmp/old/src     # another checkout's code, same venv
    .venv/bin/python benchmarks/startup.py --without-helper       # MLflow imported first: no start-up helper

`--without-helper` starts the command in a Python that has imported MLflow already, which is when mltrain
creates the run in the training process itself (see mltrain.tracking.starter): what the helper saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--src", type=Path, default=None, help="run this source tree's mltrain (PYTHONPATH)")
    parser.add_argument("--without-helper", action="store_true", help="import MLflow before the command")
    parser.add_argument("extra", nargs="*", help="more `mltrain train` arguments (after --)")
    args = parser.parse_args()
    mltrain = str(Path(sys.executable).parent / "mltrain")
    if not (args.data / "training").is_dir():
        subprocess.run([mltrain, "data", "synth", "--dest", str(args.data), "--per-class", "40",
                        "--image-size", "320x240"], check=True)
    rows = []
    for index in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="mltrain-startup-") as scratch:
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
            if args.src:
                env["PYTHONPATH"] = str(args.src.resolve())
            launcher = [sys.executable, "-c", _WITH_MLFLOW] if args.without_helper else [mltrain]
            command = [*launcher, "train", "--data", str(args.data), "--config",
                       str(REPO / "src/mltrain/configs/demo.yaml"), "--no-progress",
                       "--set", f"output_dir={scratch}/outputs", *args.extra]
            began = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=scratch)
            wall = time.perf_counter() - began
            if done.returncode != 0:
                sys.exit(f"run {index} failed:\n{done.stdout}\n{done.stderr}")
            rows.append({**_read(env["MLFLOW_TRACKING_URI"]), "wall_seconds": wall})
            print(json.dumps(rows[-1]), flush=True)
    summary = {
        key: [min(row[key] for row in rows), statistics.median(row[key] for row in rows), max(row[key] for row in rows)]
        for key in ("startup_seconds", "blocked_total", "blocked_first_epoch", "blocked_max_later", "wall_seconds")
    }
    print("metric: min median max")
    for key, (low, mid, high) in summary.items():
        print(f"{key:<22} {low:7.3f} {mid:7.3f} {high:7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "summary": summary}, indent=1))


_WITH_MLFLOW = "import sys, mlflow; from mltrain.cli import main; sys.argv[0] = 'mltrain'; main()"


def _read(uri: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    blocked = sorted(client.get_metric_history(run.info.run_id, "tracking_blocked_seconds"), key=lambda m: m.step)
    values = [m.value for m in blocked]
    return {
        "startup_seconds": run.data.metrics["startup_seconds"],
        "blocked_total": sum(values),
        "blocked_first_epoch": values[0],
        "blocked_max_later": max(values[1:], default=0.0),
        "epochs": len(values),
    }


if __name__ == "__main__":
    main()
