"""Bad input, end to end: every malformed request gets its S3 error code (parsed from the
XML <Code>), the server keeps serving, and nothing stray is left on disk.

Each test runs under `no_stray_files`: afterwards no new file remains under
<data>/nodes/*/tmp, every blob file created during the test is referenced by the catalog,
and an ordinary PUT + GET still works. Hand-made requests are signed with botocore's
S3SigV4Auth and sent with http.client or a raw socket (boto3 refuses some of them).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import select
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Server, running_server
from tests.e2e.test_crash import blob_sizes, read_catalog, sign, tmp_files

UNSIGNED = "UNSIGNED-PAYLOAD"


# -- hand-signed requests --------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def code(self) -> str | None:
        return ET.fromstring(self.body).findtext("Code") if self.body.startswith(b"<?xml") else None


def request(server: Server, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read())
    finally:
        conn.close()


def send(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes = b"", now: datetime | None = None) -> Reply:
    """A request signed as the root account (at `now` when given)."""
    return request(server, method, target, sign(server, method, target, headers, body, now=now), body)


def raw_exchange(server: Server, data: bytes, then: str = "wait", timeout_s: float = 10) -> Reply | None:
    """Send raw bytes, then 'wait' (keep the socket open), 'shutdown' (half-close) or
    'close'; returns the reply, or None when the server closed without one."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    try:
        sock.sendall(data)
        if then == "close":
            return None
        if then == "shutdown":
            sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)
    finally:
        sock.close()


def read_reply(sock: socket.socket) -> Reply | None:
    """The answer on `sock`, or None when the server closed without one."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        return Reply(resp.status, resp.read())
    except (http.client.RemoteDisconnected, ConnectionResetError):
        return None
    finally:
        resp.close()


def raw_head(server: Server, method: str, target: str, headers: dict[str, str],
             payload_hash: str = UNSIGNED) -> bytes:
    """The signed request line and headers of a request whose body the caller sends."""
    signed = sign(server, method, target, headers, payload_hash=payload_hash)
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    return (head + "\r\n").encode()


def raw_put(server: Server, target: str, headers: dict[str, str], payload_hash: str = UNSIGNED) -> bytes:
    return raw_head(server, "PUT", target, headers, payload_hash)


# -- the servers: the suite's, and one of `--workers 2` ---------------------------------

@pytest.fixture(scope="module", params=[None, 2], ids=["default-workers", "2-workers"])
def server(request: pytest.FixtureRequest, server: Server) -> Iterator[Server]:
    """Every test here runs against the suite's server and again against `--workers 2`."""
    if request.param is None:
        yield server
        return
    with running_server(env={"MANTA_BODY_TIMEOUT_S": "2"}, workers=request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def s3(server: Server) -> Iterator[Any]:
    client: Any = server.client()
    yield client
    client.close()


# -- the data dir ----------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_stray_files(server: Server, s3: Any, bucket: str) -> Iterator[None]:
    tmp_before, blobs_before = tmp_files(server.data_dir), set(blob_sizes(server.data_dir))
    yield
    deadline = time.monotonic() + 5
    while True:  # the server may still be tidying up after a client that vanished
        new_tmp = tmp_files(server.data_dir) - tmp_before
        stray = set(blob_sizes(server.data_dir)) - blobs_before - set(read_catalog(server.data_dir).refcounts)
        if not (new_tmp or stray) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not new_tmp, f"temp files left behind: {new_tmp}"
    assert not stray, f"unreferenced blobs left behind: {stray}"
    s3.put_object(Bucket=bucket, Key="still-serving", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="still-serving")["Body"].read() == b"ok"


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in ("404", "NoSuchKey")
        return False


# -- keys ------------------------------------------------------------------------------

def test_raw_nul_byte_in_request_line_is_rejected(server: Server, bucket: str) -> None:
    reply = raw_exchange(server, f"GET /{bucket}/a\0b HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reply is not None and reply.status == 400, reply  # httptools refuses it: uvicorn's plain 400


@pytest.mark.parametrize("key", ["k" * 255, "k" * 470, "k" * 600, "é" * 511 + "kk"],
                         ids=["255B", "470B", "600B", "1024B"])
def test_keys_up_to_1024_bytes_are_accepted(s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"edge")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"edge"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key[:10])["Contents"]] == [key]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


