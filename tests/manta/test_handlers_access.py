"""Authorization in-process (tests/inprocess.py): what a request costs — the owner of a
bucket without access settings reads none; a bucket with a policy has it read once per
request, and only by requests that need it — and the request context a policy sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from manta.server.s3 import errors as s3e
from manta.server.s3.access import action_of, context_of, subresource_of
from manta.server.s3.context import S3Request
from tests.inprocess import InProcessS3, error_code

BOB_AK, BOB_SK = "BOBACCESSKEY0000000", "bob-secret-key-000000000000000000000000"


@pytest.fixture
def reads(s3: InProcessS3) -> Iterator[list[str]]:
    """The access configuration kinds the server reads (a spy on the real catalog's)."""
    conf = s3.store.catalog.bucketconf
    real = conf.of
    seen: list[str] = []

    def spy(record: Any, kind: str, txn: Any) -> bytes | None:
        seen.append(kind)
        return real(record, kind, txn)

    conf.of = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        conf.of = real  # type: ignore[method-assign]


def _policy(bucket: str, principal: str) -> bytes:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": principal}, "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}).encode()


def test_the_owner_of_a_plain_bucket_reads_no_settings(s3: InProcessS3, bucket: str, reads: list[str]) -> None:
    s3.put(bucket, "k", b"v")
    assert s3.request("GET", f"/{bucket}/k").content == b"v"
    assert s3.request("HEAD", f"/{bucket}/k").status_code == 200
    assert s3.request("GET", f"/{bucket}", query={"list-type": "2"}).status_code == 200
    assert s3.request("DELETE", f"/{bucket}/k").status_code == 204
    assert reads == []


def test_a_policy_is_read_once_per_request_and_shares(s3: InProcessS3, bucket: str, reads: list[str]) -> None:
    s3.add_account("bob", BOB_AK, BOB_SK)
    s3.put(bucket, "k", b"v")
    assert s3.request("PUT", f"/{bucket}", query={"policy": ""}, body=_policy(bucket, "bob")).status_code == 204
    reads.clear()
    assert s3.request("GET", f"/{bucket}/k").content == b"v"  # the owner: a Deny could apply
    assert reads == ["policy"]
    reads.clear()
    bob = {"access_key": BOB_AK, "secret_key": BOB_SK}
    assert s3.request("GET", f"/{bucket}/k", **bob).content == b"v"  # type: ignore[arg-type]
    assert reads == ["policy"]
    denied = s3.request("PUT", f"/{bucket}/k", body=b"no", **bob)  # type: ignore[arg-type]
    assert (denied.status_code, error_code(denied)) == (403, "AccessDenied")
    assert s3.request("GET", f"/{bucket}/k").content == b"v"


def _request(method: str, key: str = "", query: dict[str, str] | None = None, **headers: str) -> S3Request:
    return S3Request(method=method, bucket="b", key=key, query=query or {}, headers=headers, receive=None,  # type: ignore[arg-type]
                     request_id="r", resource="/", store=None, client_ip="127.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "key", "query", "action"), [
    ("GET", "", {}, "s3:ListBucket"), ("HEAD", "", {}, "s3:ListBucket"),
    ("GET", "", {"versions": ""}, "s3:ListBucketVersions"), ("GET", "", {"uploads": ""}, "s3:ListBucketMultipartUploads"),
    ("PUT", "", {"policy": ""}, "s3:PutBucketPolicy"), ("GET", "", {"policyStatus": ""}, "s3:GetBucketPolicyStatus"),
    ("DELETE", "", {"cors": ""}, "s3:PutBucketCORS"), ("DELETE", "", {}, "s3:DeleteBucket"),
    ("GET", "k", {}, "s3:GetObject"), ("GET", "k", {"versionId": "null"}, "s3:GetObjectVersion"),
    ("PUT", "k", {"uploadId": "u", "partNumber": "1"}, "s3:PutObject"),
    ("DELETE", "k", {"uploadId": "u"}, "s3:AbortMultipartUpload"), ("GET", "k", {"acl": ""}, "s3:GetObjectAcl"),
    ("DELETE", "k", {"tagging": ""}, "s3:DeleteObjectTagging"),
    ("GET", "k", {"tagging": "", "versionId": "v"}, "s3:GetObjectVersionTagging"),
    ("PUT", "k", {"retention": "", "versionId": "v"}, "s3:PutObjectRetention"),
    ("GET", "k", {"versionId": "v", "response-content-type": "a/b", "partNumber": "1"}, "s3:GetObjectVersion"),
    ("GET", "", {"versions": "", "prefix": "a", "key-marker": "k", "version-id-marker": "v"}, "s3:ListBucketVersions"),
])
def test_actions(method: str, key: str, query: dict[str, str], action: str) -> None:
    assert action_of(_request(method, key, query)) == action


@pytest.mark.parametrize(("key", "query"), [
    ("k", {"policy": "", "acl": ""}), ("k", {"acl": "", "policy": ""}), ("", {"versioning": "", "acl": ""}),
    ("k", {"uploadId": "u", "tagging": ""}), ("", {"delete": "", "uploads": ""}),
])
def test_two_sub_resources_are_refused_not_chosen_between(key: str, query: dict[str, str]) -> None:
    with pytest.raises(s3e.InvalidRequest):
        subresource_of(_request("PUT", key, query))
    with pytest.raises(s3e.InvalidRequest):
        action_of(_request("PUT", key, query))


def test_the_request_context() -> None:
    context = context_of(_request("GET", "", {"prefix": "a/", "delimiter": "/", "max-keys": "5"},
                                  **{"user-agent": "boto3", "x-amz-acl": "private"}))
    assert context["aws:sourceip"] == "127.0.0.1"
    assert context["aws:securetransport"] == "false"
    assert context["aws:principaltype"] == "Anonymous"
    assert "s3:signatureversion" not in context  # unsigned
    assert (context["s3:prefix"], context["s3:delimiter"], context["s3:max-keys"]) == ("a/", "/", "5")
    assert context["aws:useragent"] == "boto3" and context["s3:x-amz-acl"] == "private"


def test_object_tagging_is_authorized_before_its_body_is_read(s3: InProcessS3, bucket: str) -> None:
    """A caller who may not tag the object is AccessDenied whatever its body holds: the
    body is neither read nor judged (MalformedXML would say the check came second)."""
    s3.add_account("bob", BOB_AK, BOB_SK)
    s3.put(bucket, "k", b"x")
    for body in (b"not xml", b"<Tagging><TagSet/></Tagging>"):
        refused = s3.request("PUT", f"/{bucket}/k", query={"tagging": ""}, body=body,
                             access_key=BOB_AK, secret_key=BOB_SK)
        assert (refused.status_code, error_code(refused)) == (403, "AccessDenied"), body
    refused = s3.request("DELETE", f"/{bucket}/k", query={"tagging": ""}, access_key=BOB_AK, secret_key=BOB_SK)
    assert (refused.status_code, error_code(refused)) == (403, "AccessDenied")
