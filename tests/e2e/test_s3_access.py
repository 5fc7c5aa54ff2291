"""Access control end to end: bucket policies shared with another account (boto3 and the
jobs), a Deny that wins, conditions on the source address, grants, the public access block
and ownership controls, malformed policies; boto3 and raw HTTP against a real server."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import urllib.parse
from typing import Any

import pytest
from botocore.exceptions import ClientError

from manta import Client
from manta.client import AccessDenied
from tests.conftest import ROOT_AK, ROOT_SK, Server, require
from tests.e2e.test_client import sandbox_reason
from tests.e2e.test_s3_edge_keys import NS, assert_s3_error, request
from tests.e2e.test_s3_listing_acl import ALL_USERS, anonymous_client, send_with, unsigned

_accounts = itertools.count(1)


def new_account(server: Server) -> tuple[str, Any, Client]:
    """A new account: (name, its boto3 client, its manta.Client)."""
    admin = Client(server.url, ROOT_AK, ROOT_SK)
    user = admin.api("POST", "/_manta/admin/users", {"name": f"acc-{os.getpid()}-{next(_accounts)}"})
    return (user["name"], server.client(user["access_key"], user["secret_key"]),
            Client(server.url, user["access_key"], user["secret_key"]))


def code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return str(caught.value.response["Error"]["Code"])


def status(call: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return int(caught.value.response["ResponseMetadata"]["HTTPStatusCode"])


def read_only_for(account: str, bucket: str, **extra: Any) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "ReadOnly", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
        "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"], **extra}]})


def test_a_policy_shares_a_bucket_read_only(s3: Any, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="data/a.txt", Body=b"alpha\n")
    s3.put_object(Bucket=bucket, Key="data/b.txt", Body=b"beta beta\n")
    bob, bob_s3, _ = new_account(server)
    assert code(bob_s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    assert code(bob_s3.get_object, Bucket=bucket, Key="data/a.txt") == "AccessDenied"
    assert code(s3.get_bucket_policy, Bucket=bucket) == "NoSuchBucketPolicy"

    s3.put_bucket_policy(Bucket=bucket, Policy=read_only_for(bob, bucket))
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(read_only_for(bob, bucket))
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False
    # bob lists and reads
    listing = bob_s3.list_objects_v2(Bucket=bucket, Prefix="data/")
    assert [o["Key"] for o in listing["Contents"]] == ["data/a.txt", "data/b.txt"]
    assert listing["Contents"][0].get("Owner") is None
    assert bob_s3.list_objects(Bucket=bucket)["Contents"][0]["Owner"]["ID"] == "root"  # the bucket's owner
    assert bob_s3.get_object(Bucket=bucket, Key="data/a.txt")["Body"].read() == b"alpha\n"
    assert bob_s3.head_object(Bucket=bucket, Key="data/b.txt")["ContentLength"] == 10
    assert code(bob_s3.get_object, Bucket=bucket, Key="missing") == "NoSuchKey"  # he may list
    # ... and copies out into a bucket of his own, but writes and deletes nothing in it
    mine = f"{bob}-own"
    bob_s3.create_bucket(Bucket=mine)
    bob_s3.copy_object(Bucket=mine, Key="copy", CopySource={"Bucket": bucket, "Key": "data/a.txt"})
    assert bob_s3.get_object(Bucket=mine, Key="copy")["Body"].read() == b"alpha\n"
    assert code(bob_s3.put_object, Bucket=bucket, Key="data/c.txt", Body=b"no") == "AccessDenied"
    assert code(bob_s3.copy_object, Bucket=bucket, Key="c", CopySource={"Bucket": mine, "Key": "copy"}) == "AccessDenied"
    assert code(bob_s3.create_multipart_upload, Bucket=bucket, Key="mp") == "AccessDenied"
    assert code(bob_s3.delete_object, Bucket=bucket, Key="data/a.txt") == "AccessDenied"
    result = bob_s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "data/a.txt"}]})
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("data/a.txt", "AccessDenied")]
    assert "Deleted" not in result
    assert code(bob_s3.delete_bucket, Bucket=bucket) == "AccessDenied"
    assert code(bob_s3.put_bucket_acl, Bucket=bucket, ACL="public-read") == "AccessDenied"
    assert code(bob_s3.get_bucket_policy, Bucket=bucket) == "AccessDenied"
    assert code(bob_s3.put_bucket_policy, Bucket=bucket, Policy=read_only_for(bob, bucket)) == "AccessDenied"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["data/a.txt", "data/b.txt"]
    # a third account and anonymous callers get nothing
    _, carol_s3, _ = new_account(server)
    assert code(carol_s3.get_object, Bucket=bucket, Key="data/a.txt") == "AccessDenied"
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/data/a.txt"), 403, "AccessDenied")
    # without the policy bob is out again
    s3.delete_bucket_policy(Bucket=bucket)
    assert code(bob_s3.get_object, Bucket=bucket, Key="data/a.txt") == "AccessDenied"
    assert code(bob_s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    bob_s3.delete_object(Bucket=mine, Key="copy")
    bob_s3.delete_bucket(Bucket=mine)


def test_a_job_reads_inputs_shared_by_policy(s3: Any, server: Server, bucket: str) -> None:
    """Acceptance: a job created by B with inputs in A's bucket runs when A's policy lets B
    read them; without the policy the job fails at create with AccessDenied."""
    reason = sandbox_reason()
    require(reason is None, reason or "")
    s3.put_object(Bucket=bucket, Key="in/1.txt", Body=b"one two three\n")
    s3.put_object(Bucket=bucket, Key="in/2.txt", Body=b"four five\n")
    bob, _, bob_client = new_account(server)
    spec = {"phases": [{"type": "map", "exec": "wc -w"}], "inputs": [f"{bucket}/in/1.txt"]}
    with pytest.raises(AccessDenied):
        bob_client.api("POST", "/_manta/jobs", spec)  # the create itself is refused
    assert bob_client.jobs() == []
    with pytest.raises(AccessDenied):
        bob_client.job(map="wc -w", inputs=[f"{bucket}/in/1.txt"])  # the client's add-inputs; it cancels
    with pytest.raises(AccessDenied):
        bob_client.job(map="wc -w", inputs=f"{bucket}/in/")  # a prefix: the listing is refused
    assert {j["state"] for j in bob_client.jobs()} <= {"cancelled"}
    s3.put_bucket_policy(Bucket=bucket, Policy=read_only_for(bob, bucket))
    job = bob_client.job(map="wc -w", reduce="awk '{s+=$1} END {print s}'", inputs=f"{bucket}/in/")
    assert job.wait(timeout_s=120, progress=False).state == "done", job.errors()
    assert job.read_outputs() == b"5\n"
    assert all(name.startswith(f"_jobs_{bob}/") for name in job.outputs())  # outputs stay bob's
    # a late input outside the policy's reach is refused too
    s3.put_bucket_policy(Bucket=bucket, Policy=read_only_for(bob, bucket, Condition={
        "StringLike": {"s3:prefix": "in/*"}}))
    open_job = bob_client.job(map="wc -w", inputs=[], end=False)
    s3.delete_bucket_policy(Bucket=bucket)
    with pytest.raises(AccessDenied):
        open_job.add_inputs([f"{bucket}/in/1.txt"])
    open_job.cancel()


def test_an_explicit_deny_wins_over_an_allow(s3: Any, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="open/x", Body=b"open")
    s3.put_object(Bucket=bucket, Key="secret/x", Body=b"secret")
    bob, bob_s3, _ = new_account(server)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": bob}, "Action": "s3:Get*", "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject", "s3:DeleteObject"],
         "Resource": f"arn:aws:s3:::{bucket}/secret/*"}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert bob_s3.get_object(Bucket=bucket, Key="open/x")["Body"].read() == b"open"
    assert code(bob_s3.get_object, Bucket=bucket, Key="secret/x") == "AccessDenied"
    # the Deny holds for the bucket's owner too, but never locks the owner out of the policy
    assert code(s3.get_object, Bucket=bucket, Key="secret/x") == "AccessDenied"
    assert code(s3.delete_object, Bucket=bucket, Key="secret/x") == "AccessDenied"
    assert s3.get_object(Bucket=bucket, Key="open/x")["Body"].read() == b"open"
    lockout = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}",
                                                                            f"arn:aws:s3:::{bucket}/*"]}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(lockout))
    assert code(s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == lockout
    s3.delete_bucket_policy(Bucket=bucket)
    assert s3.get_object(Bucket=bucket, Key="secret/x")["Body"].read() == b"secret"


@pytest.mark.parametrize(("cidr", "allowed"), [("127.0.0.1/32", True), ("192.0.2.0/24", False)])
def test_a_source_ip_condition(s3: Any, server: Server, bucket: str, cidr: str, allowed: bool) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"from loopback")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"IpAddress": {"aws:SourceIp": [cidr]}}}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False  # a fixed range
    reply = unsigned(server, "GET", f"/{bucket}/k")
    listing = unsigned(server, "GET", f"/{bucket}?list-type=2")
    if allowed:
        assert (reply.status, reply.body) == (200, b"from loopback")
        assert listing.status == 200 and b"<Key>k</Key>" in listing.body
        assert anonymous_client(server).get_object(Bucket=bucket, Key="k")["Body"].read() == b"from loopback"  # type: ignore[attr-defined]
    else:
        assert_s3_error(reply, 403, "AccessDenied")
        assert_s3_error(listing, 403, "AccessDenied")
    assert_s3_error(unsigned(server, "PUT", f"/{bucket}/k", b"x"), 403, "AccessDenied")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"from loopback"


def test_forwarding_headers_from_a_client_change_neither_its_address_nor_its_transport(
        s3: Any, server: Server, bucket: str) -> None:
    """aws:SourceIp is the peer's address and aws:SecureTransport the peer's connection: a
    client on loopback that sends X-Forwarded-For or X-Forwarded-Proto (headers a proxy in
    front would set) gains nothing by them. uvicorn trusts them from 127.0.0.1 by default."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"only from 192.0.2.0/24, only over TLS")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*",
        "Condition": {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}}]}))
    host = {"Host": f"127.0.0.1:{server.port}"}
    for spoof in ({"X-Forwarded-For": "192.0.2.7"}, {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https"},
                  {"Forwarded": "for=192.0.2.7;proto=https"}, {"X-Real-IP": "192.0.2.7"}):
        assert_s3_error(request(server, "GET", f"/{bucket}/k", {**host, **spoof}), 403, "AccessDenied")
    # a Deny without TLS: the root account's own GET over plain HTTP is refused, however it is labelled
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    for proto in ({}, {"X-Forwarded-Proto": "https"}, {"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"}):
        assert_s3_error(send_with(server, "GET", f"/{bucket}/k", proto), 403, "AccessDenied")
    s3.delete_bucket_policy(Bucket=bucket)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read().startswith(b"only from")


def test_a_listing_limited_by_prefix(s3: Any, server: Server, bucket: str) -> None:
    for key in ("home/bob/1", "home/eve/1"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    bob, bob_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": bob}, "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
        "Condition": {"StringLike": {"s3:prefix": "home/bob/*"}}}]}))
    assert [o["Key"] for o in bob_s3.list_objects_v2(Bucket=bucket, Prefix="home/bob/")["Contents"]] == ["home/bob/1"]
    assert code(bob_s3.list_objects_v2, Bucket=bucket, Prefix="home/eve/") == "AccessDenied"
    assert code(bob_s3.list_objects_v2, Bucket=bucket) == "AccessDenied"  # no prefix: the key is missing


