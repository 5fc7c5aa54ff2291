"""S3 object handlers in-process (tests/inprocess.py): PUT/GET/HEAD/DELETE, ranges,
conditional headers, metadata, copy, conditional writes."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

import storage.store as storage_store
from storage import BucketRef
from storage.catalog import generation_of
from tests.inprocess import InProcessS3, error_code, xml

ZERO_ETAG = '"' + "0" * 32 + '"'


def md5_etag(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'


def test_put_get_head_delete(s3: InProcessS3, bucket: str) -> None:
    put = s3.put(bucket, "dir/a b.txt", b"hello world", **{"content-type": "text/plain"})
    assert put.headers["etag"] == md5_etag(b"hello world")
    got = s3.request("GET", f"/{bucket}/dir/a b.txt")
    assert got.status_code == 200
    assert got.content == b"hello world"
    assert got.headers["content-type"] == "text/plain"
    assert got.headers["etag"] == put.headers["etag"]
    assert got.headers["content-length"] == "11"
    assert got.headers["x-amz-request-id"]
    head = s3.request("HEAD", f"/{bucket}/dir/a b.txt")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "11" and head.headers["accept-ranges"] == "bytes"
    assert "last-modified" in head.headers
    deleted = s3.request("DELETE", f"/{bucket}/dir/a b.txt")
    assert deleted.status_code == 204
    missing = s3.request("GET", f"/{bucket}/dir/a b.txt")
    assert missing.status_code == 404 and error_code(missing) == "NoSuchKey"
    assert s3.request("HEAD", f"/{bucket}/dir/a b.txt").status_code == 404
    assert s3.request("DELETE", f"/{bucket}/dir/a b.txt").status_code == 204  # idempotent


def test_overwrite_and_empty_object(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "k", b"first")
    s3.put(bucket, "k", b"")
    got = s3.request("GET", f"/{bucket}/k")
    assert got.status_code == 200 and got.content == b""
    assert got.headers["etag"] == md5_etag(b"")


def test_user_metadata_and_stored_headers(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "m", b"meta", **{"x-amz-meta-colour": "blue", "x-amz-meta-Size": "XL",
                                      "cache-control": "max-age=60", "content-disposition": "inline",
                                      "content-encoding": "identity"})
    head = s3.request("HEAD", f"/{bucket}/m")
    assert head.headers["x-amz-meta-colour"] == "blue"
    assert head.headers["x-amz-meta-size"] == "XL"
    assert head.headers["cache-control"] == "max-age=60"
    assert head.headers["content-disposition"] == "inline"


def test_response_header_overrides(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "o", b"x")
    got = s3.request("GET", f"/{bucket}/o", query={"response-content-type": "application/json",
                                                    "response-content-disposition": "attachment"})
    assert got.headers["content-type"] == "application/json"
    assert got.headers["content-disposition"] == "attachment"


def test_content_md5_is_checked(s3: InProcessS3, bucket: str) -> None:
    good = base64.b64encode(hashlib.md5(b"body").digest()).decode()
    assert s3.request("PUT", f"/{bucket}/md5", body=b"body", headers={"content-md5": good}).status_code == 200
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    bad = s3.request("PUT", f"/{bucket}/md5", body=b"body!", headers={"content-md5": wrong})
    assert bad.status_code == 400 and error_code(bad) == "BadDigest"
    garbage = s3.request("PUT", f"/{bucket}/md5", body=b"body", headers={"content-md5": "not-base64!"})
    assert garbage.status_code == 400 and error_code(garbage) == "InvalidDigest"
    assert s3.request("GET", f"/{bucket}/md5").content == b"body"  # the failed PUTs changed nothing


def test_ranges(s3: InProcessS3, bucket: str) -> None:
    data = bytes(range(256)) * 4
    s3.put(bucket, "r", data)
    for header, expected, content_range in [
        ("bytes=0-9", data[:10], "bytes 0-9/1024"),
        ("bytes=1000-", data[1000:], "bytes 1000-1023/1024"),
        ("bytes=-5", data[-5:], "bytes 1019-1023/1024"),
        ("bytes=1020-5000", data[1020:], "bytes 1020-1023/1024"),
    ]:
        got = s3.request("GET", f"/{bucket}/r", headers={"range": header})
        assert got.status_code == 206, header
        assert got.content == expected, header
        assert got.headers["content-range"] == content_range
        assert got.headers["content-length"] == str(len(expected))
    beyond = s3.request("GET", f"/{bucket}/r", headers={"range": "bytes=1024-"})
    assert beyond.status_code == 416 and error_code(beyond) == "InvalidRange"
    # a range S3 cannot satisfy as written is ignored: the whole object
    whole = s3.request("GET", f"/{bucket}/r", headers={"range": "bytes=9-3"})
    assert whole.status_code == 200 and whole.content == data


def test_conditional_get_and_head(s3: InProcessS3, bucket: str) -> None:
    etag = s3.put(bucket, "c", b"conditional").headers["etag"]
    modified = s3.request("HEAD", f"/{bucket}/c").headers["last-modified"]
    path = f"/{bucket}/c"
    assert s3.request("GET", path, headers={"if-match": etag}).status_code == 200
    failed = s3.request("GET", path, headers={"if-match": ZERO_ETAG})
    assert failed.status_code == 412 and error_code(failed) == "PreconditionFailed"
    assert s3.request("GET", path, headers={"if-none-match": etag}).status_code == 304
    assert s3.request("GET", path, headers={"if-none-match": ZERO_ETAG}).status_code == 200
    assert s3.request("GET", path, headers={"if-modified-since": modified}).status_code == 304
    assert s3.request("GET", path, headers={"if-unmodified-since": "Sat, 01 Jan 2000 00:00:00 GMT"}) \
        .status_code == 412
    assert s3.request("HEAD", path, headers={"if-none-match": etag}).status_code == 304
    # If-Match true wins over If-Unmodified-Since false (RFC 7232 as S3 applies it)
    both = s3.request("GET", path, headers={"if-match": etag,
                                            "if-unmodified-since": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert both.status_code == 200


def test_conditional_put(s3: InProcessS3, bucket: str) -> None:
    # moved from tests/e2e/test_s3_multipart_conditional.py (test_conditional_put_over_http)
    path = f"/{bucket}/h"
    made = s3.request("PUT", path, body=b"first", headers={"If-None-Match": "*"})
    assert made.status_code == 200, made.text
    refused = s3.request("PUT", path, body=b"second", headers={"If-None-Match": "*"})
    assert refused.status_code == 412 and error_code(refused) == "PreconditionFailed"
    stale = s3.request("PUT", path, body=b"second", headers={"If-Match": '"' + "1" * 32 + '"'})
    assert stale.status_code == 412 and error_code(stale) == "PreconditionFailed"
    absent = s3.request("PUT", f"/{bucket}/nothing", body=b"x", headers={"If-Match": made.headers["etag"]})
    assert absent.status_code == 404 and error_code(absent) == "NoSuchKey"
    fresh = s3.request("PUT", path, body=b"third", headers={"If-Match": made.headers["etag"]})
    assert fresh.status_code == 200
    assert s3.request("GET", path).content == b"third"
    assert s3.request("GET", f"/{bucket}/nothing").status_code == 404


def test_copy_object_with_directives_and_conditions(s3: InProcessS3, bucket: str) -> None:
    etag = s3.put(bucket, "src", b"copy me", **{"x-amz-meta-a": "1", "content-type": "text/x-src"}).headers["etag"]
    copied = s3.request("PUT", f"/{bucket}/dst", headers={"x-amz-copy-source": f"/{bucket}/src"})
    assert copied.status_code == 200
    result = xml(copied)
    assert result.tag.endswith("CopyObjectResult")
    assert any(e.tag.endswith("ETag") and e.text == etag for e in result)
    head = s3.request("HEAD", f"/{bucket}/dst")
    assert head.headers["x-amz-meta-a"] == "1" and head.headers["content-type"] == "text/x-src"
    replaced = s3.request("PUT", f"/{bucket}/dst2", headers={
        "x-amz-copy-source": f"{bucket}/src", "x-amz-metadata-directive": "REPLACE",
        "x-amz-meta-b": "2", "content-type": "text/x-new"})
    assert replaced.status_code == 200
    head = s3.request("HEAD", f"/{bucket}/dst2")
    assert head.headers.get("x-amz-meta-a") is None and head.headers["x-amz-meta-b"] == "2"
    assert s3.request("GET", f"/{bucket}/dst2").content == b"copy me"
    refused = s3.request("PUT", f"/{bucket}/dst3", headers={
        "x-amz-copy-source": f"{bucket}/src", "x-amz-copy-source-if-match": ZERO_ETAG})
    assert refused.status_code == 412 and error_code(refused) == "PreconditionFailed"
    onto_itself = s3.request("PUT", f"/{bucket}/src", headers={"x-amz-copy-source": f"{bucket}/src"})
    assert onto_itself.status_code == 400 and error_code(onto_itself) == "InvalidRequest"
    missing = s3.request("PUT", f"/{bucket}/dst4", headers={"x-amz-copy-source": f"{bucket}/nope"})
    assert missing.status_code == 404 and error_code(missing) == "NoSuchKey"


def test_copy_source_with_nul_is_invalid_argument(s3: InProcessS3, bucket: str) -> None:
    # moved from tests/e2e/test_bad_input.py
    reply = s3.request("PUT", f"/{bucket}/dst", headers={"x-amz-copy-source": f"{bucket}/a%00b"})
    assert reply.status_code == 400 and error_code(reply) == "InvalidArgument"
    assert s3.request("HEAD", f"/{bucket}/dst").status_code == 404


def test_delete_objects_quiet_and_verbose(s3: InProcessS3, bucket: str) -> None:
    for key in ("a", "b", "c"):
        s3.put(bucket, key, key.encode())
    body = b"<Delete><Object><Key>a</Key></Object><Object><Key>zz</Key></Object></Delete>"
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    verbose = s3.request("POST", f"/{bucket}", query={"delete": ""}, body=body, headers={"content-md5": md5})
    assert verbose.status_code == 200, verbose.text
    assert verbose.content.count(b"<Deleted>") == 2  # a key that was not there is deleted too
    quiet_body = b"<Delete><Quiet>true</Quiet><Object><Key>b</Key></Object></Delete>"
    quiet = s3.request("POST", f"/{bucket}", query={"delete": ""}, body=quiet_body,
                       headers={"content-md5": base64.b64encode(hashlib.md5(quiet_body).digest()).decode()})
    assert quiet.status_code == 200 and b"<Deleted>" not in quiet.content
    assert s3.request("HEAD", f"/{bucket}/b").status_code == 404
    assert s3.request("HEAD", f"/{bucket}/c").status_code == 200


def test_object_attributes(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "attrs", b"12345")
    got = s3.request("GET", f"/{bucket}/attrs", query={"attributes": ""},
                     headers={"x-amz-object-attributes": "ObjectSize,ETag"})
    assert got.status_code == 200, got.text
    assert b"<ObjectSize>5</ObjectSize>" in got.content


def assert_answered_after(change: str, got: Any, new: bytes) -> None:
    """The GET answered as if it came after the write: 404 for a delete, the new bytes else."""
    if change == "delete":
        assert got.status_code == 404 and error_code(got) == "NoSuchKey"
    else:
        assert got.status_code == 200 and got.content == new


@pytest.mark.parametrize("change", ["delete", "overwrite"])
def test_a_get_racing_a_write_answers_the_current_object(s3: InProcessS3, bucket: str,
                                                         monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The GET has read the object's record when another request deletes or overwrites the
    object, freeing its blobs, before the GET opens them: the GET answers as if it came after
    that write (404 NoSuchKey, or the new bytes), never 503 'blob is not in the catalog'.
    (Objects over 64 KiB open their blobs in a worker thread, where the write can be sent.)"""
    old, new = b"o" * 100_000, b"n" * 100_000
    s3.put(bucket, "k", old)
    readers = s3.store.readers
    raced: list[str] = []

    def write_first(blob_ids: list[str], txn: Any = None) -> Any:
        if not raced:
            raced.append(change)
            record = s3.store.catalog.buckets.get(bucket)
            ref = BucketRef(record.name, record.owner, generation_of(record))
            if change == "delete":
                s3.store.objects.delete(ref, "k")
            else:
                s3.put(bucket, "k", new)
        return readers(blob_ids, txn)

    monkeypatch.setattr(s3.store, "readers", write_first)
    got = s3.request("GET", f"/{bucket}/k")
    assert raced == [change]
    assert_answered_after(change, got, new)


