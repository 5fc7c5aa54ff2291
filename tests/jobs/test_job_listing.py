"""An account's job listing (jobs.records): pages of its own `\\0own\\0` keys in creation
order, written with every job record, so a listing never reads another account's jobs or
the job records themselves; `reindex` makes the indexes agree with the records. Run on
both catalog engines; each listing is checked against the job records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.errors import NoSuchJob
from jobs.records import LISTED, OWNED, RUNNING, TABLES, JobRecords
from jobs.spec import parse_spec
from storage import Store, StoreConfig


@pytest.fixture(params=("lmdb", "postgresql"))
def records(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[JobRecords]:
    catalog = str(request.getfixturevalue("pg_url")) if request.param == "postgresql" else None
    store = Store(StoreConfig(os.path.join(str(tmp_path), "data"), catalog=catalog, extra_tables=TABLES))
    try:
        for name in ("ann", "bob"):
            store.catalog.accounts.add(name, f"AK{name.upper()}", f"secret-of-{name}")
        yield JobRecords(store.catalog)
    finally:
        store.close()


def new_job(records: JobRecords, owner: str, name: str, inputs: tuple[str, ...] = ()) -> str:
    spec = parse_spec({"name": name, "phases": [{"type": "map", "exec": "wc -l"}], "inputs": list(inputs)})
    return str(records.create(owner, spec)["id"])


def from_records(records: JobRecords, ids: list[str]) -> list[dict[str, Any]]:
    """What a listing of these jobs must say, from their records."""
    return [{name: records.get(job_id)[name] for name in LISTED} for job_id in ids]


def index_keys(records: JobRecords) -> dict[bytes, Any]:
    with records.catalog.read() as txn:
        return {k: v for prefix in (RUNNING, OWNED) for k, v in records.catalog.scan(txn, "jobs", prefix=prefix)}


def test_a_listing_is_the_owners_jobs_in_creation_order_as_their_records_say(records: JobRecords) -> None:
    ann = [new_job(records, "ann", f"a{i}") for i in range(4)]
    bob = [new_job(records, "bob", "b0")]
    assert records.jobs("ann") == from_records(records, ann)
    assert [j["name"] for j in records.jobs("ann")] == ["a0", "a1", "a2", "a3"]
    assert records.jobs("bob") == from_records(records, bob)
    assert records.jobs("carol") == []

    # every change a listing shows is written with the record: inputs, the end, a cancel
    records.add_inputs(ann[1], ["bkt/x", "bkt/y"], end=True)
    records.end_job(ann[1], "done")
    records.cancel(ann[2])
    assert records.jobs("ann") == from_records(records, ann)
    assert [(j["state"], j["input_count"], j["finished"] is not None) for j in records.jobs("ann")] == [
        ("running", 0, False), ("done", 2, True), ("cancelled", 0, True), ("running", 0, False)]
    assert {r["id"] for r in records.running_jobs()} == {ann[0], ann[3], bob[0]}


@pytest.mark.parametrize("count", [7, 6])  # the last page part full, and exactly full
def test_pages_follow_each_other_and_say_when_more_follow(records: JobRecords, count: int) -> None:
    ids = [new_job(records, "ann", f"j{i}") for i in range(count)]
    new_job(records, "bob", "other")
    pages, after = [], None
    while True:
        page, after = records.page("ann", after=after, limit=3)
        pages.append([j["id"] for j in page])
        if after is None:
            break
        assert after == page[-1]["id"]
    assert pages == [ids[i:i + 3] for i in range(0, count, 3)]  # no empty page at the end

    for i in (0, 2, 5):  # any job of theirs is a marker
        assert [j["id"] for j in records.page("ann", after=ids[i])[0]] == ids[i + 1:]


def test_a_state_filter_pages_over_the_matching_jobs_only(records: JobRecords) -> None:
    ids = [new_job(records, "ann", f"j{i}") for i in range(8)]
    for job_id in ids[::2]:
        records.end_job(job_id, "done")
    page, after = records.page("ann", state="done", limit=3)
    assert [j["id"] for j in page] == ids[0:6:2] and after == ids[4]
    page, after = records.page("ann", state="done", after=after, limit=3)
    assert [j["id"] for j in page] == [ids[6]] and after is None
    assert [j["id"] for j in records.page("ann", state="running")[0]] == ids[1::2]
    assert records.page("ann", state="cancelled") == ([], None)


def test_a_marker_must_be_one_of_the_owners_jobs(records: JobRecords) -> None:
    new_job(records, "ann", "a")
    bobs = new_job(records, "bob", "b")
    for marker in (bobs, "0123456789abcdef"):
        with pytest.raises(NoSuchJob):
            records.page("ann", after=marker)


def test_reindex_rebuilds_missing_and_stale_index_keys_from_the_records(records: JobRecords) -> None:
    ids = [new_job(records, owner, f"j{i}") for i, owner in enumerate(["ann", "bob", "ann", "ann"])]
    records.end_job(ids[2], "done")
    built = index_keys(records)
    assert len(built) == 4 + 3  # a listing per job, and the three running ones

    def as_an_older_server_left_it(txn: Any) -> None:
        for key in built:  # no index at all (a catalog from before them) ...
            records.catalog.delete(txn, "jobs", key)
        record = records.get(ids[0], txn)  # ... and a job that ended without its listing moving
        record.update(state="cancelled", finished=1.0)
        records.catalog.put(txn, "jobs", ids[0].encode(), record)
        records.catalog.put(txn, "jobs", OWNED + b"ann\0" + b"\0" * 8 + b"gone", {"id": "gone"})  # and a stray

    records.write(as_an_older_server_left_it)
    assert records.jobs("ann") == [{"id": "gone"}]
    records.reindex()
    after = index_keys(records)
    assert len(after) == 4 + 2  # ids[0] is no longer running
    assert records.jobs("ann") == from_records(records, [ids[0], ids[2], ids[3]])
    assert records.jobs("ann")[0]["state"] == "cancelled"
    assert {r["id"] for r in records.running_jobs()} == {ids[1], ids[3]}
    records.reindex()  # agreeing already: nothing changes
    assert index_keys(records) == after
