"""Watching whether a Ray training's workers can be placed, and saying so when they cannot."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from mltrain.launchers.ray.options import RayOptions
from mltrain.launchers.ray.tags import WAITING_TAG
from mltrain.tracking.runlog import RunLog


class PlacementWatch:
    """Says so — on the console and as the run tag ``mltrain.ray.waiting`` — when the cluster's live nodes
    cannot hold the workers the training needs (a fixed group that lost a node, say): it then waits for
    resources, and a silent wait would look like a hang.

    Args:
        options: The training's Ray options (workers, resources per worker).
        tracker: The run's logger (the driver's).
        every: Seconds between checks.
    """

    def __init__(self, options: RayOptions, tracker: RunLog, every: float = 5.0) -> None:
        self.options = options
        self.tracker = tracker
        self.every = every
        self.waiting = False

    def run(self, stop: threading.Event) -> None:
        """Check every few seconds until ``stop`` is set (a daemon thread beside ``fit``)."""
        while not stop.wait(self.every):
            self.check()

    def check(self) -> None:
        """Compare what the live nodes hold with what the training needs; tag and print a change."""
        try:
            places, alive = self.places()
        except Exception:  # Ray is shutting down or unreachable: the training itself will say so
            return
        needed = self.options.fewest_workers
        if places < needed and not self.waiting:
            self.waiting = True
            wanted = ", ".join(f"{k}={v:g}" for k, v in self.options.per_worker().items())
            reason = (
                f"waiting for resources: {needed} worker(s) of {wanted} needed, the live nodes "
                f"({', '.join(alive) or 'none'}) hold {places}; since {datetime.now(UTC):%Y-%m-%dT%H:%M:%S}Z"
            )
            print(
                f"{reason} (start a node, or stop with Ctrl+C: the run ends KILLED, the checkpoint stays)", flush=True
            )
            self.tracker.set_tags({WAITING_TAG: reason})
        elif places >= needed and self.waiting:
            self.waiting = False
            print("resources are back: the workers can be placed again", flush=True)
            self.tracker.set_tags({WAITING_TAG: ""})

    def places(self) -> tuple[int, list[str]]:
        """How many workers the live nodes could hold if nothing else ran, and the live nodes' names."""
        import ray

        from mltrain.cluster.capacity import from_ray_nodes, placeable

        nodes = from_ray_nodes(ray.nodes())
        return placeable(nodes, self.options.per_worker()), [node.name for node in nodes if node.alive]