@pytest.mark.parametrize("change", ["delete", "overwrite"])
def test_a_blob_freed_between_record_and_open_is_not_queued_for_repair(
        s3: InProcessS3, bucket: str, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The narrower window: the GET's store has read the blob's catalog record, and the
    write frees the blob's files before the GET opens a replica. The GET answers as if it
    came after the write, and the missing files are not reported as damage."""
    old, new = b"o" * 100_000, b"n" * 100_000
    s3.put(bucket, "k", old)
    reader_class = storage_store.BlobReader
    raced: list[str] = []

    class WriteFirst(reader_class):  # type: ignore[misc, valid-type]
        def prime(self) -> bool:
            if not raced:
                raced.append(change)
                record = s3.store.catalog.buckets.get(bucket)
                ref = BucketRef(record.name, record.owner, generation_of(record))
                if change == "delete":
                    s3.store.free(s3.store.objects.delete(ref, "k"))
                else:
                    s3.put(bucket, "k", new)
            return bool(super().prime())

    monkeypatch.setattr(storage_store, "BlobReader", WriteFirst)
    got = s3.request("GET", f"/{bucket}/k")
    assert raced == [change]
    assert_answered_after(change, got, new)
    with s3.store.catalog.read() as txn:
        assert list(s3.store.catalog.scan(txn, "repairs")) == []
