"""Admission of task containers: slots per node, one memory budget per host, fair share.

A container may start on a node only when both hold:
- the node has a free slot (`slots` containers run at once per node), and
- the sum of `memory_mb` of the containers running on this host (every node of this
  process shares the host) plus its own fits `budget_mb` (host memory minus a reserve).

Waiters are granted in round robin over accounts, per node: when accounts compete for a
node, each gets a container in turn, so one account's long queue cannot hold another's
short job back for more than one container's time. Within an account, first come first
served. A waiter whose memory does not fit yet is passed over by smaller ones (backfill)
until it has waited `starve_s`; from then on nothing else starts on any node until it has,
so the memory it needs frees up.

    waiting --grant (slot + memory, account's turn)--> running --release--> (gone)
       |
       +--cancel event set--> gone (never started)

One lock and one condition serve every node, because memory is shared between them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Admission", "default_budget_mb", "default_slots", "host_memory_mb"]

TICK_S = 0.05  # how often a waiter looks at its cancel event


@dataclass
class _Waiter:
    account: str
    memory_mb: int
    seq: int
    since: float
    granted: bool = False


@dataclass
class _Node:
    free_slots: int
    waiting: list[_Waiter] = field(default_factory=list)
    served: dict[str, int] = field(default_factory=dict)  # account -> when it last started a task

    def turn(self) -> list[_Waiter]:
        """Each waiting account's oldest waiter, the account served longest ago (or never) first."""
        heads: dict[str, _Waiter] = {}
        for w in self.waiting:
            if w.account not in heads or w.seq < heads[w.account].seq:
                heads[w.account] = w
        return sorted(heads.values(), key=lambda w: (self.served.get(w.account, -1), w.seq))


class Admission:
    def __init__(self, node_ids: list[str], slots: int, budget_mb: int, starve_s: float = 5.0) -> None:
        if slots < 1 or budget_mb < 1:
            raise ValueError("slots and budget_mb must be positive")
        self.slots = slots
        self.budget_mb = budget_mb
        self.starve_s = starve_s
        self.used_mb = 0
        self._nodes = {nid: _Node(slots) for nid in node_ids}
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def running(self, node_id: str) -> int:
        with self._cond:
            return self.slots - self._nodes[node_id].free_slots

    @contextlib.contextmanager
    def hold(self, node_id: str, account: str, memory_mb: int, cancel: threading.Event) -> Iterator[bool]:
        """Wait for a slot and memory on `node_id` (True), or until `cancel` is set (False)."""
        if memory_mb > self.budget_mb:
            raise ValueError(f"a task of {memory_mb} MB never fits the budget of {self.budget_mb} MB")
        node = self._nodes[node_id]
        me = _Waiter(account, memory_mb, next(self._seq), time.monotonic())
        with self._cond:
            node.waiting.append(me)
            self._grant_all()
            while not me.granted and not cancel.is_set():
                self._cond.wait(TICK_S)
            started = me.granted and not cancel.is_set()  # granted as its peers were killed: no
            if not started:
                self._leave(node, me)
        if not started:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._leave(node, me)

    def _leave(self, node: _Node, me: _Waiter) -> None:
        if me.granted:
            node.free_slots += 1
            self.used_mb -= me.memory_mb
        else:
            node.waiting.remove(me)
        self._grant_all()

    def _grant_all(self) -> None:
        starving = self._starving()
        granted = False
        for node in self._nodes.values():
            granted |= self._grant(node, starving)
        if granted:
            self._cond.notify_all()

    def _starving(self) -> _Waiter | None:
        """The oldest waiter whose memory has not fitted for `starve_s`, if any."""
        now, free_mb = time.monotonic(), self.budget_mb - self.used_mb
        old = [w for n in self._nodes.values() for w in n.waiting
               if w.memory_mb > free_mb and now - w.since >= self.starve_s]
        return min(old, key=lambda w: w.seq) if old else None

    def _grant(self, node: _Node, starving: _Waiter | None) -> bool:
        """Start waiters on `node` while a slot is free, accounts in turn; True if any.
        While a waiter starves, only it may start anywhere, so the memory it needs frees up."""
        any_granted = False
        while node.free_slots > 0 and node.waiting:
            chosen = next((w for w in node.turn()
                           if (starving is None or w is starving) and w.memory_mb <= self.budget_mb - self.used_mb),
                          None)
            if chosen is None:
                break
            chosen.granted = True
            starving = None if chosen is starving else starving
            node.waiting.remove(chosen)
            node.free_slots -= 1
            self.used_mb += chosen.memory_mb
            node.served[chosen.account] = next(self._seq)
            any_granted = True
        return any_granted


def host_memory_mb() -> int:
    """MemTotal of this host in MiB (1024 when /proc/meminfo cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def default_slots() -> int:
    """Containers per node when not configured: the CPU count plus one. Between two tasks a
    container waits for the server to take the one result and hand it the next (a few
    milliseconds); one container more keeps the cores busy meanwhile. Light jobs (`wc -l`
    per 1 MiB object, 2 CPUs) took 0.91-0.96 of the time with 3 slots against 2, 1.02 with
    4, and a CPU-bound word count the same (0.998; benchmarks/README.md)."""
    return (os.cpu_count() or 1) + 1


def default_budget_mb(total_mb: int | None = None) -> int:
    """Memory task containers may use at once on this host: all of it but a reserve for the
    server, the page cache and the system (10%, at least 1 GiB, never below 256 MiB left)."""
    total = host_memory_mb() if total_mb is None else total_mb
    return max(256, total - max(1024, total // 10))
