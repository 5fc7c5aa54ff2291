"""Task outputs (jobs/outputs.py): small ones placed without fsync and journalled in the
outcome's catalog transaction, big ones written as fsync'd files; a journalled output
survives the loss of its unsynced file (recovery rewrites it from the journal)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from jobs.outputs import SMALL_OUTPUT_BYTES, TaskOutputs
from jobs.records import TABLES as JOB_TABLES
from jobs.sandbox import Sandbox
from storage import LocalNode, Store, StoreConfig
from storage.node import NodeSpec
from storage.replicas import ReplicatedWriter, place_small
from tests.conftest import traversable_dir
from tests.jobs.scheduler_proc import put
from tests.jobs.test_agent import sandbox  # noqa: F401 - the fixture


@pytest.fixture
def node() -> Iterator[LocalNode]:
    base = traversable_dir("manta-outputs-")
    spec = NodeSpec("dir", os.path.join(base, "n0"))
    root, _ = LocalNode.prepare(spec)
    LocalNode.write_marker(root, "n0")
    node = LocalNode("n0", spec, root)
    try:
        yield node
    finally:
        shutil.rmtree(base, ignore_errors=True)


def outputs_on(node: LocalNode, partitions: int = 0) -> TaskOutputs:
    return TaskOutputs(lambda: ReplicatedWriter([node], 1, first=node), partitions,
                       lambda small: place_small([node], 1, small, first=node))


def read_blob(node: LocalNode, blob_id: str) -> bytes:
    with open(node.blobs.path(blob_id), "rb") as fh:
        return fh.read()


def test_a_small_output_is_journalled_and_a_big_one_is_a_file(node: LocalNode) -> None:
    small = outputs_on(node)
    small.write(b"42\n")
    [(_, meta)] = small.commit()
    assert small.journal == {meta.blob_id: b"42\n"} and read_blob(node, meta.blob_id) == b"42\n"

    big = outputs_on(node)
    chunk = b"x" * 4096
    for _ in range(SMALL_OUTPUT_BYTES // len(chunk) + 1):  # just past the threshold: spilled to a file
        big.write(chunk)
    [(_, meta)] = big.commit()
    assert big.journal == {} and read_blob(node, meta.blob_id) == chunk * (SMALL_OUTPUT_BYTES // len(chunk) + 1)


def test_partitioned_outputs_stay_small_until_one_grows(node: LocalNode) -> None:
    out = outputs_on(node, partitions=4)
    lines = [f"key{i}\t{i}\n".encode() for i in range(100)]
    out.write(b"".join(lines))
    metas = out.commit()
    assert len(metas) == 4 and set(out.journal) == {m.blob_id for _, m in metas}
    assert sorted(b"".join(read_blob(node, m.blob_id) for _, m in metas).splitlines(keepends=True)) == sorted(lines)


def test_a_journalled_job_output_survives_the_loss_of_its_unsynced_file(sandbox: Sandbox) -> None:  # noqa: F811
    """A job's small output is durable with the task's commit alone: its file (written
    without fsync) lost in a crash is rewritten from the catalog's journal at the next open."""
    from jobs.scheduler import JobScheduler, SchedulerConfig
    from jobs.spec import parse_spec

    base = traversable_dir("manta-outputs-job-")
    config = StoreConfig(data_dir=os.path.join(base, "data"), node_count=1, copies=1, extra_tables=JOB_TABLES)
    store = Store(config)
    scheduler = JobScheduler(store, sandbox, SchedulerConfig(slots_per_node=1, tick_s=0.05, memory_budget_mb=1024))
    try:
        for name, data in (("small", b"a b c\n" * 10), ("big", os.urandom(200_000))):
            put(store, "in", name, data)
        scheduler.start()  # no JournalFlusher runs here: the journal keeps what the task placed
        spec = parse_spec({"phases": [{"type": "map", "exec": "if [ $(wc -c) -gt 1000 ]; then cat $MANTA_INPUT_FILE; "
                                                              "else wc -w < $MANTA_INPUT_FILE; fi"}],
                           "inputs": ["in/small", "in/big"]}, scheduler.phase_defaults())
        job = scheduler.add_inputs(scheduler.create("root", spec)["id"], "root", [], end=True)
        deadline = time.monotonic() + 60
        while scheduler.records.get(job["id"])["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        tasks = {t["input"]: t for t in scheduler.records.tasks(job["id"])}
        assert scheduler.records.get(job["id"])["state"] == "done", tasks
        bucket, small_key = tasks["in/small"]["outputs"][0].split("/", 1)
        small_blob = store.objects.get(bucket, small_key)["segments"][0][0]
        big_blob = store.objects.get(*tasks["in/big"]["outputs"][0].split("/", 1))["segments"][0][0]
        journalled = {blob_id for blob_id, _ in store.catalog.journal.entries()}
        assert small_blob in journalled and big_blob not in journalled
    finally:
        scheduler.stop()
        store.close()
    node_dir = os.path.join(base, "data", "nodes", "n0")
    os.unlink(os.path.join(node_dir, "blobs", small_blob[:2], small_blob))  # the crash lost the unsynced file
    store = Store(config)  # recovery rewrites journalled blobs
    try:
        [reader] = store.readers([small_blob])
        try:
            assert b"".join(reader.read(0, reader.size)) == b"30\n"
        finally:
            reader.close()
        assert store.catalog.journal.entries() == []
    finally:
        store.close()
        shutil.rmtree(base, ignore_errors=True)
