"""The child runs of a parent run (a search's trials): found by their parent, tagged and closed out by id.

A child's own process owns it while it trains (a :class:`~mltrain.tracking.owner.RunOwner`). When that process
is gone without ending it — a trial Tune stopped or lost, a search interrupted — the parent's process closes it
out here, so that no child is left RUNNING.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from mltrain.tracking.owner import PARENT_RUN_TAG
from mltrain.tracking.store import open_client

RUNNING = "RUNNING"


class ChildRuns:
    """The children of run ``parent_run_id`` in its store.

    Args:
        parent_run_id: The parent run.
        tracking_uri: Its store; default MLflow's.
    """

    def __init__(self, parent_run_id: str, tracking_uri: str | None = None) -> None:
        self.parent_run_id = parent_run_id
        self.tracking_uri = tracking_uri
        self.client = open_client(tracking_uri)
        self._experiment_id: str | None = None

    def all(self, tags: Mapping[str, str] | None = None) -> list[Any]:
        """Every child (``mlflow.entities.Run``), newest first; only those with ``tags``, if given."""
        if self._experiment_id is None:
            self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        wanted = {PARENT_RUN_TAG: self.parent_run_id, **(tags or {})}
        found = " and ".join(f"tags.`{key}` = '{value}'" for key, value in wanted.items())
        order = ["attributes.start_time DESC"]
        return list(self.client.search_runs([self._experiment_id], found, order_by=order, max_results=5000))

    def latest(self, tags: Mapping[str, str]) -> Any | None:
        """The newest child with ``tags``, or None."""
        found = self.all(tags)
        return found[0] if found else None

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags of a child."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a tag of a child, if it has it."""
        with contextlib.suppress(Exception):  # absent: nothing to remove
            self.client.delete_tag(run_id, key)

    def end(self, run_id: str, status: str, tags: Mapping[str, str] | None = None) -> bool:
        """End a child still RUNNING with ``status`` after setting ``tags``; True if it was RUNNING."""
        if self.client.get_run(run_id).info.status != RUNNING:
            return False
        self.set_tags(run_id, tags or {})
        self.client.set_terminated(run_id, status)
        return True

    def end_open(self, status: str, tags: Mapping[str, str] | None = None) -> list[str]:
        """End every child still RUNNING with ``status`` (after setting ``tags``); returns their ids."""
        ended = []
        for child in self.all():
            if child.info.status == RUNNING:
                self.set_tags(child.info.run_id, tags or {})
                self.client.set_terminated(child.info.run_id, status)
                ended.append(child.info.run_id)
        return ended

    def last_values(self, run_id: str, key: str) -> dict[int, float]:
        """The metric ``key`` of a child per step (the last value logged at each step)."""
        history = self.client.get_metric_history(run_id, key)
        return {point.step: point.value for point in sorted(history, key=lambda p: (p.step, p.timestamp))}