def test_grants_on_buckets_and_objects(s3: Any, server: Server, bucket: str) -> None:
    bob, bob_s3, _ = new_account(server)
    s3.put_object(Bucket=bucket, Key="for-bob", Body=b"granted", GrantRead=f'id="{bob}"', GrantFullControl='id="root"')
    s3.put_object(Bucket=bucket, Key="not-for-bob", Body=b"private")
    grants = {(g["Grantee"].get("ID") or g["Grantee"].get("URI"), g["Permission"])
              for g in s3.get_object_acl(Bucket=bucket, Key="for-bob")["Grants"]}
    assert grants == {("root", "FULL_CONTROL"), (bob, "READ")}
    assert bob_s3.get_object(Bucket=bucket, Key="for-bob")["Body"].read() == b"granted"
    assert code(bob_s3.get_object, Bucket=bucket, Key="not-for-bob") == "AccessDenied"
    assert code(bob_s3.get_object_acl, Bucket=bucket, Key="for-bob") == "AccessDenied"  # READ is not READ_ACP
    assert code(bob_s3.list_objects_v2, Bucket=bucket) == "AccessDenied"
    assert code(bob_s3.get_object, Bucket=bucket, Key="missing") == "AccessDenied"  # may not list: 403, not 404
    # WRITE and READ on the bucket through an AccessControlPolicy body
    s3.put_bucket_acl(Bucket=bucket, AccessControlPolicy={"Owner": {"ID": "root"}, "Grants": [
        {"Grantee": {"Type": "CanonicalUser", "ID": "root"}, "Permission": "FULL_CONTROL"},
        {"Grantee": {"Type": "CanonicalUser", "ID": bob}, "Permission": "WRITE"},
        {"Grantee": {"Type": "CanonicalUser", "ID": bob}, "Permission": "READ"}]})
    assert {g["Permission"] for g in s3.get_bucket_acl(Bucket=bucket)["Grants"] if g["Grantee"].get("ID") == bob} == {
        "READ", "WRITE"}
    bob_s3.put_object(Bucket=bucket, Key="by-bob", Body=b"written by bob")
    assert s3.get_object(Bucket=bucket, Key="by-bob")["Body"].read() == b"written by bob"  # the owner's object
    assert "by-bob" in [o["Key"] for o in bob_s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert code(bob_s3.get_object, Bucket=bucket, Key="by-bob") == "AccessDenied"  # objects have their own ACL
    assert code(bob_s3.get_bucket_acl, Bucket=bucket) == "AccessDenied"
    # a grant to AuthenticatedUsers over raw HTTP: any signer, not anonymous callers
    reply = send_with(server, "PUT", f"/{bucket}/auth?", {
        "x-amz-grant-read": 'uri="http://acs.amazonaws.com/groups/global/AuthenticatedUsers"'}, b"signed only")
    assert reply.status == 200, reply.body
    assert bob_s3.get_object(Bucket=bucket, Key="auth")["Body"].read() == b"signed only"
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/auth"), 403, "AccessDenied")
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    assert code(bob_s3.put_object, Bucket=bucket, Key="by-bob", Body=b"again") == "AccessDenied"


def test_the_public_access_block(s3: Any, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pub", Body=b"public", ACL="public-read")
    assert unsigned(server, "GET", f"/{bucket}/pub").status == 200
    assert code(s3.get_public_access_block, Bucket=bucket) == "NoSuchPublicAccessBlockConfiguration"
    # IgnorePublicAcls: the public ACL stays but counts for nothing
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={"IgnorePublicAcls": True})
    config = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert config == {"BlockPublicAcls": False, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
                      "RestrictPublicBuckets": False}
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/pub"), 403, "AccessDenied")
    assert {g["Grantee"].get("URI") for g in s3.get_object_acl(Bucket=bucket, Key="pub")["Grants"]} >= {ALL_USERS}
    # BlockPublicAcls: no new public ACL, in any form
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "BlockPublicPolicy": True})
    assert unsigned(server, "GET", f"/{bucket}/pub").status == 200  # no longer ignored
    assert code(s3.put_object, Bucket=bucket, Key="new", Body=b"x", ACL="public-read") == "AccessDenied"
    assert code(s3.put_object_acl, Bucket=bucket, Key="pub", ACL="public-read-write") == "AccessDenied"
    assert code(s3.put_bucket_acl, Bucket=bucket, GrantRead=f'uri="{ALL_USERS}"') == "AccessDenied"
    assert code(s3.create_multipart_upload, Bucket=bucket, Key="mp", ACL="authenticated-read") == "AccessDenied"
    s3.put_object(Bucket=bucket, Key="new", Body=b"x", ACL="private")
    # BlockPublicPolicy: no public policy
    public = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]})
    assert code(s3.put_bucket_policy, Bucket=bucket, Policy=public) == "AccessDenied"
    # RestrictPublicBuckets: a public policy already there lets nobody else in
    s3.delete_public_access_block(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=public)
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is True
    assert unsigned(server, "GET", f"/{bucket}/new").status == 200
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={"RestrictPublicBuckets": True})
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/new"), 403, "AccessDenied")
    assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"x"
    s3.delete_public_access_block(Bucket=bucket)
    assert code(s3.get_public_access_block, Bucket=bucket) == "NoSuchPublicAccessBlockConfiguration"
    assert unsigned(server, "GET", f"/{bucket}/new").status == 200


