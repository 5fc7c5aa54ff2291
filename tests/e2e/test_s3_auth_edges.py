"""Auth and header edges that S3 clients and conformance suites check: presigned URLs out
of their validity range, OPTIONS without Origin, non-ASCII metadata, Content-Encoding kept
as sent, keys whose percent-escapes are not UTF-8. Each at the HTTP level and, where boto3
can send it, through boto3.
"""

from __future__ import annotations

import email.header
import http.client
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from xml.etree import ElementTree as ET

import pytest
import requests
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import ROOT_AK, ROOT_SK, Server
from tests.e2e.test_aws_chunked import UNSIGNED_TRAILER, checksum, put_streaming
from tests.e2e.test_crash import sign

WEEK_S = 604800


def error_of(body: bytes) -> tuple[str | None, str | None]:
    root = ET.fromstring(body)
    return root.findtext("Code"), root.findtext("Message")


def presigned(server: Server, path: str, expires_s: int, signed_at: datetime | None = None) -> str:
    """A SigV4 query-signed GET URL (botocore's signer; boto3's CRT signer refuses
    expiries under 1 s, which clients built on other SDKs do send)."""
    request = AWSRequest(method="GET", url=server.url + path)
    signer = S3SigV4QueryAuth(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1", expires=expires_s)
    if signed_at is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at.replace(tzinfo=None)):
            signer.add_auth(request)
    return str(request.url)


# -- presigned URL validity ---------------------------------------------------------------

@pytest.mark.parametrize(("expires_s", "message"), [
    (-7, "X-Amz-Expires must be non-negative"),
    (0, "Request has expired"),
    (WEEK_S + 1, "X-Amz-Expires must be less than a week (in seconds) that is; 604800"),
])
def test_presigned_expiry_out_of_range_is_access_denied(server: Server, s3: Any, bucket: str,
                                                        expires_s: int, message: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    reply = requests.get(presigned(server, f"/{bucket}/k", expires_s), timeout=10)
    assert reply.status_code == 403
    assert error_of(reply.content) == ("AccessDenied", message)


def test_presigned_expiry_bounds_through_boto3(server: Server, bucket: str) -> None:
    s3 = server.client(signature_version="s3v4")
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")  # type: ignore[attr-defined]
    week = s3.generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=WEEK_S)
    assert requests.get(week, timeout=10).content == b"secret"
    too_long = s3.generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=WEEK_S + 1)
    reply = requests.get(too_long, timeout=10)
    assert reply.status_code == 403
    assert error_of(reply.content)[0] == "AccessDenied"


