"""Free loopback ports for the servers tests start.

A port from `bind(("127.0.0.1", 0))` comes from the kernel's ephemeral range, the range
outgoing connections take their local ports from: between the check and the server's own
bind, a client connection (of this test process or the other one of a parallel run) may
take it. So `free_port()` picks below that range (ports 10000-32767 on a default Linux),
and a parallel run (pytest-xdist sets PYTEST_XDIST_WORKER=gwN and
PYTEST_XDIST_WORKER_COUNT) gives each test process a slice of its own. Within a process,
calls go round the slice, so a port handed out is not handed out again until the slice
has been used up.
"""

from __future__ import annotations

import itertools
import os
import random
import socket

__all__ = ["free_port"]

LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _slice() -> range:
    high = max(_ephemeral_low(), LOWEST + 1000)
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1), 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) % count if worker[2:].isdigit() else 0
    size = (high - LOWEST) // count
    start = LOWEST + size * index
    return range(start, start + size)


_SLICE = _slice()
_next = itertools.count(random.randrange(len(_SLICE)))


def free_port() -> int:
    """A loopback port nothing listens on or is bound to now, from this process's slice."""
    for _ in range(len(_SLICE)):
        port = _SLICE[next(_next) % len(_SLICE)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_SLICE.start}-{_SLICE.stop - 1}")