def test_bucket_owner_enforced_disables_acls(s3: Any, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pub", Body=b"public", ACL="public-read")
    assert code(s3.get_bucket_ownership_controls, Bucket=bucket) == "OwnershipControlsNotFoundError"
    enforced = {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    assert code(s3.put_bucket_ownership_controls, Bucket=bucket,
                OwnershipControls=enforced) == "InvalidBucketAclWithObjectOwnership"
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=enforced)
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"] == enforced
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/pub"), 403, "AccessDenied")  # the ACL counts no more
    assert [g["Permission"] for g in s3.get_object_acl(Bucket=bucket, Key="pub")["Grants"]] == ["FULL_CONTROL"]
    for call, args in ((s3.put_object, {"Key": "n", "Body": b"x", "ACL": "public-read"}),
                       (s3.put_object, {"Key": "n", "Body": b"x", "ACL": "private"}),
                       (s3.put_object_acl, {"Key": "pub", "ACL": "public-read"}),
                       (s3.put_bucket_acl, {"ACL": "authenticated-read"}),
                       (s3.copy_object, {"Key": "c", "CopySource": {"Bucket": bucket, "Key": "pub"},
                                         "ACL": "public-read"})):
        assert code(call, Bucket=bucket, **args) == "AccessControlListNotSupported", args
        assert status(call, Bucket=bucket, **args) == 400
    s3.put_object(Bucket=bucket, Key="n", Body=b"x", ACL="bucket-owner-full-control")
    s3.put_object(Bucket=bucket, Key="m", Body=b"x")
    s3.delete_bucket_ownership_controls(Bucket=bucket)
    assert unsigned(server, "GET", f"/{bucket}/pub").status == 200  # the ACL it kept counts again


def test_ownership_set_when_the_bucket_is_made(s3: Any, server: Server, bucket: str) -> None:
    made = bucket + "-enforced"
    s3.create_bucket(Bucket=made, ObjectOwnership="BucketOwnerEnforced")
    try:
        rules = s3.get_bucket_ownership_controls(Bucket=made)["OwnershipControls"]["Rules"]
        assert rules == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert code(s3.put_object, Bucket=made, Key="k", Body=b"x", ACL="public-read") == "AccessControlListNotSupported"
    finally:
        s3.delete_bucket(Bucket=made)
    assert code(s3.create_bucket, Bucket=made, ObjectOwnership="BucketOwnerEnforced",
                ACL="public-read") == "InvalidBucketAclWithObjectOwnership"
    assert_s3_error(send_with(server, "PUT", f"/{made}", {"x-amz-object-ownership": "Nobody"}), 400, "InvalidArgument")


def test_policies_are_validated(s3: Any, bucket: str) -> None:
    good = {"Effect": "Allow", "Principal": {"AWS": "root"}, "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/*"}
    bad_documents = [
        "not json", json.dumps({"Version": "2012-10-17"}), json.dumps({"Statement": [{**good, "Effect": "Perhaps"}]}),
        json.dumps({"Statement": [{**good, "Action": "s3:FlyAway"}]}),
        json.dumps({"Statement": [{**good, "Resource": "arn:aws:s3:::some-other-bucket/*"}]}),
        json.dumps({"Statement": [{**good, "Principal": {"AWS": "no-such-account"}}]}),
        json.dumps({"Statement": [{**good, "Condition": {"IpAddress": {"aws:SourceIp": "not-an-ip"}}}]}),
        json.dumps({"Statement": [{**good, "Condition": {"StringAlmostEquals": {"s3:prefix": "a"}}}]}),
    ]
    for document in bad_documents:
        assert code(s3.put_bucket_policy, Bucket=bucket, Policy=document) == "MalformedPolicy", document
        assert status(s3.put_bucket_policy, Bucket=bucket, Policy=document) == 400
    assert code(s3.get_bucket_policy, Bucket=bucket) == "NoSuchBucketPolicy"
    assert code(s3.get_bucket_policy_status, Bucket=bucket) == "NoSuchBucketPolicy"
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": good}))
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False


def test_only_the_owners_account_manages_the_policy(s3: Any, server: Server, bucket: str) -> None:
    bob, bob_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": bob}, "Action": ["s3:GetBucketPolicy", "s3:PutBucketPolicy"],
        "Resource": f"arn:aws:s3:::{bucket}"}]}))
    assert status(bob_s3.get_bucket_policy, Bucket=bucket) == 405
    assert status(bob_s3.delete_bucket_policy, Bucket=bucket) == 403  # not even allowed
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"]


