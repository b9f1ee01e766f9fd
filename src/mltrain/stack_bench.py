"""``mltrain stack bench``: many simulated trainings logging to one tracking server at once.

Each simulated training is a process of its own with its own MLflow client (and, with ``own_users``, its
own login), as real trainings are, and it logs what :mod:`mltrain.training` logs: the parameters once; the
epoch metrics (:data:`mltrain.metrics.EPOCH_METRICS`) in one batch per epoch; from a background thread,
a batch of system metrics every few seconds, as MLflow's system-metrics monitor does; now and then a file,
uploaded through the server's artifact proxy. All clients start together and every call is timed.
Afterwards each run is read back and every logged point looked for, so the report says both how fast the
server answered and whether it kept everything::

    from mltrain.stack_bench import LoadPlan, run_load
    result = run_load("http://127.0.0.1:5000", LoadPlan(clients=16, epochs=100), own_users=True)
    print(result.table())
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import re
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mltrain import env, metrics
from mltrain.errors import MltrainError

SYSTEM_METRICS: tuple[str, ...] = (
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
)
"""What MLflow's system-metrics monitor logs on a machine without a GPU, one batch per sample."""
CALL_KINDS: tuple[str, ...] = ("create_run", "params", "epoch", "system", "artifact", "end_run")
"""Each timed client call, by what it does (``epoch``: one ``log_batch`` of the epoch metrics)."""
ARTIFACT_DIR = "load"
START_TIMEOUT_S = 300.0  # every client process must have imported MLflow by then (16 take ~10 s on 2 cores)


@dataclass(frozen=True)
class LoadPlan:
    """What each simulated training does; validated on construction."""

    clients: int = 16
    """Simulated trainings logging at once, each in its own process."""
    epochs: int = 100
    """Epochs per training: one batch of the epoch metrics each."""
    epoch_seconds: float = 0.0
    """Pause after each epoch. 0 logs back to back, which measures what the server can take; a real
    training's epoch lasts seconds to minutes."""
    system_interval: float = 5.0
    """Seconds between system-metric batches (MLflow's monitor samples every 10 s by default); 0: none."""
    artifact_every: int = 25
    """Epochs between file uploads; 0: none."""
    artifact_kib: int = 64
    """Size of each uploaded file."""
    params: int = 27
    """Parameters logged once per run (a training logs its 27 config fields)."""
    retries: int | None = None
    """Client retries per request (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``); None keeps MLflow's (7, with
    backoff), as a training has. Retries are counted either way, so none hides in a slow call."""
    experiment: str = "mltrain-load"
    """Experiment the runs go to (created when missing)."""

    def __post_init__(self) -> None:
        counts = {"clients": (self.clients, 1), "epochs": (self.epochs, 1), "artifact_every": (self.artifact_every, 0)}
        counts |= {"artifact_kib": (self.artifact_kib, 0), "retries": (0 if self.retries is None else self.retries, 0)}
        for name, (value, least) in counts.items():
            if value < least:
                raise MltrainError(f"load plan: expected {name} >= {least}, found {value}")
        if not 0 <= self.params <= 100:  # MLflow takes at most 100 params in one log_batch
            raise MltrainError(f"load plan: expected 0 <= params <= 100, found {self.params}")
        for name in ("epoch_seconds", "system_interval"):
            if getattr(self, name) < 0:
                raise MltrainError(f"load plan: expected {name} >= 0, found {getattr(self, name)}")
        if not self.experiment:
            raise MltrainError("load plan: expected an experiment name, found an empty one")


@dataclass(frozen=True)
class Call:
    """One timed client call."""

    kind: str
    started: float
    """Wall-clock start (``time.time()``), comparable across the client processes."""
    seconds: float
    error: str | None = None


