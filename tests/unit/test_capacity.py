"""The capacity rule: Ray's fixed-point arithmetic on fractional CPUs and GPUs, summed over live nodes."""

from types import SimpleNamespace

import pytest

from mltrain.cluster.capacity import (
    RESOURCE_UNIT,
    NodeResources,
    fits,
    from_node_states,
    from_ray_nodes,
    placeable,
    to_units,
    workers_fitting,
)


def test_units_are_rays_fixed_point() -> None:
    assert RESOURCE_UNIT == 10_000
    assert to_units(0.3) == 3000
    assert to_units(0.1 * 3) == 3000  # 0.30000000000000004 in floats
    assert to_units(0.00004) == 0


@pytest.mark.parametrize(
    ("total", "per_worker", "expected"),
    [
        ({"CPU": 0.3}, {"CPU": 0.1}, 3),  # 0.3 // 0.1 == 2.0 in floats
        ({"CPU": 0.1 * 3}, {"CPU": 0.1}, 3),
        ({"GPU": 1}, {"GPU": 0.3}, 3),
        ({"GPU": 1}, {"GPU": 0.5}, 2),
        ({"GPU": 0.5}, {"GPU": 0.5}, 1),
        ({"GPU": 0.3}, {"GPU": 0.5}, 0),
        ({"CPU": 0.7}, {"CPU": 0.1}, 7),
        ({"CPU": 8, "GPU": 4}, {"CPU": 1}, 8),
    ],
)
def test_fractional_amounts(total: dict[str, float], per_worker: dict[str, float], expected: int) -> None:
    assert workers_fitting(total, per_worker) == expected


def test_mixed_request_is_limited_by_the_scarcer_resource() -> None:
    assert workers_fitting({"CPU": 16, "GPU": 2}, {"CPU": 2, "GPU": 0.5}) == 4  # GPUs: 4, CPUs: 8
    assert workers_fitting({"CPU": 3, "GPU": 2}, {"CPU": 2, "GPU": 0.5}) == 1  # CPUs: 1, GPUs: 4


def test_a_resource_the_node_lacks_counts_as_zero() -> None:
    assert workers_fitting({"CPU": 8}, {"CPU": 1, "GPU": 1}) == 0
    assert workers_fitting({}, {"CPU": 1}) == 0
    assert workers_fitting({"CPU": 0}, {"CPU": 0.1}) == 0


def test_zero_amounts_are_ignored() -> None:
    assert workers_fitting({"CPU": 4}, {"CPU": 1, "GPU": 0}) == 4
    assert workers_fitting({"CPU": 4}, {"CPU": 1, "GPU": -1, "accelerator": 0.0}) == 4


@pytest.mark.parametrize("per_worker", [{}, {"CPU": 0}, {"CPU": 0, "GPU": 0.0}, {"GPU": -1}])
def test_a_shape_asking_for_nothing_is_refused(per_worker: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive amount"):
        workers_fitting({"CPU": 4}, per_worker)
    with pytest.raises(ValueError, match="positive amount"):
        placeable([NodeResources("a", True, {"CPU": 4})], per_worker)


def test_fits() -> None:
    assert fits({"CPU": 0.3}, {"CPU": 0.1 * 3})  # 0.30000000000000004 > 0.3 in floats
    assert fits({"GPU": 1}, {"GPU": 1, "CPU": 0})
    assert not fits({"GPU": 0.3}, {"GPU": 0.5})
    assert not fits({"CPU": 8}, {"CPU": 1, "GPU": 1})
    assert not fits({}, {"CPU": 0.1})


@pytest.mark.parametrize("total", [{}, {"CPU": 0}, {"CPU": 4}])
def test_an_empty_request_always_fits(total: dict[str, float]) -> None:
    assert fits(total, {})
    assert fits(total, {"CPU": 0, "GPU": 0})


def test_placeable_sums_live_nodes_only() -> None:
    nodes = [
        NodeResources("head", True, {}),
        NodeResources("head-zero", True, {"CPU": 0}),
        NodeResources("gpu-a", True, {"CPU": 8, "GPU": 1}),
        NodeResources("gpu-b", True, {"CPU": 8, "GPU": 0.5}),
        NodeResources("gpu-dead", False, {"CPU": 8, "GPU": 4}),
    ]
    assert placeable(nodes, {"GPU": 0.5}) == 3  # 2 + 1; the dead node's 8 are not counted
    assert placeable(nodes, {"GPU": 0.3}) == 4  # 3 + 1
    assert placeable(nodes, {"CPU": 0.1}) == 160
    assert placeable(nodes[:2], {"CPU": 0.1}) == 0
    assert placeable([], {"CPU": 1}) == 0


def test_from_ray_nodes() -> None:
    records = [
        {
            "NodeID": "abc123",
            "Alive": True,
            "NodeName": "worker-1",
            "NodeManagerAddress": "10.0.0.2",
            "Resources": {"CPU": 4.0, "GPU": 1.0},
            "Labels": {"mltrain.io/worker": "1"},
        },
        {"NodeID": "def456", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 2.0}},
        {"NodeID": "ghi789", "Alive": True, "NodeName": "", "NodeManagerAddress": "10.0.0.4", "Resources": {}},
    ]
    nodes = from_ray_nodes(records)
    assert nodes == [
        NodeResources("worker-1", True, {"CPU": 4.0, "GPU": 1.0}, {"mltrain.io/worker": "1"}, "abc123"),
        NodeResources("10.0.0.3", False, {"CPU": 2.0}, {}, "def456"),
        NodeResources("10.0.0.4", True, {}, {}, "ghi789"),
    ]
    assert placeable(nodes, {"CPU": 1}) == 4


def test_from_node_states() -> None:
    states = [
        SimpleNamespace(
            node_id="abc123",
            node_name="worker-1",
            state="ALIVE",
            resources_total={"CPU": 4.0, "GPU": 1.0},
            labels={"mltrain.io/worker": "1"},
        ),
        SimpleNamespace(node_id="def456", node_name="worker-2", state="DEAD", resources_total={"GPU": 8.0}, labels={}),
        SimpleNamespace(node_id=None, node_name=None, state="ALIVE", resources_total=None, labels=None),
    ]
    nodes = from_node_states(states)
    assert nodes == [
        NodeResources("worker-1", True, {"CPU": 4.0, "GPU": 1.0}, {"mltrain.io/worker": "1"}, "abc123"),
        NodeResources("worker-2", False, {"GPU": 8.0}, {}, "def456"),
        NodeResources("", True, {}, {}, ""),
    ]
    assert placeable(nodes, {"GPU": 0.5}) == 2
