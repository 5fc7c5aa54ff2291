"""jobs.follow.Nudge: the datagram that wakes the started scheduler of a data directory."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from jobs.follow import Nudge


def listening(data_dir: Path) -> tuple[Nudge, threading.Event]:
    nudge, got = Nudge(str(data_dir)), threading.Event()
    nudge.listen(got.set)
    return nudge, got


def test_a_nudge_reaches_the_listener_of_its_data_dir(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, got = listening(tmp_path / "one")
    try:
        assert one.bound.wait(5)
        assert Nudge(str(tmp_path / "one")).address == one.address
        assert Nudge(str(tmp_path / "one" / ".." / "one")).address == one.address  # the real path names it
        assert Nudge(str(tmp_path / "two")).address != one.address
        sender = Nudge(str(tmp_path / "one"))
        sender.send()
        assert got.wait(5)
        sender.close()
    finally:
        one.close()
    assert not one.bound.is_set()


def test_sending_with_nobody_listening_is_quiet_and_leaves_nothing_open(tmp_path: Path) -> None:
    """A follower's scheduler is never started nor always stopped: its nudges must not
    leave a socket behind (a ResourceWarning when it is collected)."""
    before = len(os.listdir("/proc/self/fd"))
    sender = Nudge(str(tmp_path))
    for _ in range(3):
        sender.send()  # no listener: the datagram is refused, and that is fine
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_second_listener_takes_over_once_the_first_has_closed(tmp_path: Path) -> None:
    """Two processes' schedulers briefly both started (a leader still stopping as the next
    one starts): the name is held by one; the other polls, then binds it once it is free."""
    first, _ = listening(tmp_path)
    assert first.bound.wait(5)
    second, got = listening(tmp_path)
    try:
        assert not second.bound.wait(0.3)  # the name is taken: it follows the catalog meanwhile
        first.close()
        assert second.bound.wait(10)
        sender = Nudge(str(tmp_path))
        sender.send()
        assert got.wait(5)
        sender.close()
    finally:
        first.close()
        second.close()


def test_a_flood_of_nudges_is_taken_in_bounded_calls(tmp_path: Path) -> None:
    """Anyone on the host may send to the name: what is queued at once counts as one."""
    calls: list[int] = []
    nudge = Nudge(str(tmp_path))
    nudge.listen(lambda: calls.append(1))
    try:
        assert nudge.bound.wait(5)
        sender = Nudge(str(tmp_path))
        for _ in range(2000):
            sender.send()
        sender.close()
    finally:
        nudge.close()
    assert 1 <= len(calls) < 2000
