"""`WorkerShares` and the connection table's ask to reconnect (manta/server/protocol.py):
each worker of `manta serve --workers N` publishes how many connections it holds in one
shared memory array, and a worker holding more than its share plus one asks a client to
reconnect, at most one every SHED_GAP_S. tests/e2e/test_workers.py shows the split settling
between two real workers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from manta.server import protocol
from manta.server.protocol import ConnectionLimits, ConnectionTable, WorkerShares


@pytest.fixture
def shares_fd() -> Iterator[int]:
    fd = os.memfd_create("test-shares")
    os.ftruncate(fd, 8 * 2)
    yield fd
    os.close(fd)


class Conn:
    """Stands for a connection: the table only keeps it in sets."""


def test_each_worker_writes_only_its_slot_and_reads_all(shares_fd: int) -> None:
    a, b = WorkerShares(shares_fd, 0, 2), WorkerShares(shares_fd, 1, 2)
    a.publish(5)
    b.publish(3)
    assert a.counts() == b.counts() == (5, 3)
    WorkerShares(shares_fd, 1, 2)  # a successor starts at 0
    assert a.counts() == (5, 0)


@pytest.mark.parametrize(("mine", "other", "over"), [
    (16, 0, True),   # all of them: share 8
    (10, 6, True),   # share 8, plus one is 9
    (9, 7, False),   # within one of the share: no churn
    (3, 0, False),   # below SHED_MIN_CONNECTIONS
    (4, 0, True),
    (5, 20, False),
])
def test_over_is_more_than_the_share_plus_one(shares_fd: int, mine: int, other: int, over: bool) -> None:
    a, b = WorkerShares(shares_fd, 0, 2), WorkerShares(shares_fd, 1, 2)
    b.publish(other)
    assert a.over(mine) is over


def test_clients_asked_to_move_count_in_the_total_until_they_land(shares_fd: int) -> None:
    a = WorkerShares(shares_fd, 0, 2)
    assert a.over(8, moving=0)
    assert not a.over(7, moving=5), "12 in all: share 6, plus one is 7"


def test_the_table_asks_one_client_per_gap_until_it_holds_its_share_plus_one(shares_fd: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "SHED_GAP_S", 0.05)
    table = ConnectionTable(ConnectionLimits(), WorkerShares(shares_fd, 0, 2))
    other = WorkerShares(shares_fd, 1, 2)
    conns = [Conn() for _ in range(12)]
    for conn in conns:
        assert table.admit(conn)  # type: ignore[arg-type]
    assert other.counts() == (0, 0), "a connection that sent nothing is no client"
    assert not table.move_one(conns[0])  # type: ignore[arg-type]
    for conn in conns:
        table.busy(conn)  # type: ignore[arg-type]  # its first request
    assert other.counts() == (12, 0)
    assert table.move_one(conns[0])  # type: ignore[arg-type]
    assert not table.move_one(conns[1]), "a second ask within the gap"  # type: ignore[arg-type]
    assert other.counts() == (11, 0), "an asked connection is no longer this worker's"
    time.sleep(0.06)
    assert not table.move_one(conns[0]), "the same connection twice"  # type: ignore[arg-type]
    asked = 1
    for conn in conns[1:]:
        time.sleep(0.06)
        asked += table.move_one(conn)  # type: ignore[arg-type]
    assert asked == 12 - 7, "asks until 7 of 12 are left: the share (6) plus one"
    assert table.shed == asked
    table.drop(conns[0])  # type: ignore[arg-type]
    assert table.leaving.isdisjoint({conns[0]}) and other.counts() == (7, 0)


def test_a_single_server_never_asks() -> None:
    table = ConnectionTable(ConnectionLimits())
    conns = [Conn() for _ in range(50)]
    for conn in conns:
        table.admit(conn)  # type: ignore[arg-type]
        table.busy(conn)  # type: ignore[arg-type]
    assert not any(table.move_one(conn) for conn in conns)  # type: ignore[arg-type]