def test_a_bucket_without_settings_answers_as_before(s3: Any, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/k"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "PUT", f"/{bucket}-anon"), 403, "AccessDenied")  # no anonymous buckets
    assert_s3_error(unsigned(server, "GET", "/"), 403, "AccessDenied")
    assert_s3_error(unsigned(server, "GET", "/no-such-bucket-here/k"), 404, "NoSuchBucket")


def with_query(client: Any, operation: str, extra: str) -> None:
    """Put `extra` first in the query of the client's `operation` requests, before they are
    signed (a request no SDK sends)."""
    def add(request: Any, **_: Any) -> None:
        url = urllib.parse.urlsplit(request.url)
        request.url = url._replace(query=f"{extra}&{url.query}").geturl()

    client.meta.events.register(f"before-sign.s3.{operation}", add)


def versioned(s3: Any, bucket: str, key: str, *acls: str) -> list[str]:
    """Versions of `key` with these ACLs, oldest first; their version ids."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return [s3.put_object(Bucket=bucket, Key=key, Body=f"v{n} {acl}".encode(), ACL=acl)["VersionId"]
            for n, acl in enumerate(acls, 1)]


@pytest.mark.parametrize("decoy", ["policyStatus", "policy", "publicAccessBlock", "ownershipControls", "location",
                                   "versions", "versioning", "tagging", "uploads"])
def test_a_request_names_one_sub_resource(s3: Any, server: Server, bucket: str, decoy: str) -> None:
    """The operation authorized is the operation run: a second sub-resource beside ?acl does
    not get a PutObjectAcl checked as the PutObject a policy allows (nor PutBucketAcl as
    PutBucketVersioning); it is refused, whichever comes first."""
    s3.put_object(Bucket=bucket, Key="secret", Body=b"the owner's")
    bob, bob_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": bob}, "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Principal": {"AWS": bob}, "Action": "s3:PutBucketVersioning",
         "Resource": f"arn:aws:s3:::{bucket}"}]}))
    assert code(bob_s3.put_object_acl, Bucket=bucket, Key="secret", GrantRead=f'id="{bob}"') == "AccessDenied"
    with_query(bob_s3, "PutObjectAcl", decoy)
    with_query(bob_s3, "PutBucketAcl", decoy)
    assert code(bob_s3.put_object_acl, Bucket=bucket, Key="secret", GrantRead=f'id="{bob}"') == "InvalidRequest"
    assert status(bob_s3.put_object_acl, Bucket=bucket, Key="secret", GrantRead=f'id="{bob}"') == 400
    assert code(bob_s3.put_bucket_acl, Bucket=bucket, ACL="public-read-write") == "InvalidRequest"
    target = f"/{bucket}/secret?acl&{decoy}"  # the other order, as the owner
    assert_s3_error(send_with(server, "PUT", target, {"x-amz-acl": "public-read"}), 400, "InvalidRequest")
    assert code(bob_s3.get_object, Bucket=bucket, Key="secret") == "AccessDenied"
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/secret"), 403, "AccessDenied")
    assert {g["Permission"] for g in s3.get_bucket_acl(Bucket=bucket)["Grants"]} == {"FULL_CONTROL"}


def test_parameters_that_qualify_a_sub_resource_still_combine(s3: Any, bucket: str) -> None:
    v1, _ = versioned(s3, bucket, "doc", "private", "private")
    s3.put_object_tagging(Bucket=bucket, Key="doc", VersionId=v1, Tagging={"TagSet": [{"Key": "k", "Value": "1"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="doc", VersionId=v1)["TagSet"] == [{"Key": "k", "Value": "1"}]
    assert s3.get_object(Bucket=bucket, Key="doc", VersionId=v1)["Body"].read() == b"v1 private"
    assert [v["VersionId"] for v in s3.list_object_versions(Bucket=bucket, Prefix="d")["Versions"]][-1] == v1
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"part")["ETag"]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]] == [1]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="m")["Uploads"]] == [upload]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"part"


def test_a_version_is_read_under_its_own_acl(s3: Any, server: Server, bucket: str) -> None:
    v1, v2 = versioned(s3, bucket, "doc", "private", "public-read")
    assert unsigned(server, "GET", f"/{bucket}/doc").body == b"v2 public-read"
    assert unsigned(server, "GET", f"/{bucket}/doc?versionId={v2}").body == b"v2 public-read"
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/doc?versionId={v1}"), 403, "AccessDenied")
    assert unsigned(server, "HEAD", f"/{bucket}/doc?versionId={v1}").status == 403
    bob, bob_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=read_only_for(bob, bucket, Action=[  # the ACLs still count for others
        "s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"]))
    assert code(anonymous_client(server).get_object, Bucket=bucket, Key="doc", VersionId=v1) == "AccessDenied"
    assert bob_s3.get_object(Bucket=bucket, Key="doc", VersionId=v1)["Body"].read() == b"v1 private"
    # the current version private, an old one public
    s3.put_object(Bucket=bucket, Key="doc", Body=b"v3 private")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/doc"), 403, "AccessDenied")
    assert unsigned(server, "GET", f"/{bucket}/doc?versionId={v2}").body == b"v2 public-read"
    # a version that is gone: NoSuchVersion to whoever may list, AccessDenied to others
    s3.delete_object(Bucket=bucket, Key="doc", VersionId=v1)
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/doc?versionId={v1}"), 403, "AccessDenied")
    assert code(bob_s3.get_object, Bucket=bucket, Key="doc", VersionId=v1) == "NoSuchVersion"
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/doc?versionId={v1}"), 404, "NoSuchVersion")


def test_copying_a_version_needs_get_object_version(s3: Any, server: Server, bucket: str) -> None:
    """A copy source naming a version is s3:GetObjectVersion on it, decided with that
    version's ACL; without one, s3:GetObject (CopyObject and UploadPartCopy alike)."""
    v1, v2 = versioned(s3, bucket, "doc", "private", "public-read")
    carol, carol_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": carol}, "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Deny", "Principal": {"AWS": carol}, "Action": "s3:GetObjectVersion",
         "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    _, dave_s3, _ = new_account(server)  # not in the policy: the versions' ACLs decide
    for name, client in (("carol", carol_s3), ("dave", dave_s3)):
        mine = f"{bucket}-{name}"
        client.create_bucket(Bucket=mine)
        client.copy_object(Bucket=mine, Key="current", CopySource={"Bucket": bucket, "Key": "doc"})
        assert client.get_object(Bucket=mine, Key="current")["Body"].read() == b"v2 public-read"
        old = {"Bucket": bucket, "Key": "doc", "VersionId": v1}
        assert code(client.copy_object, Bucket=mine, Key="old", CopySource=old) == "AccessDenied", name
        upload = client.create_multipart_upload(Bucket=mine, Key="mp")["UploadId"]
        assert code(client.upload_part_copy, Bucket=mine, Key="mp", UploadId=upload, PartNumber=1,
                    CopySource=old) == "AccessDenied", name
        client.upload_part_copy(Bucket=mine, Key="mp", UploadId=upload, PartNumber=1,
                                CopySource={"Bucket": bucket, "Key": "doc"})
        client.abort_multipart_upload(Bucket=mine, Key="mp", UploadId=upload)
        assert code(client.get_object, Bucket=mine, Key="old") == "NoSuchKey"
    public = {"Bucket": bucket, "Key": "doc", "VersionId": v2}
    dave_s3.copy_object(Bucket=f"{bucket}-dave", Key="v2", CopySource=public)  # a public version: READ
    assert code(carol_s3.copy_object, Bucket=f"{bucket}-carol", Key="v2", CopySource=public) == "AccessDenied"


def blob_files(server: Server) -> set[str]:
    return {name for root, _, files in os.walk(os.path.join(server.data_dir, "nodes"))
            if os.sep + "blobs" in root for name in files}


def writer_policy(bucket: str, account: str, *actions: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": account}, "Action": ["s3:PutObject", "s3:GetObject", *actions],
        "Resource": f"arn:aws:s3:::{bucket}/*"}]})


