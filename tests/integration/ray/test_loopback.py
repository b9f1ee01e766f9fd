"""The embedded Ray of `mltrain train --launcher ray`: every node, driver and worker on loopback, and ~ left alone.

Ray turns a node IP of 127.0.0.1 into the host's network address (see mltrain.cluster.loopback); a test that
runs there sends its traffic over the network. The clusters of `mltrain cluster up` are checked for the same in
tests/ray_fixtures.py, for every test cluster.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil
import pytest

from mltrain.launchers.ray.options import RayOptions
from mltrain.launchers.ray.session import ray_session

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # ::ffff:127.0.0.2, on a dual-stack socket
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _own_loopback(address: str) -> bool:
    return _loopback(address) and address != "127.0.0.1"


def _off_loopback_connections() -> list[str]:
    """This process's and its descendants' (the embedded Ray's) TCP/UDP connections to or from a non-loopback
    address; a socket listening on every interface is no traffic."""
    found = []
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:  # ended meanwhile
            continue
        for connection in connections:
            ends = [connection.laddr, connection.raddr] if connection.raddr else []
            if not all(_loopback(end.ip) for end in ends):
                found.append(f"{process.pid} {connection.laddr} -> {connection.raddr} ({connection.status})")
    return found


def test_embedded_ray_keeps_to_loopback_and_leaves_home_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # with no token anywhere, Ray writes one to ~/.ray/auth_token

    @ray.remote(num_cpus=0)
    def task_ip() -> str:
        return ray.util.get_node_ip_address()

    @ray.remote(num_cpus=0)
    class Actor:
        def ip(self) -> str:
            return ray.util.get_node_ip_address()

    with ray_session(RayOptions(), dashboard=True) as joined:  # as `mltrain tune` starts it; train has no dashboard
        assert joined is None, "no cluster named: an embedded Ray"
        nodes = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
        driver = ray.util.get_node_ip_address()
        gcs = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
        actor = Actor.remote()
        workers = set(ray.get([task_ip.remote(), actor.ip.remote()]))
        connections = _off_loopback_connections()
    assert nodes and all(_own_loopback(ip) for ip in nodes), nodes
    assert _own_loopback(driver) and _own_loopback(gcs) and driver in nodes, (driver, gcs)
    assert workers <= nodes, workers
    assert not connections, "\n".join(connections)
    assert not (home / ".ray").exists(), "Ray wrote its token into the home folder"