def test_expired_presigned_url_says_when(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    signed_at = datetime.now(UTC) - timedelta(hours=2)
    reply = requests.get(presigned(server, f"/{bucket}/k", 60, signed_at), timeout=10)
    assert reply.status_code == 403
    root = ET.fromstring(reply.content)
    assert (root.findtext("Code"), root.findtext("Message")) == ("AccessDenied", "Request has expired")
    assert root.findtext("X-Amz-Expires") == "60"
    assert root.findtext("Expires") == (signed_at + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("extra", [
    {"x-amz-copy-source": "/{private}/secret"},  # the upload URL made a copy of what the signer may read
    {"x-amz-acl": "public-read"},
    {"x-amz-copy-source": "/{private}/secret", "x-amz-acl": "public-read"},
    {"x-amz-grant-read": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'},
    {"x-amz-meta-note": "not signed"},
])
def test_a_presigned_url_refuses_x_amz_headers_it_did_not_sign(server: Server, s3: Any, bucket: str,
                                                                extra: dict[str, str]) -> None:
    """Whoever holds a presigned upload URL may do what was signed and no more: an x-amz-*
    header the URL does not sign is AccessDenied, as in S3 (x-amz-content-sha256 aside)."""
    private = f"{bucket}-private"
    s3.create_bucket(Bucket=private)
    s3.put_object(Bucket=private, Key="secret", Body=b"TOP-SECRET")
    url = server.client(signature_version="s3v4").generate_presigned_url(  # type: ignore[attr-defined]
        "put_object", Params={"Bucket": bucket, "Key": "upload.txt"}, ExpiresIn=600)
    headers = {name: value.format(private=private) for name, value in extra.items()}
    reply = requests.put(url, data=b"mine", headers=headers, timeout=10)
    assert reply.status_code == 403, reply.content[:300]
    code, message = error_of(reply.content)
    assert (code, message) == ("AccessDenied", "There were headers present in the request which were not signed")
    assert ET.fromstring(reply.content).findtext("HeadersNotSigned") == ", ".join(sorted(headers))
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="upload.txt")  # nothing was written
    # the URL as signed still works, also beside an unsigned x-amz-content-sha256
    reply = requests.put(url, data=b"mine", headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}, timeout=10)
    assert reply.status_code == 200, reply.content[:300]
    assert s3.get_object(Bucket=bucket, Key="upload.txt")["Body"].read() == b"mine"


# -- OPTIONS without Origin ---------------------------------------------------------------

def test_options_without_origin_is_400(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for path in (f"/{bucket}/k", f"/{bucket}"):
        anonymous = requests.options(server.url + path, timeout=10)
        assert anonymous.status_code == 400
        assert error_of(anonymous.content) == (
            "BadRequest", "Insufficient information. Origin request header needed.")
        assert anonymous.headers["x-amz-request-id"]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:  # a signed OPTIONS was 405 MethodNotAllowed
            conn.request("OPTIONS", path, headers=sign(server, "OPTIONS", path))
            signed = conn.getresponse()
            assert signed.status == 400
            assert error_of(signed.read())[0] == "BadRequest"
        finally:
            conn.close()


def test_options_with_origin_is_a_preflight_refused_without_cors(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    reply = requests.options(f"{server.url}/{bucket}/k", headers={"Origin": "http://example.com",
                             "Access-Control-Request-Method": "GET"}, timeout=10)
    assert reply.status_code == 403
    assert error_of(reply.content) == ("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.")


# -- non-ASCII metadata -------------------------------------------------------------------

def _with_header(s3: Any, event: str, name: str, value: str) -> Any:
    def add(request: Any = None, params: Any = None, **_: Any) -> None:
        if params is not None:
            params["headers"][name] = value
        else:
            del request.headers[name]  # HTTPHeaders appends on assignment
            request.headers[name] = value
    s3.meta.events.register(event, add)
    return add


@pytest.mark.parametrize("event", ["before-call.s3.PutObject", "before-sign.s3.PutObject"])
def test_non_ascii_metadata_signed_by_boto3_reads_back(server: Server, bucket: str, event: str) -> None:
    s3: Any = server.client()
    sent = "Hello World\xe9"
    _with_header(s3, event, "x-amz-meta-meta1", sent)
    s3.put_object(Bucket=bucket, Key="foo", Body=b"bar")  # was SignatureDoesNotMatch
    assert s3.get_object(Bucket=bucket, Key="foo")["Metadata"]["meta1"] == sent
    assert s3.head_object(Bucket=bucket, Key="foo")["Metadata"]["meta1"] == sent


def test_metadata_beyond_latin1_comes_back_rfc2047_encoded(server: Server, bucket: str) -> None:
    s3: Any = server.client()
    sent = "snow \u2603 \u00fc\u2713"
    _with_header(s3, "before-sign.s3.PutObject", "x-amz-meta-meta1", sent)
    s3.put_object(Bucket=bucket, Key="foo", Body=b"bar")
    got = s3.head_object(Bucket=bucket, Key="foo")["Metadata"]["meta1"]
    assert got.startswith("=?UTF-8?B?")
    assert str(email.header.make_header(email.header.decode_header(got))) == sent


def test_non_ascii_metadata_on_the_wire(server: Server, s3: Any, bucket: str) -> None:
    """UTF-8 bytes on the wire, signed as those bytes (what botocore does)."""
    path = f"/{bucket}/wire"
    headers = sign(server, "PUT", path, {"x-amz-meta-city": "Z\u00fcrich"}, b"data")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value.encode("utf-8"))
        conn.putheader("Content-Length", "4")
        conn.endheaders(b"data")
        reply = conn.getresponse()
        assert reply.status == 200, reply.read()
        reply.read()
        conn.request("HEAD", path, headers=sign(server, "HEAD", path))
        head = conn.getresponse()
        head.read()
        assert head.status == 200
        assert head.getheader("x-amz-meta-city") == "Z\u00fcrich"  # latin-1 on the way out
    finally:
        conn.close()


# -- Content-Encoding ---------------------------------------------------------------------

def test_content_encoding_is_kept_as_sent(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="ce", Body=b"x", ContentEncoding="deflate, gzip")
    assert s3.head_object(Bucket=bucket, Key="ce")["ContentEncoding"] == "deflate, gzip"
    path = f"/{bucket}/ce-raw"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("PUT", path, body=b"x", headers=sign(server, "PUT", path,
                                                          {"Content-Encoding": "gzip,  br"}, b"x"))
        assert conn.getresponse().status == 200
        conn.close()
        conn.request("GET", path, headers=sign(server, "GET", path))
        reply = conn.getresponse()
        reply.read()
        assert reply.getheader("content-encoding") == "gzip,  br"
    finally:
        conn.close()


@pytest.mark.parametrize(("sent", "stored"), [
    ("aws-chunked", None),
    ("aws-chunked, gzip", "gzip"),
    ("deflate, aws-chunked, gzip", "deflate, gzip"),
])
def test_aws_chunked_alone_is_dropped_from_content_encoding(server: Server, s3: Any, bucket: str,
                                                            sent: str, stored: str | None) -> None:
    payload = b"z" * 3000
    reply = put_streaming(server, bucket, "enc", UNSIGNED_TRAILER, [payload[:2000], payload[2000:]],
                          trailer=("x-amz-checksum-crc32", checksum("CRC32", payload)),
                          content_encoding=sent)
    assert reply.status == 200, reply.body
    head = s3.head_object(Bucket=bucket, Key="enc")
    assert head.get("ContentEncoding") == stored


# -- keys that are not UTF-8 --------------------------------------------------------------

@pytest.mark.parametrize("quoted", ["%FF%FE", "a%C3", "%C0%AF", "%ED%A0%80"])
def test_key_not_utf8_in_path_is_400(server: Server, bucket: str, quoted: str) -> None:
    path = f"/{bucket}/{quoted}"
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request(method, path, body=b"", headers=sign(server, method, path))
            reply = conn.getresponse()
            body = reply.read()
            assert reply.status == 400, (method, body)
            if method != "HEAD":
                assert error_of(body)[0] == "InvalidURI"
        finally:
            conn.close()


def test_copy_source_not_utf8_is_400(server: Server, bucket: str) -> None:
    s3: Any = server.client()
    s3.put_object(Bucket=bucket, Key="src", Body=b"x")
    _with_header(s3, "before-sign.s3.CopyObject", "x-amz-copy-source", f"/{bucket}/%FF%FE")
    with pytest.raises(ClientError) as err:  # was 404 NoSuchKey: a key that cannot exist
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400, err.value.response
    assert err.value.response["Error"]["Code"] == "InvalidArgument"