@dataclass
class ClientResult:
    """What one simulated training did: its calls and everything it logged (to be looked for afterwards)."""

    index: int
    run_id: str | None = None
    calls: list[Call] = field(default_factory=list)
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    """Key -> step -> value of every point sent, whether or not its call succeeded."""
    params: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time the client process spent during its training (all threads)."""
    retried: int = 0
    """Requests the HTTP client sent again (a broken connection or a retryable status such as 503)."""
    retry_reasons: list[str] = field(default_factory=list)
    """The first few distinct reasons urllib3 gave for retrying."""


@dataclass
class Stored:
    """What the server holds of what the clients sent, counted by reading every run back."""

    points_logged: int = 0
    points_stored: int = 0
    params_logged: int = 0
    params_stored: int = 0
    artifacts_logged: int = 0
    artifacts_stored: int = 0
    runs: int = 0
    runs_finished: int = 0
    calls: int = 0
    """Client calls the read-back made (not in the load's figures)."""

    @property
    def complete(self) -> bool:
        return (
            self.points_stored == self.points_logged
            and self.params_stored == self.params_logged
            and self.artifacts_stored == self.artifacts_logged
            and self.runs_finished == self.runs
        )


@dataclass
class LoadResult:
    """Calls of all clients, the wall time they took together, and what was stored."""

    plan: LoadPlan
    tracking_uri: str
    calls: list[Call]
    seconds: float
    """From the first call's start to the last call's end."""
    stored: Stored
    client_cpu_seconds: float
    retried: int
    """Requests sent again by the clients' HTTP layer; their calls' latency includes the backoff."""
    retry_reasons: list[str]
    users: int
    """Distinct logins the clients used (1: all shared the caller's)."""

    @property
    def errors(self) -> int:
        return sum(call.error is not None for call in self.calls)

    @property
    def calls_per_second(self) -> float:
        return len(self.calls) / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """No call failed and the server holds every point, parameter, file and finished run."""
        return self.errors == 0 and self.stored.complete

    def latency_ms(self, kind: str | None = None) -> dict[str, float]:
        """p50/p90/p99/max latency in milliseconds, of all calls or of one kind."""
        return latency_summary([c.seconds for c in self.calls if kind is None or c.kind == kind])

    def table(self) -> str:
        """The report: one line per call kind, then throughput, what was stored and the clients' CPU use."""
        header = "| calls | count | errors | p50 ms | p90 ms | p99 ms | max ms |"
        lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
        for kind in (*CALL_KINDS, None):
            chosen = [c for c in self.calls if kind is None or c.kind == kind]
            if not chosen:
                continue
            ms = self.latency_ms(kind)
            errors = sum(c.error is not None for c in chosen)
            lines.append(
                f"| {kind or 'all'} | {len(chosen)} | {errors} | {ms['p50']:.0f} | {ms['p90']:.0f} "
                f"| {ms['p99']:.0f} | {ms['max']:.0f} |"
            )
        s, plan = self.stored, self.plan
        users = f"{self.users} logins" if self.users > 1 else "one shared login"
        lines += [
            "",
            f"{plan.clients} clients x {plan.epochs} epochs ({users}) against {self.tracking_uri}: "
            f"{len(self.calls)} calls in {self.seconds:.1f} s = {self.calls_per_second:.1f} calls/s, "
            f"errors {self.errors}, retried requests {self.retried}",
            f"stored: {s.points_stored}/{s.points_logged} metric points, {s.params_stored}/{s.params_logged} "
            f"params, {s.artifacts_stored}/{s.artifacts_logged} files, {s.runs_finished}/{s.runs} runs FINISHED"
            + ("" if s.complete else "  <-- NOT EVERYTHING WAS STORED"),
            f"clients' CPU: {self.client_cpu_seconds:.1f} s "
            f"({self.client_cpu_seconds / self.seconds if self.seconds else 0:.2f} cores on average)",
        ]
        errors = sorted({c.error for c in self.calls if c.error})
        lines += [f"error: {message}" for message in errors[:5]]
        lines += [f"retried: {reason}" for reason in self.retry_reasons[:5]]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no per-call list)."""
        return {
            "plan": asdict(self.plan),
            "tracking_uri": self.tracking_uri,
            "users": self.users,
            "calls": len(self.calls),
            "errors": self.errors,
            "seconds": self.seconds,
            "calls_per_second": self.calls_per_second,
            "latency_ms": {kind or "all": self.latency_ms(kind) for kind in (*CALL_KINDS, None)},
            "stored": {**asdict(self.stored), "complete": self.stored.complete},
            "client_cpu_seconds": self.client_cpu_seconds,
            "retried": self.retried,
            "retry_reasons": self.retry_reasons,
            "ok": self.ok,
        }


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of call durations, in milliseconds (NaN without calls)."""
    if not seconds:
        return dict.fromkeys(("p50", "p90", "p99", "max"), float("nan"))
    ms = [s * 1000 for s in seconds]
    if len(ms) == 1:
        return dict.fromkeys(("p50", "p90", "p99", "max"), ms[0])
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(ms)}


def count_stored(logged: Mapping[str, Mapping[int, float]], stored: Mapping[str, set[tuple[int, float]]]) -> int:
    """How many of the logged points (key -> step -> value) the server returned as (step, value) pairs."""
    return sum(
        (step, value) in stored.get(key, set()) for key, points in logged.items() for step, value in points.items()
    )


