"""How many workers of one shape fit on which nodes: the one rule that sizing, waiting and feasibility share.

Ray keeps resource amounts in fixed point, 1/10000 of a unit (``RESOURCE_UNIT_SCALING`` in its
``FixedPoint``), so the arithmetic here is on integers of that unit: with floats, ``0.3 // 0.1 == 2.0``
although Ray places three workers of 0.1 CPU on 0.3 CPU. Pure Python (no Ray import), so the CLI and
the tests can use it without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RESOURCE_UNIT = 10_000
"""Ray's fixed-point scale: one resource unit is 1/10000 of a CPU, GPU or custom resource."""


def to_units(amount: float) -> int:
    """An amount in Ray's fixed-point units (rounded, as Ray rounds, so 0.1 * 3 is exactly 0.3)."""
    return round(amount * RESOURCE_UNIT)


@dataclass(frozen=True)
class NodeResources:
    """One node as far as placement cares: whether it runs and what it holds in all."""

    name: str
    alive: bool
    total: Mapping[str, float]
    """The node's total resources by name (``CPU``, ``GPU``, ``memory``, custom)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_id: str = ""


def workers_fitting(total: Mapping[str, float], per_worker: Mapping[str, float]) -> int:
    """How many workers of one shape fit in a node's resources if nothing else ran there.

    Args:
        total: The node's resources by name; a resource it lacks counts as 0.
        per_worker: One worker's resources by name; amounts of 0 or less (after rounding to Ray's unit) are ignored.

    Returns:
        The count, limited by the scarcest resource.

    Raises:
        ValueError: ``per_worker`` asks for no positive amount, so the count would be unbounded.
    """
    wanted = {name: to_units(amount) for name, amount in per_worker.items()}
    counts = [to_units(total.get(name, 0)) // units for name, units in wanted.items() if units > 0]
    if not counts:
        raise ValueError(f"expected a worker shape with a positive amount, found {dict(per_worker)}")
    return max(0, min(counts))


def fits(total: Mapping[str, float], wanted: Mapping[str, float]) -> bool:
    """Whether one request fits in a node's resources (an empty or all-zero request always does).

    Args:
        total: The node's resources by name; a resource it lacks counts as 0.
        wanted: The request's resources by name.
    """
    return all(to_units(total.get(name, 0)) >= to_units(amount) for name, amount in wanted.items())


def placeable(nodes: Iterable[NodeResources], per_worker: Mapping[str, float]) -> int:
    """How many workers of one shape the live nodes hold together if nothing else ran there.

    Raises:
        ValueError: ``per_worker`` asks for no positive amount.
    """
    return sum(workers_fitting(node.total, per_worker) for node in nodes if node.alive)


def from_ray_nodes(records: Iterable[Mapping[str, Any]]) -> list[NodeResources]:
    """Nodes from ``ray.nodes()`` records (``Alive``, ``Resources``, ``NodeName``, ``NodeID``, ``Labels``)."""
    return [
        NodeResources(
            name=record.get("NodeName") or record.get("NodeManagerAddress") or "",
            alive=bool(record.get("Alive")),
            total=dict(record.get("Resources") or {}),
            labels=dict(record.get("Labels") or {}),
            node_id=record.get("NodeID") or "",
        )
        for record in records
    ]


def from_node_states(states: Iterable[Any]) -> list[NodeResources]:
    """Nodes from ``ray.util.state`` NodeState objects, whose fields may each be None."""
    return [
        NodeResources(
            name=state.node_name or "",
            alive=state.state == "ALIVE",
            total=dict(state.resources_total or {}),
            labels=dict(state.labels or {}),
            node_id=state.node_id or "",
        )
        for state in states
    ]
