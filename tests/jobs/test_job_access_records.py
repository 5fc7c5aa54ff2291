"""What a job keeps of the requests that gave it inputs (jobs.records `access`): each
distinct context once, and "not known" (None) once a request without one gave inputs or
there were too many; the runner's checks use it (jobs/runner.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jobs.records import MAX_CONTEXTS, TABLES, JobRecords
from jobs.spec import parse_spec
from storage import Store, StoreConfig

PLAIN = {"aws:securetransport": "false", "aws:sourceip": "127.0.0.1", "aws:currenttime": "2026-01-01T00:00:00Z",
         "s3:x-amz-content-sha256": "abc"}
KEPT = {"aws:securetransport": "false", "aws:sourceip": "127.0.0.1"}


@pytest.fixture
def records(tmp_path: object) -> Iterator[JobRecords]:
    store = Store(StoreConfig(os.path.join(str(tmp_path), "data"), extra_tables=TABLES))
    try:
        yield JobRecords(store.catalog)
    finally:
        store.close()


SPEC = parse_spec({"phases": [{"type": "map", "exec": "wc -l"}], "inputs": ["b/k"]})


def test_a_job_keeps_each_distinct_context_of_the_requests_that_gave_inputs(records: JobRecords) -> None:
    job = records.create("ann", SPEC, PLAIN)
    assert job["access"] == [KEPT]
    assert records.add_inputs(job["id"], ["b/k2"], context={**PLAIN, "s3:x-amz-content-sha256": "def"})["access"] == [KEPT]
    other = {**PLAIN, "aws:sourceip": "10.0.0.1"}
    assert records.add_inputs(job["id"], [], context=other)["access"] == [KEPT]  # no inputs: nothing given
    assert records.add_inputs(job["id"], ["b/k3"], context=other)["access"] == [KEPT, {**KEPT, "aws:sourceip": "10.0.0.1"}]
    assert records.add_inputs(job["id"], ["b/k4"])["access"] is None  # no context: not known from now on
    assert records.add_inputs(job["id"], ["b/k5"], context=PLAIN)["access"] is None


def test_too_many_contexts_or_none_at_create_are_not_known(records: JobRecords) -> None:
    assert records.create("ann", SPEC)["access"] is None
    job = records.create("ann", SPEC, PLAIN)
    for n in range(1, MAX_CONTEXTS):
        assert len(records.add_inputs(job["id"], ["b/k"], context={**PLAIN, "aws:sourceip": f"10.0.0.{n}"})["access"]) == n + 1
    assert records.add_inputs(job["id"], ["b/k"], context={**PLAIN, "aws:sourceip": "10.0.1.1"})["access"] is None
