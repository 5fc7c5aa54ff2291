"""S3 bucket handlers in-process (tests/inprocess.py): create/head/delete/list buckets,
location, ListObjects (v1 and v2) with prefixes, delimiters and paging."""

from __future__ import annotations

import pytest

from tests.inprocess import InProcessS3, error_code, texts, xml


def test_create_head_list_delete(s3: InProcessS3) -> None:
    assert texts(xml(s3.request("GET", "/")), "Buckets/Bucket/Name") == []
    s3.create_bucket("one")
    s3.create_bucket("two")
    listed = xml(s3.request("GET", "/"))
    assert texts(listed, "Buckets/Bucket/Name") == ["one", "two"]
    assert texts(listed, "Owner/DisplayName") == ["root"]
    assert s3.request("HEAD", "/one").status_code == 200
    again = s3.request("PUT", "/one")  # us-east-1: the owner re-creating its bucket is a 200
    assert again.status_code == 200
    assert texts(xml(s3.request("GET", "/")), "Buckets/Bucket/Name") == ["one", "two"]
    assert s3.request("DELETE", "/one").status_code == 204
    assert s3.request("HEAD", "/one").status_code == 404
    gone = s3.request("DELETE", "/one")
    assert gone.status_code == 404 and error_code(gone) == "NoSuchBucket"
    assert texts(xml(s3.request("GET", "/")), "Buckets/Bucket/Name") == ["two"]


def test_location_and_location_constraint(s3: InProcessS3) -> None:
    body = b"<CreateBucketConfiguration><LocationConstraint>us-east-1</LocationConstraint></CreateBucketConfiguration>"
    assert s3.request("PUT", "/located", body=body).status_code == 200
    location = s3.request("GET", "/located", query={"location": ""})
    assert location.status_code == 200 and xml(location).tag.endswith("LocationConstraint")
    elsewhere = b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
    refused = s3.request("PUT", "/elsewhere", body=elsewhere)
    assert refused.status_code == 400 and error_code(refused) == "InvalidLocationConstraint"


def test_delete_of_a_bucket_with_objects_is_refused(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "k", b"v")
    refused = s3.request("DELETE", f"/{bucket}")
    assert refused.status_code == 409 and error_code(refused) == "BucketNotEmpty"
    s3.request("DELETE", f"/{bucket}/k")
    assert s3.request("DELETE", f"/{bucket}").status_code == 204


def keys_page(s3: InProcessS3, bucket: str, **query: str) -> tuple[list[str], list[str], dict[str, str]]:
    got = s3.request("GET", f"/{bucket}", query=query)
    assert got.status_code == 200, got.text
    root = xml(got)
    fields = {e.tag.split("}")[1]: e.text or "" for e in root if len(e) == 0}
    return texts(root, "Contents/Key"), texts(root, "CommonPrefixes/Prefix"), fields


def test_list_v2_prefix_delimiter_and_paging(s3: InProcessS3, bucket: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "b/4", "c", "d"]
    for key in keys:
        s3.put(bucket, key, b"x")
    assert keys_page(s3, bucket, **{"list-type": "2"})[0] == keys
    contents, prefixes, fields = keys_page(s3, bucket, **{"list-type": "2", "delimiter": "/"})
    assert (contents, prefixes) == (["c", "d"], ["a/", "b/"])
    assert fields["KeyCount"] == "4"
    contents, prefixes, _ = keys_page(s3, bucket, **{"list-type": "2", "prefix": "a/", "delimiter": "/"})
    assert (contents, prefixes) == (["a/1", "a/2"], ["a/b/"])
    seen: list[str] = []
    token = None
    for _ in range(10):
        query = {"list-type": "2", "max-keys": "2", **({"continuation-token": token} if token else {})}
        contents, _, fields = keys_page(s3, bucket, **query)
        seen += contents
        if fields["IsTruncated"] == "false":
            break
        token = fields["NextContinuationToken"]
    assert seen == keys
    after, _, _ = keys_page(s3, bucket, **{"list-type": "2", "start-after": "b/4"})
    assert after == ["c", "d"]


def test_list_v1_marker_paging(s3: InProcessS3, bucket: str) -> None:
    for key in ("k1", "k2", "k3"):
        s3.put(bucket, key, b"x")
    first, _, fields = keys_page(s3, bucket, **{"max-keys": "2"})
    assert first == ["k1", "k2"] and fields["IsTruncated"] == "true"
    rest, _, fields = keys_page(s3, bucket, marker="k2")
    assert rest == ["k3"] and fields["IsTruncated"] == "false"


def test_list_url_encoding(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "a b+c", b"x")
    contents, _, fields = keys_page(s3, bucket, **{"list-type": "2", "encoding-type": "url"})
    assert contents == ["a%20b%2Bc"] and fields["EncodingType"] == "url"


def test_list_of_a_missing_bucket(s3: InProcessS3) -> None:
    missing = s3.request("GET", "/nobucket", query={"list-type": "2"})
    assert missing.status_code == 404 and error_code(missing) == "NoSuchBucket"
    assert b"<BucketName>nobucket</BucketName>" in missing.content


@pytest.mark.parametrize("name", ["MyBucket", "ab", "a" * 64, "192.168.5.4", "my_bucket", "my..bucket",
                                  "-leading", "trailing-", "xn--punycode"])
def test_invalid_bucket_name(s3: InProcessS3, name: str) -> None:
    # moved from tests/e2e/test_bad_input.py
    reply = s3.request("PUT", f"/{name}")
    assert reply.status_code == 400 and error_code(reply) == "InvalidBucketName"
    assert name not in texts(xml(s3.request("GET", "/")), "Buckets/Bucket/Name")


def test_versioning_and_versions_of_an_unversioned_bucket(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "v", b"x")
    versioning = s3.request("GET", f"/{bucket}", query={"versioning": ""})
    assert versioning.status_code == 200 and b"<Status>" not in versioning.content
    versions = xml(s3.request("GET", f"/{bucket}", query={"versions": ""}))
    assert texts(versions, "Version/Key") == ["v"]
    assert texts(versions, "Version/VersionId") == ["null"]


def test_unimplemented_subresource_is_501(s3: InProcessS3, bucket: str) -> None:
    reply = s3.request("GET", f"/{bucket}", query={"website": ""})
    assert reply.status_code == 501 and error_code(reply) == "NotImplemented"
