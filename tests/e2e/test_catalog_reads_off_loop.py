"""With a remote catalog engine no request reads the catalog on the event loop (issue 14);
with the embedded one, reads stay in place.

A real server in this process (build_app's app under uvicorn on a loopback port) over a
real store, driven with boto3 and the manta client: S3 objects, listings, ACLs (with an
unsigned GET of a public-read object), multipart, copies, deletes, and the admin and jobs
APIs. The store's LMDB engine is wrapped in one that says whether it is `remote` and
records the thread of every read it serves (the real engine does the reads):

- marked remote (as the PostgreSQL engine is), no read may run on the server's event-loop
  thread, and every request must still have read (so the check is not vacuous);
- as it is (embedded), every request reads on the loop (authentication does), and the
  read-only requests read only there: no worker-thread hop was added to the embedded path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import boto3
import botocore.exceptions
import pytest
import uvicorn
from botocore import UNSIGNED
from botocore.config import Config

from manta.client import Client
from manta.server.config import ServerConfig
from manta.server.frontdoor import build_app
from storage import Store
from storage.engine import Engine
from tests.conftest import ROOT_AK, ROOT_SK, free_port

BIG = 200 * 1024  # past the inline GET and small PUT sizes: the streamed, fsync'd paths


class _RecordingTxn:
    """A read transaction of the real engine that records the thread of each get and scan."""

    def __init__(self, txn: Any, threads: list[int]) -> None:
        self.txn = txn
        self.threads = threads

    def __enter__(self) -> _RecordingTxn:
        self.txn.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.txn.__exit__(kind, exc, tb)

    def get(self, table: str, key: bytes) -> bytes | None:
        self.threads.append(threading.get_ident())
        return self.txn.get(table, key)  # type: ignore[no-any-return]

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"",
             end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.threads.append(threading.get_ident())
        yield from self.txn.scan(table, start, prefix, end)

    def scan_skip(self, table: str, start: bytes, prefix: bytes, delimiter: bytes,
                  cut: int) -> Iterator[tuple[bytes, bytes]]:
        self.threads.append(threading.get_ident())
        yield from self.txn.scan_skip(table, start, prefix, delimiter, cut)


class RecordingEngine:
    """The real engine, `remote` as told; reads record their threads, writes pass through."""

    def __init__(self, real: Engine, remote: bool) -> None:
        self.real = real
        self.name = real.name
        self.location = real.location
        self.remote = remote
        self.threads: list[int] = []

    def read(self) -> _RecordingTxn:
        self.threads.append(threading.get_ident())
        return _RecordingTxn(self.real.read(), self.threads)

    def submit(self, fn: Callable[[Any], Any]) -> Any:
        return self.real.submit(fn)

    def write(self, fn: Callable[[Any], Any]) -> Any:
        return self.real.write(fn)

    def counts(self) -> dict[str, int]:
        return self.real.counts()

    def schema_version(self) -> int:
        return self.real.schema_version()

    def close(self) -> None:
        self.real.close()


@dataclass
class Step:
    name: str
    read_only: bool
    threads: list[int] = field(default_factory=list)


@dataclass
class Served:
    url: str
    store: Store
    engine: RecordingEngine
    loop_thread: int
    steps: list[Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str, read_only: bool = False) -> Iterator[None]:
        """Requests made in the block; `read_only`: ones that only read the catalog."""
        start = len(self.engine.threads)
        yield
        self.steps.append(Step(name, read_only, self.engine.threads[start:]))


@pytest.fixture(params=[True, False], ids=["remote", "embedded"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    base = tempfile.mkdtemp(prefix="manta-reads-")
    port = free_port()
    config = ServerConfig(data_dir=os.path.join(base, "data"), host="127.0.0.1", port=port)
    app, store, _ = build_app(config, jobs=False)
    store.catalog.accounts.add("root", ROOT_AK, ROOT_SK, root=True)
    engine = RecordingEngine(store.catalog.engine, remote=request.param)
    store.catalog.engine = engine
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="event-loop", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "in-process server did not start"
        assert thread.ident is not None
        yield Served(f"http://127.0.0.1:{port}", store, engine, thread.ident)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
        shutil.rmtree(base, ignore_errors=True)


def _code(call: Callable[[], Any]) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def drive(p: Served) -> None:
    """One of most kinds of request the server answers, each a step."""
    s3 = boto3.client("s3", endpoint_url=p.url, aws_access_key_id=ROOT_AK, aws_secret_access_key=ROOT_SK,
                      region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    anonymous = boto3.client("s3", endpoint_url=p.url, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    manta = Client(p.url, ROOT_AK, ROOT_SK)
    big = os.urandom(BIG)
    with p.step("CreateBucket"):
        s3.create_bucket(Bucket="reads")
    with p.step("HeadBucket", read_only=True):
        s3.head_bucket(Bucket="reads")
    with p.step("GetBucketLocation, GetBucketVersioning", read_only=True):
        s3.get_bucket_location(Bucket="reads")
        s3.get_bucket_versioning(Bucket="reads")
    with p.step("PutObject small, create-only"):
        etag = s3.put_object(Bucket="reads", Key="small", Body=b"small body", IfNoneMatch="*")["ETag"]
    with p.step("PutObject create-only refused"):
        assert _code(lambda: s3.put_object(Bucket="reads", Key="small", Body=b"x",
                                           IfNoneMatch="*")) == "PreconditionFailed"
    with p.step("PutObject big"):
        s3.put_object(Bucket="reads", Key="big", Body=big)
    with p.step("GetObject small", read_only=True):
        assert s3.get_object(Bucket="reads", Key="small")["Body"].read() == b"small body"
    with p.step("GetObject big"):
        assert s3.get_object(Bucket="reads", Key="big")["Body"].read() == big
    with p.step("GetObject range", read_only=True):
        assert s3.get_object(Bucket="reads", Key="big", Range="bytes=10-19")["Body"].read() == big[10:20]
    with p.step("HeadObject, 304, missing key", read_only=True):
        assert s3.head_object(Bucket="reads", Key="big")["ContentLength"] == BIG
        assert _code(lambda: s3.get_object(Bucket="reads", Key="small", IfNoneMatch=etag)) == "304"
        assert _code(lambda: s3.get_object(Bucket="reads", Key="nothing")) == "NoSuchKey"
    with p.step("GetObjectAttributes", read_only=True):
        assert s3.get_object_attributes(Bucket="reads", Key="big",
                                        ObjectAttributes=["ObjectSize"])["ObjectSize"] == BIG
    with p.step("ListObjectsV2, ListObjects, ListObjectVersions", read_only=True):
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="reads")["Contents"]] == ["big", "small"]
        assert len(s3.list_objects(Bucket="reads", Delimiter="/")["Contents"]) == 2
        assert len(s3.list_object_versions(Bucket="reads")["Versions"]) == 2
    with p.step("ListBuckets", read_only=True):
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["reads"]
    with p.step("CopyObject"):
        s3.copy_object(Bucket="reads", Key="copy", CopySource={"Bucket": "reads", "Key": "small"})
    with p.step("PutObjectAcl, PutBucketAcl"):
        s3.put_object_acl(Bucket="reads", Key="copy", ACL="public-read")
        s3.put_bucket_acl(Bucket="reads", ACL="private")
    with p.step("GetObjectAcl, GetBucketAcl", read_only=True):
        assert len(s3.get_object_acl(Bucket="reads", Key="copy")["Grants"]) == 2
        assert len(s3.get_bucket_acl(Bucket="reads")["Grants"]) == 1
    with p.step("anonymous GetObject of a public-read object, refused one", read_only=True):
        assert anonymous.get_object(Bucket="reads", Key="copy")["Body"].read() == b"small body"
        assert _code(lambda: anonymous.get_object(Bucket="reads", Key="small")) == "AccessDenied"
    with p.step("multipart: create, part, complete"):
        upload_id = s3.create_multipart_upload(Bucket="reads", Key="mp")["UploadId"]
        part = s3.upload_part(Bucket="reads", Key="mp", UploadId=upload_id, PartNumber=1, Body=b"part one")
        s3.complete_multipart_upload(Bucket="reads", Key="mp", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    with p.step("multipart: create, part copy"):
        upload_id = s3.create_multipart_upload(Bucket="reads", Key="mp2")["UploadId"]
        s3.upload_part_copy(Bucket="reads", Key="mp2", UploadId=upload_id, PartNumber=1,
                            CopySource={"Bucket": "reads", "Key": "big"}, CopySourceRange="bytes=0-99")
    with p.step("ListParts, ListMultipartUploads", read_only=True):
        assert [q["Size"] for q in s3.list_parts(Bucket="reads", Key="mp2", UploadId=upload_id)["Parts"]] == [100]
        assert [u["Key"] for u in s3.list_multipart_uploads(Bucket="reads")["Uploads"]] == ["mp2"]
    with p.step("AbortMultipartUpload"):
        s3.abort_multipart_upload(Bucket="reads", Key="mp2", UploadId=upload_id)
    with p.step("admin: list users, show a user", read_only=True):
        assert [u["name"] for u in manta.api("GET", "/_manta/admin/users")["users"]] == ["root"]
        assert manta.api("GET", "/_manta/admin/users/root")["usage"]["objects"] == 4
    with p.step("admin: set a quota"):
        assert manta.api("POST", "/_manta/admin/users/root", {"quota": {"objects": 100}})["quota_set"] == {
            "objects": 100}
    with p.step("jobs: create, list, wait, outputs"):
        job = manta.api("POST", "/_manta/jobs", {"name": "j", "phases": [{"type": "map", "exec": "cat"}],
                                                 "inputs": [], "end": False})
        assert [j["id"] for j in manta.api("GET", "/_manta/jobs")["jobs"]] == [job["id"]]
        assert manta.api("GET", f"/_manta/jobs/{job['id']}?wait=0.1")["state"] == "running"
        assert manta.api("GET", f"/_manta/jobs/{job['id']}/outputs")["outputs"] == []
    with p.step("DeleteObject, DeleteObjects"):
        s3.delete_object(Bucket="reads", Key="copy")
        s3.delete_objects(Bucket="reads", Delete={"Objects": [{"Key": k} for k in ("small", "big", "mp")]})
    with p.step("DeleteBucket"):
        s3.delete_bucket(Bucket="reads")
    with p.step("HeadBucket of a deleted bucket", read_only=True):
        assert _code(lambda: s3.head_bucket(Bucket="reads")) == "404"


def test_no_catalog_read_on_the_event_loop_with_a_remote_engine_and_in_place_with_lmdb(served: Served) -> None:
    drive(served)
    loop = served.loop_thread
    unread = [s.name for s in served.steps if not s.threads]
    assert unread == [], "steps that read nothing: the recording misses reads"
    if served.engine.remote:
        on_loop = [s.name for s in served.steps if loop in s.threads]
        assert on_loop == [], "read the remote catalog on the event loop"
        assert loop not in served.engine.threads
    else:
        off_loop = [s.name for s in served.steps if loop not in s.threads]
        assert off_loop == [], "embedded: every request reads on the loop (its authentication at least)"
        hopped = [s.name for s in served.steps if s.read_only and set(s.threads) != {loop}]
        assert hopped == [], "embedded: read-only requests read in place, with no thread hop"
