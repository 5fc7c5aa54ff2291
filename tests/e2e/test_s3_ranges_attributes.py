"""Ranges past the end, part numbers past the last part, malformed flexible checksums and
GetObjectAttributes, each checked with hand-signed HTTP requests and through boto3."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import zlib
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_aws_chunked import UNSIGNED_TRAILER, Reply, put_streaming
from tests.e2e.test_crash import sign

MiB = 1024 * 1024
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"




def raw(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes = b"") -> Reply:
    """A request signed as the root account with botocore's signer, sent with http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, target, body=body, headers=sign(server, method, target, headers, body))
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


def b64(raw_digest: bytes) -> str:
    return base64.b64encode(raw_digest).decode()


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


def crc32_b64(data: bytes) -> str:
    return b64(zlib.crc32(data).to_bytes(4, "big"))


# -- 1. Range: bytes=N- with N at or past the end ---------------------------------------

DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=5000-", "bytes=1024-2000"])
def test_range_starting_at_or_past_the_end_is_416_http(server: Server, s3: Any, bucket: str, spec: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=DATA)
    for method in ("GET", "HEAD"):
        reply = raw(server, method, f"/{bucket}/r", {"Range": spec})
        assert reply.status == 416, (method, spec, reply.status)
        if method == "GET":
            assert reply.code == "InvalidRange"
            assert reply.xml().findtext("ActualObjectSize") == "1024"


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=99999-"])
def test_range_starting_at_or_past_the_end_is_416_boto3(s3: Any, bucket: str, spec: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=DATA)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range=spec)
    assert error_of(exc) == (416, "InvalidRange")


def test_satisfiable_open_and_suffix_ranges_still_work(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=DATA)
    for spec, start, expect in (("bytes=1023-", 1023, DATA[1023:]), ("bytes=0-", 0, DATA),
                                ("bytes=-10", 1014, DATA[-10:]), ("bytes=-5000", 0, DATA),
                                ("bytes=1000-99999", 1000, DATA[1000:])):
        reply = raw(server, "GET", f"/{bucket}/r", {"Range": spec})
        assert (reply.status, reply.body) == (206, expect), spec
        assert reply.headers["content-range"] == f"bytes {start}-{start + len(expect) - 1}/1024", spec
        got = s3.get_object(Bucket=bucket, Key="r", Range=spec)
        assert got["Body"].read() == expect and got["ContentRange"].endswith("/1024"), spec


def test_ranges_on_an_empty_object(server: Server, s3: Any, bucket: str) -> None:
    """A first-byte range cannot be satisfied by no bytes (416); a suffix range is the one
    form an empty representation satisfies (RFC 9110 14.1.1): the empty body, 200."""
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    for spec in ("bytes=0-", "bytes=0-0", "bytes=40-50"):
        reply = raw(server, "GET", f"/{bucket}/empty", {"Range": spec})
        assert (reply.status, reply.code) == (416, "InvalidRange"), spec
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key="empty", Range=spec)
        assert error_of(exc) == (416, "InvalidRange")
    reply = raw(server, "GET", f"/{bucket}/empty", {"Range": "bytes=-10"})
    assert (reply.status, reply.body) == (200, b"") and "content-range" not in reply.headers
    got = s3.get_object(Bucket=bucket, Key="empty", Range="bytes=-10")
    assert got["Body"].read() == b"" and got["ResponseMetadata"]["HTTPStatusCode"] == 200


# -- 2. partNumber past the last part -----------------------------------------------------

def _three_part_object(s3: Any, bucket: str, key: str) -> list[bytes]:
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                                     PartNumber=n, Body=p)["ETag"]}
            for n, p in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    return parts


def test_part_number_past_the_last_part_is_invalid_part(server: Server, s3: Any, bucket: str) -> None:
    parts = _three_part_object(s3, bucket, "mp")
    s3.put_object(Bucket=bucket, Key="simple", Body=b"simple")
    for key, number in (("mp", 4), ("mp", 10000), ("simple", 2), ("simple", 3)):
        for method in ("GET", "HEAD"):
            reply = raw(server, method, f"/{bucket}/{key}?partNumber={number}")
            assert reply.status == 400, (key, number, method, reply.status)
            if method == "GET":
                assert reply.code == "InvalidPart", (key, number)
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key=key, PartNumber=number)
        assert error_of(exc) == (400, "InvalidPart")
        with pytest.raises(ClientError) as exc:
            s3.head_object(Bucket=bucket, Key=key, PartNumber=number)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # the parts that exist still read, and part 1 of a simple object is the object
    got = s3.get_object(Bucket=bucket, Key="mp", PartNumber=3)
    assert got["Body"].read() == parts[2] and got["PartsCount"] == 3
    assert s3.get_object(Bucket=bucket, Key="simple", PartNumber=1)["Body"].read() == b"simple"
    # outside 1..10000 is not a part number at all
    for bad in ("0", "10001", "x"):
        reply = raw(server, "GET", f"/{bucket}/mp?partNumber={bad}")
        assert (reply.status, reply.code) == (400, "InvalidArgument"), bad


