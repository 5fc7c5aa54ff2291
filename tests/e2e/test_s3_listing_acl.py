"""Listing and ACL behaviours S3 clients and conformance suites rely on, end to end:
MaxKeys=0, ListObjects (v1) echoing Prefix raw, ListBuckets paging, re-creating a bucket
you own (200 in us-east-1, 409 elsewhere), and canned ACLs with anonymous GET/HEAD of
public-read objects and listing of public-read buckets (grants, policies and the public
access block: tests/e2e/test_s3_access.py).

Hand-made requests are signed with botocore (tests.e2e.test_crash.sign) or sent unsigned
with http.client, so the exact path, headers and body reach the server.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from tests.conftest import ROOT_AK, ROOT_SK, Server, running_server
from tests.e2e.test_crash import sign
from tests.e2e.test_s3_edge_keys import NS, Reply, assert_s3_error, request, send

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
ROOT_OWNER = "root"


def unsigned(server: Server, method: str, target: str, body: bytes = b"") -> Reply:
    return request(server, method, target, {"Host": f"127.0.0.1:{server.port}"}, body)


def send_with(server: Server, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Reply:
    return request(server, method, target, sign(server, method, target, headers, body), body)


def anonymous_client(server: Server) -> object:
    return server.client(signature_version=UNSIGNED)


def error_code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(caught.value.response["Error"]["Code"])


# -- MaxKeys=0 -----------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["max-keys=0", "list-type=2&max-keys=0"])
def test_max_keys_zero_is_an_empty_untruncated_page(s3: object, server: Server, bucket: str, query: str) -> None:
    for key in ("a", "b/c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    reply = send(server, "GET", f"/{bucket}?{query}")
    assert reply.status == 200, reply.body[:300]
    root = reply.xml()
    assert root.findtext(f"{NS}IsTruncated") == "false"
    assert root.findtext(f"{NS}MaxKeys") == "0"
    assert root.find(f"{NS}Contents") is None
    assert root.find(f"{NS}NextMarker") is None and root.find(f"{NS}NextContinuationToken") is None
    if "list-type=2" in query:
        assert root.findtext(f"{NS}KeyCount") == "0"


def test_max_keys_zero_through_boto3(s3: object, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")  # type: ignore[attr-defined]
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=0)  # type: ignore[attr-defined]
    v2 = s3.list_objects_v2(Bucket=bucket, MaxKeys=0)  # type: ignore[attr-defined]
    for page in (v1, v2):
        assert page["IsTruncated"] is False
        assert "Contents" not in page
    assert v2["KeyCount"] == 0


# -- ListObjects (v1) echoes Prefix raw ----------------------------------------------------

NEWLINE_KEYS = ["\nfoo/bar", "\nfoo/baz", "\nquux", "plain"]


def test_list_objects_v1_prefix_is_raw_with_encoding_type_url(s3: object, server: Server, bucket: str) -> None:
    for key in NEWLINE_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    # without encoding-type: everything raw
    root = send(server, "GET", f"/{bucket}?prefix=%0A&delimiter=%2F").xml()
    assert root.find(f"{NS}EncodingType") is None
    assert root.findtext(f"{NS}Prefix") == "\n"
    assert [k.text for k in root.iter(f"{NS}Key")] == ["\nquux"]
    assert [p.findtext(f"{NS}Prefix") for p in root.iter(f"{NS}CommonPrefixes")] == ["\nfoo/"]
    # with encoding-type=url: keys and common prefixes encoded, the Prefix echoed as sent
    root = send(server, "GET", f"/{bucket}?prefix=%0A&delimiter=%2F&encoding-type=url").xml()
    assert root.findtext(f"{NS}EncodingType") == "url"
    assert root.findtext(f"{NS}Prefix") == "\n"
    assert [k.text for k in root.iter(f"{NS}Key")] == ["%0Aquux"]
    assert [p.findtext(f"{NS}Prefix") for p in root.iter(f"{NS}CommonPrefixes")] == ["%0Afoo/"]
    # V2 encodes its Prefix (clients decode it there)
    root = send(server, "GET", f"/{bucket}?list-type=2&prefix=%0A&encoding-type=url").xml()
    assert root.findtext(f"{NS}Prefix") == "%0A"


def test_list_objects_v1_newline_prefix_through_boto3(s3: object, bucket: str) -> None:
    for key in NEWLINE_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    page = s3.list_objects(Bucket=bucket, Prefix="\n", Delimiter="/")  # type: ignore[attr-defined]
    assert page["Prefix"] == "\n"
    assert page["Delimiter"] == "/"
    assert [c["Key"] for c in page["Contents"]] == ["\nquux"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["\nfoo/"]
    v2 = s3.list_objects_v2(Bucket=bucket, Prefix="\n")  # type: ignore[attr-defined]
    assert v2["Prefix"] == "\n"
    assert [c["Key"] for c in v2["Contents"]] == ["\nfoo/bar", "\nfoo/baz", "\nquux"]


# -- ListBuckets paging --------------------------------------------------------------------

@pytest.fixture
def five_buckets(s3: object) -> Iterator[tuple[str, list[str]]]:
    prefix = f"lb-{os.getpid()}-"
    names = [f"{prefix}{i}" for i in range(5)]
    for name in names:
        s3.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    yield prefix, names
    for name in names:
        s3.delete_bucket(Bucket=name)  # type: ignore[attr-defined]


def test_list_buckets_pages_over_http(server: Server, five_buckets: tuple[str, list[str]]) -> None:
    prefix, names = five_buckets
    seen: list[str] = []
    tokens: list[str | None] = []
    token = None
    for _ in range(10):
        query = {"max-buckets": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
        target = "/?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
        reply = send(server, "GET", target)
        assert reply.status == 200, reply.body[:300]
        root = reply.xml()
        assert root.findtext(f"{NS}Prefix") == prefix
        page = [b.findtext(f"{NS}Name") or "" for b in root.iter(f"{NS}Bucket")]
        assert len(page) <= 2
        seen.extend(page)
        token = root.findtext(f"{NS}ContinuationToken")
        tokens.append(token)
        if token is None:
            break
    assert seen == names
    assert len(tokens) == 3 and tokens[-1] is None
    # without paging parameters: every bucket, no token
    root = send(server, "GET", "/").xml()
    assert root.find(f"{NS}ContinuationToken") is None
    assert set(names) <= {b.findtext(f"{NS}Name") for b in root.iter(f"{NS}Bucket")}


@pytest.mark.parametrize("value", ["0", "10001", "-1", "x"])
def test_list_buckets_bad_max_buckets_is_invalid_argument(server: Server, value: str) -> None:
    assert_s3_error(send(server, "GET", f"/?max-buckets={value}"), 400, "InvalidArgument")


def test_list_buckets_paginates_with_boto3(s3: object, five_buckets: tuple[str, list[str]]) -> None:
    prefix, names = five_buckets
    first = s3.list_buckets(MaxBuckets=2, Prefix=prefix)  # type: ignore[attr-defined]
    assert [b["Name"] for b in first["Buckets"]] == names[:2]
    assert first["Prefix"] == prefix and first["ContinuationToken"]
    paginator = s3.get_paginator("list_buckets")  # type: ignore[attr-defined]
    pages = list(paginator.paginate(Prefix=prefix, PaginationConfig={"PageSize": 2}))
    assert [[b["Name"] for b in p["Buckets"]] for p in pages] == [names[:2], names[2:4], names[4:]]
    assert [b["Name"] for b in s3.list_buckets(Prefix=prefix + "3")["Buckets"]] == [names[3]]  # type: ignore[attr-defined]


# -- CreateBucket of a bucket you own ------------------------------------------------------

def test_recreating_own_bucket_in_us_east_1_is_200(s3: object, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="kept", Body=b"data")  # type: ignore[attr-defined]
    reply = send(server, "PUT", f"/{bucket}")
    assert reply.status == 200, reply.body[:300]
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"data"  # type: ignore[attr-defined]


def test_recreating_own_bucket_resets_its_acl_in_us_east_1(s3: object, bucket: str) -> None:
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")  # type: ignore[attr-defined]
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    grants = s3.get_bucket_acl(Bucket=bucket)["Grants"]  # type: ignore[attr-defined]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]


def test_recreating_own_bucket_elsewhere_is_bucket_already_owned_by_you() -> None:
    with running_server(env={"MANTA_REGION": "eu-west-1"}) as srv:
        import boto3
        s3 = boto3.client("s3", endpoint_url=srv.url, aws_access_key_id=ROOT_AK,
                          aws_secret_access_key=ROOT_SK, region_name="eu-west-1")
        config = {"LocationConstraint": "eu-west-1"}
        s3.create_bucket(Bucket="owned", CreateBucketConfiguration=config)
        assert error_code(s3.create_bucket, Bucket="owned",
                          CreateBucketConfiguration=config) == "BucketAlreadyOwnedByYou"
        assert error_code(s3.create_bucket, Bucket="owned") == "BucketAlreadyOwnedByYou"
        body = (b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint>"
                b"</CreateBucketConfiguration>")
        assert_s3_error(send(srv, "PUT", "/owned", body), 409, "BucketAlreadyOwnedByYou")
        assert_s3_error(send(srv, "PUT", "/owned"), 409, "BucketAlreadyOwnedByYou")


# -- canned ACLs ---------------------------------------------------------------------------

def grants_of(root_or_response: object) -> set[tuple[str, str]]:
    out = set()
    for grant in root_or_response["Grants"]:  # type: ignore[index]
        grantee = grant["Grantee"]
        out.add((grantee.get("ID") or grantee.get("URI"), grant["Permission"]))
    return out


PRIVATE_GRANTS = {(ROOT_OWNER, "FULL_CONTROL")}
PUBLIC_GRANTS = PRIVATE_GRANTS | {(ALL_USERS, "READ")}


def test_private_acl_in_every_form_is_accepted(s3: object, server: Server, bucket: str) -> None:
    s3.put_bucket_acl(Bucket=bucket, ACL="private")  # type: ignore[attr-defined]
    s3.put_bucket_acl(Bucket=bucket, GrantFullControl=f"id={ROOT_OWNER}")  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="private")  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="g", Body=b"x", GrantFullControl=f'id="{ROOT_OWNER}"')  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="b", Body=b"x", ACL="bucket-owner-full-control")  # type: ignore[attr-defined]
    s3.create_multipart_upload(Bucket=bucket, Key="mp", ACL="private")  # type: ignore[attr-defined]
    s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k"}, ACL="private")  # type: ignore[attr-defined]
    s3.create_bucket(Bucket=bucket + "-p", ACL="private")  # type: ignore[attr-defined]
    s3.delete_bucket(Bucket=bucket + "-p")  # type: ignore[attr-defined]
    policy = s3.get_object_acl(Bucket=bucket, Key="k")  # type: ignore[attr-defined]
    s3.put_object_acl(Bucket=bucket, Key="k",  # type: ignore[attr-defined]
                      AccessControlPolicy={"Owner": policy["Owner"], "Grants": policy["Grants"]})
    for key in ("k", "g", "b", "c"):
        assert grants_of(s3.get_object_acl(Bucket=bucket, Key=key)) == PRIVATE_GRANTS  # type: ignore[attr-defined]
    assert grants_of(s3.get_bucket_acl(Bucket=bucket)) == PRIVATE_GRANTS  # type: ignore[attr-defined]
    # the same over HTTP: x-amz-acl on PUT ?acl and a body holding the owner's FULL_CONTROL alone
    assert send_with(server, "PUT", f"/{bucket}/k?acl", {"x-amz-acl": "private"}).status == 200
    body = (f'<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>{ROOT_OWNER}</ID>'
            '</Owner><AccessControlList><Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xsi:type="CanonicalUser"><ID>{ROOT_OWNER}</ID></Grantee><Permission>FULL_CONTROL</Permission>'
            "</Grant></AccessControlList></AccessControlPolicy>").encode()
    reply = send(server, "PUT", f"/{bucket}?acl", body)
    assert reply.status == 200, reply.body[:300]


def test_public_read_object_acl_lets_anonymous_get_and_head_only(s3: object, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pub", Body=b"public", ACL="public-read")  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key="priv", Body=b"private")  # type: ignore[attr-defined]
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="pub")) == PUBLIC_GRANTS  # type: ignore[attr-defined]
    # raw unsigned requests
    reply = unsigned(server, "GET", f"/{bucket}/pub")
    assert (reply.status, reply.body) == (200, b"public")
    assert unsigned(server, "HEAD", f"/{bucket}/pub").status == 200
    # S3: "Request specific response headers cannot be used for anonymous GET requests."
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/pub?response-content-type=text/html"), 400, "InvalidRequest")
    assert unsigned(server, "HEAD", f"/{bucket}/pub?response-content-type=text/html").status == 400
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/priv"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/missing"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "PUT", f"/{bucket}/pub", b"overwritten"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "DELETE", f"/{bucket}/pub"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/pub?acl"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "PUT", f"/{bucket}/pub?acl", b""), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "POST", f"/{bucket}/pub?uploads"), 403, "AccessDenied")
    # through boto3 without credentials, and a plain HTTP client
    anon = anonymous_client(server)
    assert anon.get_object(Bucket=bucket, Key="pub")["Body"].read() == b"public"  # type: ignore[attr-defined]
    assert anon.head_object(Bucket=bucket, Key="pub")["ContentLength"] == 6  # type: ignore[attr-defined]
    assert requests.get(f"{server.url}/{bucket}/pub", timeout=15).content == b"public"
    assert error_code(anon.get_object, Bucket=bucket, Key="priv") == "AccessDenied"  # type: ignore[attr-defined]
    assert error_code(anon.put_object, Bucket=bucket, Key="pub", Body=b"no") == "AccessDenied"  # type: ignore[attr-defined]
    assert error_code(anon.delete_object, Bucket=bucket, Key="pub") == "AccessDenied"  # type: ignore[attr-defined]
    assert error_code(anon.list_objects_v2, Bucket=bucket) == "AccessDenied"  # type: ignore[attr-defined]
    assert s3.get_object(Bucket=bucket, Key="pub")["Body"].read() == b"public"  # type: ignore[attr-defined]
    # back to private: anonymous reads stop
    s3.put_object_acl(Bucket=bucket, Key="pub", ACL="private")  # type: ignore[attr-defined]
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/pub"), 403, "AccessDenied")


def test_public_read_bucket_acl_lets_anyone_list_it_and_nothing_else(s3: object, server: Server, bucket: str) -> None:
    """AWS: READ on a bucket "allows grantee to list the objects in the bucket"; reading an
    object needs READ on the object itself."""
    other = bucket + "-other"
    s3.create_bucket(Bucket=other)  # type: ignore[attr-defined]
    try:
        s3.put_object(Bucket=other, Key="k", Body=b"other")  # type: ignore[attr-defined]
        s3.put_object(Bucket=bucket, Key="k", Body=b"mine")  # type: ignore[attr-defined]
        assert_s3_error(unsigned(server, "GET", f"/{bucket}/k"), 403, "AccessDenied")
        assert send_with(server, "PUT", f"/{bucket}?acl", {"x-amz-acl": "public-read"}).status == 200
        assert grants_of(s3.get_bucket_acl(Bucket=bucket)) == PUBLIC_GRANTS  # type: ignore[attr-defined]
        listing = unsigned(server, "GET", f"/{bucket}?list-type=2&prefix=k")
        assert listing.status == 200 and b"<Key>k</Key>" in listing.body, listing.body
        assert unsigned(server, "GET", f"/{bucket}").status == 200
        assert unsigned(server, "HEAD", f"/{bucket}").status == 200
        assert_s3_error(unsigned(server, "GET", f"/{bucket}/k"), 403, "AccessDenied")  # the object is private
        assert unsigned(server, "HEAD", f"/{bucket}/k").status == 403
        assert_s3_error(unsigned(server, "GET", f"/{bucket}/missing"), 404, "NoSuchKey")  # it may list
        assert_s3_error(unsigned(server, "GET", f"/{other}/k"), 403, "AccessDenied")
        assert_s3_error(unsigned(server, "GET", f"/{other}"), 403, "AccessDenied")
        # READ on a bucket maps to s3:ListBucket, ListBucketVersions and ListBucketMultipartUploads
        assert unsigned(server, "GET", f"/{bucket}?uploads").status == 200
        assert_s3_error(unsigned(server, "PUT", f"/{bucket}/new", b"x"), 403, "AccessDenied")
        assert_s3_error(unsigned(server, "DELETE", f"/{bucket}/k"), 403, "AccessDenied")
        assert_s3_error(unsigned(server, "DELETE", f"/{bucket}"), 403, "AccessDenied")
        assert_s3_error(unsigned(server, "GET", f"/{bucket}?acl"), 403, "AccessDenied")
        assert_s3_error(unsigned(server, "GET", "/"), 403, "AccessDenied")
        anon = anonymous_client(server)
        assert [o["Key"] for o in anon.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]  # type: ignore[attr-defined]
        assert error_code(anon.get_object, Bucket=bucket, Key="k") == "AccessDenied"  # type: ignore[attr-defined]
        assert error_code(anon.list_objects, Bucket=other) == "AccessDenied"  # type: ignore[attr-defined]
        s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read")  # type: ignore[attr-defined]
        assert anon.get_object(Bucket=bucket, Key="k")["Body"].read() == b"mine"  # type: ignore[attr-defined]
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"mine"  # type: ignore[attr-defined]
    finally:
        s3.delete_object(Bucket=other, Key="k")  # type: ignore[attr-defined]
        s3.delete_bucket(Bucket=other)  # type: ignore[attr-defined]


def test_public_read_through_every_creating_call(s3: object, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"copied")  # type: ignore[attr-defined]
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "src"},  # type: ignore[attr-defined]
                   ACL="public-read")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ACL="public-read")  # type: ignore[attr-defined]
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=1, Body=b"multi")  # type: ignore[attr-defined]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],  # type: ignore[attr-defined]
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    s3.put_object(Bucket=bucket, Key="grant", Body=b"granted", GrantRead=f"uri={ALL_USERS}",  # type: ignore[attr-defined]
                  GrantFullControl=f"id={ROOT_OWNER}")
    for key, data in (("copy", b"copied"), ("mp", b"multi"), ("grant", b"granted")):
        reply = unsigned(server, "GET", f"/{bucket}/{key}")
        assert (reply.status, reply.body) == (200, data), key
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/src"), 403, "AccessDenied")
    # a copy without x-amz-acl is private again, whatever the source's ACL
    s3.copy_object(Bucket=bucket, Key="copy2", CopySource={"Bucket": bucket, "Key": "copy"})  # type: ignore[attr-defined]
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/copy2"), 403, "AccessDenied")
    # CreateBucket with x-amz-acl
    public = bucket + "-pub"
    s3.create_bucket(Bucket=public, ACL="public-read")  # type: ignore[attr-defined]
    try:
        s3.put_object(Bucket=public, Key="k", Body=b"pb")  # type: ignore[attr-defined]
        listing = unsigned(server, "GET", f"/{public}?list-type=2")
        assert listing.status == 200 and b"<Key>k</Key>" in listing.body, listing.body
        assert_s3_error(unsigned(server, "GET", f"/{public}/k"), 403, "AccessDenied")  # its objects stay private
    finally:
        s3.delete_object(Bucket=public, Key="k")  # type: ignore[attr-defined]
        s3.delete_bucket(Bucket=public)  # type: ignore[attr-defined]


AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"


@pytest.mark.parametrize(("headers", "extra"), [
    ({"x-amz-acl": "public-read-write"}, {(ALL_USERS, "READ"), (ALL_USERS, "WRITE")}),
    ({"x-amz-acl": "authenticated-read"}, {(AUTHENTICATED_USERS, "READ")}),
])
def test_other_canned_acls_are_kept_and_shown_over_http(s3: object, server: Server, bucket: str,
                                                        headers: dict[str, str], extra: set[tuple[str, str]]) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")  # type: ignore[attr-defined]
    assert send_with(server, "PUT", f"/{bucket}?acl", headers).status == 200
    assert send_with(server, "PUT", f"/{bucket}/k?acl", headers).status == 200
    assert send_with(server, "PUT", f"/{bucket}/new", headers, b"x").status == 200
    assert grants_of(s3.get_bucket_acl(Bucket=bucket)) == PRIVATE_GRANTS | extra  # type: ignore[attr-defined]
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="k")) == PRIVATE_GRANTS | extra  # type: ignore[attr-defined]
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="new")) == PRIVATE_GRANTS | extra  # type: ignore[attr-defined]


def test_unknown_grantees_and_canned_names_are_refused(s3: object, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")  # type: ignore[attr-defined]
    unknown = {"x-amz-grant-read": 'id="no-such-account"'}
    assert_s3_error(send_with(server, "PUT", f"/{bucket}?acl", unknown), 400, "InvalidArgument")
    assert_s3_error(send_with(server, "PUT", f"/{bucket}/new", unknown, b"x"), 400, "InvalidArgument")
    email = {"x-amz-grant-read": 'emailAddress="someone@example.com"'}
    assert_s3_error(send_with(server, "PUT", f"/{bucket}/k?acl", email), 400, "UnresolvableGrantByEmailAddress")
    assert error_code(s3.create_multipart_upload, Bucket=bucket, Key="n", ACL="log-delivery-write") == "InvalidArgument"  # type: ignore[attr-defined]
    assert_s3_error(send_with(server, "PUT", f"/{bucket}?acl", {"x-amz-acl": "no-such-acl"}), 400, "InvalidArgument")
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="k")) == PRIVATE_GRANTS  # type: ignore[attr-defined]
    assert grants_of(s3.get_bucket_acl(Bucket=bucket)) == PRIVATE_GRANTS  # type: ignore[attr-defined]


def test_public_read_policy_body_through_boto3(s3: object, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"body-acl")  # type: ignore[attr-defined]
    policy = {"Owner": {"ID": ROOT_OWNER}, "Grants": [
        {"Grantee": {"Type": "CanonicalUser", "ID": ROOT_OWNER}, "Permission": "FULL_CONTROL"},
        {"Grantee": {"Type": "Group", "URI": ALL_USERS}, "Permission": "READ"}]}
    s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=policy)  # type: ignore[attr-defined]
    assert grants_of(s3.get_object_acl(Bucket=bucket, Key="k")) == PUBLIC_GRANTS  # type: ignore[attr-defined]
    anon = anonymous_client(server)
    assert anon.get_object(Bucket=bucket, Key="k")["Body"].read() == b"body-acl"  # type: ignore[attr-defined]

