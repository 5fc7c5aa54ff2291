"""Every S3 operation of the embedded server, driven by boto3 at its default config."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import NO_USER_CONFIG, REPO, ROOT_AK, ROOT_SK, Server

MiB = 1024 * 1024


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status_of(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


# -- service and buckets ---------------------------------------------------------------

def test_list_create_head_delete_bucket(s3, server: Server) -> None:
    name = f"lifecycle-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket=name).get("LocationConstraint") is None
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert status_of(exc) == 404


def test_bucket_errors(s3, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)  # your own bucket again: 200 in us-east-1 (S3's legacy answer)
    for bad in ("ab", "UPPER", "under_score", "a..b", "192.168.1.1", "x" * 64, "-dash", "xn--abc"):
        with pytest.raises(ClientError) as exc:
            s3.create_bucket(Bucket=bad)
        assert code_of(exc) == "InvalidBucketName", bad
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="no-such-bucket-here")
    assert code_of(exc) == "NoSuchBucket"
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert code_of(exc) == "BucketNotEmpty"


def test_create_bucket_with_location_and_malformed_xml(s3, server: Server) -> None:
    s3.create_bucket(Bucket="located-bucket", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    resp = _signed(server, "PUT", "/malformed-bucket", b"<CreateBucketConfiguration><oops")
    assert resp.status_code == 400 and b"<Code>MalformedXML</Code>" in resp.content


def test_unversioned_bucket_versions_listing(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"1")
    s3.put_object(Bucket=bucket, Key="b", Body=b"22")
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"]) for v in versions] == [
        ("a", "null", True, 1), ("b", "null", True, 2)]
    assert s3.get_bucket_versioning(Bucket=bucket).get("Status") is None


def test_unimplemented_subresources_answer_501(s3, bucket: str) -> None:
    calls = [
        lambda: s3.get_bucket_website(Bucket=bucket),
        lambda: s3.get_bucket_replication(Bucket=bucket),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert code_of(exc) == "NotImplemented" and status_of(exc) == 501


# -- objects -----------------------------------------------------------------------------

def test_put_get_head_with_headers_and_metadata(s3, bucket: str) -> None:
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    put = s3.put_object(Bucket=bucket, Key="dir/ünï cödé+%.txt", Body=b"hello world",
                        ContentType="text/plain", ContentEncoding="identity",
                        ContentDisposition="attachment; filename=x.txt", ContentLanguage="en",
                        CacheControl="max-age=60", Expires=expires, Metadata={"color": "blue"})
    assert put["ETag"] == '"{}"'.format(hashlib.md5(b"hello world").hexdigest())
    got = s3.get_object(Bucket=bucket, Key="dir/ünï cödé+%.txt")
    assert got["Body"].read() == b"hello world"
    assert got["ContentType"] == "text/plain"
    assert got["ContentEncoding"] == "identity"
    assert got["ContentDisposition"] == "attachment; filename=x.txt"
    assert got["ContentLanguage"] == "en"
    assert got["CacheControl"] == "max-age=60"
    assert got["Metadata"] == {"color": "blue"}
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=bucket, Key="dir/ünï cödé+%.txt")
    assert head["ContentLength"] == 11 and head["ETag"] == put["ETag"]


def test_missing_key_and_idempotent_delete(s3, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="nope")
    assert code_of(exc) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="nope")
    assert status_of(exc) == 404
    s3.put_object(Bucket=bucket, Key="gone", Body=b"x")
    assert s3.delete_object(Bucket=bucket, Key="gone")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="gone")["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_ranges(s3, bucket: str) -> None:
    data = bytes(range(256)) * 4
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    for spec, expect in (("bytes=0-9", data[:10]), ("bytes=1000-", data[1000:]),
                         ("bytes=-24", data[-24:]), ("bytes=1000-5000", data[1000:])):
        got = s3.get_object(Bucket=bucket, Key="r", Range=spec)
        assert got["Body"].read() == expect, spec
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(data)}")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=5000-6000")
    assert code_of(exc) == "InvalidRange" and status_of(exc) == 416


def test_conditional_get(s3, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"cond")["ETag"]
    head = s3.head_object(Bucket=bucket, Key="c")
    modified = head["LastModified"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert code_of(exc) == "PreconditionFailed" and status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status_of(exc) == 304
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=modified + dt.timedelta(seconds=5))
    assert status_of(exc) == 304
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=modified - dt.timedelta(days=1))
    assert status_of(exc) == 412
    assert s3.get_object(Bucket=bucket, Key="c",
                         IfModifiedSince=modified - dt.timedelta(days=1))["Body"].read() == b"cond"


def test_response_overrides(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", ContentType="text/plain")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="application/json",
                        ResponseContentDisposition="inline", ResponseCacheControl="no-cache")
    assert got["ContentType"] == "application/json"
    assert got["ContentDisposition"] == "inline" and got["CacheControl"] == "no-cache"
    assert s3.head_object(Bucket=bucket, Key="o", ResponseContentType="image/png")["ContentType"] == "image/png"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "nul\x00", "bell\x07"])
def test_a_response_override_that_no_header_may_hold_is_invalid_argument(server: Server, s3, bucket: str,
                                                                         value: str) -> None:
    """Such a value got past the handler, and uvicorn then refused to send the head: a
    traceback in the log and a dropped connection, for any client that asked."""
    s3.put_object(Bucket=bucket, Key="o", Body=b"x")
    url = server.client(signature_version="s3v4").generate_presigned_url("get_object", Params={  # signed
        "Bucket": bucket, "Key": "o", "ResponseContentDisposition": value})
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 400, reply.content[:300]
    assert b"<Code>InvalidArgument</Code>" in reply.content
    assert b"X-Injected" not in b"".join(f"{k}: {v}".encode() for k, v in reply.headers.items())
    assert s3.get_object(Bucket=bucket, Key="o", ResponseContentDisposition="attachment; filename=\"o.txt\"")[
        "ContentDisposition"] == 'attachment; filename="o.txt"'  # the connection pool still works


def test_copy_object_directives_and_conditions(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    dst = s3.get_object(Bucket=bucket, Key="dst")
    assert dst["Body"].read() == b"copy me" and dst["Metadata"] == {"a": "1"}
    assert dst["ContentType"] == "text/plain" and dst["ETag"] == etag
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   Metadata={"b": "2"}, ContentType="application/x-new")
    dst2 = s3.head_object(Bucket=bucket, Key="dst2")
    assert dst2["Metadata"] == {"b": "2"} and dst2["ContentType"] == "application/x-new"
    s3.copy_object(Bucket=bucket, Key="dst3", CopySource={"Bucket": bucket, "Key": "src"},
                   CopySourceIfMatch=etag)
    for kwargs in ({"CopySourceIfMatch": '"bad"'}, {"CopySourceIfNoneMatch": etag},
                   {"CopySourceIfModifiedSince": dt.datetime(2099, 1, 1, tzinfo=dt.UTC)},
                   {"CopySourceIfUnmodifiedSince": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}):
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=bucket, Key="dst4", CopySource={"Bucket": bucket, "Key": "src"}, **kwargs)
        assert code_of(exc) == "PreconditionFailed", kwargs
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert code_of(exc) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert code_of(exc) == "InvalidRequest"
    # the source can go away; the copy keeps its (shared) bytes
    s3.delete_object(Bucket=bucket, Key="src")
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"copy me"


def test_delete_objects_quiet_and_verbose(s3, bucket: str) -> None:
    keys = [f"d/{i}" for i in range(20)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:10]]})
    assert sorted(d["Key"] for d in res["Deleted"]) == sorted(keys[:10])
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[10:]] + [{"Key": "never"}],
                                                   "Quiet": True})
    assert "Deleted" not in res and "Errors" not in res
    assert s3.list_objects_v2(Bucket=bucket, Prefix="d/")["KeyCount"] == 0
    with pytest.raises(ClientError) as exc:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": str(i)} for i in range(1001)]})
    assert code_of(exc) == "MalformedXML"


# -- listings ----------------------------------------------------------------------------

def test_list_v1_v2_prefix_delimiter_pagination(s3, bucket: str) -> None:
    keys = sorted(["a/1", "a/2", "a/b/3", "b", "c/4", "é", "z/5", "~"], key=lambda k: k.encode())
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    v2 = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in v2["Contents"]] == keys and v2["KeyCount"] == len(keys)
    d = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in d["Contents"]] == ["b", "~", "é"]
    assert [p["Prefix"] for p in d["CommonPrefixes"]] == ["a/", "c/", "z/"]
    d = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in d["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in d["CommonPrefixes"]] == ["a/b/"]
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=3, **kw)
        seen += [o["Key"] for o in page.get("Contents", [])]
        assert page["KeyCount"] <= 3
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == keys
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, StartAfter="b")["Contents"]] == keys[keys.index("b") + 1:]
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert v1["IsTruncated"] and [o["Key"] for o in v1["Contents"]] == keys[:2]
    v1 = s3.list_objects(Bucket=bucket, Marker="b")
    assert [o["Key"] for o in v1["Contents"]] == keys[keys.index("b") + 1:]
    pages = s3.get_paginator("list_objects").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2})
    flat = [o["Key"] for p in pages for o in p.get("Contents", [])] + \
           [c["Prefix"] for p in s3.get_paginator("list_objects").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}) for c in p.get("CommonPrefixes", [])]
    assert sorted(flat) == sorted(["b", "~", "é", "a/", "c/", "z/"])


def test_list_url_encoding_and_max_keys_cap(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="sp ace/ü", Body=b"")
    raw = s3.list_objects_v2(Bucket=bucket, EncodingType="url")
    assert raw["Contents"][0]["Key"] == "sp%20ace/%C3%BC"  # an explicit EncodingType is not decoded by boto3
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Key"] == "sp ace/ü"
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=5000)["MaxKeys"] == 1000


def test_listing_caps_at_1000(s3, bucket: str) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"k{i:05d}", Body=b""), range(1100)))
    page = s3.list_objects_v2(Bucket=bucket)
    assert page["KeyCount"] == 1000 and page["IsTruncated"]
    rest = s3.list_objects_v2(Bucket=bucket, ContinuationToken=page["NextContinuationToken"])
    assert rest["KeyCount"] == 100 and not rest["IsTruncated"]


# -- multipart ---------------------------------------------------------------------------

def test_multipart_lifecycle(s3, bucket: str) -> None:
    parts_data = [b"a" * (5 * MiB), b"b" * (5 * MiB), b"c" * 1234]
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="text/x-mp", Metadata={"m": "1"})
    uid = up["UploadId"]
    assert uid in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    etags = [s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=i + 1, Body=d)["ETag"]
             for i, d in enumerate(parts_data)]
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (i + 1, e, len(d)) for i, (e, d) in enumerate(zip(etags, parts_data, strict=True))]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
    expect = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
    assert done["ETag"] == f'"{expect}"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ContentType"] == "text/x-mp" and got["Metadata"] == {"m": "1"}
    part2 = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert part2["Body"].read() == parts_data[1] and part2["PartsCount"] == 3
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert code_of(exc) == "NoSuchUpload"


def test_multipart_errors(s3, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="bad", UploadId=uid, PartNumber=1, Body=b"tiny")["ETag"]
    last = s3.upload_part(Bucket=bucket, Key="bad", UploadId=uid, PartNumber=2, Body=b"end")["ETag"]
    cases = [
        ([{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}], "EntityTooSmall"),
        ([{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}], "InvalidPartOrder"),
        ([{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}], "InvalidPart"),
        ([{"PartNumber": 7, "ETag": small}], "InvalidPart"),
    ]
    for parts, code in cases:
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={"Parts": parts})
        assert code_of(exc) == code
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={"Parts": []})
    assert code_of(exc) == "MalformedXML"
    # a single small part is fine: only non-final parts have the 5 MiB minimum
    s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": small}]})
    assert s3.get_object(Bucket=bucket, Key="bad")["Body"].read() == b"tiny"
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="bad", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert code_of(exc) == "NoSuchUpload"
    uid2 = s3.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="aborted", UploadId=uid2, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=uid2)
    with pytest.raises(ClientError) as exc:
        s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=uid2)
    assert code_of(exc) == "NoSuchUpload"
    resp = _signed_for(s3, "POST", f"/{bucket}/bad?uploadId={s3.create_multipart_upload(Bucket=bucket, Key='bad')['UploadId']}",
                       b"<CompleteMultipartUpload><Part>")
    assert resp.status_code == 400 and b"<Code>MalformedXML</Code>" in resp.content


def test_upload_part_copy_with_range_and_checksums(s3, bucket: str) -> None:
    src = bytes(range(256)) * (6 * 4096)  # 6 MiB
    s3.put_object(Bucket=bucket, Key="big-src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc", ChecksumAlgorithm="SHA256")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "big-src"},
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")["CopyPartResult"]
    p2 = s3.upload_part(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=2, Body=b"tail",
                        ChecksumAlgorithm="SHA256")
    assert p2["ChecksumSHA256"]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["ETag"], "ChecksumSHA256": p1["ChecksumSHA256"]},
        {"PartNumber": 2, "ETag": p2["ETag"], "ChecksumSHA256": p2["ChecksumSHA256"]}]})
    assert done["ChecksumSHA256"].endswith("-2")
    assert s3.get_object(Bucket=bucket, Key="pc")["Body"].read() == src[: 5 * MiB] + b"tail"
    head = s3.head_object(Bucket=bucket, Key="pc", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == done["ChecksumSHA256"]


def test_upload_file_default_config_small_parts(s3, bucket: str, tmp_path) -> None:
    data = bytes(range(256)) * (20 * 4096)  # 20 MiB: boto3 goes multipart with CRC32 parts
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    s3.upload_file(str(path), bucket, "uploaded")
    out = io.BytesIO()
    s3.download_fileobj(bucket, "uploaded", out)
    assert out.getvalue() == data
    head = s3.head_object(Bucket=bucket, Key="uploaded", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"') and head.get("ChecksumCRC32")


# -- authentication and accounts -----------------------------------------------------------

def test_auth_errors(server: Server, bucket: str) -> None:
    bad_secret = server.client(ROOT_AK, "wrong-secret")
    with pytest.raises(ClientError) as exc:
        bad_secret.list_buckets()
    assert code_of(exc) == "SignatureDoesNotMatch"
    unknown = server.client("NOSUCHKEY0000000000", "whatever")
    with pytest.raises(ClientError) as exc:
        unknown.list_buckets()
    assert code_of(exc) == "InvalidAccessKeyId"
    anon = requests.get(f"{server.url}/{bucket}", timeout=10)
    assert anon.status_code == 403 and b"<Code>AccessDenied</Code>" in anon.content
    assert anon.headers["x-amz-request-id"]


def test_presigned_urls_and_expiry(server: Server, bucket: str) -> None:
    # boto3 presigns with SigV2 for custom endpoints unless told otherwise; manta speaks SigV4 only
    s3 = server.client(signature_version="s3v4")
    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    assert requests.get(url, timeout=10).content == b"presigned"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pp"}, ExpiresIn=60)
    assert requests.put(put_url, data=b"via presign", timeout=10).status_code == 200
    assert s3.get_object(Bucket=bucket, Key="pp")["Body"].read() == b"via presign"
    short = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=1)
    time.sleep(2.1)
    expired = requests.get(short, timeout=10)
    assert expired.status_code == 403 and b"<Code>AccessDenied</Code>" in expired.content
    tampered = url.replace(f"/{bucket}/p", f"/{bucket}/pp")
    assert b"SignatureDoesNotMatch" in requests.get(tampered, timeout=10).content


def _cli(server: Server, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"MANTA_URL": server.url, "MANTA_ACCESS_KEY": ROOT_AK, "MANTA_SECRET_KEY": ROOT_SK,
            "PATH": "/usr/bin:/bin", **NO_USER_CONFIG}
    return subprocess.run([sys.executable, "-m", "manta", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=REPO, timeout=60)


def test_accounts_are_isolated(server: Server, s3, bucket: str) -> None:
    added = _cli(server, "admin", "user", "add", f"alice{int(time.time() * 1000)}", "--json")
    assert added.returncode == 0, added.stderr
    alice_keys = json.loads(added.stdout)
    alice = server.client(alice_keys["access_key"], alice_keys["secret_key"])
    assert bucket not in [b["Name"] for b in alice.list_buckets()["Buckets"]]
    for call in (lambda: alice.list_objects_v2(Bucket=bucket),
                 lambda: alice.put_object(Bucket=bucket, Key="x", Body=b"x"),
                 lambda: alice.get_object(Bucket=bucket, Key="x"),
                 lambda: alice.copy_object(Bucket="whatever-bucket", Key="x", CopySource={"Bucket": bucket, "Key": "x"})):
        with pytest.raises(ClientError) as exc:
            call()
        assert code_of(exc) in ("AccessDenied", "NoSuchBucket")
    with pytest.raises(ClientError) as exc:
        alice.list_objects_v2(Bucket=bucket)
    assert code_of(exc) == "AccessDenied"
    alice.create_bucket(Bucket=f"{bucket}-alice")
    assert [b["Name"] for b in alice.list_buckets()["Buckets"]] == [f"{bucket}-alice"]
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=f"{bucket}-alice")
    assert code_of(exc) == "BucketAlreadyExists"
    listed = _cli(server, "admin", "user", "list", "--json")
    assert alice_keys["name"] in [u["name"] for u in json.loads(listed.stdout)]
    denied = _cli(server, "admin", "user", "add", "mallory",
                  env={"MANTA_ACCESS_KEY": alice_keys["access_key"], "MANTA_SECRET_KEY": alice_keys["secret_key"]})
    assert denied.returncode != 0 and "AccessDenied" in denied.stderr


def test_root_credentials_generated_in_data_dir(fresh_server: Server) -> None:
    fresh_server.env = {"MANTA_ROOT_ACCESS_KEY": "", "MANTA_ROOT_SECRET_KEY": ""}
    started = time.monotonic()
    fresh_server.start()
    elapsed = time.monotonic() - started
    import os
    import stat

    path = os.path.join(fresh_server.data_dir, "root-credentials.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as fh:
        creds = json.load(fh)
    client = fresh_server.client(creds["access_key"], creds["secret_key"])
    assert client.list_buckets()["Buckets"] == []
    assert path in fresh_server.log()
    listed = _cli(fresh_server, "admin", "user", "list", "--json",
                  env={"MANTA_ACCESS_KEY": "", "MANTA_SECRET_KEY": "", "MANTA_DATA": fresh_server.data_dir})
    assert listed.returncode == 0, listed.stderr
    print(f"server start to first accepted connection: {elapsed:.2f}s")


def test_virtual_host_addressing(fresh_server: Server) -> None:
    fresh_server.extra_args = ["--domain", "s3.test"]
    fresh_server.start()
    path_style = fresh_server.client()
    path_style.create_bucket(Bucket="vhost-bucket")
    path_style.put_object(Bucket="vhost-bucket", Key="k", Body=b"v")
    # the test host has no DNS for *.s3.test: sign for the virtual host, connect to loopback
    host = f"vhost-bucket.s3.test:{fresh_server.port}"
    for path, expect in (("/k", b"v"), ("/?list-type=2", b"<Key>k</Key>")):
        resp = _signed(fresh_server, "GET", path, host=host)
        assert resp.status_code == 200 and expect in resp.content
    assert _signed(fresh_server, "GET", "/vhost-bucket/k").content == b"v"  # path style still works


# -- helpers -----------------------------------------------------------------------------

def _signed(server: Server, method: str, path: str, body: bytes = b"", host: str | None = None) -> requests.Response:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=f"http://{host}{path}" if host else server.url + path, data=body)
    S3SigV4Auth(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    if host:
        headers["host"] = host
    return requests.request(method, server.url + path, data=body, headers=headers, timeout=30)


def _signed_for(s3, method: str, path: str, body: bytes) -> requests.Response:
    url = s3.meta.endpoint_url
    server = Server("", int(url.rsplit(":", 1)[1]))
    return _signed(server, method, path, body)


def test_request_id_on_every_response(server: Server, bucket: str) -> None:
    for resp in (requests.get(f"{server.url}/", timeout=10), _signed(server, "GET", f"/{bucket}"),
                 _signed(server, "GET", f"/{bucket}/missing")):
        assert len(resp.headers["x-amz-request-id"]) == 16
    err = _signed(server, "GET", f"/{bucket}/missing")
    assert f"<RequestId>{err.headers['x-amz-request-id']}</RequestId>".encode() in err.content
    assert b"<Resource>" in err.content and b"<Message>" in err.content
