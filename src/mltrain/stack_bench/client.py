"""The simulated trainings of ``stack bench``: one process each, with its own MLflow client and login,
logging what a training logs and timing every call."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from mltrain import metrics
from mltrain.stack_bench.plan import ARTIFACT_DIR, SYSTEM_METRICS, Call, ClientResult, LoadPlan

START_TIMEOUT_S = 300.0  # every client process must have imported MLflow by then (16 take ~10 s on 2 cores)


def run_clients(uri: str, plan: LoadPlan, experiment_id: str, logins: list[tuple[str, str]]) -> list[ClientResult]:
    """Run ``plan.clients`` simulated trainings at once, each in a process of its own; their results, in order.

    Args:
        uri: The tracking server.
        plan: What each training logs, and how fast.
        experiment_id: Experiment the runs go to.
        logins: One (username, password) per client; empty: every client uses the caller's login.
    """
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
