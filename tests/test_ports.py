"""tests/ports.py: ports below the ephemeral range, a slice per parallel test process."""

from __future__ import annotations

import socket

import pytest

from tests import ports


def test_ports_are_free_below_the_ephemeral_range_and_not_handed_out_twice() -> None:
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == 50
    assert all(ports.LOWEST <= port < ports._ephemeral_low() for port in picked)
    with socket.socket() as s:
        s.bind(("127.0.0.1", picked[-1]))  # free indeed


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        monkeypatch.setattr(ports, "_SLICE", range(port, port + 2))
        monkeypatch.setattr(ports, "_next", iter([0, 1]))
        assert ports.free_port() == port + 1


def test_parallel_test_processes_get_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(set(ports._slice()))
    assert all(len(s) > 5000 for s in slices)
    assert not (slices[0] & slices[1]) and not (slices[1] & slices[2]) and not (slices[0] & slices[2])
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert ports._slice() == range(ports.LOWEST, ports._ephemeral_low())  # one process: all of it
