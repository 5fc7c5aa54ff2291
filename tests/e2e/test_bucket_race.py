"""A bucket name changing hands while a request into it is in flight (issue 9).

Account X starts a slow upload into its own empty bucket; mid-body the bucket is deleted
and the other account creates a bucket of the same name; then the body ends. The upload
must end NoSuchBucket, the new owner's bucket must not hold the key, neither account may
read the other's bytes, and the blob written for the upload must be freed.

PUT and UploadPart race over HTTP with a trickled body on a raw socket. CopyObject and
UploadPartCopy carry no body, so they race in-process: a real uvicorn server in this
process whose store's copy/read step is wrapped to hand the bucket over just before it runs.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions
import pytest
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from manta.client import Client
from manta.server.config import ServerConfig
from manta.server.s3.app import S3App
from storage import Store, StoreConfig
from tests.conftest import ROOT_AK, ROOT_SK, Server, free_port

SECRET = b"account-a-private-bytes:"


@dataclass
class Account:
    name: str
    access_key: str
    secret_key: str

    def s3(self, url: str) -> Any:
        return boto3.client("s3", endpoint_url=url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}))


_made = [0]


def new_account(server: Server, role: str) -> Account:
    _made[0] += 1
    user = Client(server.url, ROOT_AK, ROOT_SK).api(
        "POST", "/_manta/admin/users", {"name": f"race-{role}-{os.getpid()}-{_made[0]}"})
    return Account(user["name"], user["access_key"], user["secret_key"])


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


class TrickledRequest:
    """A SigV4-signed request (UNSIGNED-PAYLOAD) whose body is sent in two halves."""

    def __init__(self, port: int, account: Account, method: str, path: str, body: bytes) -> None:
        host = f"127.0.0.1:{port}"
        request = AWSRequest(method=method, url=f"http://{host}{path}", headers={
            "Host": host, "Content-Length": str(len(body)), "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
        SigV4Auth(Credentials(account.access_key, account.secret_key), "s3", "us-east-1").add_auth(request)
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
        time.sleep(0.3)  # pacing only: lets the server authorise the request before the handover

    def finish(self) -> tuple[int, bytes, dict[str, str]]:
        try:
            self.sock.sendall(self.body[len(self.body) // 2:])
            response = http.client.HTTPResponse(self.sock)
            response.begin()
            return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
        finally:
            self.sock.close()


def blob_files(server: Server) -> set[str]:
    out = set()
    for root, _, files in os.walk(os.path.join(server.data_dir, "nodes")):
        if os.sep + "blobs" in root:
            out.update(files)
    return out


def catalog_blobs(server: Server) -> int:
    nodes = Client(server.url, ROOT_AK, ROOT_SK).api("GET", "/_manta/admin/nodes")["nodes"]
    return sum(n["blob_count"] for n in nodes)


def race_bucket(server: Server, direction: str, kind: str) -> tuple[Account, Account, str]:
    """Two new accounts as (uploader, taker) for `direction`, and a bucket the uploader owns."""
    a, b = new_account(server, "a"), new_account(server, "b")
    uploader, taker = (b, a) if direction == "into-new-owner" else (a, b)
    bucket = f"race-{kind}-{os.getpid()}-{_made[0]}"
    uploader.s3(server.url).create_bucket(Bucket=bucket)
    return uploader, taker, bucket


def hand_over(url: str, old: Account, new: Account, bucket: str) -> None:
    old.s3(url).delete_bucket(Bucket=bucket)
    new.s3(url).create_bucket(Bucket=bucket)


def assert_not_stored(url: str, owner: Account, other: Account, bucket: str, key: str) -> None:
    """The key is nowhere: the bucket's new owner does not see it, the uploader cannot reach it."""
    listed = owner.s3(url).list_objects_v2(Bucket=bucket).get("Contents", [])
    assert key not in [o["Key"] for o in listed]
    with pytest.raises(botocore.exceptions.ClientError) as err:
        owner.s3(url).get_object(Bucket=bucket, Key=key)
    assert error_code(err.value) == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as err:
        other.s3(url).get_object(Bucket=bucket, Key=key)
    assert error_code(err.value) == "AccessDenied"


