"""S3 versioning through boto3 against a real `manta serve`: bucket status, version ids on
every write, reads/deletes/copies by version, delete markers, the null version,
ListObjectVersions paging and DeleteObjects with version ids, and the refusals."""

from __future__ import annotations

import hashlib
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_crash import sign

MIB = 1024 * 1024


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = exc.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


def enable(s3: Any, bucket: str, status: str = "Enabled") -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def versions(server: Server, bucket: str, page_size: int = 1000, **params: str) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is latest, is a delete marker) of every entry in the server's order
    (boto3 splits versions and markers into two lists), following NextKeyMarker and
    NextVersionIdMarker."""
    out: list[tuple[str, str, bool, bool]] = []
    query = {"versions": "", "max-keys": str(page_size), **params}
    while True:
        target = f"/{bucket}?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        answer = requests.get(server.url + target, headers=sign(server, "GET", target), timeout=10)
        assert answer.status_code == 200, answer.content
        root = ET.fromstring(answer.content)
        for entry in root:
            if entry.tag in (NS + "Version", NS + "DeleteMarker"):
                out.append((entry.findtext(NS + "Key", ""), entry.findtext(NS + "VersionId", ""),
                            entry.findtext(NS + "IsLatest") == "true", entry.tag == NS + "DeleteMarker"))
        if root.findtext(NS + "IsTruncated") != "true":
            return out
        query["key-marker"] = root.findtext(NS + "NextKeyMarker", "")
        query.pop("version-id-marker", None)
        if root.find(NS + "NextVersionIdMarker") is not None:
            query["version-id-marker"] = root.findtext(NS + "NextVersionIdMarker", "")


def empty(s3: Any, server: Server, bucket: str) -> None:
    for key, vid, _, _ in versions(server, bucket):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=vid)
    s3.delete_bucket(Bucket=bucket)


def test_bucket_versioning_status(s3: Any, bucket: str, server: Server) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)  # never versioned: empty
    enable(s3, bucket)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    enable(s3, bucket, "Suspended")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled", "MFADelete": "Enabled"},
                                 MFA="serial 123456")
    assert error_of(exc) == (501, "NotImplemented")
    body = b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>On</Status>' \
           b'</VersioningConfiguration>'
    target = f"/{bucket}?versioning"
    answer = requests.put(server.url + target, data=body, headers=sign(server, "PUT", target, body=body), timeout=10)
    assert answer.status_code == 400 and b"MalformedXML" in answer.content
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_versioning(Bucket="no-such-bucket-versioning")
    assert error_of(exc) == (404, "NoSuchBucket")


def test_versions_of_put_copy_and_multipart(s3: Any, bucket: str, server: Server) -> None:
    assert "VersionId" not in s3.put_object(Bucket=bucket, Key="k", Body=b"before")  # unversioned: no id
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    assert v1 != v2 and v1 != "null"
    copied = s3.copy_object(Bucket=bucket, Key="k2", CopySource={"Bucket": bucket, "Key": "k", "VersionId": v1})
    assert copied["CopySourceVersionId"] == v1 and copied["VersionId"] not in (v1, v2)
    assert s3.get_object(Bucket=bucket, Key="k2")["Body"].read() == b"one"
    up = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    part1 = s3.upload_part(Bucket=bucket, Key="k", UploadId=up, PartNumber=1, Body=b"a" * (5 * MIB))["ETag"]
    part2 = s3.upload_part_copy(Bucket=bucket, Key="k", UploadId=up, PartNumber=2,
                                CopySource={"Bucket": bucket, "Key": "k", "VersionId": v1})["CopyPartResult"]["ETag"]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": part1}, {"PartNumber": 2, "ETag": part2}]})
    v3 = done["VersionId"]
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["VersionId"] == v3 and got["Body"].read() == b"a" * (5 * MIB) + b"one"
    for vid, body in ((v1, b"one"), (v2, b"two"), ("null", b"before")):
        one = s3.get_object(Bucket=bucket, Key="k", VersionId=vid)
        assert one["VersionId"] == vid and one["Body"].read() == body
        assert s3.head_object(Bucket=bucket, Key="k", VersionId=vid)["ContentLength"] == len(body)
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v2, Range="bytes=1-")["Body"].read() == b"wo"
    assert [(k, v, latest) for k, v, latest, _ in versions(server, bucket)] == [
        ("k", v3, True), ("k", v2, False), ("k", v1, False), ("k", "null", False), ("k2", copied["VersionId"], True)]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", VersionId="00" * 12)
    assert error_of(exc) == (404, "NoSuchVersion")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert error_of(exc) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k4", CopySource={"Bucket": bucket, "Key": "k", "VersionId": "00" * 12})
    assert error_of(exc) == (404, "NoSuchVersion")
    empty(s3, server, bucket)


def test_delete_markers(s3: Any, bucket: str, server: Server) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    deleted = s3.delete_object(Bucket=bucket, Key="k")
    assert deleted["DeleteMarker"] is True
    marker = deleted["VersionId"]
    assert marker not in (v1, v2)
    # the latest is a marker: 404 NoSuchKey with x-amz-delete-marker
    response = requests.get(f"{server.url}/{bucket}/k", headers=sign(server, "GET", f"/{bucket}/k"), timeout=10)
    assert response.status_code == 404 and b"<Code>NoSuchKey</Code>" in response.content
    assert response.headers["x-amz-delete-marker"] == "true" and response.headers["x-amz-version-id"] == marker
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert error_of(exc)[0] == 404
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)  # listings show current objects only
    # GET by the marker's id: 405 MethodNotAllowed
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", VersionId=marker)
    assert error_of(exc) == (405, "MethodNotAllowed")
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k3", CopySource={"Bucket": bucket, "Key": "k", "VersionId": marker})
    assert error_of(exc) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k3", CopySource={"Bucket": bucket, "Key": "k"})
    assert error_of(exc) == (404, "NoSuchKey")
    assert versions(server, bucket) == [("k", marker, True, True), ("k", v2, False, False), ("k", v1, False, False)]
    # a bucket holding only old versions and markers is not empty
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert error_of(exc) == (409, "BucketNotEmpty")
    # deleting the marker by id makes v2 current again
    removed = s3.delete_object(Bucket=bucket, Key="k", VersionId=marker)
    assert removed["DeleteMarker"] is True and removed["VersionId"] == marker
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    # deleting the current version by id makes the previous one current
    removed = s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)
    assert removed["VersionId"] == v2 and "DeleteMarker" not in removed
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["VersionId"] == v1 and got["Body"].read() == b"one"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="k", VersionId=v2)
    assert error_of(exc) == (404, "NoSuchVersion")
    empty(s3, server, bucket)


def test_suspended_writes_the_null_version(s3: Any, bucket: str, server: Server) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    enable(s3, bucket, "Suspended")
    s3.put_object(Bucket=bucket, Key="k", Body=b"null-1")
    assert s3.put_object(Bucket=bucket, Key="k", Body=b"null-2").get("VersionId", "null") == "null"
    assert s3.head_object(Bucket=bucket, Key="k")["VersionId"] == "null"
    assert versions(server, bucket) == [("k", "null", True, False), ("k", v1, False, False)]
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"null-2"
    deleted = s3.delete_object(Bucket=bucket, Key="k")  # a null marker replaces the null version
    assert deleted["DeleteMarker"] is True and deleted["VersionId"] == "null"
    assert versions(server, bucket) == [("k", "null", True, True), ("k", v1, False, False)]
    enable(s3, bucket)  # re-enabled: new writes get ids again, the null marker stays in the history
    v3 = s3.put_object(Bucket=bucket, Key="k", Body=b"three")["VersionId"]
    assert versions(server, bucket) == [("k", v3, True, False), ("k", "null", False, True), ("k", v1, False, False)]
    empty(s3, server, bucket)


def test_list_object_versions_pages_prefixes_and_markers(s3: Any, bucket: str, server: Server) -> None:
    enable(s3, bucket)
    made: dict[str, list[str]] = {}
    for key in ("a", "b/1", "b/2", "c"):
        made[key] = [s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * n)["VersionId"] for n in (1, 2)][::-1]
    gone = s3.delete_object(Bucket=bucket, Key="c")["VersionId"]
    expected = [(k, v, i == 0, False) for k in ("a", "b/1", "b/2") for i, v in enumerate(made[k])]
    expected += [("c", gone, True, True)] + [("c", v, False, False) for v in made["c"]]
    assert versions(server, bucket) == expected
    for size in (1, 2, 3):
        assert versions(server, bucket, page_size=size) == expected
    paged = [page for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2})]
    assert sorted((v["Key"], v["VersionId"]) for p in paged for v in p.get("Versions", []) + p.get("DeleteMarkers", [])) \
        == sorted((k, v) for k, v, _, _ in expected)
    page = s3.list_object_versions(Bucket=bucket, MaxKeys=3)
    assert page["IsTruncated"] and page["NextKeyMarker"] == "b/1" and page["NextVersionIdMarker"] == made["b/1"][0]
    rest = s3.list_object_versions(Bucket=bucket, KeyMarker="b/1", VersionIdMarker=made["b/1"][0], MaxKeys=1)
    assert [(v["Key"], v["VersionId"]) for v in rest["Versions"]] == [("b/1", made["b/1"][1])]
    after = s3.list_object_versions(Bucket=bucket, KeyMarker="b/2")  # keys after b/2
    assert {v["Key"] for v in after.get("Versions", [])} == {"c"} and after["DeleteMarkers"][0]["Key"] == "c"
    grouped = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["b/"]
    assert {v["Key"] for v in grouped["Versions"]} == {"a", "c"}
    prefixed = s3.list_object_versions(Bucket=bucket, Prefix="b/")
    assert [(v["Key"], v["VersionId"]) for v in prefixed["Versions"]] == [
        (k, v) for k in ("b/1", "b/2") for v in made[k]]
    version = prefixed["Versions"][0]
    assert version["Size"] == 6 and version["ETag"] == '"' + hashlib.md5(b"b/1" * 2).hexdigest() + '"'
    with pytest.raises(ClientError) as exc:
        s3.list_object_versions(Bucket=bucket, VersionIdMarker=made["a"][0])
    assert error_of(exc) == (400, "InvalidArgument")
    empty(s3, server, bucket)


def test_delete_objects_with_version_ids(s3: Any, bucket: str, server: Server) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="x", Body=b"1")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="x", Body=b"2")["VersionId"]
    s3.put_object(Bucket=bucket, Key="y", Body=b"y")
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "x", "VersionId": v1}, {"Key": "y"}, {"Key": "x", "VersionId": "bogus"}]})
    deleted = {(d["Key"], d.get("VersionId")): d for d in result["Deleted"]}
    assert set(deleted) == {("x", v1), ("y", None)}
    assert deleted[("y", None)]["DeleteMarker"] is True and deleted[("y", None)]["DeleteMarkerVersionId"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("x", "NoSuchVersion")]
    marker = deleted[("y", None)]["DeleteMarkerVersionId"]
    assert versions(server, bucket) == [("x", v2, True, False), ("y", marker, True, True), ("y", versions(server, bucket)[2][1],
                                                                                        False, False)]
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "y", "VersionId": marker}]})
    assert result["Deleted"][0]["DeleteMarker"] is True and result["Deleted"][0]["DeleteMarkerVersionId"] == marker
    assert s3.get_object(Bucket=bucket, Key="y")["Body"].read() == b"y"
    empty(s3, server, bucket)


def test_unversioned_bucket_still_answers_null(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert "VersionId" not in s3.get_object(Bucket=bucket, Key="k")
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"v"
    listed = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listed] == [("k", "null", True)]
    deleted = s3.delete_object(Bucket=bucket, Key="k")
    assert "DeleteMarker" not in deleted
    assert "Versions" not in s3.list_object_versions(Bucket=bucket)
    s3.delete_bucket(Bucket=bucket)


def test_sub_resources_of_old_versions_are_not_implemented(s3: Any, bucket: str, server: Server) -> None:
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    calls = [  # (?tagging takes a versionId: tests/e2e/test_s3_object_lock.py)
        lambda: s3.get_object_acl(Bucket=bucket, Key="k", VersionId=v1),
        lambda: s3.get_object_attributes(Bucket=bucket, Key="k", VersionId=v1, ObjectAttributes=["ETag"]),
    ]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == (501, "NotImplemented")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []  # the current version: as before
    empty(s3, server, bucket)
