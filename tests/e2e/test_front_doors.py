"""Two front doors (`manta serve --catalog postgresql://...` twice, on two ports) over one
PostgreSQL database and the same nodes:

- a client alternating between the doors sees read-after-write for PUT, GET, LIST, DELETE
  and multipart, and for buckets deleted and made again;
- 32 clients spread over both doors for 30 s of mixed traffic, then the listing, the
  catalog and the blobs on disk agree exactly (and the usage counters with them);
- SIGKILL of the door a 60-input job was created through (and whose worker leads): the job
  completes through the other door within 30 s of the kill, with exactly one output per task;
- two doors with data dirs of their own (as on two hosts) over storage nodes on their own
  hosts (network namespaces): objects and a job through either door.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from manta.client import Client
from tests.conftest import (
    ROOT_AK,
    ROOT_SK,
    Server,
    free_port,
    new_pg_database,
    require,
    traversable_dir,
)
from tests.e2e.test_crash import check_catalog_against_disk, read_catalog, tmp_files
from tests.e2e.test_jobs import upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

MIB = 1024 * 1024
CLIENTS = 32
TRAFFIC_S = 30.0
KEYS = [f"k{i:02d}" for i in range(24)]
LEADS = re.compile(r"worker \d+ \(pid (\d+)\) leads")
ONE_TRY: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 60}


class Doors:
    def __init__(self, a: Server, b: Server) -> None:
        self.a, self.b = a, b

    def both(self) -> tuple[Server, Server]:
        return self.a, self.b


@pytest.fixture
def doors() -> Iterator[Doors]:
    """Two servers over one data dir (the same nodes) and one fresh database, not started."""
    base = traversable_dir("manta-doors-")
    data = os.path.join(base, "data")
    url = new_pg_database("manta_doors")
    env = {"MANTA_GC_GRACE_S": "0"}  # the admin GC at the end may collect any orphan
    pair = Doors(Server(data, free_port(), catalog=url, env=env, extra_args=["--nodes", "2"]),
                 Server(data, free_port(), catalog=url, env=env, extra_args=["--nodes", "2"]))
    try:
        yield pair
    finally:
        for door in pair.both():
            door.stop()
        shutil.rmtree(base, ignore_errors=True)


def start_both(doors: Doors) -> None:
    """Door a first, and until its worker leads; then door b (a follower)."""
    doors.a.start()
    wait_for(lambda: LEADS.search(doors.a.log(since=0)), 15, "door a's worker to lead")
    doors.b.start()


def listed(s3: Any, bucket: str) -> dict[str, tuple[int, str]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: (o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])}


def test_a_client_alternating_between_doors_reads_its_writes(doors: Doors) -> None:
    start_both(doors)
    a: Any = doors.a.client()
    b: Any = doors.b.client()
    a.create_bucket(Bucket="alt")
    assert "alt" in {x["Name"] for x in b.list_buckets()["Buckets"]}
    for i in range(20):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        body = os.urandom(100 + i * 500)
        key = f"obj{i:02d}"
        writer.put_object(Bucket="alt", Key=key, Body=body)
        assert reader.get_object(Bucket="alt", Key=key)["Body"].read() == body
        assert key in listed(reader, "alt")
        writer.put_object(Bucket="alt", Key=key, Body=body + b"2")  # an overwrite
        assert reader.get_object(Bucket="alt", Key=key)["Body"].read() == body + b"2"
        if i % 3 == 0:
            writer.delete_object(Bucket="alt", Key=key)
            with pytest.raises(ClientError) as err:
                reader.get_object(Bucket="alt", Key=key)
            assert err.value.response["Error"]["Code"] == "NoSuchKey"
            assert key not in listed(reader, "alt")

    upload_id = a.create_multipart_upload(Bucket="alt", Key="mp")["UploadId"]
    assert [u["UploadId"] for u in b.list_multipart_uploads(Bucket="alt")["Uploads"]] == [upload_id]
    first, second = os.urandom(5 * MIB), os.urandom(1234)
    e1 = b.upload_part(Bucket="alt", Key="mp", UploadId=upload_id, PartNumber=1, Body=first)["ETag"]
    e2 = a.upload_part(Bucket="alt", Key="mp", UploadId=upload_id, PartNumber=2, Body=second)["ETag"]
    assert [p["ETag"] for p in b.list_parts(Bucket="alt", Key="mp", UploadId=upload_id)["Parts"]] == [e1, e2]
    b.complete_multipart_upload(Bucket="alt", Key="mp", UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert a.get_object(Bucket="alt", Key="mp")["Body"].read() == first + second
    assert not a.list_multipart_uploads(Bucket="alt").get("Uploads")

    # door a keeps the bucket it checked for a second (s3/doorcache.py); the commit checks
    # again: a bucket deleted through door b takes no PUT through a, one made again does
    a.create_bucket(Bucket="brief")
    a.put_object(Bucket="brief", Key="first", Body=b"1")
    b.delete_object(Bucket="brief", Key="first")
    b.delete_bucket(Bucket="brief")
    with pytest.raises(ClientError) as err:
        a.put_object(Bucket="brief", Key="second", Body=b"2")
    assert err.value.response["Error"]["Code"] == "NoSuchBucket"
    b.create_bucket(Bucket="brief")
    a.put_object(Bucket="brief", Key="third", Body=b"3")
    assert list(listed(b, "brief")) == ["third"]
    a.close()
    b.close()


class Client32:
    """One of the 32 clients: each request goes to either door at random."""

    def __init__(self, doors: Doors, seed: int, written: dict[str, set[str]], lock: threading.Lock,
                 until: float) -> None:
        self.s3 = [door.client(**ONE_TRY) for door in doors.both()]
        self.rng = random.Random(seed)
        self.seed = seed
        self.written = written
        self.lock = lock
        self.until = until
        self.ops: defaultdict[str, int] = defaultdict(int)
        self.errors: list[str] = []

    def body(self, key: str, size: int) -> bytes:
        head = f"{key}:{self.seed}:{self.rng.random()}:".encode()
        data = (head * (size // len(head) + 1))[:size]
        with self.lock:
            self.written[key].add(hashlib.sha256(data).hexdigest())
        return data

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                op = self.rng.choice(["put", "put", "put", "get", "get", "list", "delete", "put-large", "multipart"])
                self.one(op, self.rng.choice(self.s3), self.rng.choice(KEYS))
                self.ops[op] += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            for s3 in self.s3:
                s3.close()

    def one(self, op: str, s3: Any, key: str) -> None:
        if op == "put":
            s3.put_object(Bucket="mixed", Key=key, Body=self.body(key, self.rng.randrange(1, 8000)))
        elif op == "put-large":
            s3.put_object(Bucket="mixed", Key=key, Body=self.body(key, 300_000))
        elif op == "get":
            try:
                data = s3.get_object(Bucket="mixed", Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "NoSuchKey":
                    raise
                return
            with self.lock:
                assert hashlib.sha256(data).hexdigest() in self.written[key], f"{key}: a body never written"
        elif op == "list":
            s3.list_objects_v2(Bucket="mixed", MaxKeys=10)
        elif op == "delete":
            s3.delete_object(Bucket="mixed", Key=key)
        elif op == "multipart" and self.rng.random() < 0.2:
            upload_id = s3.create_multipart_upload(Bucket="mixed", Key=key)["UploadId"]
            whole = self.body(key, 5 * MIB + 10)
            other = self.rng.choice(self.s3)  # the parts through either door
            e1 = other.upload_part(Bucket="mixed", Key=key, UploadId=upload_id, PartNumber=1,
                                   Body=whole[:5 * MIB])["ETag"]
            e2 = s3.upload_part(Bucket="mixed", Key=key, UploadId=upload_id, PartNumber=2,
                                Body=whole[5 * MIB:])["ETag"]
            s3.complete_multipart_upload(Bucket="mixed", Key=key, UploadId=upload_id, MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})


@pytest.mark.load
def test_32_clients_over_both_doors_leave_listing_catalog_and_blobs_in_agreement(doors: Doors) -> None:
    start_both(doors)
    s3: Any = doors.a.client()
    s3.create_bucket(Bucket="mixed")
    written: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    until = time.monotonic() + TRAFFIC_S
    clients = [Client32(doors, seed, written, lock, until) for seed in range(CLIENTS)]
    threads = [threading.Thread(target=c.run) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TRAFFIC_S + 240)
        assert not t.is_alive(), "a client hung"
    errors = [e for c in clients for e in c.errors]
    assert not errors, errors[:5]
    ops: defaultdict[str, int] = defaultdict(int)
    for c in clients:
        for op, n in c.ops.items():
            ops[op] += n
    print(f"\noperations in {TRAFFIC_S:.0f}s over two doors: {dict(ops)}")

    objects = listed(s3, "mixed")
    assert objects == listed(doors.b.client(), "mixed")  # both doors list the same
    total = 0
    for key, (size, etag) in objects.items():
        data = s3.get_object(Bucket="mixed", Key=key)["Body"].read()
        assert hashlib.sha256(data).hexdigest() in written[key], key
        assert len(data) == size, key
        if "-" not in etag:
            assert etag.strip('"') == hashlib.md5(data).hexdigest(), key
        total += size
    assert not s3.list_multipart_uploads(Bucket="mixed").get("Uploads")
    s3.close()

    admin = Client(doors.a.url, ROOT_AK, ROOT_SK)
    assert admin.api("GET", "/_manta/admin/users/root")["usage"] == {"objects": len(objects), "bytes": total}
    assert not tmp_files(doors.a.data_dir)
    view = read_catalog(doors.a.data_dir)
    assert view.keys("mixed") == set(objects)
    leaked = check_catalog_against_disk(view, doors.a.data_dir)
    assert not leaked, f"{len(leaked)} blob files no record references"


def test_a_job_created_through_a_killed_door_completes_through_the_other(doors: Doors) -> None:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    from jobs.sandbox import Sandbox

    reason = Sandbox().check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")
    start_both(doors)
    s3: Any = doors.a.client()
    s3.create_bucket(Bucket="jobs-in")
    datas = [f"line {i:02d}\n".encode() for i in range(60)]
    names = upload(s3, "jobs-in", "in/", datas)
    s3.close()
    through_a = Client(doors.a.url, ROOT_AK, ROOT_SK)
    job = through_a.job(map="sleep 0.2; cat", inputs=names)

    def midway() -> bool:  # (0.2 s tasks never show running: RUNNING_RECORD_S)
        phase = through_a.api("GET", f"/_manta/jobs/{job.id}")["phases"][0]
        return bool(5 <= phase["done"] <= len(datas) - 20)

    wait_for(midway, 60, "the job to be mid-way", interval_s=0.1)
    doors.a.kill()
    killed = time.monotonic()
    through_b = Client(doors.b.url, ROOT_AK, ROOT_SK)
    wait_for(lambda: LEADS.search(doors.b.log(since=0)), 10, "door b's worker to lead")
    same = through_b.get_job(job.id)
    deadline = killed + 30
    while (state := through_b.api("GET", f"/_manta/jobs/{job.id}"))["state"] != "done":
        assert time.monotonic() < deadline, f"job not done 30 s after the kill: {state}"
        time.sleep(0.2)
    print(f"\njob done {time.monotonic() - killed:.1f}s after the kill")
    keys = same.outputs()
    assert len(keys) == 60, f"{len(keys)} outputs for 60 tasks"
    assert sorted(through_b.get(key) for key in keys) == sorted(datas)


def test_two_doors_of_their_own_over_remote_nodes(request: pytest.FixtureRequest) -> None:
    from tests.netns import cluster_fixture

    url = new_pg_database("manta_cluster_doors")
    cluster = cluster_fixture(request, nodes=2, front_args=["--catalog", url])
    other = cluster.start_another_front("front2")
    a: Any = cluster.client()
    b: Any = boto3.client("s3", endpoint_url=other, aws_access_key_id=cluster.access_key,
                          aws_secret_access_key=cluster.secret_key, region_name="us-east-1")
    a.create_bucket(Bucket="hosts")
    bodies = {f"o{i}": os.urandom(1000 * (i + 1)) for i in range(6)}
    for i, (key, body) in enumerate(bodies.items()):
        (a if i % 2 else b).put_object(Bucket="hosts", Key=key, Body=body)
    for key, body in bodies.items():
        assert a.get_object(Bucket="hosts", Key=key)["Body"].read() == body
        assert b.get_object(Bucket="hosts", Key=key)["Body"].read() == body
    assert set(listed(b, "hosts")) == set(bodies)
    through_b = Client(other, cluster.access_key, cluster.secret_key)
    job = through_b.job(map="wc -c", inputs=[f"hosts/{key}" for key in bodies])
    job.wait(timeout_s=120, progress=False)
    assert job.state == "done"
    counts = sorted(int(through_b.get(out).split()[0]) for out in job.outputs())
    assert counts == sorted(len(body) for body in bodies.values())


def test_a_bucket_setting_made_through_one_door_refuses_acls_on_the_other_at_once(doors: Doors) -> None:
    """Door a keeps a bucket its PUTs checked for a second (s3/doorcache.py). A public
    access block or BucketOwnerEnforced set through door b must refuse an ACL on door a at
    once, within that second, as on one door."""
    from manta.server.s3.doorcache import DOOR_TTL_S

    start_both(doors)
    a: Any = doors.a.client(**ONE_TRY)
    b: Any = doors.b.client(**ONE_TRY)

    def refused(bucket: str, key: str, acl: str) -> str:
        with pytest.raises(ClientError) as err:
            a.put_object(Bucket=bucket, Key=key, Body=b"x", ACL=acl)
        return str(err.value.response["Error"]["Code"])

    for attempt in range(5):  # a run slower than the door's second shows nothing: again
        bucket = f"acl{attempt}"
        a.create_bucket(Bucket=bucket)
        started = time.monotonic()
        a.put_object(Bucket=bucket, Key="first", Body=b"x")  # door a holds the bucket now
        b.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={"BlockPublicAcls": True})
        blocked = refused(bucket, "public", "public-read")
        a.put_object(Bucket=bucket, Key="plain", Body=b"x")  # no ACL: nothing to refuse
        b.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
            "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
        disabled = refused(bucket, "private", "private")
        if time.monotonic() - started < DOOR_TTL_S:
            break
    else:
        pytest.fail(f"5 tries took {DOOR_TTL_S:g} s or more each: the door's cache was never tested")
    assert (blocked, disabled) == ("AccessDenied", "AccessControlListNotSupported")
    with pytest.raises(ClientError):
        b.head_object(Bucket=bucket, Key="public")  # nothing of the refused PUTs was stored
    assert sorted(listed(b, bucket)) == ["first", "plain"]