BIG_BODY = b"b" * (256 * 1024)  # past SMALL_OBJECT_BYTES: written through a blob file


def test_acl_and_tag_headers_on_a_write_need_their_own_permissions(s3: Any, server: Server, bucket: str) -> None:
    """A write carrying x-amz-acl or x-amz-grant-* takes s3:PutObjectAcl, one carrying
    x-amz-tagging s3:PutObjectTagging, besides s3:PutObject (PutObject, CopyObject,
    CreateMultipartUpload); refused before anything is written."""
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    bob, bob_s3, _ = new_account(server)
    s3.put_bucket_policy(Bucket=bucket, Policy=writer_policy(bucket, bob))
    source = {"Bucket": bucket, "Key": "src"}
    refused: list[tuple[Any, dict[str, Any]]] = []
    for extra in ({"ACL": "public-read"}, {"ACL": "bucket-owner-full-control"}, {"GrantFullControl": f'id="{bob}"'},
                  {"GrantRead": f'uri="{ALL_USERS}"'}, {"Tagging": "a=b"}):
        refused += [(bob_s3.put_object, {"Key": "drop", "Body": b"secret", **extra}),
                    (bob_s3.put_object, {"Key": "drop", "Body": BIG_BODY, **extra}),
                    (bob_s3.copy_object, {"Key": "drop", "CopySource": source, **extra}),
                    (bob_s3.create_multipart_upload, {"Key": "drop", **extra})]
    refused[-2] = (bob_s3.copy_object, {"Key": "drop", "CopySource": source, "TaggingDirective": "REPLACE",
                                        "Tagging": "a=b"})  # a copy takes x-amz-tagging with REPLACE only
    blobs = blob_files(server)
    for call, args in refused:
        assert code(call, Bucket=bucket, **args) == "AccessDenied", args
    assert blob_files(server) - blobs == set()
    assert code(s3.head_object, Bucket=bucket, Key="drop") == "404"
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/drop"), 403, "AccessDenied")
    # s3:PutObject alone still writes, copies (tags and all: COPY) and starts uploads
    bob_s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    bob_s3.copy_object(Bucket=bucket, Key="copy", CopySource=source)
    bob_s3.copy_object(Bucket=bucket, Key="copy", CopySource=source, TaggingDirective="REPLACE")
    s3.abort_multipart_upload(Bucket=bucket, Key="mp",
                              UploadId=bob_s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"])
    # with the permissions, each is taken
    s3.put_bucket_policy(Bucket=bucket, Policy=writer_policy(bucket, bob, "s3:PutObjectAcl", "s3:PutObjectTagging"))
    bob_s3.put_object(Bucket=bucket, Key="pub", Body=b"public", ACL="public-read", Tagging="a=b")
    assert unsigned(server, "GET", f"/{bucket}/pub").body == b"public"
    assert s3.get_object_tagging(Bucket=bucket, Key="pub")["TagSet"] == [{"Key": "a", "Value": "b"}]
    bob_s3.copy_object(Bucket=bucket, Key="pub-copy", CopySource=source, ACL="public-read",
                       TaggingDirective="REPLACE", Tagging="c=d")
    assert unsigned(server, "GET", f"/{bucket}/pub-copy").body == b"source"
    assert s3.get_object_tagging(Bucket=bucket, Key="pub-copy")["TagSet"] == [{"Key": "c", "Value": "d"}]
    upload = bob_s3.create_multipart_upload(Bucket=bucket, Key="pub-mp", ACL="public-read", Tagging="e=f")["UploadId"]
    etag = bob_s3.upload_part(Bucket=bucket, Key="pub-mp", UploadId=upload, PartNumber=1, Body=b"parts")["ETag"]
    bob_s3.complete_multipart_upload(Bucket=bucket, Key="pub-mp", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert unsigned(server, "GET", f"/{bucket}/pub-mp").body == b"parts"
    assert s3.get_object_tagging(Bucket=bucket, Key="pub-mp")["TagSet"] == [{"Key": "e", "Value": "f"}]


def test_a_deny_binds_the_owner_writing_acl_or_tag_headers(s3: Any, server: Server, bucket: str) -> None:
    """The bucket's owner needs no permission granted, but a Deny in its policy binds it."""
    s3.put_object(Bucket=bucket, Key="mine", Body=b"x", ACL="public-read", Tagging="a=b")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": ["s3:PutObjectAcl", "s3:PutObjectTagging"],
        "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    assert code(s3.put_object, Bucket=bucket, Key="n", Body=b"x", ACL="public-read") == "AccessDenied"
    assert code(s3.put_object, Bucket=bucket, Key="n", Body=b"x", Tagging="a=b") == "AccessDenied"
    assert code(s3.create_multipart_upload, Bucket=bucket, Key="n", Tagging="a=b") == "AccessDenied"
    s3.put_object(Bucket=bucket, Key="n", Body=b"x")


def anonymous(server: Server, method: str, target: str, body: bytes = b"", **headers: str) -> Any:
    """An unsigned request with these headers (names with _ for -)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return request(server, method, target, {"Host": f"127.0.0.1:{server.port}", **named}, body)


def anonymous_upload(server: Server, bucket: str, key: str, body: bytes) -> Any:
    """CreateMultipartUpload, UploadPart and CompleteMultipartUpload, unsigned; the last reply."""
    reply = anonymous(server, "POST", f"/{bucket}/{key}?uploads")
    assert reply.status == 200, reply.body
    upload = reply.xml().findtext(f"{NS}UploadId")
    reply = anonymous(server, "PUT", f"/{bucket}/{key}?partNumber=1&uploadId={upload}", body)
    assert reply.status == 200, reply.body
    done = (f'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{reply.headers["etag"]}</ETag>'
            "</Part></CompleteMultipartUpload>").encode()
    return anonymous(server, "POST", f"/{bucket}/{key}?uploadId={upload}", done)



@pytest.mark.parametrize("grant", ["acl", "policy"])
def test_anonymous_writes_with_a_body(s3: Any, server: Server, bucket: str, grant: str) -> None:
    """An unsigned write's payload is unsigned: allowed (a public-read-write ACL, a policy
    for "*"), it is stored as S3 stores it; not allowed, it is AccessDenied, never a 500."""
    blobs = blob_files(server)
    for size in (5, 256 * 1024):  # a small body and one written through a blob file
        assert_s3_error(anonymous(server, "PUT", f"/{bucket}/anon", b"a" * size), 403, "AccessDenied")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    assert_s3_error(anonymous(server, "PUT", f"/{bucket}/mp?partNumber=1&uploadId={upload}", b"part"),
                    403, "AccessDenied")
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)
    assert blob_files(server) - blobs == set()
    if grant == "acl":
        s3.put_bucket_acl(Bucket=bucket, ACL="public-read-write")
    else:
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    for size in (5, 256 * 1024):
        body = bytes(range(256)) * (size // 256) or b"small"
        reply = anonymous(server, "PUT", f"/{bucket}/anon-{size}", body)
        assert reply.status == 200, reply.body
        assert s3.get_object(Bucket=bucket, Key=f"anon-{size}")["Body"].read() == body
    # x-amz-content-sha256 without a signature says nothing: the payload is unsigned
    sha = hashlib.sha256(b"hashed").hexdigest()
    assert anonymous(server, "PUT", f"/{bucket}/hashed", b"hashed", x_amz_content_sha256=sha).status == 200
    # a signed aws-chunked stream cannot come unsigned
    for mode in ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"):
        reply = anonymous(server, "PUT", f"/{bucket}/chunked", b"5\r\nhello\r\n0\r\n\r\n", x_amz_content_sha256=mode,
                          content_encoding="aws-chunked", x_amz_decoded_content_length="5")
        assert_s3_error(reply, 400, "InvalidRequest")
    assert code(s3.head_object, Bucket=bucket, Key="chunked") == "404"
    reply = anonymous_upload(server, bucket, "anon-mp", b"uploaded unsigned")
    assert reply.status == 200, reply.body
    assert s3.get_object(Bucket=bucket, Key="anon-mp")["Body"].read() == b"uploaded unsigned"
    # DeleteObjects reads its (XML) body too
    doc = b"<Delete><Object><Key>anon-5</Key></Object></Delete>"
    reply = anonymous(server, "POST", f"/{bucket}?delete", doc,
                      content_md5=base64.b64encode(hashlib.md5(doc).digest()).decode())
    assert reply.status == 200, reply.body
    assert code(s3.head_object, Bucket=bucket, Key="anon-5") == "404"
    # an ACL or tags on an anonymous write take s3:PutObjectAcl / s3:PutObjectTagging
    assert_s3_error(anonymous(server, "PUT", f"/{bucket}/n", b"x", x_amz_acl="public-read"), 403, "AccessDenied")
    assert_s3_error(anonymous(server, "PUT", f"/{bucket}/n", b"x", x_amz_tagging="a=b"), 403, "AccessDenied")


@pytest.mark.parametrize("condition", [{"Null": {"aws:PrincipalAccount": "true"}},
                                       {"Null": {"aws:SourceIp": "false"}},
                                       {"StringEquals": {"s3:x-amz-acl": "private"}}])
def test_a_condition_anyone_meets_does_not_get_a_public_policy_past_the_block(
        s3: Any, server: Server, bucket: str, condition: dict[str, Any]) -> None:
    """BlockPublicPolicy refuses an Allow to * whose condition limits nobody: a Null, or a
    header the client chooses, is no limit on who comes."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"private")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    public = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"], "Condition": condition}]})
    assert code(s3.put_bucket_policy, Bucket=bucket, Policy=public) == "AccessDenied"
    assert_s3_error(unsigned(server, "GET", f"/{bucket}/k"), 403, "AccessDenied")
    s3.delete_public_access_block(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=public)
    assert s3.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is True


