"""S3 multipart handlers in-process (tests/inprocess.py): create, upload part, list parts
and uploads, complete (and repeat it), abort, and the errors of a bad completion."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.inprocess import InProcessS3, error_code, texts, xml

MIB = 1024 * 1024
ZERO_ETAG = '"' + "0" * 32 + '"'


def create(s3: InProcessS3, bucket: str, key: str, **headers: str) -> str:
    made = s3.request("POST", f"/{bucket}/{key}", query={"uploads": ""}, headers=headers)
    assert made.status_code == 200, made.text
    (upload_id,) = texts(xml(made), "UploadId")
    return upload_id


def upload(s3: InProcessS3, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
    sent = s3.request("PUT", f"/{bucket}/{key}", query={"partNumber": str(number), "uploadId": upload_id},
                      body=body)
    assert sent.status_code == 200, sent.text
    return sent.headers["etag"]


def complete_xml(parts: list[tuple[int, str]]) -> bytes:
    listed = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts)
    return f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()


def complete(s3: InProcessS3, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str]]) -> httpx.Response:
    return s3.request("POST", f"/{bucket}/{key}", query={"uploadId": upload_id}, body=complete_xml(parts))


def test_lifecycle(s3: InProcessS3, bucket: str) -> None:
    uid = create(s3, bucket, "big", **{"content-type": "text/x-parts", "x-amz-meta-m": "1"})
    listed = xml(s3.request("GET", f"/{bucket}", query={"uploads": ""}))
    assert texts(listed, "Upload/UploadId") == [uid] and texts(listed, "Upload/Key") == ["big"]
    first, second = b"a" * (5 * MIB), b"tail"
    etags = [upload(s3, bucket, "big", uid, 1, first), upload(s3, bucket, "big", uid, 2, second)]
    parts = xml(s3.request("GET", f"/{bucket}/big", query={"uploadId": uid}))
    assert texts(parts, "Part/PartNumber") == ["1", "2"]
    assert texts(parts, "Part/Size") == [str(5 * MIB), "4"]
    assert texts(parts, "Part/ETag") == etags
    page = xml(s3.request("GET", f"/{bucket}/big", query={"uploadId": uid, "max-parts": "1"}))
    assert texts(page, "Part/PartNumber") == ["1"] and texts(page, "IsTruncated") == ["true"]
    done = complete(s3, bucket, "big", uid, list(enumerate(etags, 1)))
    assert done.status_code == 200, done.text
    digest = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest()
    assert texts(xml(done), "ETag") == [f'"{digest}-2"']
    got = s3.request("GET", f"/{bucket}/big")
    assert got.content == first + second
    assert got.headers["content-type"] == "text/x-parts" and got.headers["x-amz-meta-m"] == "1"
    part2 = s3.request("HEAD", f"/{bucket}/big", query={"partNumber": "2"})
    assert part2.status_code == 206 and part2.headers["content-length"] == "4"
    assert texts(xml(s3.request("GET", f"/{bucket}", query={"uploads": ""})), "Upload/UploadId") == []


def test_abort(s3: InProcessS3, bucket: str) -> None:
    uid = create(s3, bucket, "gone")
    upload(s3, bucket, "gone", uid, 1, b"part")
    assert s3.request("DELETE", f"/{bucket}/gone", query={"uploadId": uid}).status_code == 204
    missing = s3.request("GET", f"/{bucket}/gone", query={"uploadId": uid})
    assert missing.status_code == 404 and error_code(missing) == "NoSuchUpload"
    late = s3.request("PUT", f"/{bucket}/gone", query={"partNumber": "2", "uploadId": uid}, body=b"x")
    assert late.status_code == 404 and error_code(late) == "NoSuchUpload"
    assert s3.request("HEAD", f"/{bucket}/gone").status_code == 404


def test_completion_errors(s3: InProcessS3, bucket: str) -> None:
    uid = create(s3, bucket, "mp")
    small = [upload(s3, bucket, "mp", uid, n, b"tiny") for n in (1, 2)]
    too_small = complete(s3, bucket, "mp", uid, list(enumerate(small, 1)))
    assert too_small.status_code == 400 and error_code(too_small) == "EntityTooSmall"
    order = complete(s3, bucket, "mp", uid, [(2, small[1]), (1, small[0])])
    assert order.status_code == 400 and error_code(order) == "InvalidPartOrder"
    wrong_etag = complete(s3, bucket, "mp", uid, [(1, ZERO_ETAG)])
    assert wrong_etag.status_code == 400 and error_code(wrong_etag) == "InvalidPart"
    never_sent = complete(s3, bucket, "mp", uid, [(1, small[0]), (7, small[1])])
    assert never_sent.status_code == 400 and error_code(never_sent) == "InvalidPart"
    empty = s3.request("POST", f"/{bucket}/mp", query={"uploadId": uid},
                       body=b"<CompleteMultipartUpload></CompleteMultipartUpload>")
    assert empty.status_code == 400 and error_code(empty) == "MalformedXML"
    assert s3.request("HEAD", f"/{bucket}/mp").status_code == 404  # nothing was completed
    unknown = complete(s3, bucket, "mp", "not-an-upload", [(1, small[0])])
    assert unknown.status_code == 404 and error_code(unknown) == "NoSuchUpload"


@pytest.mark.parametrize("number", ["0", "10001", "x"])
def test_bad_part_number(s3: InProcessS3, bucket: str, number: str) -> None:
    uid = create(s3, bucket, "pn")
    bad = s3.request("PUT", f"/{bucket}/pn", query={"partNumber": number, "uploadId": uid}, body=b"x")
    assert bad.status_code == 400 and error_code(bad) == "InvalidArgument"


@pytest.mark.parametrize("body", [b"<CompleteMultipartUpload><Part>", b"garbage", b"<Wrong/>",
                                  b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber>"
                                  b"<ETag>e</ETag></Part></CompleteMultipartUpload>"])
def test_malformed_complete_multipart_upload(s3: InProcessS3, bucket: str, body: bytes) -> None:
    # moved from tests/e2e/test_bad_input.py
    uid = create(s3, bucket, "mp")
    upload(s3, bucket, "mp", uid, 1, b"p1")
    reply = s3.request("POST", f"/{bucket}/mp", query={"uploadId": uid}, body=body)
    assert reply.status_code == 400 and error_code(reply) == "MalformedXML"
    assert s3.request("HEAD", f"/{bucket}/mp").status_code == 404
    assert texts(xml(s3.request("GET", f"/{bucket}/mp", query={"uploadId": uid})), "Part/PartNumber") == ["1"]


def test_repeated_complete_returns_the_same_body(s3: InProcessS3, bucket: str) -> None:
    # moved from tests/e2e/test_s3_multipart_conditional.py (..._over_http)
    uid = create(s3, bucket, "sums", **{"x-amz-checksum-algorithm": "SHA256"})
    sent = s3.request("PUT", f"/{bucket}/sums", query={"partNumber": "1", "uploadId": uid}, body=b"only part",
                      headers={"x-amz-sdk-checksum-algorithm": "SHA256"})
    assert sent.status_code == 200, sent.text
    parts = [(1, sent.headers["etag"])]
    first, again = complete(s3, bucket, "sums", uid, parts), complete(s3, bucket, "sums", uid, parts)
    assert first.status_code == 200, first.text
    assert again.status_code == 200, again.text
    for name in ("ETag", "Bucket", "Key", "ChecksumSHA256", "ChecksumType"):
        assert texts(xml(again), name) == texts(xml(first), name), name
    assert texts(xml(first), "ChecksumSHA256") != [""]
    other = complete(s3, bucket, "sums", uid, [(1, ZERO_ETAG)])
    assert other.status_code == 404 and error_code(other) == "NoSuchUpload"
    s3.request("DELETE", f"/{bucket}/sums")
    gone = complete(s3, bucket, "sums", uid, parts)
    assert gone.status_code == 404 and error_code(gone) == "NoSuchUpload"


def test_a_part_listed_twice(s3: InProcessS3, bucket: str) -> None:
    # moved from tests/e2e/test_s3_multipart_conditional.py (..._over_http)
    uid = create(s3, bucket, "dup")
    etag = ""
    for _ in range(2):  # a client that re-sent part 1 with the same bytes
        etag = upload(s3, bucket, "dup", uid, 1, b"same")
    answer = complete(s3, bucket, "dup", uid, [(1, etag), (1, etag)])
    assert answer.status_code == 200, answer.text
    assert texts(xml(answer), "ETag")[0].endswith('-1"')
    assert s3.request("GET", f"/{bucket}/dup").content == b"same"


def test_upload_part_copy_with_a_range(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "source", bytes(range(100)))
    uid = create(s3, bucket, "copied")
    copied = s3.request("PUT", f"/{bucket}/copied", query={"partNumber": "1", "uploadId": uid},
                        headers={"x-amz-copy-source": f"{bucket}/source",
                                 "x-amz-copy-source-range": "bytes=10-19"})
    assert copied.status_code == 200, copied.text
    (etag,) = texts(xml(copied), "ETag")
    assert complete(s3, bucket, "copied", uid, [(1, etag)]).status_code == 200
    assert s3.request("GET", f"/{bucket}/copied").content == bytes(range(10, 20))


def list_uploads_pages(s3: InProcessS3, bucket: str, **query: str) -> list[tuple[list[str], list[str]]]:
    """Every page of ListMultipartUploads, following its next markers: (keys, common prefixes) each."""
    pages: list[tuple[list[str], list[str]]] = []
    markers: dict[str, str] = {}
    while True:
        assert len(pages) < 50, "the pages do not end"
        page = xml(s3.request("GET", f"/{bucket}", query={"uploads": "", **query, **markers}))
        pages.append((texts(page, "Upload/Key"), texts(page, "CommonPrefixes/Prefix")))
        if texts(page, "IsTruncated") != ["true"]:
            return pages
        (key,), (upload_id,) = texts(page, "NextKeyMarker"), texts(page, "NextUploadIdMarker")
        markers = {"key-marker": key, "upload-id-marker": upload_id}


def test_list_uploads_pages_with_and_without_a_delimiter(s3: InProcessS3, bucket: str) -> None:
    for key in ("a", "d/1", "d/2", "d/3", "e/1", "f", "f"):
        create(s3, bucket, key)
    assert list_uploads_pages(s3, bucket, **{"max-uploads": "2"}) == [
        (["a", "d/1"], []), (["d/2", "d/3"], []), (["e/1", "f"], []), (["f"], [])]
    # a common prefix counts as one entry, is listed once, and the next page goes on after it
    assert list_uploads_pages(s3, bucket, delimiter="/", **{"max-uploads": "1"}) == [
        (["a"], []), ([], ["d/"]), ([], ["e/"]), (["f"], []), (["f"], [])]
    assert list_uploads_pages(s3, bucket, delimiter="/", **{"max-uploads": "3"}) == [
        (["a"], ["d/", "e/"]), (["f", "f"], [])]
    assert list_uploads_pages(s3, bucket, prefix="d/", **{"max-uploads": "2"}) == [(["d/1", "d/2"], []), (["d/3"], [])]


def test_aborting_each_page_of_uploads_before_the_next_lists_them_all(s3: InProcessS3, bucket: str) -> None:
    """The cleanup loop of S3 tools: list a page, abort its uploads, ask for the next page
    with the markers of the page just aborted."""
    made = [create(s3, bucket, "k") for _ in range(5)]
    seen: list[str] = []
    markers: dict[str, str] = {}
    while True:
        assert len(seen) <= len(made), "the pages do not end"
        page = xml(s3.request("GET", f"/{bucket}", query={"uploads": "", "max-uploads": "2", **markers}))
        for upload_id in texts(page, "Upload/UploadId"):
            seen.append(upload_id)
            assert s3.request("DELETE", f"/{bucket}/k", query={"uploadId": upload_id}).status_code == 204
        if texts(page, "IsTruncated") != ["true"]:
            break
        (key,), (upload_id,) = texts(page, "NextKeyMarker"), texts(page, "NextUploadIdMarker")
        markers = {"key-marker": key, "upload-id-marker": upload_id}
    assert seen == made  # in the order they were created


def test_list_counts_of_zero_and_below(s3: InProcessS3, bucket: str) -> None:
    """max-uploads and max-parts 0 answer an empty page that is not truncated (as max-keys
    0: a truncated one would have a client ask for the same page for ever); below 0 is
    InvalidArgument."""
    upload_id = create(s3, bucket, "k")
    upload(s3, bucket, "k", upload_id, 1, b"x")
    empty = xml(s3.request("GET", f"/{bucket}", query={"uploads": "", "max-uploads": "0"}))
    assert texts(empty, "Upload/Key") == [] and texts(empty, "IsTruncated") == ["false"]
    empty = xml(s3.request("GET", f"/{bucket}/k", query={"uploadId": upload_id, "max-parts": "0"}))
    assert texts(empty, "Part/PartNumber") == [] and texts(empty, "IsTruncated") == ["false"]
    for path, query in ((f"/{bucket}", {"uploads": "", "max-uploads": "-1"}),
                        (f"/{bucket}/k", {"uploadId": upload_id, "max-parts": "-1"}),
                        (f"/{bucket}/k", {"uploadId": upload_id, "part-number-marker": "-5"})):
        refused = s3.request("GET", path, query=query)
        assert refused.status_code == 400 and error_code(refused) == "InvalidArgument", query
