"""Admission of containers: slots, the host's memory budget, fair share between accounts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from jobs.admission import Admission, default_budget_mb


class Recorder:
    """Threads that each wait for admission, then hold it until released; records the order."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.order: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.cancel: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def submit(self, name: str, account: str, memory_mb: int = 100, node: str = "n0") -> None:
        self.release[name] = threading.Event()
        self.cancel[name] = threading.Event()

        def run() -> None:
            with self.admission.hold(node, account, memory_mb, self.cancel[name]) as started:
                if not started:
                    return
                with self.lock:
                    self.order.append(name)
                self.release[name].wait(10)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        time.sleep(0.02)  # arrival order is part of what is tested

    def wait_started(self, count: int, timeout_s: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.order) >= count:
                    return list(self.order)
            time.sleep(0.01)
        with self.lock:
            return list(self.order)

    def finish(self, name: str) -> None:
        self.release[name].set()

    def close(self) -> None:
        for event in [*self.release.values(), *self.cancel.values()]:
            event.set()
        for thread in self.threads:
            thread.join(5)


@contextmanager
def recorder(admission: Admission) -> Iterator[Recorder]:
    rec = Recorder(admission)
    try:
        yield rec
    finally:
        rec.close()


def test_accounts_take_turns_for_a_nodes_slots() -> None:
    with recorder(Admission(["n0"], slots=1, budget_mb=10_000)) as rec:
        for i in range(4):
            rec.submit(f"b{i}", "bob")
        rec.submit("c0", "carol")
        assert rec.wait_started(1) == ["b0"]
        rec.finish("b0")
        # carol arrived after bob queued three more, yet she is next: bob just had his turn
        assert rec.wait_started(2) == ["b0", "c0"]
        rec.finish("c0")
        assert rec.wait_started(3) == ["b0", "c0", "b1"]


def test_a_node_runs_at_most_its_slots() -> None:
    with recorder(Admission(["n0", "n1"], slots=2, budget_mb=10_000)) as rec:
        for i in range(3):
            rec.submit(f"a{i}", "alice")
        rec.submit("x", "alice", node="n1")
        assert sorted(rec.wait_started(3)) == ["a0", "a1", "x"]
        time.sleep(0.2)
        assert len(rec.order) == 3
        rec.finish("a0")
        assert rec.wait_started(4)[-1] == "a2"


def test_running_tasks_memory_stays_within_the_budget_shared_by_the_hosts_nodes() -> None:
    admission = Admission(["n0", "n1"], slots=4, budget_mb=300)
    with recorder(admission) as rec:
        rec.submit("big0", "alice", memory_mb=200, node="n0")
        rec.submit("big1", "bob", memory_mb=200, node="n1")  # another node, same host memory
        assert rec.wait_started(1) == ["big0"]
        time.sleep(0.2)
        assert rec.order == ["big0"] and admission.used_mb == 200
        rec.finish("big0")
        assert rec.wait_started(2) == ["big0", "big1"]


def test_small_tasks_pass_a_big_one_only_until_it_has_waited_long_enough() -> None:
    admission = Admission(["n0"], slots=4, budget_mb=300, starve_s=0.5)
    with recorder(admission) as rec:
        rec.submit("s0", "alice", memory_mb=200)
        rec.submit("big", "bob", memory_mb=200)
        rec.submit("s1", "carol", memory_mb=100)  # fits beside s0: backfills past big
        assert rec.wait_started(2) == ["s0", "s1"]
        time.sleep(0.6)  # big now starves: nothing else may start before it
        rec.submit("s2", "carol", memory_mb=50)
        time.sleep(0.2)
        assert rec.order == ["s0", "s1"]
        rec.finish("s0")
        assert rec.wait_started(3) == ["s0", "s1", "big"]


def test_a_cancelled_waiter_never_starts_and_frees_its_place() -> None:
    admission = Admission(["n0"], slots=1, budget_mb=1000)
    with recorder(admission) as rec:
        rec.submit("a", "alice")
        rec.submit("b", "bob")
        rec.submit("c", "carol")
        rec.cancel["b"].set()
        time.sleep(0.1)
        rec.finish("a")
        assert rec.wait_started(2) == ["a", "c"]
        assert admission.running("n0") == 1


def test_a_task_bigger_than_the_budget_is_refused() -> None:
    admission = Admission(["n0"], slots=1, budget_mb=100)
    with ExitStack() as stack, pytest.raises(ValueError, match="never fits"):
        stack.enter_context(admission.hold("n0", "a", 101, threading.Event()))


def test_the_default_budget_leaves_a_reserve() -> None:
    assert default_budget_mb(24 * 1024) == 24 * 1024 - 2457
    assert default_budget_mb(4096) == 3072
    assert default_budget_mb(512) == 256
