"""Loopback addresses for the Ray nodes and drivers of this machine, so that their traffic stays on it.

Ray replaces a node IP of ``127.0.0.1``, ``localhost`` or ``::1`` with the host's network address (nodes, drivers
and workers then talk over the network), but keeps any other address of 127.0.0.0/8 as given. So every node of
a ``cluster up`` gets one of those: the head :data:`HEAD_IP`, worker K the addresses after it; an embedded Ray
uses :data:`EMBEDDED_IP`.

Two clusters on one machine may use the same addresses: Ray tells nodes apart by node id, each cluster has its
own GCS, ports and temp folder, and a driver only attaches to a raylet its own GCS knows.
"""

from __future__ import annotations

import ipaddress
import socket

HEAD_IP = "127.0.0.2"
"""The head of a ``cluster up``: its GCS address is ``127.0.0.2:<port>``."""
EMBEDDED_IP = "127.0.0.2"
"""The one node of an embedded Ray (``mltrain train --launcher ray`` with no cluster named)."""
RAY_REWRITTEN = "127.0.0.1"
"""The loopback address Ray turns into the host's: what a host without other loopback addresses falls back to."""
_RAY_REWRITES = {"127.0.0.1", "localhost", "::1"}


def node_ip(worker: int | None = None) -> str:
    """The node IP of a ``cluster up`` node: the head's (None) or worker ``worker``'s (0-based).

    Falls back to :data:`RAY_REWRITTEN` (Ray's own choice, the host's address) where this host cannot use the
    address: only Linux routes all of 127.0.0.0/8 to loopback (macOS has 127.0.0.1 alone unless aliased).
    """
    address = HEAD_IP if worker is None else str(ipaddress.IPv4Address(HEAD_IP) + 1 + worker)
    return address if usable(address) else RAY_REWRITTEN


def embedded_ip() -> str:
    """The node IP of an embedded Ray (see :func:`node_ip` for the fallback)."""
    return EMBEDDED_IP if usable(EMBEDDED_IP) else RAY_REWRITTEN


def driver_ip(gcs_address: str) -> str | None:
    """The node IP a driver joining the cluster at ``gcs_address`` (``host:port``) gives ``ray.init``.

    A driver attaches to a raylet of its own host whose IP is the one given: for a cluster on a loopback address
    Ray keeps, that of the head (the node Ray itself prefers); None (Ray's choice) for any other cluster, and for
    a Ray Client address (``ray://…``), which has no raylet here and refuses the option.
    """
    if "://" in gcs_address:
        return None
    host = gcs_address.rsplit(":", 1)[0].strip("[]")
    return host if kept_loopback(host) else None


def kept_loopback(host: str | None) -> bool:
    """Whether ``host`` is a loopback IP that Ray keeps as a node IP (any of 127.0.0.0/8 but 127.0.0.1)."""
    if not host or host in _RAY_REWRITES:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def usable(address: str) -> bool:
    """Whether this host can bind ``address`` (a socket bound and closed at once, nothing listens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True
