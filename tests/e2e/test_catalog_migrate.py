"""`manta admin catalog migrate` end to end: a server on LMDB takes objects (a long key, a
multipart upload left in progress) and runs a job; stopped, its catalog moves into
PostgreSQL with the CLI; a server on the same data dir and that database serves it all the
same (objects, listings, the upload completes, the job and its outputs). The refusals: a
server still running on the data dir, a target that already holds a catalog."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, free_port, require, traversable_dir
from tests.e2e.test_cli_find import manta

pytestmark = [pytest.mark.postgresql, pytest.mark.sandbox]

MiB = 1024 * 1024
JOBS_BUCKET = "_jobs_root"
KEYS = ["plain.txt", "dir/a", "dir/b", "dir/sub/c", "ünïcödé/ключ.txt", "long/" + "k" * 700, "empty"]


@pytest.fixture
def data_dir() -> Iterator[str]:
    base = traversable_dir("manta-migrate-")
    try:
        yield os.path.join(base, "data")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


def start(servers: list[Server], data_dir: str, catalog: str) -> Server:
    """A server on `data_dir`; `catalog` "" keeps LMDB even under MANTA_TEST_CATALOG=postgresql."""
    srv = Server(data_dir, free_port(), catalog=catalog)
    servers.append(srv)
    srv.start()
    return srv


def body(key: str) -> bytes:
    return b"" if key == "empty" else hashlib.sha256(key.encode()).digest() * (len(key) + 3)


def listing(s3: Any, bucket: str, **args: Any) -> list[tuple[str, int, str]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 3}, **args)
    return [(o["Key"], o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])]


def catalog_json(*args: str) -> dict[str, Any]:
    result = manta("http://127.0.0.1:1", "admin", "catalog", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_migrate_a_served_catalog_to_postgresql(pg_url: str, data_dir: str, servers: list[Server]) -> None:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    first = start(servers, data_dir, catalog="")
    s3: Any = first.client()
    s3.create_bucket(Bucket="mig")
    for key in KEYS:
        s3.put_object(Bucket="mig", Key=key, Body=body(key), Metadata={"k": str(len(key))})
    big = os.urandom(5 * MiB)
    s3.put_object(Bucket="mig", Key="big.bin", Body=big)
    upload = s3.create_multipart_upload(Bucket="mig", Key="pending/upload")["UploadId"]
    part1, part2 = os.urandom(5 * MiB), b"the last part"
    etags = [s3.upload_part(Bucket="mig", Key="pending/upload", UploadId=upload, PartNumber=n, Body=data)["ETag"]
             for n, data in ((1, part1), (2, part2))]
    job = manta(first.url, "job", "create", "-o", "--name", "sizes", "-m", "wc -c", "mig/dir/")
    assert job.returncode == 0, job.stderr
    job_id = job.stderr.splitlines()[0]
    outputs = manta(first.url, "job", "outputs", job_id).stdout.splitlines()
    assert len(outputs) == 3
    before = {
        "listing": listing(s3, "mig"),
        "delimited": s3.list_objects_v2(Bucket="mig", Delimiter="/")["CommonPrefixes"],
        "heads": {key: s3.head_object(Bucket="mig", Key=key)["Metadata"] for key in KEYS},
        "job": json.loads(manta(first.url, "job", "get", job_id, "--json").stdout),
        "outputs": {key: s3.get_object(Bucket=JOBS_BUCKET, Key=key.split("/", 1)[1])["Body"].read()
                    for key in outputs},
    }
    assert before["job"]["state"] == "done"

    # refused while the server runs on the data dir: nothing is written to the database
    running = manta(first.url, "admin", "catalog", "migrate", "--data", data_dir, "--to", pg_url)
    assert running.returncode == 1 and "has the catalog" in running.stderr and "stop it first" in running.stderr
    absent = manta(first.url, "admin", "catalog", "--catalog", pg_url)
    assert absent.returncode == 1 and "no manta catalog" in absent.stderr

    first.stop()
    moved = manta(first.url, "admin", "catalog", "migrate", "--data", data_dir, "--to", pg_url)
    assert moved.returncode == 0, moved.stderr
    assert "verified" in moved.stdout and f"manta serve --data {data_dir} --catalog postgresql://" in moved.stdout
    print("\n" + moved.stdout)
    lmdb, pg = catalog_json("--data", data_dir), catalog_json("--catalog", pg_url)
    assert (lmdb["engine"], pg["engine"]) == ("lmdb", "postgresql")
    assert lmdb["location"] == os.path.join(data_dir, "catalog") and "@" in pg["location"]
    assert lmdb["tables"] == pg["tables"] and pg["tables"]["objects"] >= len(KEYS) + 1
    human = manta(first.url, "admin", "catalog", "--catalog", pg_url)
    assert human.returncode == 0 and human.stdout.startswith("catalog: postgresql at postgresql://")
    again = manta(first.url, "admin", "catalog", "migrate", "--data", data_dir, "--to", pg_url)
    assert again.returncode == 1 and "already holds a manta catalog" in again.stderr

    second = start(servers, data_dir, catalog=pg_url)
    assert "manta: catalog postgresql at" in second.log()
    s3 = second.client()
    for key in KEYS:
        assert s3.get_object(Bucket="mig", Key=key)["Body"].read() == body(key)
    assert s3.get_object(Bucket="mig", Key="big.bin")["Body"].read() == big
    assert listing(s3, "mig") == before["listing"]
    assert s3.list_objects_v2(Bucket="mig", Delimiter="/")["CommonPrefixes"] == before["delimited"]
    assert {key: s3.head_object(Bucket="mig", Key=key)["Metadata"] for key in KEYS} == before["heads"]

    uploads = s3.list_multipart_uploads(Bucket="mig")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("pending/upload", upload)]
    parts = s3.list_parts(Bucket="mig", Key="pending/upload", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etags[0]), (2, etags[1])]
    s3.complete_multipart_upload(Bucket="mig", Key="pending/upload", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in zip((1, 2), etags, strict=True)]})
    assert s3.get_object(Bucket="mig", Key="pending/upload")["Body"].read() == part1 + part2

    assert json.loads(manta(second.url, "job", "get", job_id, "--json").stdout) == before["job"]
    assert manta(second.url, "job", "outputs", job_id).stdout.splitlines() == outputs
    listed = json.loads(manta(second.url, "job", "list", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    assert {key: s3.get_object(Bucket=JOBS_BUCKET, Key=key.split("/", 1)[1])["Body"].read()
            for key in outputs} == before["outputs"]
    # and the server writes to it: a new object, a new job
    s3.put_object(Bucket="mig", Key="after", Body=b"after the move")
    assert s3.get_object(Bucket="mig", Key="after")["Body"].read() == b"after the move"
    after = manta(second.url, "job", "create", "-o", "-m", "wc -c", "mig/after")
    assert after.returncode == 0 and after.stdout.split() == ["14"], after.stderr
