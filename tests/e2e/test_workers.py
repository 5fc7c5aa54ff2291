"""`manta serve --workers 2`: two server processes on one port over one data dir.

- both workers write the same keys and buckets at once (overwrites, deletes, multipart
  uploads) and the catalog, the listings, the blobs on disk and the usage counters agree;
  the `x-manta-worker` header shows that both answered;
- SIGKILL of a worker: requests keep succeeding (one retry on a reset connection), the
  supervisor starts another, and the leadership (scheduler and daemons) moves when the
  leader was the one killed;
- the banner, and SIGTERM stopping every process;
- a job whose scheduler's worker is killed mid-way still finishes (needs the scheduler to
  pick up jobs created through any worker: the jobsync change).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import re
import signal
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from botocore.exceptions import ClientError

from manta.client import Client
from tests.conftest import ROOT_AK, ROOT_SK, Server, alive, require
from tests.e2e.test_crash import check_catalog_against_disk, read_catalog, tmp_files
from tests.e2e.test_jobs import upload, wait_for

MIB = 1024 * 1024
WRITERS = 6
NEW_CONNECTION_EVERY = 10
OPS_PER_WRITER = 60
KEYS = [f"k{i}" for i in range(8)]
LEADS = re.compile(r"worker (\d+) \(pid (\d+)\) leads")
ONE_RETRY: dict[str, Any] = {"retries": {"total_max_attempts": 2, "mode": "standard"},
                             "connect_timeout": 5, "read_timeout": 30}


def worker_of(response: dict[str, Any]) -> int:
    return int(response["ResponseMetadata"]["HTTPHeaders"]["x-manta-worker"])


def leaders(server: Server) -> list[int]:
    """The pids that took the leadership, in log order."""
    return [int(pid) for _, pid in LEADS.findall(server.log(since=0))]


@pytest.fixture
def two_workers(fresh_server: Server) -> Server:
    fresh_server.workers = 2
    fresh_server.extra_args = ["--nodes", "2"]
    return fresh_server


# -- concurrent writers ------------------------------------------------------------------------

class Writer:
    """Random overwrites, deletes and multipart uploads of the shared keys, and races to
    create and delete a shared bucket; every body written is entered in `written`."""

    def __init__(self, server: Server, seed: int, written: dict[str, set[str]], lock: threading.Lock) -> None:
        self.server = server
        self.s3: Any = server.client(retries={"total_max_attempts": 1})
        self.rng = random.Random(seed)
        self.seed = seed
        self.written = written
        self.lock = lock
        self.workers: defaultdict[int, int] = defaultdict(int)
        self.errors: list[str] = []

    def body(self, key: str, size: int) -> bytes:
        head = f"{key}:{self.seed}:{self.rng.random()}:".encode()
        data = (head * (size // len(head) + 1))[:size]
        with self.lock:
            self.written[key].add(hashlib.sha256(data).hexdigest())
        return data

    def run(self) -> None:
        try:
            for n in range(OPS_PER_WRITER):
                if n and n % NEW_CONNECTION_EVERY == 0:  # a new connection: the kernel may hand it to either worker
                    self.s3.close()
                    self.s3 = self.server.client(retries={"total_max_attempts": 1})
                self.one(self.rng.choice(["put", "put", "put-large", "delete", "multipart", "bucket"]))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            self.s3.close()

    def one(self, op: str) -> None:
        key = self.rng.choice(KEYS)
        if op == "put":
            self.count(self.s3.put_object(Bucket="shared", Key=key, Body=self.body(key, self.rng.randrange(1, 4000))))
        elif op == "put-large":
            self.count(self.s3.put_object(Bucket="shared", Key=key, Body=self.body(key, 300_000)))
        elif op == "delete":
            self.count(self.s3.delete_object(Bucket="shared", Key=key))
        elif op == "multipart" and self.rng.random() < 0.3:  # 5 MiB each: a few only
            self.multipart(key)
        elif op == "bucket":
            self.race_bucket()

    def count(self, response: dict[str, Any]) -> None:
        self.workers[worker_of(response)] += 1

    def multipart(self, key: str) -> None:
        upload_id = self.s3.create_multipart_upload(Bucket="shared", Key=key)["UploadId"]
        first, second = self.rng.randrange(5 * MIB, 5 * MIB + 100), self.rng.randrange(1, 1000)
        whole = self.body(key, first + second)
        try:
            parts = []
            for number, chunk in ((1, whole[:first]), (2, whole[first:])):
                reply = self.s3.upload_part(Bucket="shared", Key=key, UploadId=upload_id, PartNumber=number,
                                            Body=chunk)
                self.count(reply)
                parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            self.count(self.s3.complete_multipart_upload(Bucket="shared", Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts}))
        except BaseException:
            self.s3.abort_multipart_upload(Bucket="shared", Key=key, UploadId=upload_id)
            raise

    def race_bucket(self) -> None:
        """Create, fill and delete a bucket that the other writers create and delete too."""
        expected = {"BucketAlreadyOwnedByYou", "NoSuchBucket", "BucketNotEmpty", "NoSuchKey"}
        try:
            self.count(self.s3.create_bucket(Bucket="contested"))
            self.count(self.s3.put_object(Bucket="contested", Key="x", Body=b"x"))
            self.count(self.s3.delete_object(Bucket="contested", Key="x"))
            self.count(self.s3.delete_bucket(Bucket="contested"))
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in expected:
                raise
            self.workers[int(exc.response["ResponseMetadata"]["HTTPHeaders"]["x-manta-worker"])] += 1


def listed_objects(s3: Any, bucket: str) -> dict[str, tuple[int, str]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: (o["Size"], o["ETag"]) for page in pages for o in page.get("Contents", [])}


def test_two_workers_writing_the_same_keys_leave_catalog_listings_and_blobs_in_agreement(
        two_workers: Server) -> None:
    two_workers.env = {"MANTA_GC_GRACE_S": "0"}  # the admin GC below may collect any orphan
    two_workers.start()
    s3: Any = two_workers.client()
    s3.create_bucket(Bucket="shared")
    written: dict[str, set[str]] = defaultdict(set)
    lock = threading.Lock()
    writers = [Writer(two_workers, seed, written, lock) for seed in range(WRITERS)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a writer hung"
    assert not [e for w in writers for e in w.errors]
    served: defaultdict[int, int] = defaultdict(int)
    for w in writers:
        for pid, n in w.workers.items():
            served[pid] += n
    print(f"\nrequests per worker pid: {dict(served)}")
    assert set(served) == set(two_workers.worker_pids()), "both workers answered"

    try:
        listed = listed_objects(s3, "shared")
        total_bytes = 0
        for key, (size, etag) in listed.items():
            got = s3.get_object(Bucket="shared", Key=key)
            data = got["Body"].read()
            head = s3.head_object(Bucket="shared", Key=key)
            assert hashlib.sha256(data).hexdigest() in written[key], f"{key}: not a body written to it"
            assert len(data) == size == head["ContentLength"], key
            assert got["ETag"] == etag == head["ETag"], key
            if "-" not in etag:
                assert etag.strip('"') == hashlib.md5(data).hexdigest(), key
            total_bytes += size
        assert not s3.list_multipart_uploads(Bucket="shared").get("Uploads")
        names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        if "contested" in names:  # the last racer created it: it is a bucket like any other
            assert listed_objects(s3, "contested") == {}
            s3.delete_bucket(Bucket="contested")
    finally:
        s3.close()

    admin = Client(two_workers.url, ROOT_AK, ROOT_SK)
    usage = admin.api("GET", "/_manta/admin/users/root")["usage"]
    assert usage == {"objects": len(listed), "bytes": total_bytes}
    assert not tmp_files(two_workers.data_dir)
    view = read_catalog(two_workers.data_dir)
    assert view.keys("shared") == set(listed)
    leaked = check_catalog_against_disk(view, two_workers.data_dir)
    assert not leaked, f"{len(leaked)} blob files no record references"
    assert admin.api("POST", "/_manta/admin/gc")["removed"] == 0
    print(f"final: {len(listed)} objects, {total_bytes} bytes, {len(view.refcounts)} blobs")


# -- a worker killed ---------------------------------------------------------------------------

def test_a_killed_worker_is_replaced_and_its_leadership_moves(two_workers: Server) -> None:
    two_workers.start()
    s3: Any = two_workers.client(**ONE_RETRY)
    s3.create_bucket(Bucket="alive")
    leader = wait_for(lambda: leaders(two_workers), 10, "a leader")[0]
    pids = two_workers.worker_pids()
    assert leader in pids and len(pids) == 2
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def keep_asking(n: int) -> None:
        client: Any = two_workers.client(**ONE_RETRY)
        i = 0
        while not stop.is_set():
            i += 1
            key = f"t{n}-o{i % 20}"
            try:
                client.put_object(Bucket="alive", Key=key, Body=b"x" * i)
                assert client.get_object(Bucket="alive", Key=key)["Body"].read() == b"x" * i
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                errors.append(repr(exc))
        client.close()

    threads = [threading.Thread(target=keep_asking, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(leader, signal.SIGKILL)
        new_leader = wait_for(lambda: [p for p in leaders(two_workers) if p != leader], 10, "a new leader")[0]
        moved_s = time.monotonic() - killed_at
        replaced = wait_for(lambda: len(set(two_workers.worker_pids()) - {leader}) == 2
                            and two_workers.worker_pids(), 15, "the supervisor to start another worker")
        print(f"\nleader {leader} killed; {new_leader} leads after {moved_s:.2f}s; workers now {replaced}")
        assert moved_s < 5.0
        assert new_leader in replaced
        follower = next(p for p in replaced if p != new_leader)
        os.kill(follower, signal.SIGKILL)  # a follower's death moves nothing
        try:
            wait_for(lambda: follower not in two_workers.worker_pids() and len(two_workers.worker_pids()) == 2,
                     15, "the follower to be replaced")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; workers {two_workers.worker_pids()}, supervisor alive {alive(two_workers.proc.pid) if two_workers.proc else None}\n"
                                 f"{two_workers.log(since=0)[-4000:]}") from None
        time.sleep(1.5)
        assert leaders(two_workers) == [leader, new_leader]
        before = done[0]
        wait_for(lambda: done[0] > before + 10, 20, "requests to go on")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, f"{len(errors)} requests failed (one retry allowed), first: {errors[:3]}"
    assert done[0] > 20
    assert "exited (signal SIGKILL); starting another" in two_workers.log(since=0)
    s3.close()


# -- start and stop ----------------------------------------------------------------------------

def test_banner_says_two_workers_and_sigterm_stops_every_process(two_workers: Server) -> None:
    two_workers.start()
    log = two_workers.log(since=0)
    pids = two_workers.worker_pids()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    assert f"manta: 2 worker processes (pids {pids[0]}, {pids[1]}) serve this port" in log
    assert re.search(r"manta: ready in [0-9.]+s", log)
    wait_for(lambda: leaders(two_workers), 10, "a leader")
    s3: Any = two_workers.client()
    s3.create_bucket(Bucket="kept")
    s3.put_object(Bucket="kept", Key="k", Body=b"still here")
    s3.close()
    supervisor = two_workers.proc
    assert supervisor is not None
    two_workers.stop()
    assert supervisor.returncode == 0
    assert not [p for p in pids if alive(p)]
    assert len(leaders(two_workers)) == 1
    two_workers.workers = 1  # the data dir opens again, in the single-process server too
    two_workers.start()
    again: Any = two_workers.client()
    assert again.get_object(Bucket="kept", Key="k")["Body"].read() == b"still here"
    again.close()


def test_sigkill_of_the_supervisor_takes_the_workers_along(two_workers: Server) -> None:
    two_workers.start()
    pids = two_workers.worker_pids()
    assert len(pids) == 2
    assert two_workers.proc is not None
    two_workers.proc.kill()
    two_workers.proc.wait()
    wait_for(lambda: not [p for p in pids if alive(p)], 5, "the workers to die with their supervisor")
    two_workers.proc = None
    two_workers.start()  # the crash test's restart, on the same port and data dir
    s3: Any = two_workers.client()
    s3.create_bucket(Bucket="after")
    assert len(two_workers.worker_pids()) == 2
    s3.close()


def test_a_burst_of_connections_on_one_worker_spreads_over_both(two_workers: Server) -> None:
    """With one worker stopped (SIGSTOP), the other accepts all 12 connections of a burst.
    Once both run, the busy one answers some requests with `Connection: close` (it holds
    more than its share plus one), the clients reconnect, and the split settles: each
    worker ends with at least 4 of the 12, and no more were moved than needed."""
    two_workers.start()
    first, second = two_workers.worker_pids()
    conns = [http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=10) for _ in range(12)]

    def ask(conn: http.client.HTTPConnection) -> tuple[int, bool]:
        conn.request("GET", "/")  # unsigned: 403, answered like any request
        response = conn.getresponse()
        response.read()
        assert response.status == 403
        return int(response.getheader("x-manta-worker") or 0), response.getheader("connection") == "close"

    os.kill(second, signal.SIGSTOP)
    try:
        assert {ask(conn)[0] for conn in conns} == {first}
    finally:
        os.kill(second, signal.SIGCONT)
    holder: dict[int, int] = {}
    closed = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for i, conn in enumerate(conns):  # a closed one reconnects on its next request
            holder[i], close = ask(conn)
            closed += close
            if close:
                holder.pop(i)
            time.sleep(0.005)
        split = [list(holder.values()).count(pid) for pid in (first, second)]
        if len(holder) == len(conns) and min(split) >= 4:
            break
    else:
        raise AssertionError(f"no even split in 20 s: {split}, {closed} clients asked to reconnect")
    print(f"\nsplit {split} after {closed} reconnects")
    assert closed < 40, "the busy worker kept asking clients to move"
    for conn in conns:
        conn.close()


def test_workers_must_be_at_least_one(two_workers: Server) -> None:
    two_workers.workers = 0
    with pytest.raises(RuntimeError, match="--workers must be at least 1"):
        two_workers.start()


# -- needs the jobsync scheduler change (jobs created through any worker) ------------------------

def test_killing_the_worker_that_runs_the_scheduler_mid_job_lets_the_job_finish(two_workers: Server) -> None:
    """NEEDS JOBSYNC: the job is created through whichever worker answers; its scheduler
    runs in the leader, which is SIGKILLed mid-way; the next leader finishes the job."""
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    from jobs.sandbox import Sandbox

    reason = Sandbox().check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")
    two_workers.start()
    s3: Any = two_workers.client()
    s3.create_bucket(Bucket="jobs-in")
    datas = [f"line {i:02d}\n".encode() for i in range(8)]
    names = upload(s3, "jobs-in", "in/", datas)
    s3.close()
    leader = wait_for(lambda: leaders(two_workers), 10, "a leader")[0]
    client = Client(two_workers.url, ROOT_AK, ROOT_SK)
    job = client.job(map="sleep 1; cat", reduce="sort", inputs=names)

    def midway() -> bool:
        phase = client.api("GET", f"/_manta/jobs/{job.id}")["phases"][0]
        return bool(phase["done"] >= 1 and phase["running"] > 0)

    wait_for(midway, 30, "the job to be mid-way", interval_s=0.1)
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: [p for p in leaders(two_workers) if p != leader], 10, "a new leader")
    job.wait(timeout_s=120, progress=False)
    assert job.state == "done"
    output = b"".join(client.get(name) for name in job.outputs())
    assert output == b"".join(sorted(datas))
