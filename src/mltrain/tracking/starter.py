"""Create a training's MLflow run in a helper process, while the training process imports torch.

On a small machine, importing MLflow and opening its store takes a second or more, all of it Python code
that holds the interpreter lock, so a thread cannot hide it behind torch's import. A second process can:
:class:`RunStarter` starts one as soon as a training begins; it imports MLflow and opens the store while
the training imports torch and reads its data, then creates the run when asked — only after every check
has passed, so a mistake still leaves no run behind. The training process attaches to the run (and imports
MLflow) later, off its critical path: see ``RunOwner(deferred=True)`` and ``RunLogger(deferred=True)``.

Protocol (JSON lines): the helper gets its settings as its one argument; on stdin, one request
``{"tags": ..., "run_name": ..., "parent_run_id": ...}`` creates the run, end of input without one exits
without creating anything. It answers ``{"run_id": ..., "experiment_id": ...}`` or ``{"error": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mltrain.errors import TrackingError
from mltrain.tracking.owner import RunSpec, create_run
from mltrain.tracking.store import open_client

log = logging.getLogger(__name__)


@dataclass
class CreatedRun:
    run_id: str
    experiment_id: str


class RunStarter:
    """A helper process that will create one MLflow run on request.

    Args:
        experiment: The experiment to create the run in (created when missing, when the run is).
        tracking_uri: Explicit tracking URI; default: what MLflow reads from the environment.
    """

    def __init__(self, experiment: str, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        settings = {"experiment": experiment, "tracking_uri": tracking_uri, "source_name": sys.argv[0]}
        self._process: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "mltrain.tracking.starter", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # read when it fails
            text=True,
        )

    def create(
        self, tags: Mapping[str, str], run_name: str | None = None, parent_run_id: str | None = None
    ) -> CreatedRun:
        """Create the run now; raises TrackingError when MLflow refuses (the helper's message included)."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("this RunStarter was already used")
        request = {"tags": dict(tags), "run_name": run_name, "parent_run_id": parent_run_id}
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.close()
            answer: dict[str, Any] = {}
            while not answer and (line := process.stdout.readline()):
                answer = _answer(line)
        except BaseException:
            # Interrupted while the run is being created: let the helper finish, and end its run KILLED.
            _end_orphan(process.stdout.read(), self.tracking_uri)
            raise
        errors = process.stderr.read() if "run_id" not in answer and process.stderr is not None else ""
        self.close()  # it exits as soon as it has answered
        if "run_id" in answer:
            return CreatedRun(answer["run_id"], answer["experiment_id"])
        failure = answer.get("error") or f"the helper creating the MLflow run failed: {errors.strip()[-2000:]}"
        raise TrackingError(failure)

    def close(self) -> None:
        """Done with the helper: it exits (without creating a run, if ``create`` was not called)."""
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answer(out: str | None) -> dict[str, Any]:
    lines = [line for line in (out or "").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _end_orphan(out: str | None, tracking_uri: str | None) -> None:
    answer = _answer(out)
    if "run_id" not in answer:
        return
    try:
        open_client(tracking_uri).set_terminated(answer["run_id"], "KILLED")
    except Exception as exc:
        log.error("run %s was created as the training stopped and could not be ended: %s", answer["run_id"], exc)


def _serve(settings: dict[str, Any]) -> dict[str, Any] | None:
    import mlflow

    from mltrain.internals.mlflow import warm_up_imports
    from mltrain.tracking.experiments import sqlite_database

    if settings["tracking_uri"]:
        mlflow.set_tracking_uri(settings["tracking_uri"])
    database = sqlite_database(mlflow.get_tracking_uri())
    if database is None or database.exists():  # opening a new one would create it: a training that then fails
        try:  # its checks must leave no database behind
            open_client().get_experiment_by_name(settings["experiment"])  # opens the store now
        except Exception as exc:
            log.debug("store not ready yet: %s", exc)  # creating the run reports it, if it persists
    warm_up_imports(sql_store=database is not None and not database.exists())
    line = sys.stdin.readline()
    if not line.strip():
        return None  # the training stopped before it needed a run
    request = json.loads(line)
    sys.argv[0] = settings["source_name"]  # the run's source is the training's command, as in mlflow.start_run
    spec = RunSpec(settings["experiment"], run_name=request["run_name"], tags=dict(request["tags"]))
    try:
        run_id, experiment_id = create_run(open_client(), spec, request["parent_run_id"])
    except TrackingError as exc:
        return {"error": str(exc)}
    return {"run_id": run_id, "experiment_id": experiment_id}


def main() -> None:
    # Ctrl+C reaches the whole process group: the training decides what happens to the run, not this helper.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        answer = _serve(json.loads(sys.argv[1]))
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    if answer is not None:
        print(json.dumps(answer), flush=True)
    sys.stderr.flush()
    os._exit(0)  # nothing is left to send: skip MLflow's exit handlers, the training waits for this line only


if __name__ == "__main__":
    main()
