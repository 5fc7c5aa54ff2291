"""Moving an LMDB catalog into PostgreSQL (storage/migrate.py): a catalog built through the
real repositories (accounts, buckets, objects with long keys in overflow entries, a
multipart upload in progress, a finished job) reads back the same through them from the
copy; the refusals write nothing; verification catches a difference.

Blob ids are fake (no bytes are stored): the catalog only records them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.records import TABLES as JOB_TABLES
from jobs.records import JobRecords
from jobs.spec import JobSpec, Phase
from storage import errors
from storage.catalog import TABLES, Catalog
from storage.engines import open_engine
from storage.migrate import (
    CatalogNotFound,
    MigrationFailed,
    MigrationRefused,
    copy_tables,
    describe,
    digest,
    migrate_lmdb,
    verify,
)
from storage.objects import ObjectStore
from storage.uploads import MIN_PART_SIZE, UploadStore
from tests.conftest import REPO

pytestmark = pytest.mark.postgresql

N_OBJECTS = 1_200
BATCH = 100  # rows per engine write: many batches, and more than IN_FLIGHT of them queued
ALL_TABLES = TABLES + JOB_TABLES  # storage's and the jobs package's
LONG = ["long/" + "x" * 600 + f"/{i}" for i in range(3)]  # catalog keys > 480 bytes: one overflow entry


class Repos:
    def __init__(self, location: str, **options: Any) -> None:
        self.catalog = Catalog(location, JOB_TABLES, **options)
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)
        self.jobs = JobRecords(self.catalog)

    def close(self) -> None:
        self.catalog.close()


def record(size: int, etag: str) -> dict[str, Any]:
    return {"size": size, "etag": etag, "mtime": 1.5, "segments": [[secrets.token_hex(16), size]],
            "headers": {"content-type": "text/plain"}, "meta": {"who": etag}, "checksums": {},
            "checksum_type": None, "parts": None, "replicas": ["n0"]}


def build_catalog(path: str) -> dict[str, Any]:
    """A catalog with one of everything; what the test needs to look it up again."""
    repos = Repos(path)
    cat = repos.catalog
    cat.accounts.add("root", "ROOTKEY", "root-secret", root=True)
    cat.accounts.add("alice", "ALICEKEY", "alice-secret", quota={"objects": 5000, "bytes": 10**9})
    cat.buckets.create("bkt", "root")
    cat.buckets.create("alice-b", "alice", acl="public-read")
    keys = [f"dir{i % 7}/obj-{i:05d}" for i in range(N_OBJECTS)] + ["ünïcödé/ключ", *LONG]
    futures = [repos.objects.put_async("bkt", key, record(i + 1, f"e{i}")) for i, key in enumerate(keys)]
    small = secrets.token_hex(16)
    futures.append(repos.objects.put_async("alice-b", "tiny", record(5, "tiny"), journal={small: b"hello"}))
    for fut in futures:
        fut.result()
    cat.nodes.put("n0", "dir:/srv/n0")
    cat.repairs.queue(repos.objects.get("bkt", keys[0])["segments"][0][0], "n0", "checksum").result()
    upload = repos.uploads.create("bkt", "big/upload", "root", {"headers": {}, "meta": {"m": "1"}})
    for number, size in ((1, MIN_PART_SIZE), (2, 17)):
        repos.uploads.put_part("bkt", "big/upload", upload["upload_id"],
                               {"number": number, "blob": secrets.token_hex(16), "size": size,
                                "etag": f"part{number}"})
    job = repos.jobs.create("alice", JobSpec(phases=(Phase("map", "wc -l"),), name="count",
                                             inputs=("alice-b/tiny",)))
    repos.jobs.add_inputs(job["id"], [], end=True)
    repos.jobs.save_tasks([{"v": 1, "id": "t0", "job": job["id"], "phase": 0, "type": "map",
                            "state": "done", "input": "alice-b/tiny", "outputs": [f"{job['id']}/p0/t0"],
                            "attempts": 1, "finished": 2.5}])
    repos.jobs.end_job(job["id"], "done")
    repos.uploads.rebuild_usage()
    repos.close()
    return {"keys": keys, "upload_id": upload["upload_id"], "job_id": job["id"]}


@pytest.fixture
def built(tmp_path: Any) -> tuple[str, dict[str, Any]]:
    path = os.path.join(str(tmp_path), "data", "catalog")
    os.makedirs(path)
    return path, build_catalog(path)


def snapshot(repos: Repos, facts: dict[str, Any]) -> dict[str, Any]:
    """Everything the repositories answer about the built catalog."""
    cat, objects, uploads, jobs = repos.catalog, repos.objects, repos.uploads, repos.jobs
    listings = {}
    for prefix, delimiter in (("", ""), ("", "/"), ("dir3/", ""), ("long/", "/")):
        pages, after = [], ""
        while True:
            page = objects.list("bkt", prefix, delimiter, start_after=after, max_keys=250)
            pages.append((page.contents, page.common_prefixes, page.truncated))
            if not page.truncated:
                break
            after = page.next_marker or ""
        listings[(prefix, delimiter)] = pages
    job_id = facts["job_id"]
    return {
        "accounts": cat.accounts.all(),
        "alice": cat.accounts.named("alice"),
        "quota": cat.accounts.quota("alice"),
        "usage": {name: cat.usage.get(name) for name in ("root", "alice")},
        "usage_built": cat.usage.built(),
        "buckets": [cat.buckets.owned_by(owner) for owner in ("root", "alice")],
        "objects": [objects.get("bkt", key) for key in facts["keys"]],
        "tiny": objects.get("alice-b", "tiny"),
        "listings": listings,
        "all_records": sorted(objects.all_records(), key=lambda r: r["key"]),
        "uploads": uploads.list_uploads("bkt"),
        "upload": uploads.get("bkt", "big/upload", facts["upload_id"]),
        "parts": uploads.parts(facts["upload_id"]),
        "jobs": jobs.jobs("alice"),
        "running_jobs": jobs.running_jobs(),
        "job": jobs.get(job_id),
        "inputs": jobs.inputs(job_id),
        "tasks": jobs.tasks(job_id),
        "settled": jobs.settled(job_id),
        "blobs": sorted(cat.blobrefs.records()),
        "journal": cat.journal.entries(),
        "repairs": cat.repairs.pending(),
        "nodes": cat.nodes.all(),
    }


def tables_digest(location: str) -> dict[str, Any]:
    engine = open_engine(location, ALL_TABLES, readonly=True)
    try:
        with engine.read() as txn:
            return {table: digest(txn, table) for table in ALL_TABLES}
    finally:
        engine.close()


def test_a_migrated_catalog_reads_back_the_same(built: tuple[str, dict[str, Any]], pg_url: str) -> None:
    path, facts = built
    before = tables_digest(path)
    source = Repos(path, readonly=True)
    try:
        expected = snapshot(source, facts)
    finally:
        source.close()
    assert len(expected["objects"]) == N_OBJECTS + 1 + len(LONG)
    assert [r["key"] for r in expected["listings"][("long/", "/")][0][0]] == []  # one common prefix
    assert expected["listings"][("long/", "/")][0][1] == ["long/" + "x" * 600 + "/"]
    assert [p["number"] for p in expected["parts"]] == [1, 2] and expected["job"]["state"] == "done"

    seen = []
    started = time.monotonic()
    report = migrate_lmdb(path, pg_url, ALL_TABLES, batch_rows=BATCH, on_table=seen.append)
    elapsed = time.monotonic() - started
    counts = describe(path, ALL_TABLES).counts
    assert [t.table for t in report.tables] == list(ALL_TABLES) == [t.table for t in seen]
    assert {t.table: t.rows for t in report.tables} == counts
    assert report.rows == sum(counts.values()) > 2 * N_OBJECTS
    assert {t.table: (t.rows, t.sha256) for t in report.tables} == {
        table: (d.rows, d.sha256) for table, d in before.items()}
    assert report.source == f"lmdb at {path}" and report.target.startswith("postgresql at postgresql://")
    print(f"\nmigrated {report.rows} rows in {elapsed:.2f}s ({report.rows / elapsed:,.0f} rows/s)")

    info = describe(pg_url, ALL_TABLES)
    assert (info.engine, info.schema_version, info.counts) == ("postgresql", 1, counts)
    assert tables_digest(pg_url) == before
    assert tables_digest(path) == before  # the LMDB catalog is left as it was

    target = Repos(pg_url)
    try:
        assert snapshot(target, facts) == expected
        # and it is a working catalog: the upload completes, the bucket takes new objects
        def build(upload: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
            return {**record(sum(p["size"] for p in parts), "mp"), "parts": [p["size"] for p in parts]}
        done, _ = target.uploads.complete("bkt", "big/upload", facts["upload_id"],
                                          [(1, "part1"), (2, "part2")], build)
        assert done["size"] == MIN_PART_SIZE + 17
        assert target.uploads.list_uploads("bkt") == []
        with pytest.raises(errors.BucketAlreadyExists):
            target.catalog.buckets.create("bkt", "alice")
        # the pending upload's object and its parts' bytes became the new object's
        assert target.catalog.usage.get("root") == expected["usage"]["root"]
    finally:
        target.close()

    with pytest.raises(MigrationRefused, match="already holds a manta catalog"):
        migrate_lmdb(path, pg_url, ALL_TABLES)


def test_refused_while_another_process_has_the_catalog_open(built: tuple[str, dict[str, Any]],
                                                            pg_url: str) -> None:
    path, _ = built
    code = ("import sys; from storage.catalog import Catalog; "
            f"c = Catalog({path!r}); print('open', flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "open\n"
            with pytest.raises(MigrationRefused, match=f"process {holder.pid} has the catalog"):
                migrate_lmdb(path, pg_url, ALL_TABLES)
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)
    with pytest.raises(CatalogNotFound):  # nothing was written, not even the schema
        describe(pg_url, ALL_TABLES)
    assert migrate_lmdb(path, pg_url, ALL_TABLES).rows > 0  # once it is closed


def test_refused_while_the_leader_hold_is_taken(built: tuple[str, dict[str, Any]], pg_url: str) -> None:
    path, _ = built
    engine = open_engine(path, ALL_TABLES)
    held = engine.try_hold("leader")
    engine.close()  # the hold outlives the environment (a leader that is shutting down)
    assert held is not None
    try:
        with pytest.raises(MigrationRefused, match="leader hold"):
            migrate_lmdb(path, pg_url, ALL_TABLES)
    finally:
        held.release()
    with pytest.raises(CatalogNotFound):
        describe(pg_url, ALL_TABLES)


def test_refused_when_a_server_holds_the_target(built: tuple[str, dict[str, Any]], pg_url: str) -> None:
    path, _ = built
    engine = open_engine(pg_url, ALL_TABLES)  # an empty catalog whose leader runs
    held = engine.try_hold("leader")
    try:
        assert held is not None
        with pytest.raises(MigrationRefused, match="a manta server runs on"):
            migrate_lmdb(path, pg_url, ALL_TABLES)
        assert sum(engine.counts().values()) == 0
    finally:
        if held is not None:
            held.release()
        engine.close()


def test_refusals_of_a_missing_catalog_and_a_non_postgresql_target(tmp_path: Any, pg_url: str) -> None:
    with pytest.raises(CatalogNotFound, match="no LMDB catalog"):
        migrate_lmdb(str(tmp_path / "nothing"), pg_url, ALL_TABLES)
    with pytest.raises(CatalogNotFound, match="no LMDB catalog"):
        describe(str(tmp_path / "nothing"), ALL_TABLES)
    with pytest.raises(MigrationRefused, match="postgresql://"):
        migrate_lmdb(str(tmp_path / "nothing"), str(tmp_path / "other"), ALL_TABLES)


@pytest.fixture
def engines(built: tuple[str, dict[str, Any]], pg_url: str) -> Iterator[tuple[Any, Any]]:
    path, _ = built
    source, target = open_engine(path, ALL_TABLES), open_engine(pg_url, ALL_TABLES)
    yield source, target
    target.close()
    source.close()


def test_verify_catches_a_different_target(engines: tuple[Any, Any]) -> None:
    source, target = engines
    copied = copy_tables(source, target, ALL_TABLES, batch_rows=BATCH)
    verify(source, target, copied)
    with target.read() as txn:
        key, value = next(iter(txn.scan("objects")))
    target.write(lambda txn: txn.put("objects", key, value + b"\x00"))
    with pytest.raises(MigrationFailed, match="table objects"):
        verify(source, target, copied)


def test_verify_catches_a_source_written_during_the_copy(engines: tuple[Any, Any]) -> None:
    source, target = engines
    copied = copy_tables(source, target, ALL_TABLES, batch_rows=BATCH)
    source.write(lambda txn: txn.put("names", b"late", b"KEY"))
    with pytest.raises(MigrationFailed, match="changed during the copy"):
        verify(source, target, copied)
