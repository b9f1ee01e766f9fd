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

The parts: :mod:`~mltrain.stack_bench.plan` (what a client does, the records of what it did),
:mod:`~mltrain.stack_bench.driver` (the run), :mod:`~mltrain.stack_bench.client` (one simulated training per
process), :mod:`~mltrain.stack_bench.users` (throwaway logins) and :mod:`~mltrain.stack_bench.report`
(latencies, what the server kept, the report).
"""

from __future__ import annotations

from mltrain.stack_bench.client import START_TIMEOUT_S
from mltrain.stack_bench.driver import run_load
from mltrain.stack_bench.plan import ARTIFACT_DIR, CALL_KINDS, SYSTEM_METRICS, Call, ClientResult, LoadPlan
from mltrain.stack_bench.report import LoadResult, Stored, count_stored, latency_summary, read_back, write_json

__all__ = [
    "ARTIFACT_DIR",
    "CALL_KINDS",
    "START_TIMEOUT_S",
    "SYSTEM_METRICS",
    "Call",
    "ClientResult",
    "LoadPlan",
    "LoadResult",
    "Stored",
    "count_stored",
    "latency_summary",
    "read_back",
    "run_load",
    "write_json",
]