def run_load(tracking_uri: str | None, plan: LoadPlan, own_users: bool = False) -> LoadResult:
    """Run ``plan.clients`` simulated trainings against a tracking server at once, then read everything back.

    Args:
        tracking_uri: An ``http(s)://`` server; None takes ``MLFLOW_TRACKING_URI``. The caller's login comes
            from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, as for any MLflow client.
        plan: What each training logs, and how fast.
        own_users: Give each client a login of its own, as a team has: creates throwaway users through the
            auth API (the caller must be an admin), grants them EDIT on the experiment, deletes them after.

    Raises:
        MltrainError: No http(s) tracking URI, or the server refused the caller.
    """
    uri = env.tracking_uri(tracking_uri)
    if not uri or not uri.startswith(("http://", "https://")):
        raise MltrainError(
            f"expected the URI of a tracking server (http:// or https://), found {uri!r}; "
            "pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        experiment_id = _experiment_id(client, plan.experiment)
    except MlflowException as exc:
        raise MltrainError(f"the tracking server at {uri} refused the load run's experiment: {exc}") from exc
    with _logins(uri, plan.clients if own_users else 0, experiment_id) as logins:
        results = _run_clients(uri, plan, experiment_id, logins)
    calls = [call for result in results for call in result.calls]
    first = min((c.started for c in calls), default=0.0)
    last = max((c.started + c.seconds for c in calls), default=0.0)
    return LoadResult(
        plan=plan,
        tracking_uri=uri,
        calls=calls,
        seconds=last - first,
        stored=read_back(client, results),
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
        retried=sum(r.retried for r in results),
        retry_reasons=sorted({reason for r in results for reason in r.retry_reasons}),
        users=len(set(logins)) if logins else 1,
    )


def read_back(client: Any, results: list[ClientResult]) -> Stored:
    """Look up every run, parameter, metric point and file the clients sent."""
    stored = Stored()
    for result in results:
        stored.runs += 1
        stored.points_logged += sum(len(points) for points in result.metrics.values())
        stored.params_logged += len(result.params)
        stored.artifacts_logged += len(result.artifacts)
        if result.run_id is None:
            continue
        run = client.get_run(result.run_id)
        stored.calls += 1 + len(result.metrics) + bool(result.artifacts)
        stored.runs_finished += run.info.status == "FINISHED"
        stored.params_stored += sum(run.data.params.get(k) == v for k, v in result.params.items())
        history = {
            key: {(m.step, m.value) for m in client.get_metric_history(result.run_id, key)} for key in result.metrics
        }
        stored.points_stored += count_stored(result.metrics, history)
        if result.artifacts:
            files = {item.path for item in client.list_artifacts(result.run_id, ARTIFACT_DIR)}
            stored.artifacts_stored += sum(path in files for path in result.artifacts)
    return stored


def write_json(result: LoadResult, path: str | os.PathLike[str]) -> Path:
    """Write :meth:`LoadResult.as_dict` to ``path``; returns it."""
    target = Path(path)
    target.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return target


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


@contextmanager
def _logins(uri: str, count: int, experiment_id: str) -> Iterator[list[tuple[str, str]]]:
    """``count`` throwaway users with EDIT on the experiment, deleted on exit; none for count 0."""
    if count == 0:
        yield []
        return
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=uri)
    prefix = f"load-{secrets.token_hex(3)}"
    made: list[tuple[str, str]] = []
    try:
        try:
            for index in range(count):
                login = (f"{prefix}-{index:02d}", secrets.token_urlsafe(18))
                users.create_user(username=login[0], password=login[1])
                made.append(login)
                users.grant_user_permission(login[0], "experiment", experiment_id, "EDIT")
        except MlflowException as exc:
            raise MltrainError(f"could not create the load users (own users need an admin login): {exc}") from exc
        yield made
    finally:
        for username, _ in made:
            users.delete_user(username)


def _run_clients(uri: str, plan: LoadPlan, experiment_id: str, logins: list[tuple[str, str]]) -> list[ClientResult]:
    # Processes, not threads: each training has its own interpreter, connection pool and login, and one
    # client's GIL does not throttle the others. Spawned, because forking a process that has threads is unsafe.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(plan.clients)  # handed over at process start: locks cannot travel with a task
    with ProcessPoolExecutor(plan.clients, context, initializer=_keep_barrier, initargs=(start,)) as pool:
        futures = [
            pool.submit(_client_main, index, uri, plan, experiment_id, logins[index] if logins else None)
            for index in range(plan.clients)
        ]
        return [future.result() for future in futures]


_START: Any = None  # in a client process: the barrier all clients pass together


def _keep_barrier(barrier: Any) -> None:
    global _START
    _START = barrier


