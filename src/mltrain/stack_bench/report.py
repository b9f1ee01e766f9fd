"""What a load run measured: latency statistics, what the server kept of what was sent (read back run by run),
and the report, as a table or JSON."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mltrain.stack_bench.plan import ARTIFACT_DIR, CALL_KINDS, Call, ClientResult, LoadPlan


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
        messages = sorted({c.error for c in self.calls if c.error})
        lines += [f"error: {message}" for message in messages[:5]]
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