def test_a_policy_with_a_condition_key_no_request_holds_is_malformed(s3: Any, server: Server, bucket: str) -> None:
    """A Deny on s3:ExistingObjectTag/... (which manta does not evaluate) would bind nothing:
    refused as S3 refuses a key it does not know, rather than kept and silently void."""
    s3.put_object(Bucket=bucket, Key="conf.txt", Body=b"secret", Tagging="classification=secret")
    bob, bob_s3, _ = new_account(server)
    document = json.dumps({"Version": "2012-10-17", "Statement": [
        json.loads(read_only_for(bob, bucket))["Statement"][0],
        {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*",
         "Condition": {"StringEquals": {"s3:ExistingObjectTag/classification": "secret"}}}]})
    assert code(s3.put_bucket_policy, Bucket=bucket, Policy=document) == "MalformedPolicy"
    assert code(bob_s3.get_object, Bucket=bucket, Key="conf.txt") == "AccessDenied"  # no policy was set


def test_a_request_expecting_another_bucket_owner_is_refused_and_changes_nothing(
        s3: Any, server: Server, bucket: str) -> None:
    """x-amz-expected-bucket-owner (boto3's ExpectedBucketOwner) names the account the
    client expects to own the bucket, as ListBuckets' Owner/ID names it: S3 answers
    AccessDenied when another owns it, whatever the caller may do there, so that a client
    never writes to (or reads from) a bucket of the same name someone else holds. The same
    for a copy source (ExpectedSourceBucketOwner)."""
    owner = s3.list_buckets()["Owner"]["ID"]
    other_name, other, _ = new_account(server)
    s3.put_object(Bucket=bucket, Key="k", Body=b"kept")
    wrong = {"ExpectedBucketOwner": other_name}
    assert code(s3.put_object, Bucket=bucket, Key="k", Body=b"replaced", **wrong) == "AccessDenied"
    assert code(s3.put_object, Bucket=bucket, Key="new", Body=b"x", **wrong) == "AccessDenied"
    assert code(s3.get_object, Bucket=bucket, Key="k", **wrong) == "AccessDenied"
    assert code(s3.head_object, Bucket=bucket, Key="k", **wrong) == "403"
    assert code(s3.list_objects_v2, Bucket=bucket, **wrong) == "AccessDenied"
    assert code(s3.get_bucket_acl, Bucket=bucket, **wrong) == "AccessDenied"
    assert code(s3.create_multipart_upload, Bucket=bucket, Key="mp", **wrong) == "AccessDenied"
    assert code(s3.delete_object, Bucket=bucket, Key="k", **wrong) == "AccessDenied"
    assert code(s3.delete_objects, Bucket=bucket, Delete={"Objects": [{"Key": "k"}]}, **wrong) == "AccessDenied"
    assert code(s3.copy_object, Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "k"},
                ExpectedSourceBucketOwner=other_name) == "AccessDenied"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])] == ["k"]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    right = {"ExpectedBucketOwner": owner}
    s3.put_object(Bucket=bucket, Key="k", Body=b"replaced", **right)
    assert s3.get_object(Bucket=bucket, Key="k", **right)["Body"].read() == b"replaced"
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "k"},
                   ExpectedSourceBucketOwner=owner, **right)
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == b"replaced"
    # another account's own bucket, expected to be ours: refused before its owner is asked
    other.create_bucket(Bucket=f"{bucket}-theirs")
    assert code(other.put_object, Bucket=f"{bucket}-theirs", Key="k", Body=b"x", **right) == "AccessDenied"
    other.put_object(Bucket=f"{bucket}-theirs", Key="k", Body=b"x", ExpectedBucketOwner=other_name)


