"""A job's task counts (jobs.records): every task write moves them in the same
transaction, so a job's status is one catalog read however many tasks it has. Run on both
catalog engines; the counts are checked against a count of the task records themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.records import COUNTS, TABLES, JobRecords, cancelled, task_counts
from jobs.spec import parse_spec
from storage import Store, StoreConfig


@pytest.fixture(params=("lmdb", "postgresql"))
def records(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[JobRecords]:
    catalog = str(request.getfixturevalue("pg_url")) if request.param == "postgresql" else None
    store = Store(StoreConfig(os.path.join(str(tmp_path), "data"), catalog=catalog, extra_tables=TABLES))
    try:
        store.catalog.accounts.add("ann", "AKANN", "secret-of-ann")
        yield JobRecords(store.catalog)
    finally:
        store.close()


def new_job(records: JobRecords) -> str:
    spec = parse_spec({"phases": [{"type": "map", "exec": "wc -l"}, {"type": "reduce", "exec": "cat"}]})
    return str(records.create("ann", spec)["id"])


def task(job_id: str, number: int, phase: int = 0, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": f"t{number}", "job": job_id, "phase": phase, "type": "map" if phase == 0 else "reduce",
            "state": "queued", "node": None, "attempts": 0, "excluded": [], "outputs": [], "error": None,
            "bytes_local": 0, "bytes_remote": 0, **fields}


def agrees(records: JobRecords, job_id: str) -> dict[str, Any]:
    """The job's counts, after checking them against a count of its task records."""
    counts = records.counts(job_id)
    assert counts == task_counts(records.tasks(job_id))
    return counts


def by_state(counts: dict[str, Any], phase: int = 0) -> dict[str, int]:
    return dict(counts["phases"].get(str(phase), {}))


def test_counts_follow_every_task_write(records: JobRecords) -> None:
    job_id = new_job(records)
    assert records.counts(job_id) == task_counts([])
    records.save_tasks([task(job_id, i) for i in range(5)])
    assert by_state(agrees(records, job_id)) == {"queued": 5}

    running = [task(job_id, i, state="running", node="n0", attempts=1) for i in range(3)]
    assert records.submit_running(running).result() == [True] * 3
    assert by_state(agrees(records, job_id)) == {"queued": 2, "running": 3}

    records.save_tasks([task(job_id, 0, state="done", bytes_local=100, bytes_remote=7),
                        task(job_id, 1, state="failed", bytes_local=50)])
    records.save_outcome(task(job_id, 2, state="queued", attempts=1))  # a node failed: it waits again
    counts = agrees(records, job_id)
    assert by_state(counts) == {"queued": 3, "done": 1, "failed": 1}
    assert (counts["bytes_local"], counts["bytes_remote"]) == (150, 7)

    records.save_tasks([task(job_id, 9, phase=1)])  # the reducer
    records.cancel(job_id)  # the queued tasks are cancelled in the cancel's transaction
    counts = agrees(records, job_id)
    assert by_state(counts) == {"done": 1, "failed": 1, "cancelled": 3}
    assert by_state(counts, phase=1) == {"cancelled": 1}
    assert records.settled(job_id)


def test_a_running_task_keeps_a_finished_job_unsettled(records: JobRecords) -> None:
    job_id = new_job(records)
    records.save_tasks([task(job_id, 0, state="running", node="n0"), task(job_id, 1)])
    records.cancel(job_id)
    assert not records.settled(job_id)  # t0 still runs
    records.save_tasks([cancelled(task(job_id, 0, state="running"))])
    assert records.settled(job_id)
    assert by_state(agrees(records, job_id)) == {"cancelled": 2}


def test_a_job_from_before_counts_is_counted_by_a_scan(records: JobRecords) -> None:
    """A job made by a version without counts has no counts record: its status counts its
    tasks, and its task writes do not start a record that would miss the tasks before."""
    job_id = new_job(records)
    records.write(lambda txn: records.catalog.delete(txn, "jobs", COUNTS + job_id.encode()))
    records.save_tasks([task(job_id, i) for i in range(3)])
    records.save_tasks([task(job_id, 0, state="done", bytes_local=10)])
    with records.catalog.read() as txn:
        assert records.catalog.get(txn, "jobs", COUNTS + job_id.encode()) is None
    counts = records.counts(job_id)
    assert by_state(counts) == {"queued": 2, "done": 1}
    assert counts["bytes_local"] == 10
    records.cancel(job_id)
    assert records.settled(job_id)
    assert by_state(records.counts(job_id)) == {"done": 1, "cancelled": 2}


def test_recount_gives_a_job_from_before_counts_its_counts_and_mends_stale_ones(records: JobRecords) -> None:
    """What a scheduler does for each running job when it starts."""
    old, stale = new_job(records), new_job(records)
    records.write(lambda txn: records.catalog.delete(txn, "jobs", COUNTS + old.encode()))
    records.save_tasks([task(old, i) for i in range(3)] + [task(stale, i) for i in range(2)])
    wrong = {"v": 1, "phases": {"0": {"done": 7}}, "bytes_local": 1, "bytes_remote": 0}
    records.write(lambda txn: records.catalog.put(txn, "jobs", COUNTS + stale.encode(), wrong))
    for job_id in (old, stale):
        records.recount(job_id)
    assert by_state(agrees(records, old)) == {"queued": 3}
    assert by_state(agrees(records, stale)) == {"queued": 2}
    records.save_tasks([task(old, 0, state="done")])  # from now on its writes move them
    assert by_state(agrees(records, old)) == {"queued": 2, "done": 1}


def test_a_late_running_record_never_hides_an_outcome(records: JobRecords) -> None:
    """The scheduler writes a task's running record only once it has run a while, so the
    record may come after the task's outcome, or after another process cancelled it."""
    job_id = new_job(records)
    records.save_tasks([task(job_id, i) for i in range(4)])
    records.save_tasks([task(job_id, 0, state="done", attempts=1),  # its outcome came first
                        task(job_id, 1, attempts=1),                # queued again after attempt 1
                        task(job_id, 2, state="cancelled")])        # another process cancelled it
    late = [task(job_id, i, state="running", node="n0", attempts=1) for i in range(4)]
    assert records.submit_running(late).result() == [True, True, False, True]
    assert {t["id"]: t["state"] for t in records.tasks(job_id)} == {
        "t0": "done", "t1": "queued", "t2": "cancelled", "t3": "running"}
    assert by_state(agrees(records, job_id)) == {"done": 1, "queued": 1, "cancelled": 1, "running": 1}