# -- 3. malformed x-amz-checksum-* values -------------------------------------------------

MALFORMED = {"CRC32": "AAAA", "SHA256": "bad", "SHA1": b64(b"\0" * 19), "CRC64NVME": "not base64!"}


@pytest.mark.parametrize("algorithm", list(MALFORMED))
def test_malformed_checksum_header_is_bad_digest_put_object(server: Server, s3: Any, s3_once: Any, bucket: str,
                                                            algorithm: str) -> None:
    header = {f"x-amz-checksum-{algorithm.lower()}": MALFORMED[algorithm]}
    reply = raw(server, "PUT", f"/{bucket}/bad-sum", header, b"the body")
    assert (reply.status, reply.code) == (400, "BadDigest"), reply.body
    with pytest.raises(ClientError) as exc:
        s3_once.put_object(Bucket=bucket, Key="bad-sum", Body=b"the body",
                           **{f"Checksum{algorithm}": MALFORMED[algorithm]})
    assert error_of(exc) == (400, "BadDigest")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad-sum")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_malformed_checksum_header_is_bad_digest_upload_part(server: Server, s3: Any, s3_once: Any,
                                                             bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="SHA256")["UploadId"]
    reply = raw(server, "PUT", f"/{bucket}/mp?partNumber=1&uploadId={upload}",
                {"x-amz-checksum-sha256": "bad", "x-amz-sdk-checksum-algorithm": "SHA256"}, b"part")
    assert (reply.status, reply.code) == (400, "BadDigest"), reply.body
    with pytest.raises(ClientError) as exc:
        s3_once.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"part",
                            ChecksumAlgorithm="SHA256", ChecksumSHA256=b64(b"\0" * 31))
    assert error_of(exc) == (400, "BadDigest")
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)


@pytest.mark.parametrize("value", ["AAAA", "not base64!", b64(b"\0" * 5)])
def test_malformed_trailing_checksum_is_bad_digest(server: Server, s3: Any, bucket: str, value: str) -> None:
    reply = put_streaming(server, bucket, "bad-trailer", UNSIGNED_TRAILER, [os.urandom(9000), b"end"],
                          trailer=("x-amz-checksum-crc32", value))
    assert (reply.status, reply.code) == (400, "BadDigest"), reply.body
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad-trailer")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# -- 4. GetObjectAttributes ---------------------------------------------------------------

ALL = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]


def test_attributes_of_a_simple_object_http(server: Server, s3: Any, bucket: str) -> None:
    body = b"attribute body"
    put = raw(server, "PUT", f"/{bucket}/simple", {"x-amz-checksum-sha256": sha256_b64(body)}, body)
    assert put.status == 200
    reply = raw(server, "GET", f"/{bucket}/simple?attributes", {"x-amz-object-attributes": ",".join(ALL)})
    assert reply.status == 200, reply.body
    root = reply.xml()
    assert root.tag == f"{NS}GetObjectAttributesResponse"
    assert root.findtext(f"{NS}ETag") == hashlib.md5(body).hexdigest()  # unquoted, as S3
    assert root.findtext(f"{NS}Checksum/{NS}ChecksumSHA256") == sha256_b64(body)
    assert root.findtext(f"{NS}Checksum/{NS}ChecksumType") == "FULL_OBJECT"
    assert root.find(f"{NS}ObjectParts") is None
    assert root.findtext(f"{NS}StorageClass") == "STANDARD"
    assert root.findtext(f"{NS}ObjectSize") == str(len(body))
    assert reply.headers["last-modified"] == s3.head_object(Bucket=bucket, Key="simple")["ResponseMetadata"][
        "HTTPHeaders"]["last-modified"]
    # only what was asked for
    only = raw(server, "GET", f"/{bucket}/simple?attributes", {"x-amz-object-attributes": "ObjectSize"}).xml()
    assert [child.tag for child in only] == [f"{NS}ObjectSize"]
    # errors
    missing = raw(server, "GET", f"/{bucket}/nope?attributes", {"x-amz-object-attributes": "ETag"})
    assert (missing.status, missing.code) == (404, "NoSuchKey")
    for header in ({}, {"x-amz-object-attributes": "Colour"}):
        bad = raw(server, "GET", f"/{bucket}/simple?attributes", header)
        assert (bad.status, bad.code) == (400, "InvalidArgument"), header


def test_attributes_of_a_simple_object_boto3(s3: Any, bucket: str) -> None:
    body = b"boto3 attributes"
    s3.put_object(Bucket=bucket, Key="simple", Body=body, ChecksumAlgorithm="SHA256")
    got = s3.get_object_attributes(Bucket=bucket, Key="simple", ObjectAttributes=ALL)
    assert got["ETag"] == hashlib.md5(body).hexdigest()
    assert got["Checksum"]["ChecksumSHA256"] == sha256_b64(body)
    assert got["Checksum"]["ChecksumType"] == "FULL_OBJECT"
    assert "ObjectParts" not in got
    assert (got["StorageClass"], got["ObjectSize"]) == ("STANDARD", len(body))
    assert got["LastModified"] == s3.head_object(Bucket=bucket, Key="simple")["LastModified"]
    with pytest.raises(ClientError) as exc:
        s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    assert error_of(exc) == (404, "NoSuchKey")


