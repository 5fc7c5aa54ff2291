"""Issue 11, multipart and conditional writes, as AWS S3 documents them:

- CompleteMultipartUpload repeated after success (same upload id, same part list) answers
  200 with the same ETag and body; a different part list for the finished upload, or a
  repeat after the object was overwritten, is NoSuchUpload.
- A part list naming one part number twice completes with the part as last uploaded;
  descending numbers stay InvalidPartOrder.
- PutObject and CompleteMultipartUpload with If-None-Match: * are 412 when the key exists;
  with If-Match: ETAG 412 unless the current ETag matches, 404 NoSuchKey without an object.
  The check is made in the commit's transaction: of 20 racing create-only PUTs exactly one
  wins and the losers' blobs are freed.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import tempfile
import threading
import types
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from storage import Store, StoreConfig, errors
from tests.conftest import ROOT_AK, ROOT_SK, Server, running_server
from tests.e2e.test_nodes import blob_files, node_roots, read_catalog

MIB = 1024 * 1024
RACERS = 20


def client(server: Server) -> Any:
    return boto3.client("s3", endpoint_url=server.url, aws_access_key_id=ROOT_AK,
                        aws_secret_access_key=ROOT_SK, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def error_of(call: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as exc:
        call(**kwargs)
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def signed(server: Server, method: str, path: str, body: bytes = b"",
           headers: dict[str, str] | None = None) -> requests.Response:
    request = AWSRequest(method=method, url=server.url + path, data=body, headers=headers or {})
    S3SigV4Auth(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1").add_auth(request)
    return requests.request(method, server.url + path, data=body,
                            headers=dict(request.headers.items()), timeout=60)


def complete_xml(parts: list[tuple[int, str]]) -> bytes:
    listed = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
    return f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()


def xml_field(body: bytes, name: str) -> str:
    found = re.search(rf"<{name}>(.*?)</{name}>".encode(), body)
    assert found is not None, body
    return found.group(1).decode().replace("&quot;", '"')


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with running_server() as server:
        yield server


_made = [0]


@pytest.fixture
def bkt(srv: Server) -> str:
    _made[0] += 1
    name = f"cond-{os.getpid()}-{_made[0]}"
    client(srv).create_bucket(Bucket=name)
    return name


def two_part_upload(s3: Any, bucket: str, key: str) -> tuple[str, list[dict[str, Any]], bytes]:
    first, second = b"a" * (5 * MIB), b"tail"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n,
                                                      Body=data)["ETag"]}
             for n, data in ((1, first), (2, second))]
    return uid, parts, first + second


# -- a repeated CompleteMultipartUpload ------------------------------------------------


def test_repeated_complete_answers_the_same_etag_through_boto3(srv: Server, bkt: str) -> None:
    s3 = client(srv)
    uid, parts, data = two_part_upload(s3, bkt, "mp")
    first = s3.complete_multipart_upload(Bucket=bkt, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts})
    again = s3.complete_multipart_upload(Bucket=bkt, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts})
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert (again["ETag"], again["Bucket"], again["Key"]) == (first["ETag"], first["Bucket"], first["Key"])
    assert first["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bkt, Key="mp")["Body"].read() == data
    # another part list for the finished upload is not the same request
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="mp", UploadId=uid,
                    MultipartUpload={"Parts": parts[:1]}) == (404, "NoSuchUpload")
    # the upload itself is gone: parts, listing and abort answer NoSuchUpload
    assert error_of(s3.upload_part, Bucket=bkt, Key="mp", UploadId=uid, PartNumber=3,
                    Body=b"x") == (404, "NoSuchUpload")
    assert error_of(s3.list_parts, Bucket=bkt, Key="mp", UploadId=uid) == (404, "NoSuchUpload")
    assert s3.list_multipart_uploads(Bucket=bkt).get("Uploads", []) == []
    # once the object is overwritten, the completion no longer answers
    s3.put_object(Bucket=bkt, Key="mp", Body=b"newer")
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="mp", UploadId=uid,
                    MultipartUpload={"Parts": parts}) == (404, "NoSuchUpload")
    assert s3.get_object(Bucket=bkt, Key="mp")["Body"].read() == b"newer"


# -- a part number listed twice --------------------------------------------------------


def test_a_part_listed_twice_completes_with_the_part_as_last_uploaded(srv: Server, bkt: str) -> None:
    s3 = client(srv)
    uid = s3.create_multipart_upload(Bucket=bkt, Key="dup")["UploadId"]
    old = s3.upload_part(Bucket=bkt, Key="dup", UploadId=uid, PartNumber=1, Body=b"b" * (5 * MIB))["ETag"]
    new = s3.upload_part(Bucket=bkt, Key="dup", UploadId=uid, PartNumber=1, Body=b"c" * (5 * MIB))["ETag"]
    last = s3.upload_part(Bucket=bkt, Key="dup", UploadId=uid, PartNumber=2, Body=b"end")["ETag"]
    descending = [{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": new}]
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="dup", UploadId=uid,
                    MultipartUpload={"Parts": descending}) == (400, "InvalidPartOrder")
    parts = [{"PartNumber": 1, "ETag": old}, {"PartNumber": 1, "ETag": new}, {"PartNumber": 2, "ETag": last}]
    done = s3.complete_multipart_upload(Bucket=bkt, Key="dup", UploadId=uid, MultipartUpload={"Parts": parts})
    assert done["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bkt, Key="dup")["Body"].read() == b"c" * (5 * MIB) + b"end"
    assert s3.head_object(Bucket=bkt, Key="dup", PartNumber=2)["ContentLength"] == 3


# -- conditional writes ----------------------------------------------------------------


def test_conditional_put_through_boto3(srv: Server, bkt: str) -> None:
    s3 = client(srv)
    assert error_of(s3.put_object, Bucket=bkt, Key="k", Body=b"v0", IfMatch='"' + "0" * 32 + '"') \
        == (404, "NoSuchKey")
    etag = s3.put_object(Bucket=bkt, Key="k", Body=b"v1", IfNoneMatch="*")["ETag"]
    assert error_of(s3.put_object, Bucket=bkt, Key="k", Body=b"v2", IfNoneMatch="*") \
        == (412, "PreconditionFailed")
    assert error_of(s3.put_object, Bucket=bkt, Key="k", Body=b"v2", IfMatch='"' + "0" * 32 + '"') \
        == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bkt, Key="k")["Body"].read() == b"v1"
    s3.put_object(Bucket=bkt, Key="k", Body=b"v3", IfMatch=etag)
    assert s3.get_object(Bucket=bkt, Key="k")["Body"].read() == b"v3"
    big = os.urandom(300 * 1024)  # past the small-object (journal) path
    assert error_of(s3.put_object, Bucket=bkt, Key="k", Body=big, IfNoneMatch="*") \
        == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bkt, Key="k")["Body"].read() == b"v3"


def test_conditional_complete_multipart_upload(srv: Server, bkt: str) -> None:
    s3 = client(srv)
    absent_uid, absent_parts, _ = two_part_upload(s3, bkt, "m")
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="m", UploadId=absent_uid,
                    MultipartUpload={"Parts": absent_parts}, IfMatch='"' + "0" * 32 + '"') == (404, "NoSuchKey")
    existing = s3.put_object(Bucket=bkt, Key="m", Body=b"already here")["ETag"]
    uid, parts, data = absent_uid, absent_parts, b""
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="m", UploadId=uid,
                    MultipartUpload={"Parts": parts}, IfNoneMatch="*") == (412, "PreconditionFailed")
    assert error_of(s3.complete_multipart_upload, Bucket=bkt, Key="m", UploadId=uid,
                    MultipartUpload={"Parts": parts}, IfMatch='"' + "0" * 32 + '"') == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bkt, Key="m")["Body"].read() == b"already here"
    # a refused completion leaves the upload as it was: it completes when the condition holds
    done = s3.complete_multipart_upload(Bucket=bkt, Key="m", UploadId=uid,
                                        MultipartUpload={"Parts": parts}, IfMatch=existing)
    assert done["ETag"].endswith('-2"')
    uid, parts, data = two_part_upload(s3, bkt, "new")
    xml = complete_xml([(p["PartNumber"], p["ETag"]) for p in parts])
    made = signed(srv, "POST", f"/{bkt}/new?uploadId={uid}", xml, {"If-None-Match": "*"})
    assert made.status_code == 200, made.content
    assert s3.get_object(Bucket=bkt, Key="new")["Body"].read() == data
    uid2, parts2, _ = two_part_upload(s3, bkt, "new")
    xml2 = complete_xml([(p["PartNumber"], p["ETag"]) for p in parts2])
    refused = signed(srv, "POST", f"/{bkt}/new?uploadId={uid2}", xml2, {"If-None-Match": "*"})
    assert refused.status_code == 412 and b"<Code>PreconditionFailed</Code>" in refused.content
    s3.abort_multipart_upload(Bucket=bkt, Key="new", UploadId=uid2)


# -- the check and the write are one step ------------------------------------------------


def assert_no_blob_leaked(server: Server, bucket: str, keys: list[str]) -> None:
    """Every blob file on disk and every blob in the catalog belongs to one of `keys`."""
    view = read_catalog(server.data_dir, bucket)
    wanted = {blob for key in keys for blob in view.objects[key]}
    assert set(view.objects) == set(keys)
    assert set(view.blobs) == wanted, "catalog blobs that no object references"
    on_disk = {blob for root in node_roots(server).values() for blob in blob_files(root)}
    assert on_disk <= wanted, f"blob files of losers: {sorted(on_disk - wanted)}"


def boto3_race(server: Server, bucket: str, key: str, bodies: list[bytes]) -> list[int]:
    clients = [client(server) for _ in bodies]
    gate = threading.Barrier(len(bodies))
    statuses = [0] * len(bodies)

    def racer(i: int) -> None:
        gate.wait(timeout=60)
        try:
            clients[i].put_object(Bucket=bucket, Key=key, Body=bodies[i], IfNoneMatch="*")
            statuses[i] = 200
        except ClientError as exc:
            statuses[i] = exc.response["ResponseMetadata"]["HTTPStatusCode"]

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return statuses


@pytest.mark.parametrize("size", [1024, 512 * 1024], ids=["journal", "large"])
def test_racing_create_only_puts_through_boto3_one_wins(size: int) -> None:
    with running_server() as server:
        s3 = client(server)
        s3.create_bucket(Bucket="race")
        bodies = [bytes([i]) * size for i in range(RACERS)]
        statuses = boto3_race(server, "race", "k", bodies)
        assert sorted(statuses) == [200] + [412] * (RACERS - 1), statuses
        winner = statuses.index(200)
        assert s3.get_object(Bucket="race", Key="k")["Body"].read() == bodies[winner]
        assert_no_blob_leaked(server, "race", ["k"])


def half_sent_put(server: Server, path: str, body: bytes) -> tuple[socket.socket, bytes]:
    """A create-only PUT whose head and all but the last byte are sent; returns the socket
    and the byte that ends it."""
    host = f"127.0.0.1:{server.port}"
    request = AWSRequest(method="PUT", url=f"http://{host}{path}", headers={
        "Host": host, "Content-Length": str(len(body)), "If-None-Match": "*",
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1").add_auth(request)
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(head.encode() + body[:-1])
    return sock, body[-1:]


def test_racing_create_only_puts_over_http_one_wins() -> None:
    """All 20 heads arrive while the key is absent (so an early check passes for each);
    then every body ends: only the check at commit can refuse 19 of them."""
    with running_server() as server:
        s3 = client(server)
        s3.create_bucket(Bucket="race")
        bodies = [os.urandom(256 * 1024) for _ in range(RACERS)]
        sent = [half_sent_put(server, "/race/k", body) for body in bodies]
        s3.list_objects_v2(Bucket="race")  # a round trip: the server has taken the heads in
        statuses = []
        try:
            for sock, rest in sent:
                sock.sendall(rest)
            for sock, _ in sent:
                response = http.client.HTTPResponse(sock)
                response.begin()
                body = response.read()
                statuses.append(response.status)
                assert response.status == 200 or b"<Code>PreconditionFailed</Code>" in body
        finally:
            for sock, _ in sent:
                sock.close()
        assert sorted(statuses) == [200] + [412] * (RACERS - 1), statuses
        winner = statuses.index(200)
        assert s3.get_object(Bucket="race", Key="k")["Body"].read() == bodies[winner]
        assert_no_blob_leaked(server, "race", ["k"])


def test_the_condition_is_checked_in_the_commit_transaction() -> None:
    """Two create-only puts queued together, neither checked before: the catalog applies
    one and refuses the other, whatever the S3 layer saw earlier."""
    from storage import WriteCondition  # (imported here so the module loads on older code)

    with tempfile.TemporaryDirectory() as base:
        store = Store(StoreConfig(data_dir=base))
        try:
            store.catalog.accounts.add("owner", "OWNERKEY", "owner-secret")
            store.catalog.buckets.create("b", "owner")
            record = {"size": 0, "etag": "e", "mtime": 0.0, "segments": [], "headers": {}, "meta": {},
                      "checksums": {}, "checksum_type": None, "parts": None}
            futures = [store.objects.put_async("b", "k", {**record, "etag": f"e{i}"},
                                               condition=WriteCondition(absent=True)) for i in range(RACERS)]
            outcomes = []
            for fut in futures:
                try:
                    fut.result()
                    outcomes.append("ok")
                except errors.PreconditionFailed:
                    outcomes.append("412")
            assert sorted(outcomes) == ["412"] * (RACERS - 1) + ["ok"]
            assert store.objects.get("b", "k")["etag"] == f"e{outcomes.index('ok')}"
        finally:
            store.close()


def test_completions_are_forgotten_after_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """A completion record answers repeats for COMPLETION_TTL_S; later completions drop it."""
    import storage.uploads as uploads_module
    from storage import BlobRecord

    with tempfile.TemporaryDirectory() as base:
        store = Store(StoreConfig(data_dir=base))
        try:
            store.catalog.accounts.add("owner", "OWNERKEY", "owner-secret")
            store.catalog.buckets.create("b", "owner")

            def upload(key: str) -> tuple[str, Any]:
                uid = store.uploads.create("b", key, "owner", {"headers": {}, "meta": {}})["upload_id"]
                store.uploads.put_part("b", key, uid, {"number": 1, "blob": f"blob-{key}", "size": 1,
                                                       "etag": "p1", "checksums": {}},
                                       {f"blob-{key}": BlobRecord(size=1)})
                return uid, lambda up, parts: {"size": 1, "etag": f"e-{key}", "mtime": 1.0}

            first, build = upload("a")
            store.uploads.complete("b", "a", first, [(1, "p1")], build)
            assert store.uploads.complete("b", "a", first, [(1, "p1")], build)[0]["etag"] == "e-a"
            later = uploads_module.time.time() + uploads_module.COMPLETION_TTL_S + 60
            monkeypatch.setattr(uploads_module, "time", types.SimpleNamespace(time=lambda: later))
            second, build_b = upload("c")
            store.uploads.complete("b", "c", second, [(1, "p1")], build_b)
            with pytest.raises(errors.NoSuchUpload):
                store.uploads.complete("b", "a", first, [(1, "p1")], build)
            with store.catalog.read() as txn:
                remembered = [raw[8:].decode() for raw, _ in store.catalog.scan(txn, "completions")]
                assert store.catalog.get(txn, "uploads", first.encode()) is None
            assert remembered == [second]
        finally:
            store.close()
