"""Free TCP ports for a local cluster, so that several clusters (yours, a test's, a colleague's) coexist.

Ray's defaults are fixed numbers (GCS 6379, dashboard 8265, agent 52365, Ray Client 10001) and one shared
range for worker processes (10002-19999): two clusters on one host would collide. Every node of a
``cluster up`` gets its own ports instead, picked here and recorded in the state file.
"""

from __future__ import annotations

import contextlib
import random
import socket

# Worker-process port blocks come from below Linux's ephemeral range (32768+, where the ports picked
# by bind(0) come from) and above Ray's default worker range, so neither can take them from under us.
WORKER_PORT_RANGE = (20000, 32000)
WORKER_PORT_BLOCK = 100
"""Ports per node for Ray's worker processes (one each, reused as workers come and go)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, host: str = "") -> list[int]:
    """``count`` different ports nothing listens on now: held open together while the kernel picks them.

    One :func:`free_port` after another may return the same port twice (the kernel can hand out a port again
    as soon as its socket is closed); a node started with one port for two of its servers fails to start.
    By default the ports are free on every address: some of a node's servers listen on its own loopback
    address only (``mltrain.cluster.loopback``), which another cluster's node may share.
    """
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def is_free(port: int, host: str = "") -> bool:
    """Whether ``port`` can be bound on every interface now (Ray's servers listen on all of them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(size: int = WORKER_PORT_BLOCK, attempts: int = 50) -> tuple[int, int]:
    """``(first, last)`` of ``size`` consecutive free ports in :data:`WORKER_PORT_RANGE`.

    Raises:
        RuntimeError: no free block found in ``attempts`` random tries.
    """
    low, high = WORKER_PORT_RANGE
    for _ in range(attempts):
        first = random.randrange(low, high - size)
        if all(is_free(port) for port in range(first, first + size)):
            return first, first + size - 1
    raise RuntimeError(f"no {size} consecutive free ports found in {low}-{high}")
