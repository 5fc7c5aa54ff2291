"""How a job's phases chain (jobs/phases.py), driven through a map -> map -> reduce job whose
tasks finish out of order, some failing, with a restart in the middle. `JobState` keeps
per-phase indexes so that a scheduler tick does not look at every task; at every step
these tests check its answers against the same questions asked of every task record."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jobs.follow import load_job
from jobs.phases import TERMINAL, JobState
from jobs.records import TABLES, JobRecords, task_counts
from jobs.spec import parse_spec
from storage import Store, StoreConfig


@pytest.fixture
def records(tmp_path: object) -> Iterator[JobRecords]:
    store = Store(StoreConfig(os.path.join(str(tmp_path), "data"), extra_tables=TABLES))
    try:
        store.catalog.accounts.add("ann", "AKANN", "secret-of-ann")
        yield JobRecords(store.catalog)
    finally:
        store.close()


def scanned_complete(job: JobState, phase: int) -> bool:
    """`phase_complete` asked of every task record (what it computed before the indexes)."""
    phases, tasks = job.record["phases"], job.phase_tasks(phase)
    if any(t["state"] not in TERMINAL for t in tasks):
        return False
    if phase == 0:
        if not job.record["inputs_ended"]:
            return False
        if phases[0]["type"] == "map":
            return job.scheduled_inputs >= job.record["input_count"]
        return bool(tasks)
    if not scanned_complete(job, phase - 1):
        return False
    if phases[phase]["type"] == "map":
        return all(t["chained"] for t in job.phase_tasks(phase - 1) if t["state"] == "done")
    return bool(tasks)


def check(job: JobState) -> None:
    for phase in range(len(job.record["phases"])):
        assert job.phase_complete(phase) == scanned_complete(job, phase), phase
        assert job.in_phase.get(phase, 0) == len(job.phase_tasks(phase))
        assert job.unfinished.get(phase, 0) == sum(t["state"] not in TERMINAL for t in job.phase_tasks(phase))


def finish(job: JobState, records: JobRecords, task_id: str, outputs: list[str] | None = None) -> None:
    """The task ends (done with `outputs`, or failed without), as the scheduler records it."""
    task = {**job.tasks[task_id], "state": "done" if outputs is not None else "failed", "outputs": outputs or []}
    records.save_tasks([task])
    job.put(task)


def ids(job: JobState, phase: int) -> list[str]:
    return sorted(t["id"] for t in job.phase_tasks(phase))


def test_phases_chain_as_tasks_finish_out_of_order(records: JobRecords) -> None:
    spec = parse_spec({"phases": [{"type": "map", "exec": "cat"}, {"type": "map", "exec": "wc -l"},
                                  {"type": "reduce", "exec": "cat", "count": 2}],
                       "inputs": [f"b/in{i}" for i in range(4)]})
    job_id = records.create("ann", spec)["id"]
    records.add_inputs(job_id, [], end=True)
    job = load_job(records, records.get(job_id))
    job.expand(records)
    assert ids(job, 0) == [f"p0-m{i:07d}" for i in range(4)] and not job.done
    check(job)

    finish(job, records, "p0-m0000002", ["b/o2a", "b/o2b"])  # the third input first
    job.expand(records)
    assert [t["input"] for t in job.phase_tasks(1)] == ["b/o2a", "b/o2b"]
    check(job)
    job.expand(records)  # nothing new: its outputs are taken once
    assert len(job.phase_tasks(1)) == 2

    finish(job, records, "p0-m0000001")  # failed: nothing to chain
    finish(job, records, "p0-m0000003", ["b/o3"])
    finish(job, records, "p0-m0000000", ["b/o0"])
    job.expand(records)  # two done in one tick: taken in task order
    assert [t["input"] for t in sorted(job.phase_tasks(1), key=lambda t: t["id"])] == \
        ["b/o2a", "b/o2b", "b/o0", "b/o3"]
    assert job.phase_complete(0) and not job.phase_complete(1) and not job.phase_tasks(2)
    check(job)

    again = load_job(records, records.get(job_id))  # a restart: the indexes from the records
    def nonzero(counts: dict[int, int]) -> dict[int, int]:
        return {phase: n for phase, n in counts.items() if n}

    assert nonzero(again.in_phase) == nonzero(job.in_phase) and again.counters == job.counters
    assert nonzero(again.unfinished) == nonzero(job.unfinished)
    assert not any(again.unchained.values())
    job = again
    check(job)

    for n, task_id in enumerate(ids(job, 1)):
        assert not job.phase_tasks(2)  # no reducer while a map task of phase 1 is unfinished
        finish(job, records, task_id, [f"b/p1-{n}"])
        job.expand(records)
        check(job)
    reducers = sorted(job.phase_tasks(2), key=lambda t: t["id"])
    assert [t["id"] for t in reducers] == ["p2-r0000", "p2-r0001"]
    assert not job.done
    for task in reducers:
        finish(job, records, task["id"], [])
    job.expand(records)
    check(job)
    assert job.done
    assert records.counts(job_id) == task_counts(records.tasks(job_id))


def test_a_reduce_first_job_makes_its_reducers_once_the_inputs_end(records: JobRecords) -> None:
    spec = parse_spec({"phases": [{"type": "reduce", "exec": "cat"}], "inputs": ["b/a", "b/b"]})
    job_id = records.create("ann", spec)["id"]
    job = load_job(records, records.get(job_id))
    job.expand(records)
    assert not job.tasks  # the inputs may still grow
    check(job)
    job.record = records.add_inputs(job_id, ["b/c"], end=True)
    job.expand(records)
    (reducer,) = job.tasks.values()
    assert reducer["inputs"] == ["b/a", "b/b", "b/c"]
    job.expand(records)
    assert len(job.tasks) == 1
    finish(job, records, reducer["id"], ["b/out"])
    check(job)
    assert job.done

