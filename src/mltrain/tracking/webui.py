"""``mltrain ui``: MLflow's web app on the store the runs are tracked in, opened on the model-training view.

For a local store (sqlite) it runs ``mlflow ui`` on 127.0.0.1 and records, while it runs, which store it
serves at which address, so that a training ending meanwhile can print a link to its own run (see
:func:`web_base`). For a tracking server the web app is the server itself: nothing to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import webbrowser
from pathlib import Path

from mltrain import env
from mltrain.errors import MltrainError
from mltrain.tracking.experiments import experiment_url, is_server, store_key

HOST = "127.0.0.1"
DEFAULT_STORE = "sqlite:///mlflow.db"


def _record_path(tracking_uri: str) -> Path:
    digest = hashlib.sha256(store_key(tracking_uri).encode()).hexdigest()[:16]
    return env.state_dir() / "ui" / f"{digest}.json"


def running_ui(tracking_uri: str) -> str | None:
    """The address of an ``mltrain ui`` that serves this store now (it answers on its port), else None."""
    path = _record_path(tracking_uri)
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)
        with socket.create_connection((HOST, int(record["port"])), timeout=0.5):
            pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record["url"] if record.get("store") == store_key(tracking_uri) else None


def web_base(tracking_uri: str) -> str | None:
    """Where this store's web app is: the tracking server itself, or a running ``mltrain ui``; None if nowhere."""
    return tracking_uri.rstrip("/") if is_server(tracking_uri) else running_ui(tracking_uri)


def run_url(tracking_uri: str, experiment_id: str | None, run_id: str) -> str | None:
    """A link to the run in the model-training view, when its store's web app is reachable (see :func:`web_base`)."""
    base = web_base(tracking_uri)
    return experiment_url(base, experiment_id, run_id) if base and experiment_id else None


def serve(
    tracking_uri: str | None = None,
    port: int = 5000,
    experiment: str | None = None,
    open_browser: bool = False,
    verbose: bool = False,
) -> int:
    """Show the store's runs in MLflow's web app; for a local store, serve it until Ctrl+C. Returns an exit status.

    Prints the link into the model-training view of ``experiment`` (created, the mltrain way, when a local
    store lacks it, so the link always leads to it).

    Args:
        tracking_uri: The store; default ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``.
        port: Port on 127.0.0.1 for a local store.
        experiment: The experiment to open (default: mltrain's).
        open_browser: Also open the link in the default browser (Python's ``webbrowser``: honours ``BROWSER``).
        verbose: Let ``mlflow ui`` print its server lines and warnings.
    """
    from mltrain.metrics import EXPERIMENT
    from mltrain.tracking.experiments import ensure_experiment
    from mltrain.tracking.store import open_client

    uri = env.tracking_uri(tracking_uri) or DEFAULT_STORE
    name = experiment or EXPERIMENT
    client = open_client(uri)
    if uri.startswith("databricks"):
        print(f"runs are tracked on Databricks ({uri}); open the experiment {name!r} in its workspace")
        return 0
    if is_server(uri):
        found = _existing_experiment_id(client, name)
        url = experiment_url(uri, found)
        print(f"runs are tracked on a server; its UI, on the model-training view: {url}", flush=True)
        if open_browser:
            webbrowser.open(url)
        return 0
    already = running_ui(uri)
    if already is not None:
        raise MltrainError(f"an `mltrain ui` already serves {uri} at {already}; open {already} or stop that one first")
    _check_port_free(port)
    url = experiment_url(f"http://{HOST}:{port}", ensure_experiment(client, name))
    print(f"MLflow UI for {uri}, on the model-training view of {name!r}:\n  {url}\n(Ctrl+C to stop)", flush=True)
    return _run_mlflow_ui(uri, port, url, open_browser, verbose)


def _existing_experiment_id(client: object, name: str) -> str | None:
    try:
        found = client.get_experiment_by_name(name)  # type: ignore[attr-defined]
    except Exception:  # not allowed to read it, server down: the link to the list still helps
        return None
    return found.experiment_id if found is not None else None


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise MltrainError(f"port {port} on {HOST} is in use; choose another with --port") from None


def _run_mlflow_ui(uri: str, port: int, url: str, open_browser: bool, verbose: bool) -> int:
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri]
    command += ["--host", HOST, "--port", str(port), "--workers", "1"]  # one person's UI: starts in half the time
    child_env = os.environ.copy()
    if not verbose:
        command += ["--uvicorn-opts", "--log-level warning"]
        child_env.setdefault("PYTHONWARNINGS", "ignore")  # the server's dependencies warn about each other
    record = _record_path(uri)
    record.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, env=child_env)
    served = {"store": store_key(uri), "url": f"http://{HOST}:{port}", "port": port, "pid": process.pid}
    record.write_text(json.dumps(served))
    if open_browser:
        threading.Thread(target=_open_when_up, args=(port, url, process), daemon=True).start()
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        raise
    finally:
        if process.poll() is None:
            process.kill()
        record.unlink(missing_ok=True)


def _open_when_up(port: int, url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.3)