@pytest.mark.parametrize("size", [40_000, 300_000], ids=["small", "large"])
@pytest.mark.parametrize("direction", ["into-new-owner", "from-old-owner"])
def test_put_into_a_bucket_that_changed_hands_is_no_such_bucket(server: Server, size: int, direction: str) -> None:
    uploader, taker, bucket = race_bucket(server, direction, "put")
    files, records = blob_files(server), catalog_blobs(server)

    put = TrickledRequest(server.port, uploader, "PUT", f"/{bucket}/obj", SECRET * (size // len(SECRET)))
    hand_over(server.url, uploader, taker, bucket)
    status, body, _ = put.finish()

    assert status == 404, body
    assert b"<Code>NoSuchBucket</Code>" in body
    assert_not_stored(server.url, taker, uploader, bucket, "obj")
    assert blob_files(server) == files
    assert catalog_blobs(server) == records


@pytest.mark.parametrize("direction", ["into-new-owner", "from-old-owner"])
def test_upload_part_into_a_bucket_that_changed_hands_fails(server: Server, direction: str) -> None:
    uploader, taker, bucket = race_bucket(server, direction, "mpu")
    s3u = uploader.s3(server.url)
    upload_id = s3u.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    files, records = blob_files(server), catalog_blobs(server)

    part = TrickledRequest(server.port, uploader, "PUT", f"/{bucket}/mp?partNumber=1&uploadId={upload_id}",
                           SECRET * 10_000)
    hand_over(server.url, uploader, taker, bucket)
    status, body, _ = part.finish()

    assert status == 404, body
    assert b"<Code>NoSuchBucket</Code>" in body
    assert blob_files(server) == files
    assert catalog_blobs(server) == records
    # the uploader cannot complete into the bucket it no longer owns, nor can its new owner
    for who, code in ((uploader, "AccessDenied"), (taker, "NoSuchUpload")):
        with pytest.raises(botocore.exceptions.ClientError) as err:
            who.s3(server.url).complete_multipart_upload(
                Bucket=bucket, Key="mp", UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
        assert error_code(err.value) == code
    assert_not_stored(server.url, taker, uploader, bucket, "mp")


@pytest.mark.parametrize("direction", ["into-new-owner", "from-old-owner"])
def test_complete_into_a_bucket_that_changed_hands_is_no_such_bucket(server: Server, direction: str) -> None:
    uploader, taker, bucket = race_bucket(server, direction, "cmp")
    s3u = uploader.s3(server.url)
    upload_id = s3u.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = s3u.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=SECRET)["ETag"]
    xml = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
           "</CompleteMultipartUpload>").encode()

    complete = TrickledRequest(server.port, uploader, "POST", f"/{bucket}/mp?uploadId={upload_id}", xml)
    hand_over(server.url, uploader, taker, bucket)
    status, body, _ = complete.finish()

    assert status == 404, body
    assert b"<Code>NoSuchBucket</Code>" in body
    assert_not_stored(server.url, taker, uploader, bucket, "mp")


# -- CopyObject and UploadPartCopy, in process -------------------------------------------


@dataclass
class InProcess:
    store: Store
    url: str
    a: Account
    b: Account


@pytest.fixture
def in_process() -> Iterator[InProcess]:
    base = tempfile.mkdtemp(prefix="manta-race-")
    store = Store(StoreConfig(os.path.join(base, "data")))
    accounts = []
    for name in ("alice", "bob"):
        key, secret = f"RACE{name.upper():0<16}", f"secret-of-{name}-" + "x" * 24
        store.catalog.accounts.add(name, key, secret)
        accounts.append(Account(name, key, secret))
    port = free_port()
    config = ServerConfig(data_dir=os.path.join(base, "data"), host="127.0.0.1", port=port)
    app = S3App(store, config).starlette()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "in-process server did not start"
        yield InProcess(store, f"http://127.0.0.1:{port}", accounts[0], accounts[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
        shutil.rmtree(base, ignore_errors=True)


def hand_over_in_store(store: Store, bucket: str, new_owner: str, secret_key: str | None = None) -> None:
    """The bucket's owner empties and deletes it, `new_owner` creates it (and stores SECRET
    at `secret_key`): straight on the store, so it can run on the server's event loop."""
    listing = store.objects.list(bucket)
    assert not listing.truncated
    store.free(store.objects.delete_many(bucket, [r["key"] for r in listing.contents]))
    store.free(store.uploads.abort_all(bucket))
    store.catalog.buckets.delete(bucket)
    store.catalog.buckets.create(bucket, new_owner)
    if secret_key is not None:
        writer = store.writer()
        writer.write(SECRET)
        meta = writer.commit()
        store.objects.put(bucket, secret_key, {
            "size": meta.size, "etag": meta.md5.hex(), "sha256": meta.sha256, "mtime": time.time(),
            "segments": [[meta.blob_id, meta.size]], "headers": {"content-type": "text/plain"}, "meta": {},
            "checksums": {}, "checksum_type": None, "parts": None}, {meta.blob_id: meta.record()})


def before_call(target: Any, method: str, bucket: str, action: Callable[[], None]) -> None:
    """Run `action` once, just before the first call of target.method on `bucket`."""
    real = getattr(target, method)
    pending = [True]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if pending[0] and bucket in (getattr(a, "name", a) for a in args):
            pending[0] = False
            action()
        return real(*args, **kwargs)

    setattr(target, method, wrapped)


def test_copy_object_into_a_destination_that_changed_hands(in_process: InProcess) -> None:
    """Bob copies his object into his bucket; just before the copy commits the name is Alice's."""
    p = in_process
    bob, alice = p.b.s3(p.url), p.a.s3(p.url)
    bob.create_bucket(Bucket="bob-src")
    bob.create_bucket(Bucket="shared-name")
    bob.put_object(Bucket="bob-src", Key="k", Body=b"bob's bytes")
    before_call(p.store.objects, "copy", "shared-name",
                lambda: hand_over_in_store(p.store, "shared-name", p.a.name, secret_key="k"))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bob.copy_object(Bucket="shared-name", Key="k", CopySource={"Bucket": "bob-src", "Key": "k"})
    assert error_code(err.value) == "NoSuchBucket"
    assert alice.get_object(Bucket="shared-name", Key="k")["Body"].read() == SECRET


def test_copy_object_from_a_source_that_changed_hands(in_process: InProcess) -> None:
    """Bob copies out of his bucket; just after he is authorised the name is Alice's, with
    her secret under the same key."""
    p = in_process
    bob = p.b.s3(p.url)
    bob.create_bucket(Bucket="shared-name")
    bob.create_bucket(Bucket="bob-dst")
    bob.put_object(Bucket="shared-name", Key="k", Body=b"bob's bytes")
    before_call(p.store.objects, "get", "shared-name",
                lambda: hand_over_in_store(p.store, "shared-name", p.a.name, secret_key="k"))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bob.copy_object(Bucket="bob-dst", Key="stolen", CopySource={"Bucket": "shared-name", "Key": "k"})
    assert error_code(err.value) == "NoSuchBucket"
    assert bob.list_objects_v2(Bucket="bob-dst").get("KeyCount", 0) == 0


def test_upload_part_copy_from_a_source_that_changed_hands(in_process: InProcess) -> None:
    p = in_process
    bob = p.b.s3(p.url)
    bob.create_bucket(Bucket="shared-name")
    bob.create_bucket(Bucket="bob-dst")
    bob.put_object(Bucket="shared-name", Key="k", Body=b"bob's bytes")
    upload_id = bob.create_multipart_upload(Bucket="bob-dst", Key="mp")["UploadId"]
    blobs = {b for b, _ in p.store.catalog.blobrefs.records()}
    before_call(p.store.objects, "get", "shared-name",
                lambda: hand_over_in_store(p.store, "shared-name", p.a.name, secret_key="k"))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bob.upload_part_copy(Bucket="bob-dst", Key="mp", UploadId=upload_id, PartNumber=1,
                             CopySource={"Bucket": "shared-name", "Key": "k"})
    assert error_code(err.value) == "NoSuchBucket"
    assert bob.list_parts(Bucket="bob-dst", Key="mp", UploadId=upload_id).get("Parts", []) == []
    assert {b for b, _ in p.store.catalog.blobrefs.records()} - blobs == {
        seg[0] for seg in p.store.objects.get("shared-name", "k")["segments"]}  # only Alice's own


def test_upload_part_copy_into_a_destination_that_changed_hands(in_process: InProcess) -> None:
    p = in_process
    bob, alice = p.b.s3(p.url), p.a.s3(p.url)
    bob.create_bucket(Bucket="bob-src")
    bob.create_bucket(Bucket="shared-name")
    bob.put_object(Bucket="bob-src", Key="k", Body=b"bob's bytes")
    upload_id = bob.create_multipart_upload(Bucket="shared-name", Key="mp")["UploadId"]
    before_call(p.store.uploads, "put_part", "shared-name",
                lambda: hand_over_in_store(p.store, "shared-name", p.a.name))
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bob.upload_part_copy(Bucket="shared-name", Key="mp", UploadId=upload_id, PartNumber=1,
                             CopySource={"Bucket": "bob-src", "Key": "k"})
    assert error_code(err.value) == "NoSuchBucket"
    assert alice.list_multipart_uploads(Bucket="shared-name").get("Uploads", []) == []
    blobs = {seg[0] for seg in p.store.objects.get("bob-src", "k")["segments"]}
    assert {b for b, _ in p.store.catalog.blobrefs.records()} == blobs  # the copied part's blob was freed