# bucket names, malformed XML bodies and keys with NUL: tests/manta/test_handlers_*.py

# -- truncated and stalled bodies ------------------------------------------------------

def aws_chunked(payload: bytes, chunk: int = 4096) -> bytes:
    frames = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + chunk]), payload[i:i + chunk])
                      for i in range(0, len(payload), chunk))
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big"))
    return frames + b"0\r\nx-amz-checksum-crc32:" + crc + b"\r\n\r\n"


def chunked_headers(payload: bytes, wire_length: int) -> dict[str, str]:
    return {"Content-Encoding": "aws-chunked", "Content-Length": str(wire_length),
            "x-amz-decoded-content-length": str(len(payload)), "x-amz-trailer": "x-amz-checksum-crc32"}


PAYLOAD = os.urandom(10_000)
FRAMED = aws_chunked(PAYLOAD)
CUTS = {"mid-size-line": 2, "mid-data": 3000, "between-chunks": 4096 + 8, "before-last-chunk": FRAMED.index(b"0\r\nx-amz")}


def test_complete_aws_chunked_body_is_accepted(server: Server, s3: Any, bucket: str) -> None:
    head = raw_put(server, f"/{bucket}/chunked", chunked_headers(PAYLOAD, len(FRAMED)),
                   "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    reply = raw_exchange(server, head + FRAMED)
    assert reply is not None and reply.status == 200, reply
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == PAYLOAD


@pytest.mark.parametrize("cut", list(CUTS))
def test_truncated_aws_chunked_body_is_incomplete_body(server: Server, s3: Any, bucket: str, cut: str) -> None:
    body = FRAMED[: CUTS[cut]]
    head = raw_put(server, f"/{bucket}/chunked", chunked_headers(PAYLOAD, len(body)),
                   "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    reply = raw_exchange(server, head + body)
    assert reply is not None and (reply.status, reply.code) == (400, "IncompleteBody")
    assert not exists(s3, bucket, "chunked")


@pytest.mark.parametrize("then", ["shutdown", "close"])
def test_truncated_aws_chunked_body_then_client_leaves(server: Server, s3: Any, bucket: str, then: str) -> None:
    head = raw_put(server, f"/{bucket}/chunked", chunked_headers(PAYLOAD, len(FRAMED)),
                   "STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    reply = raw_exchange(server, head + FRAMED[:5000], then=then)
    if then == "shutdown":  # a client that only stopped sending still reads why nothing was stored
        assert reply is not None and (reply.status, reply.code) == (400, "IncompleteBody"), reply
    assert not exists(s3, bucket, "chunked")


@pytest.mark.parametrize("method,target", [("PUT", "/{bucket}/stalled"), ("POST", "/{bucket}?delete")],
                         ids=["PutObject", "DeleteObjects"])
def test_body_shorter_than_content_length_times_out(server: Server, s3: Any, bucket: str, method: str,
                                                    target: str) -> None:
    head = raw_head(server, method, target.format(bucket=bucket), {"Content-Length": "100000"})
    started = time.monotonic()
    reply = raw_exchange(server, head + b"x" * 1000, then="wait", timeout_s=15)
    elapsed = time.monotonic() - started
    assert reply is not None and (reply.status, reply.code) == (400, "RequestTimeout")
    assert elapsed < 8, f"RequestTimeout took {elapsed:.1f}s with MANTA_BODY_TIMEOUT_S=2"
    assert not exists(s3, bucket, "stalled")


def trickle(server: Server, head: bytes, body: bytes, piece: int, every_s: float, timeout_s: float = 20) -> Reply | None:
    """Send `head`, then `body` `piece` bytes every `every_s` seconds until the server
    answers (or the body is sent); the reply, or None when the server closed without one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for i in range(0, len(body), piece):
            if select.select([sock], [], [], every_s)[0]:
                break  # answered before the body was complete
            try:
                sock.sendall(body[i:i + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_reply(sock)


@pytest.mark.parametrize("method,target", [("PUT", "/{bucket}/trickled"), ("POST", "/{bucket}?delete")],
                         ids=["PutObject", "DeleteObjects"])
def test_a_body_that_trickles_below_the_minimum_rate_times_out(server: Server, s3: Any, bucket: str,
                                                               method: str, target: str) -> None:
    """A byte often enough never passes MANTA_BODY_TIMEOUT_S (2 s here), but past it a body
    must average MANTA_MIN_BODY_RATE (500 bytes/s): 40 bytes every 0.2 s (200/s) is
    RequestTimeout when the body's first 2 s and one more per 500 bytes are up (about
    3.3 s), and nothing is stored; a slow but steady client (4,000 bytes/s) is served."""
    body = b"<" * 20_000
    head = raw_head(server, method, target.format(bucket=bucket), {"Content-Length": str(len(body))})
    started = time.monotonic()
    reply = trickle(server, head, body, 40, 0.2)
    elapsed = time.monotonic() - started
    assert reply is not None and (reply.status, reply.code) == (400, "RequestTimeout"), reply
    assert 2.0 <= elapsed < 8, f"RequestTimeout after {elapsed:.1f}s"  # never before the timeout itself
    assert not exists(s3, bucket, "trickled")

    steady = os.urandom(12_000)
    head = raw_put(server, f"/{bucket}/steady", {"Content-Length": str(len(steady))})
    reply = trickle(server, head, steady, 800, 0.2)
    assert reply is not None and reply.status == 200, reply
    assert s3.get_object(Bucket=bucket, Key="steady")["Body"].read() == steady


@pytest.mark.parametrize("then", ["shutdown", "close"])
def test_body_shorter_than_content_length_then_client_leaves(server: Server, s3: Any, bucket: str,
                                                             then: str) -> None:
    head = raw_put(server, f"/{bucket}/gone", {"Content-Length": "100000"})
    reply = raw_exchange(server, head + b"x" * 1000, then=then)
    if then == "shutdown":  # a client that only stopped sending still reads why nothing was stored
        assert reply is not None and (reply.status, reply.code) == (400, "IncompleteBody"), reply
    assert not exists(s3, bucket, "gone")


# -- dates -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["garbage", "20240101T99", "2024-01-01T00:00:00Z", ""])
def test_bad_x_amz_date_is_access_denied(server: Server, bucket: str, value: str) -> None:
    headers = sign(server, "GET", f"/{bucket}")
    headers["X-Amz-Date"] = value
    reply = request(server, "GET", f"/{bucket}", headers)
    assert (reply.status, reply.code) == (403, "AccessDenied")


@pytest.mark.parametrize("skew_min", [-20, 20])
def test_clock_skew_over_15_minutes(server: Server, s3: Any, bucket: str, skew_min: int) -> None:
    now = datetime.now(UTC) + timedelta(minutes=skew_min)
    reply = send(server, "PUT", f"/{bucket}/skewed", body=b"late", now=now)
    assert (reply.status, reply.code) == (403, "RequestTimeTooSkewed")
    assert not exists(s3, bucket, "skewed")


def test_clock_skew_within_15_minutes_is_accepted(server: Server, bucket: str) -> None:
    now = datetime.now(UTC) - timedelta(minutes=10)
    assert send(server, "PUT", f"/{bucket}/skewed", body=b"ok", now=now).status == 200


# -- oversized headers -----------------------------------------------------------------

@pytest.mark.parametrize("kib,status,code", [(6, 200, None), (9, 400, "RequestHeaderSectionTooLarge"),
                                            (64, 400, "RequestHeaderSectionTooLarge")])
def test_header_section_limit_is_8_kib(server: Server, bucket: str, kib: int, status: int,
                                       code: str | None) -> None:
    padding = {f"x-pad-{i}": "p" * 1000 for i in range(kib)}
    reply = send(server, "GET", f"/{bucket}", headers=padding)
    assert (reply.status, reply.code) == (status, code)


def test_user_metadata_over_2_kib(s3: Any, bucket: str) -> None:
    for call in (lambda: s3.put_object(Bucket=bucket, Key="meta", Body=b"x", Metadata={"big": "m" * 2100}),
                 lambda: s3.create_multipart_upload(Bucket=bucket, Key="meta", Metadata={"big": "m" * 2100})):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "MetadataTooLarge"
    assert not exists(s3, bucket, "meta")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize("size", [100 * 1024, 1024 * 1024])
def test_enormous_header_line_does_not_crash_the_server(server: Server, bucket: str, size: int) -> None:
    request = f"GET /{bucket} HTTP/1.1\r\nHost: x\r\nX-Huge: {'h' * size}\r\n\r\n".encode()
    reply = raw_exchange(server, request)
    assert reply is not None and (reply.status, reply.code) == (400, "RequestHeaderSectionTooLarge"), reply
    assert server.proc is not None and server.proc.poll() is None


def test_a_header_that_never_ends_is_cut_off(server: Server, bucket: str) -> None:
    """httptools buffers a header line until it ends: the server must stop reading a head
    long before the client stops sending, answer in S3 terms, and keep serving."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sent = 0
    try:
        sock.sendall(f"GET /{bucket} HTTP/1.1\r\nHost: x\r\nX-Endless: ".encode())
        chunk = b"h" * 65536
        while sent < 256 * 1024 * 1024 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += len(chunk)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        reply = Reply(resp.status, resp.read())
    finally:
        sock.close()
    assert (reply.status, reply.code) == (400, "RequestHeaderSectionTooLarge")
    assert sent < 16 * 1024 * 1024  # answered after a bounded head, not at the end of the stream
    assert send(server, "GET", f"/{bucket}").status == 200


# -- path traversal ----------------------------------------------------------------------

TRAVERSAL_KEYS = ["../../etc/passwd", "a/../../b", "%2e%2e/%2e%2e/x", "/abs/path", "..\\..\\win",
                  "./.", "../", "a/./b/../c", "..%2f..%2fy"]


def tree(root: str, skip: str) -> set[str]:
    out: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) != skip]
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in dirs + files)
    return out


