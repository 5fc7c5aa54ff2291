"""S3 error paths in-process (tests/inprocess.py): each bad request gets its status, its S3
error code in XML (with the request id and the resource), and changes nothing."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from tests.inprocess import ROOT_SK, InProcessS3, error_code, texts, xml

MALFORMED_DELETE = [b"not xml at all", b"<Delete><Object><Key>a</Key></Object>", b"<Wrong/>",
                    b"<Delete><Object><Key>a&#0;</Key></Object></Delete>"]


def test_no_such_bucket_and_key(s3: InProcessS3, bucket: str) -> None:
    for method in ("GET", "HEAD", "PUT"):
        reply = s3.request(method, "/absent/k", body=b"x" if method == "PUT" else b"")
        assert reply.status_code == 404, method
        if method != "HEAD":
            assert error_code(reply) == "NoSuchBucket", method
        else:
            assert reply.content == b""  # HEAD: no body, the status says it
    missing = s3.request("GET", f"/{bucket}/absent")
    assert missing.status_code == 404 and error_code(missing) == "NoSuchKey"
    assert texts(xml(missing), "Key") == [] and b"<Resource>/bkt/absent</Resource>" in missing.content


def test_wrong_secret_is_signature_does_not_match(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("PUT", f"/{bucket}/k", body=b"x", secret_key=ROOT_SK + "x")
    assert reply.status_code == 403 and error_code(reply) == "SignatureDoesNotMatch"
    assert s3.request("HEAD", f"/{bucket}/k").status_code == 404


def test_body_not_what_was_signed_is_a_sha256_mismatch(s3: InProcessS3, bucket: str) -> None:
    sha = hashlib.sha256(b"signed").hexdigest()
    reply = s3.request("PUT", f"/{bucket}/k", body=b"sent", headers={"x-amz-content-sha256": sha})
    assert reply.status_code == 400 and error_code(reply) == "XAmzContentSHA256Mismatch"
    assert s3.request("HEAD", f"/{bucket}/k").status_code == 404


def test_unknown_access_key(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("GET", f"/{bucket}/k", access_key="AKIANOSUCHKEY0000000")
    assert reply.status_code == 403 and error_code(reply) == "InvalidAccessKeyId"
    assert b"<AWSAccessKeyId>AKIANOSUCHKEY0000000</AWSAccessKeyId>" in reply.content


def test_anonymous_is_access_denied(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "private", b"x")
    reply = s3.request("GET", f"/{bucket}/private", sign=False)
    assert reply.status_code == 403 and error_code(reply) == "AccessDenied"


def test_another_account_cannot_read(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "mine", b"x")
    s3.add_account("alice", "ALICEACCESSKEY000001", "alice-secret")
    reply = s3.request("GET", f"/{bucket}/mine", access_key="ALICEACCESSKEY000001", secret_key="alice-secret")
    assert reply.status_code == 403 and error_code(reply) == "AccessDenied"


@pytest.mark.parametrize("body", MALFORMED_DELETE)
def test_malformed_delete_objects(s3: InProcessS3, bucket: str, body: bytes) -> None:
    # moved from tests/e2e/test_bad_input.py
    s3.put(bucket, "a", b"keep me")
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    reply = s3.request("POST", f"/{bucket}", query={"delete": ""}, body=body, headers={"content-md5": md5})
    assert reply.status_code == 400 and error_code(reply) == "MalformedXML"
    assert s3.request("GET", f"/{bucket}/a").content == b"keep me"


def entities(root: str, inner: str) -> bytes:
    """A body whose one entity, used 2,000 times, would make it 600 KB: 290 bytes each."""
    return (f'<?xml version="1.0"?><!DOCTYPE {root} [<!ENTITY a "{"A" * 290}">]>'
            f"<{root}>{inner.replace('X', '&a;' * 2000)}</{root}>").encode()


@pytest.mark.parametrize(("method", "target", "query", "root", "inner"), [
    ("POST", "", {"delete": ""}, "Delete", "<Object><Key>X</Key></Object>"),
    ("PUT", "", {"lifecycle": ""}, "LifecycleConfiguration",
     "<Rule><ID>X</ID><Status>Enabled</Status><Filter/><Expiration><Days>1</Days></Expiration></Rule>"),
    ("PUT", "", {"cors": ""}, "CORSConfiguration",
     "<CORSRule><AllowedOrigin>X</AllowedOrigin><AllowedMethod>GET</AllowedMethod></CORSRule>"),
    ("PUT", "", {"tagging": ""}, "Tagging", "<TagSet><Tag><Key>k</Key><Value>X</Value></Tag></TagSet>"),
    ("PUT", "k", {"tagging": ""}, "Tagging", "<TagSet><Tag><Key>k</Key><Value>X</Value></Tag></TagSet>"),
])
def test_a_document_type_declaration_is_malformed_xml(s3: InProcessS3, bucket: str, method: str, target: str,
                                                      query: dict[str, str], root: str, inner: str) -> None:
    """Entities would expand past every limit on a body's size (a 2 MiB DeleteObjects
    answered 200 MB): S3 refuses a DOCTYPE, and so does manta, before any entity."""
    s3.put(bucket, "k", b"keep me")
    body = entities(root, inner)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    reply = s3.request(method, f"/{bucket}/{target}" if target else f"/{bucket}", query=query, body=body,
                       headers={"content-md5": md5})
    assert (reply.status_code, error_code(reply)) == (400, "MalformedXML")
    assert len(reply.content) < 2000
    assert s3.request("GET", f"/{bucket}/k").content == b"keep me"
    plain = body.replace(b"&a;" * 2000, b"x").replace(body[body.index(b"<!DOCTYPE"):body.index(b"]>") + 2], b"")
    md5 = base64.b64encode(hashlib.md5(plain).digest()).decode()
    assert s3.request(method, f"/{bucket}/{target}" if target else f"/{bucket}", query=query, body=plain,
                      headers={"content-md5": md5}).status_code in (200, 204)  # the same without a DOCTYPE


@pytest.mark.parametrize("body", [b"<CreateBucketConfiguration><LocationConstraint>", b"{json}",
                                  b"<Wrong><LocationConstraint>us-east-1</LocationConstraint></Wrong>"])
def test_malformed_create_bucket_configuration(s3: InProcessS3, body: bytes) -> None:
    # moved from tests/e2e/test_bad_input.py
    name = f"malformed-{len(body)}"
    reply = s3.request("PUT", f"/{name}", body=body)
    assert reply.status_code == 400 and error_code(reply) == "MalformedXML"
    assert name not in texts(xml(s3.request("GET", "/")), "Buckets/Bucket/Name")


def test_bucket_not_empty(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "k", b"v")
    reply = s3.request("DELETE", f"/{bucket}")
    assert reply.status_code == 409 and error_code(reply) == "BucketNotEmpty"
    assert b"<BucketName>bkt</BucketName>" in reply.content


def test_invalid_range(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "r", b"0123456789")
    reply = s3.request("GET", f"/{bucket}/r", headers={"range": "bytes=10-20"})
    assert reply.status_code == 416 and error_code(reply) == "InvalidRange"
    assert b"<ActualObjectSize>10</ActualObjectSize>" in reply.content


def test_entity_too_small(s3: InProcessS3, bucket: str) -> None:
    made = s3.request("POST", f"/{bucket}/small", query={"uploads": ""})
    (uid,) = texts(xml(made), "UploadId")
    etags = [s3.request("PUT", f"/{bucket}/small", query={"partNumber": str(n), "uploadId": uid},
                        body=b"tiny").headers["etag"] for n in (1, 2)]
    body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1))
    reply = s3.request("POST", f"/{bucket}/small", query={"uploadId": uid},
                       body=f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode())
    assert reply.status_code == 400 and error_code(reply) == "EntityTooSmall"


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_key_with_percent_encoded_nul_is_invalid_argument(s3: InProcessS3, bucket: str, method: str) -> None:
    # moved from tests/e2e/test_bad_input.py
    reply = s3.request(method, f"/{bucket}/a%00b", body=b"x" if method == "PUT" else b"", quoted=True)
    assert reply.status_code == 400 and error_code(reply) == "InvalidArgument"


@pytest.mark.parametrize("key", ["k" * 1025, "é" * 513, "日" * 342])
def test_key_over_1024_bytes_is_key_too_long(s3: InProcessS3, bucket: str, key: str) -> None:
    # moved from tests/e2e/test_bad_input.py (there through boto3)
    reply = s3.request("PUT", f"/{bucket}/{key}", body=b"x")
    assert reply.status_code == 400 and error_code(reply) == "KeyTooLongError"


def test_user_metadata_over_2_kib(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("PUT", f"/{bucket}/meta", body=b"x", headers={"x-amz-meta-big": "v" * 2100})
    assert reply.status_code == 400 and error_code(reply) == "MetadataTooLarge"
    assert s3.request("HEAD", f"/{bucket}/meta").status_code == 404


def test_invalid_argument_on_bad_max_keys(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("GET", f"/{bucket}", query={"list-type": "2", "max-keys": "-1"})
    assert reply.status_code == 400 and error_code(reply) == "InvalidArgument"


def test_method_not_allowed_and_not_implemented(s3: InProcessS3, bucket: str) -> None:
    service = s3.request("DELETE", "/")
    assert service.status_code == 405 and error_code(service) == "MethodNotAllowed"
    torrent = s3.request("GET", f"/{bucket}/k", query={"torrent": ""})
    assert torrent.status_code == 501 and error_code(torrent) == "NotImplemented"


def test_bad_payload_hash_header(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("PUT", f"/{bucket}/k", body=b"x", headers={"x-amz-content-sha256": "nonsense"})
    assert reply.status_code == 400 and error_code(reply) == "InvalidArgument"


def test_malformed_aws_chunked_body_stores_nothing(s3: InProcessS3, bucket: str) -> None:
    payload = os.urandom(100)
    body = f"{len(payload):x}\r\n".encode() + payload + b"\r\nzz\r\n"  # a size line that is not hex
    reply = s3.request("PUT", f"/{bucket}/chunked", body=body, headers={
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload))})
    assert reply.status_code == 400 and error_code(reply) in ("InvalidRequest", "IncompleteBody")
    assert s3.request("HEAD", f"/{bucket}/chunked").status_code == 404


def test_unsigned_streaming_body_with_trailer_is_stored(s3: InProcessS3, bucket: str) -> None:
    payload = b"hello chunked world"
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    body = (f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n"
            + f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode())
    reply = s3.request("PUT", f"/{bucket}/chunked", body=body, headers={
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
        "x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": str(len(payload))})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-amz-checksum-crc32"] == crc
    assert s3.request("GET", f"/{bucket}/chunked").content == payload


def test_json_nested_deeper_than_python_recurses_is_a_400(s3: InProcessS3, bucket: str) -> None:
    """A job spec or a bucket policy of 100,000 nested arrays was a 500 (RecursionError)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    reply = s3.request("POST", "/_manta/jobs", body=deep)
    assert (reply.status_code, error_code(reply)) == (400, "InvalidRequest")
    reply = s3.request("PUT", f"/{bucket}", query={"policy": ""}, body=b'{"Statement": ' + deep[:19_000] + b"}")
    assert (reply.status_code, error_code(reply)) == (400, "MalformedPolicy")