def test_copying_an_objects_tags_takes_get_object_tagging_on_the_source(s3: Any, server: Server, bucket: str) -> None:
    """CopyObject copies the source's tags by default (x-amz-tagging-directive COPY), and
    as in S3 that takes s3:GetObjectTagging on the source: an account that may only read
    the object cannot read its tags through a copy of its own. REPLACE, or a source without
    tags, needs no more than s3:GetObject; a version asks for s3:GetObjectVersionTagging."""
    s3.put_object(Bucket=bucket, Key="tagged", Body=b"t", Tagging="class=secret")
    s3.put_object(Bucket=bucket, Key="plain", Body=b"p")
    bob, bob_s3, _ = new_account(server)
    mine = f"{bob}-own"
    bob_s3.create_bucket(Bucket=mine)
    s3.put_bucket_policy(Bucket=bucket, Policy=read_only_for(bob, bucket))
    assert code(bob_s3.copy_object, Bucket=mine, Key="c", CopySource={"Bucket": bucket, "Key": "tagged"}) \
        == "AccessDenied"
    assert code(bob_s3.copy_object, Bucket=mine, Key="c", CopySource={"Bucket": bucket, "Key": "tagged"},
                TaggingDirective="COPY") == "AccessDenied"
    assert code(bob_s3.head_object, Bucket=mine, Key="c") == "404"  # nothing was written
    bob_s3.copy_object(Bucket=mine, Key="c", CopySource={"Bucket": bucket, "Key": "tagged"},
                       TaggingDirective="REPLACE", Tagging="mine=yes")
    assert bob_s3.get_object_tagging(Bucket=mine, Key="c")["TagSet"] == [{"Key": "mine", "Value": "yes"}]
    bob_s3.copy_object(Bucket=mine, Key="p", CopySource={"Bucket": bucket, "Key": "plain"})
    assert bob_s3.get_object_tagging(Bucket=mine, Key="p")["TagSet"] == []

    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{bob}:root"},
        "Action": ["s3:GetObject", "s3:GetObjectTagging"], "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    bob_s3.copy_object(Bucket=mine, Key="c", CopySource={"Bucket": bucket, "Key": "tagged"})
    assert bob_s3.get_object_tagging(Bucket=mine, Key="c")["TagSet"] == [{"Key": "class", "Value": "secret"}]
    # the owner of both needs nothing more
    s3.copy_object(Bucket=bucket, Key="tagged-copy", CopySource={"Bucket": bucket, "Key": "tagged"})
    assert s3.get_object_tagging(Bucket=bucket, Key="tagged-copy")["TagSet"] == [{"Key": "class", "Value": "secret"}]