BLOB_PATH = re.compile(r"nodes/[^/]+/blobs(/[0-9a-f]{2})*(/[0-9a-f]{32})?")


def test_path_traversal_keys_are_ordinary_keys(server: Server, s3: Any, bucket: str) -> None:
    parent = os.path.dirname(os.path.abspath(server.data_dir))
    outside_before, tmp_before = tree(parent, server.data_dir), set(os.listdir("/tmp"))
    etc_passwd = os.stat("/etc/passwd").st_mtime_ns
    for key in TRAVERSAL_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=f"body of {key}".encode())
    assert send(server, "PUT", f"/{bucket}/%2e%2e/%2e%2e/raw-x", body=b"raw dots").status == 200
    for key in TRAVERSAL_KEYS:
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == f"body of {key}".encode()
    assert s3.get_object(Bucket=bucket, Key="../../raw-x")["Body"].read() == b"raw dots"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(TRAVERSAL_KEYS) | {"../../raw-x"} <= listed
    # nothing appeared beside the data dir, in /tmp, or in the data dir at a key-derived path
    assert tree(parent, server.data_dir) - outside_before <= {os.path.basename(server.log_path)}
    key_names = {"passwd", "etc", "b", "x", "raw-x", "path", "abs", "win", "y", "c", "..", "."}
    assert not (set(os.listdir("/tmp")) - tmp_before) & key_names
    assert os.stat("/etc/passwd").st_mtime_ns == etc_passwd
    for path in tree(server.data_dir, skip=""):
        assert not set(path.split(os.sep)) & key_names, path
        if "/blobs/" in path:
            assert BLOB_PATH.fullmatch(path), f"unexpected file among the blobs: {path}"