def test_attributes_of_upload_file_with_sha256_parts(s3: Any, bucket: str, tmp_path: Any) -> None:
    """boto3's upload_file with ChecksumAlgorithm=SHA256 and 5 MiB parts: a COMPOSITE
    checksum and each part's SHA-256, paged with MaxParts / PartNumberMarker."""
    data = os.urandom(5 * MiB * 3 + 12345)
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    s3.upload_file(str(path), bucket, "uploaded", ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)
    pieces = [data[i:i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    digests = [hashlib.sha256(p).digest() for p in pieces]
    composite = b64(hashlib.sha256(b"".join(digests)).digest())

    got = s3.get_object_attributes(Bucket=bucket, Key="uploaded", ObjectAttributes=ALL)
    assert got["ObjectSize"] == len(data)
    assert got["ETag"] == s3.head_object(Bucket=bucket, Key="uploaded")["ETag"].strip('"')
    assert got["Checksum"]["ChecksumSHA256"].split("-")[0] == composite
    assert got["Checksum"]["ChecksumType"] == "COMPOSITE"
    parts = got["ObjectParts"]
    assert parts["TotalPartsCount"] == 4 and parts["IsTruncated"] is False
    assert [(p["PartNumber"], p["Size"], p["ChecksumSHA256"]) for p in parts["Parts"]] == [
        (n, len(p), b64(d)) for n, (p, d) in enumerate(zip(pieces, digests, strict=True), 1)]

    first = s3.get_object_attributes(Bucket=bucket, Key="uploaded", ObjectAttributes=["ObjectParts"],
                                     MaxParts=3)["ObjectParts"]
    assert (first["MaxParts"], first["IsTruncated"], int(first["NextPartNumberMarker"])) == (3, True, 3)
    assert [p["PartNumber"] for p in first["Parts"]] == [1, 2, 3]
    rest = s3.get_object_attributes(Bucket=bucket, Key="uploaded", ObjectAttributes=["ObjectParts"],
                                    MaxParts=3, PartNumberMarker=first["NextPartNumberMarker"])["ObjectParts"]
    assert rest["IsTruncated"] is False and int(rest["PartNumberMarker"]) == 3
    assert [(p["PartNumber"], p["ChecksumSHA256"]) for p in rest["Parts"]] == [(4, b64(digests[3]))]


def test_attributes_full_object_crc32_http_and_boto3(server: Server, s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MiB), os.urandom(777)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="CRC32",
                                        ChecksumType="FULL_OBJECT")["UploadId"]
    done = []
    for n, p in enumerate(parts, 1):
        sent = s3.upload_part(Bucket=bucket, Key="full", UploadId=upload, PartNumber=n, Body=p,
                              ChecksumAlgorithm="CRC32")
        done.append({"PartNumber": n, "ETag": sent["ETag"], "ChecksumCRC32": sent["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=upload, MultipartUpload={"Parts": done})

    got = s3.get_object_attributes(Bucket=bucket, Key="full", ObjectAttributes=["Checksum", "ObjectParts"])
    assert got["Checksum"] == {"ChecksumCRC32": crc32_b64(b"".join(parts)), "ChecksumType": "FULL_OBJECT"}
    assert [(p["PartNumber"], p["ChecksumCRC32"]) for p in got["ObjectParts"]["Parts"]] == [
        (1, crc32_b64(parts[0])), (2, crc32_b64(parts[1]))]

    reply = raw(server, "GET", f"/{bucket}/full?attributes",
                {"x-amz-object-attributes": "ObjectParts", "x-amz-max-parts": "1"})
    assert reply.status == 200, reply.body
    listed = reply.xml().find(f"{NS}ObjectParts")
    assert listed is not None
    assert [listed.findtext(f"{NS}{name}") for name in
            ("PartsCount", "PartNumberMarker", "NextPartNumberMarker", "MaxParts", "IsTruncated")] == [
        "2", "0", "1", "1", "true"]
    assert [p.findtext(f"{NS}ChecksumCRC32") for p in listed.findall(f"{NS}Part")] == [crc32_b64(parts[0])]


def test_attributes_of_a_multipart_object_without_checksums(s3: Any, bucket: str) -> None:
    """No checksum algorithm on the upload: the part count, no part list (S3: parts are
    listed only when an additional checksum was applied to the object)."""
    parts = _three_part_object(s3, bucket, "plain-mp")
    got = s3.get_object_attributes(Bucket=bucket, Key="plain-mp", ObjectAttributes=ALL)
    assert got["ObjectSize"] == sum(len(p) for p in parts)
    assert got["ObjectParts"]["TotalPartsCount"] == 3 and "Parts" not in got["ObjectParts"]
    assert "Checksum" not in got