def _client_main(
    index: int,
    uri: str,
    plan: LoadPlan,
    experiment_id: str,
    login: tuple[str, str] | None,
) -> ClientResult:
    # This process exists for this one client, so its environment is the client's own.
    if login is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = login
    if plan.retries is not None:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(plan.retries)
    retries = _RetryCounter.install()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # no "View run" line per client in the report
    # MLflow's telemetry thread sets and removes an environment variable while requests reads the
    # environment in another thread (a KeyError, seen once in ~30k calls); and it would call out of the
    # network the benchmark is about.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from mlflow import MlflowClient

    training = _SimulatedTraining(MlflowClient(uri), plan, index, experiment_id)
    _START.wait(timeout=START_TIMEOUT_S)  # all clients begin together, after their imports
    cpu = time.process_time()
    training.run()
    training.result.cpu_seconds = time.process_time() - cpu
    training.result.retried = retries.count
    training.result.retry_reasons = retries.reasons
    return training.result


class _RetryCounter(logging.Handler):
    """Counts the retries urllib3 announces in its log: "Retrying (...) after connection broken" and "Retry: URL"."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(("Retrying (", "Retry: ")):
            self.count += 1
            # Without the Retry(...) counter state, so that equal causes compare equal across clients.
            reason = re.sub(r"Retry\(total=[^)]*\)", "Retry", record.getMessage())[:200]
            if len(self.reasons) < 3 and reason not in self.reasons:
                self.reasons.append(reason)

    @classmethod
    def install(cls) -> _RetryCounter:
        counter = cls()
        log = logging.getLogger("urllib3.connectionpool")
        log.setLevel(logging.DEBUG)  # status retries are logged at debug level
        log.propagate = False  # this process's own logger: keep its debug lines out of the output
        log.addHandler(counter)
        return counter


class _SimulatedTraining:
    """One client: the calls a training makes, in its order, each timed; what was sent is remembered."""

    def __init__(self, client: Any, plan: LoadPlan, index: int, experiment_id: str) -> None:
        self.client = client
        self.plan = plan
        self.experiment_id = experiment_id
        self.result = ClientResult(index=index)
        self.random = random.Random(index)
        self._lock = threading.Lock()  # the system-metrics thread records calls too

    def run(self) -> None:
        if not self._timed("create_run", self._create_run):
            return
        params = {f"param_{i:02d}": str(self.random.random()) for i in range(self.plan.params)}
        self._log("params", params=params)
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample_system, args=(stop,), daemon=True)
        if self.plan.system_interval > 0:
            sampler.start()
        for epoch in range(self.plan.epochs):
            self._log("epoch", {key: self.random.random() for key in metrics.EPOCH_METRICS}, step=epoch)
            if self.plan.artifact_every and (epoch + 1) % self.plan.artifact_every == 0:
                self._upload(epoch)
            if self.plan.epoch_seconds:
                time.sleep(self.plan.epoch_seconds)
        stop.set()
        if sampler.is_alive():
            sampler.join()
        self._timed("end_run", lambda: self.client.set_terminated(self.result.run_id, "FINISHED"))

    def _create_run(self) -> None:
        run = self.client.create_run(self.experiment_id, run_name=f"load-{self.result.index:02d}")
        self.result.run_id = run.info.run_id

    def _sample_system(self, stop: threading.Event) -> None:
        # Like MLflow's monitor: sleep an interval, log one batch with the sample number as step.
        step, values = 0, random.Random(-1 - self.result.index)  # its own generator: Random is not for two threads
        while not stop.wait(self.plan.system_interval):
            self._log("system", {key: round(values.uniform(0, 100), 3) for key in SYSTEM_METRICS}, step=step)
            step += 1

    def _upload(self, epoch: int) -> None:
        name = f"epoch-{epoch:04d}.txt"
        text = (f"epoch {epoch}\n" * (self.plan.artifact_kib * 1024))[: self.plan.artifact_kib * 1024]
        with self._lock:
            self.result.artifacts.append(f"{ARTIFACT_DIR}/{name}")
        self._timed("artifact", lambda: self.client.log_text(self.result.run_id, text, f"{ARTIFACT_DIR}/{name}"))

    def _log(
        self,
        kind: str,
        values: Mapping[str, float] | None = None,
        step: int = 0,
        params: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in (values or {}).items()]
        with self._lock:
            for key, value in (values or {}).items():
                self.result.metrics.setdefault(key, {})[step] = value
            self.result.params.update(params or {})
        param_list = [Param(key, value) for key, value in (params or {}).items()]
        self._timed(kind, lambda: self.client.log_batch(self.result.run_id, metrics=batch, params=param_list))

    def _timed(self, kind: str, action: Callable[[], None]) -> bool:
        started, clock = time.time(), time.perf_counter()
        error = None
        try:
            action()
        except Exception as exc:  # a failed call is a result to report, not the end of the benchmark
            error = f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"
        call = Call(kind, started, time.perf_counter() - clock, error)
        with self._lock:
            self.result.calls.append(call)
        return error is None
