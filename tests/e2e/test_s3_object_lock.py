"""S3 Object Lock through boto3 (and raw HTTP) against a real `manta serve`: lock buckets and
their configuration, default retention, GOVERNANCE with and without bypass, COMPLIANCE,
legal holds, a retention that expires, DeleteObjects, delete markers, multipart and copies,
and the refusals (a locked version cannot be deleted, headers on a bucket without lock)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import os
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_crash import sign
from tests.e2e.test_s3_access import new_account
from tests.e2e.test_s3_versioning import NS, error_of

_names = itertools.count(1)


def later(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


@pytest.fixture
def locked(s3: Any) -> str:
    name = f"lock-{os.getpid()}-{next(_names)}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def refused(call: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return error_of(caught)


def test_a_lock_bucket_and_its_configuration(s3: Any, locked: str, bucket: str) -> None:
    assert s3.get_bucket_versioning(Bucket=locked)["Status"] == "Enabled"
    assert s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"] == {"ObjectLockEnabled": "Enabled"}
    rule = {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule})
    assert s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]["Rule"] == rule
    bad = {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1, "Years": 1}}
    assert refused(s3.put_object_lock_configuration, Bucket=locked,
                   ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": bad}) == (400, "MalformedXML")
    assert refused(s3.put_object_lock_configuration, Bucket=locked, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 0}}},
    ) == (400, "InvalidArgument")
    assert refused(s3.put_bucket_versioning, Bucket=locked,
                   VersioningConfiguration={"Status": "Suspended"}) == (409, "InvalidBucketState")
    # a bucket without lock: none to read; enabling needs versioning Enabled first
    assert refused(s3.get_object_lock_configuration, Bucket=bucket) == (404, "ObjectLockConfigurationNotFoundError")
    enable = {"ObjectLockEnabled": "Enabled"}
    assert refused(s3.put_object_lock_configuration, Bucket=bucket,
                   ObjectLockConfiguration=enable) == (409, "InvalidBucketState")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=enable)
    assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"] == enable


def test_default_retention_applies_to_new_versions(s3: Any, locked: str) -> None:
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    vid = s3.put_object(Bucket=locked, Key="k", Body=b"x")["VersionId"]
    head = s3.head_object(Bucket=locked, Key="k", VersionId=vid)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert abs((head["ObjectLockRetainUntilDate"] - later(86400)).total_seconds()) < 60
    assert s3.get_object_retention(Bucket=locked, Key="k")["Retention"]["Mode"] == "GOVERNANCE"
    until = later(3600).replace(microsecond=0)
    explicit = s3.put_object(Bucket=locked, Key="k", Body=b"y", ObjectLockMode="COMPLIANCE",
                             ObjectLockRetainUntilDate=until)["VersionId"]
    got = s3.get_object(Bucket=locked, Key="k", VersionId=explicit)
    assert got["Body"].read() == b"y"
    assert (got["ObjectLockMode"], got["ObjectLockRetainUntilDate"]) == ("COMPLIANCE", until)
    assert refused(s3.delete_object, Bucket=locked, Key="k", VersionId=vid) == (403, "AccessDenied")


def test_governance_yields_only_to_an_allowed_bypass(s3: Any, server: Server, locked: str) -> None:
    vid = s3.put_object(Bucket=locked, Key="g", Body=b"x", ObjectLockMode="GOVERNANCE",
                        ObjectLockRetainUntilDate=later(3600))["VersionId"]
    assert refused(s3.delete_object, Bucket=locked, Key="g", VersionId=vid) == (403, "AccessDenied")
    # another account may delete versions by policy, but not bypass governance
    name, other, _ = new_account(server)
    s3.put_bucket_policy(Bucket=locked, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{name}:root"},
        "Action": ["s3:DeleteObjectVersion", "s3:PutObject", "s3:PutObjectRetention"],
        "Resource": f"arn:aws:s3:::{locked}/*"}]}))
    # setting a lock on a write takes its own permission (retention: granted; legal hold: not)
    other.put_object(Bucket=locked, Key="by-other", Body=b"x", ObjectLockMode="GOVERNANCE",
                     ObjectLockRetainUntilDate=later(60))
    assert refused(other.put_object, Bucket=locked, Key="by-other", Body=b"x",
                   ObjectLockLegalHoldStatus="ON") == (403, "AccessDenied")
    assert refused(other.delete_object, Bucket=locked, Key="g", VersionId=vid,
                   BypassGovernanceRetention=True) == (403, "AccessDenied")
    assert refused(other.put_object_retention, Bucket=locked, Key="g", VersionId=vid, BypassGovernanceRetention=True,
                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(60)}) == (403, "AccessDenied")
    # the owner: shortening needs the bypass header; with it, it and the delete go through
    assert refused(s3.put_object_retention, Bucket=locked, Key="g", VersionId=vid,
                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(60)}) == (403, "AccessDenied")
    s3.put_object_retention(Bucket=locked, Key="g", VersionId=vid, BypassGovernanceRetention=True,
                            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(60)})
    s3.delete_object(Bucket=locked, Key="g", VersionId=vid, BypassGovernanceRetention=True)
    assert refused(s3.head_object, Bucket=locked, Key="g", VersionId=vid)[0] == 404


def test_lock_headers_show_only_to_readers_allowed_them(s3: Any, server: Server, locked: str) -> None:
    s3.put_object(Bucket=locked, Key="shown", Body=b"x", ObjectLockMode="GOVERNANCE",
                  ObjectLockRetainUntilDate=later(3600), ObjectLockLegalHoldStatus="ON")
    name, other, _ = new_account(server)
    s3.put_bucket_policy(Bucket=locked, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{name}:root"},
        "Action": ["s3:GetObject", "s3:GetObjectLegalHold"], "Resource": f"arn:aws:s3:::{locked}/*"}]}))
    mine, theirs = s3.head_object(Bucket=locked, Key="shown"), other.head_object(Bucket=locked, Key="shown")
    assert (mine["ObjectLockMode"], mine["ObjectLockLegalHoldStatus"]) == ("GOVERNANCE", "ON")
    assert "ObjectLockMode" not in theirs and "ObjectLockRetainUntilDate" not in theirs  # no GetObjectRetention
    assert theirs["ObjectLockLegalHoldStatus"] == "ON"
    assert refused(other.get_object_retention, Bucket=locked, Key="shown") == (403, "AccessDenied")


def test_compliance_can_only_be_extended(s3: Any, locked: str) -> None:
    until = later(3600).replace(microsecond=0)
    vid = s3.put_object(Bucket=locked, Key="c", Body=b"x", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)["VersionId"]
    assert refused(s3.delete_object, Bucket=locked, Key="c", VersionId=vid,
                   BypassGovernanceRetention=True) == (403, "AccessDenied")
    for mode, date in (("COMPLIANCE", later(60)), ("GOVERNANCE", later(7200))):
        assert refused(s3.put_object_retention, Bucket=locked, Key="c", VersionId=vid, BypassGovernanceRetention=True,
                       Retention={"Mode": mode, "RetainUntilDate": date}) == (403, "AccessDenied")
    longer = later(7200).replace(microsecond=0)
    s3.put_object_retention(Bucket=locked, Key="c", VersionId=vid, Retention={"Mode": "COMPLIANCE",
                                                                              "RetainUntilDate": longer})
    retention = s3.get_object_retention(Bucket=locked, Key="c", VersionId=vid)["Retention"]
    assert retention == {"Mode": "COMPLIANCE", "RetainUntilDate": longer}


def test_a_legal_hold_blocks_deletes_until_it_is_off(s3: Any, locked: str) -> None:
    vid = s3.put_object(Bucket=locked, Key="h", Body=b"x", ObjectLockLegalHoldStatus="ON")["VersionId"]
    assert s3.head_object(Bucket=locked, Key="h")["ObjectLockLegalHoldStatus"] == "ON"
    assert refused(s3.get_object_retention, Bucket=locked, Key="h") == (404, "NoSuchObjectLockConfiguration")
    assert refused(s3.delete_object, Bucket=locked, Key="h", VersionId=vid,
                   BypassGovernanceRetention=True) == (403, "AccessDenied")
    s3.put_object_legal_hold(Bucket=locked, Key="h", VersionId=vid, LegalHold={"Status": "OFF"})
    assert s3.get_object_legal_hold(Bucket=locked, Key="h", VersionId=vid)["LegalHold"] == {"Status": "OFF"}
    s3.delete_object(Bucket=locked, Key="h", VersionId=vid)
    other = s3.put_object(Bucket=locked, Key="h2", Body=b"x")["VersionId"]
    assert refused(s3.get_object_legal_hold, Bucket=locked, Key="h2") == (404, "NoSuchObjectLockConfiguration")
    s3.put_object_legal_hold(Bucket=locked, Key="h2", LegalHold={"Status": "ON"})
    assert s3.get_object_legal_hold(Bucket=locked, Key="h2", VersionId=other)["LegalHold"] == {"Status": "ON"}
    assert refused(s3.delete_object, Bucket=locked, Key="h2", VersionId=other) == (403, "AccessDenied")


def test_a_retention_that_expires_lets_the_version_go(s3: Any, locked: str) -> None:
    until = later(2)
    vid = s3.put_object(Bucket=locked, Key="e", Body=b"x", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)["VersionId"]
    assert refused(s3.delete_object, Bucket=locked, Key="e", VersionId=vid) == (403, "AccessDenied")
    time.sleep(max(0.0, (until - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
    s3.delete_object(Bucket=locked, Key="e", VersionId=vid)
    assert s3.list_object_versions(Bucket=locked).get("Versions") is None


def test_lock_headers_need_a_lock_bucket(s3: Any, bucket: str, locked: str) -> None:
    for headers in ({"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": later(60)},
                    {"ObjectLockLegalHoldStatus": "ON"}):
        assert refused(s3.put_object, Bucket=bucket, Key="k", Body=b"x", **headers) == (400, "InvalidRequest")
        assert refused(s3.create_multipart_upload, Bucket=bucket, Key="k", **headers) == (400, "InvalidRequest")
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert refused(s3.get_object_retention, Bucket=bucket, Key="k") == (400, "InvalidRequest")
    assert refused(s3.put_object_legal_hold, Bucket=bucket, Key="k",
                   LegalHold={"Status": "ON"}) == (400, "InvalidRequest")
    # a retention is a mode and a date in the future
    assert refused(s3.put_object, Bucket=locked, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE",
                   ObjectLockRetainUntilDate=later(-60)) == (400, "InvalidArgument")
    assert refused(s3.put_object, Bucket=locked, Key="k", Body=b"x",
                   ObjectLockMode="GOVERNANCE") == (400, "InvalidArgument")


def test_delete_objects_keeps_locked_versions(s3: Any, locked: str) -> None:
    kept = s3.put_object(Bucket=locked, Key="a", Body=b"x", ObjectLockMode="GOVERNANCE",
                         ObjectLockRetainUntilDate=later(3600))["VersionId"]
    free = s3.put_object(Bucket=locked, Key="b", Body=b"x")["VersionId"]
    answer = s3.delete_objects(Bucket=locked, Delete={"Objects": [
        {"Key": "a", "VersionId": kept}, {"Key": "b", "VersionId": free}]})
    assert [(e["Key"], e["VersionId"], e["Code"]) for e in answer["Errors"]] == [("a", kept, "AccessDenied")]
    assert [(d["Key"], d["VersionId"]) for d in answer["Deleted"]] == [("b", free)]
    assert s3.head_object(Bucket=locked, Key="a", VersionId=kept)["ObjectLockMode"] == "GOVERNANCE"
    answer = s3.delete_objects(Bucket=locked, BypassGovernanceRetention=True,
                               Delete={"Objects": [{"Key": "a", "VersionId": kept}]})
    assert "Errors" not in answer and answer["Deleted"][0]["VersionId"] == kept


def test_delete_objects_decides_the_bypass_key_by_key(s3: Any, server: Server, locked: str) -> None:
    """A policy allows another account to bypass governance under scratch/ only: one
    DeleteObjects with the bypass header removes the version there and keeps the other."""
    vids = {key: s3.put_object(Bucket=locked, Key=key, Body=b"x", ObjectLockMode="GOVERNANCE",
                               ObjectLockRetainUntilDate=later(3600))["VersionId"] for key in ("scratch/a", "keep/b")}
    name, other, _ = new_account(server)
    principal = {"AWS": f"arn:aws:iam::{name}:root"}
    s3.put_bucket_policy(Bucket=locked, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": principal, "Action": "s3:DeleteObjectVersion",
         "Resource": f"arn:aws:s3:::{locked}/*"},
        {"Effect": "Allow", "Principal": principal, "Action": "s3:BypassGovernanceRetention",
         "Resource": f"arn:aws:s3:::{locked}/scratch/*"}]}))
    answer = other.delete_objects(Bucket=locked, BypassGovernanceRetention=True, Delete={"Objects": [
        {"Key": key, "VersionId": vid} for key, vid in vids.items()]})
    assert [(d["Key"], d["VersionId"]) for d in answer["Deleted"]] == [("scratch/a", vids["scratch/a"])]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("keep/b", "AccessDenied")]
    assert s3.head_object(Bucket=locked, Key="keep/b", VersionId=vids["keep/b"])["ObjectLockMode"] == "GOVERNANCE"


def test_a_plain_delete_adds_a_marker_and_the_bucket_stays(s3: Any, locked: str) -> None:
    vid = s3.put_object(Bucket=locked, Key="m", Body=b"x", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=later(3600))["VersionId"]
    done = s3.delete_object(Bucket=locked, Key="m")
    assert done["DeleteMarker"] is True and done["VersionId"] != vid
    assert refused(s3.get_object, Bucket=locked, Key="m")[0] == 404
    assert s3.get_object(Bucket=locked, Key="m", VersionId=vid)["Body"].read() == b"x"
    s3.delete_object(Bucket=locked, Key="m", VersionId=done["VersionId"])  # markers are not locked
    s3.put_object(Bucket=locked, Key="m", Body=b"y")  # a new version: the locked one stays
    assert s3.get_object(Bucket=locked, Key="m", VersionId=vid)["Body"].read() == b"x"
    assert refused(s3.delete_bucket, Bucket=locked) == (409, "BucketNotEmpty")


def test_multipart_copies_and_version_tags(s3: Any, locked: str) -> None:
    until = later(3600).replace(microsecond=0)
    upload = s3.create_multipart_upload(Bucket=locked, Key="mp", ObjectLockMode="GOVERNANCE",
                                        ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON")
    part = s3.upload_part(Bucket=locked, Key="mp", UploadId=upload["UploadId"], PartNumber=1, Body=b"p")
    done = s3.complete_multipart_upload(Bucket=locked, Key="mp", UploadId=upload["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    head = s3.head_object(Bucket=locked, Key="mp", VersionId=done["VersionId"])
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"], head["ObjectLockLegalHoldStatus"]) == (
        "GOVERNANCE", until, "ON")
    # a copy does not inherit its source's lock; it takes its own headers
    s3.copy_object(Bucket=locked, Key="plain", CopySource={"Bucket": locked, "Key": "mp"})
    assert "ObjectLockMode" not in s3.head_object(Bucket=locked, Key="plain")
    s3.copy_object(Bucket=locked, Key="held", CopySource={"Bucket": locked, "Key": "mp"},
                   ObjectLockLegalHoldStatus="ON")
    assert s3.head_object(Bucket=locked, Key="held")["ObjectLockLegalHoldStatus"] == "ON"
    # tags of a noncurrent version
    first = s3.put_object(Bucket=locked, Key="t", Body=b"1")["VersionId"]
    s3.put_object(Bucket=locked, Key="t", Body=b"2")
    s3.put_object_tagging(Bucket=locked, Key="t", VersionId=first, Tagging={"TagSet": [{"Key": "a", "Value": "1"}]})
    assert s3.get_object_tagging(Bucket=locked, Key="t", VersionId=first)["TagSet"] == [{"Key": "a", "Value": "1"}]
    assert s3.get_object_tagging(Bucket=locked, Key="t")["TagSet"] == []
    s3.delete_object_tagging(Bucket=locked, Key="t", VersionId=first)
    assert s3.get_object_tagging(Bucket=locked, Key="t", VersionId=first)["TagSet"] == []


def test_raw_http_retention_and_headers(server: Server, s3: Any, locked: str) -> None:
    target = f"/{locked}/raw"
    until = "2099-01-02T03:04:05.678Z"
    answer = requests.put(server.url + target, data=b"x", timeout=10, headers=sign(
        server, "PUT", target, {"x-amz-object-lock-mode": "GOVERNANCE",
                                "x-amz-object-lock-retain-until-date": until}, b"x"))
    assert answer.status_code == 200, answer.content
    vid = answer.headers["x-amz-version-id"]
    head = requests.head(server.url + target, headers=sign(server, "HEAD", target), timeout=10)
    assert (head.headers["x-amz-object-lock-mode"], head.headers["x-amz-object-lock-retain-until-date"]) == (
        "GOVERNANCE", until)
    query = f"{target}?retention&versionId={vid}"
    got = requests.get(server.url + query, headers=sign(server, "GET", query), timeout=10)
    root = ET.fromstring(got.content)
    assert (root.tag, root.findtext(NS + "Mode"), root.findtext(NS + "RetainUntilDate")) == (
        NS + "Retention", "GOVERNANCE", until)
    # removing a GOVERNANCE retention: an empty Retention with the bypass header (and, as
    # every Object Lock PUT, Content-MD5 or a checksum: without one it is InvalidRequest)
    body = b"<Retention/>"
    md5 = {"content-md5": base64.b64encode(hashlib.md5(body).digest()).decode()}
    bypass = {"x-amz-bypass-governance-retention": "true"}
    put = requests.put(server.url + query, data=body, timeout=10, headers=sign(server, "PUT", query, bypass, body))
    assert put.status_code == 400 and b"InvalidRequest" in put.content, put.content
    for extra, expected in ((md5, 403), ({**md5, **bypass}, 200)):
        put = requests.put(server.url + query, data=body, timeout=10,
                           headers=sign(server, "PUT", query, extra, body))
        assert put.status_code == expected, put.content
    assert "x-amz-object-lock-mode" not in requests.head(
        server.url + target, headers=sign(server, "HEAD", target), timeout=10).headers
    bad = b"<Retention><Mode>FOREVER</Mode><RetainUntilDate>2099-01-01T00:00:00Z</RetainUntilDate></Retention>"
    md5 = {"content-md5": base64.b64encode(hashlib.md5(bad).digest()).decode()}
    put = requests.put(server.url + query, data=bad, timeout=10, headers=sign(server, "PUT", query, md5, bad))
    assert put.status_code == 400 and b"MalformedXML" in put.content
