"""S3 Lifecycle end to end: Put/Get/DeleteBucketLifecycleConfiguration through boto3 and
by hand (refusals included), and passes of the daemon with its clock moved forward
(`manta admin lifecycle run --days-ahead N` and the admin API): exactly what the rules
name is expired, removed or aborted, usage goes down by it, everything else is still
there byte for byte, and a second pass changes nothing."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from manta.client import Client
from tests.conftest import ROOT_AK, ROOT_SK, Server, running_server
from tests.e2e.test_bucket_race import new_account
from tests.e2e.test_cli_objects import manta
from tests.e2e.test_crash import sign
from tests.e2e.test_s3_edge_keys import Reply, assert_s3_error, request

ROUND_TRIP: dict[str, Any] = {"Rules": [
    {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}},
    {"ID": "tmp", "Filter": {"Tag": {"Key": "class", "Value": "tmp"}}, "Status": "Disabled",
     "Expiration": {"Date": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}},
    {"ID": "sized", "Filter": {"And": {"Prefix": "s/", "Tags": [{"Key": "a", "Value": "b"}],
                                       "ObjectSizeGreaterThan": 10, "ObjectSizeLessThan": 1000}},
     "Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 5, "NewerNoncurrentVersions": 2}},
    {"ID": "markers", "Filter": {"Prefix": ""}, "Status": "Enabled",
     "Expiration": {"ExpiredObjectDeleteMarker": True},
     "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
    {"ID": "big", "Filter": {"ObjectSizeGreaterThan": 4096}, "Status": "Enabled", "Expiration": {"Days": 1}},
]}


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def put_xml(server: Server, bucket: str, body: bytes, md5: bool = True) -> Reply:
    headers = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()} if md5 else {}
    target = f"/{bucket}?lifecycle"
    return request(server, "PUT", target, sign(server, "PUT", target, headers, body), body)


def rule_xml(inner: str) -> bytes:
    return f"<LifecycleConfiguration><Rule>{inner}</Rule></LifecycleConfiguration>".encode()


OK_RULE = "<ID>r</ID><Filter><Prefix>p/</Prefix></Filter><Status>Enabled</Status><Expiration><Days>1</Days></Expiration>"


# -- the configuration ---------------------------------------------------------------------

def test_put_get_delete_round_trip_through_boto3(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert code_of(caught) == "NoSuchLifecycleConfiguration"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=ROUND_TRIP)
    assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"] == ROUND_TRIP["Rules"]

    legacy = {"Rules": [{"Prefix": "old/", "Status": "Enabled", "Expiration": {"Days": 3}}]}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=legacy)  # replaces
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Prefix"] == "old/" and rule["Expiration"] == {"Days": 3} and len(rule["ID"]) == 48  # S3 names it

    assert s3.delete_bucket_lifecycle(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert code_of(caught) == "NoSuchLifecycleConfiguration"
    s3.delete_bucket_lifecycle(Bucket=bucket)  # none: still 204


@pytest.mark.parametrize("body,status,code", [
    (b"<LifecycleConfiguration><Rule>", 400, "MalformedXML"),
    (b"<LifecycleConfiguration></LifecycleConfiguration>", 400, "MalformedXML"),
    (rule_xml(OK_RULE.replace("Enabled", "On")), 400, "MalformedXML"),
    (rule_xml(OK_RULE + "<Prefix>p/</Prefix>"), 400, "MalformedXML"),  # Filter and Prefix
    (rule_xml("<ID>r</ID><Status>Enabled</Status><Expiration><Days>1</Days></Expiration>"), 400, "MalformedXML"),
    (rule_xml(OK_RULE.replace("<Prefix>p/</Prefix>", "<Prefix>p/</Prefix><ObjectSizeLessThan>5</ObjectSizeLessThan>")),
     400, "MalformedXML"),  # two conditions outside And
    (rule_xml(OK_RULE.replace("<Days>1</Days>", "<Days>1</Days><Date>2030-01-01T00:00:00Z</Date>")), 400, "MalformedXML"),
    (rule_xml(OK_RULE.replace("<Days>1</Days>", "<Days>one</Days>")), 400, "MalformedXML"),
    (rule_xml(OK_RULE + "<Bogus/>"), 400, "MalformedXML"),
    (rule_xml("<ID>r</ID><Filter></Filter><Status>Enabled</Status>"), 400, "InvalidRequest"),  # no action
    (rule_xml(OK_RULE) .replace(b"</Rule>", b"</Rule><Rule>" + OK_RULE.encode() + b"</Rule>", 1), 400, "InvalidArgument"),
    (rule_xml(OK_RULE.replace("<Days>1</Days>", "<Days>0</Days>")), 400, "InvalidArgument"),
    (rule_xml(OK_RULE.replace("<Days>1</Days>", "<Date>2030-01-01T12:00:00Z</Date>")), 400, "InvalidArgument"),
    (rule_xml(OK_RULE.replace("<ID>r</ID>", f"<ID>{'x' * 256}</ID>")), 400, "InvalidArgument"),
    (rule_xml(OK_RULE.replace("<Expiration><Days>1</Days></Expiration>",
                              "<NoncurrentVersionExpiration><NoncurrentDays>-1</NoncurrentDays>"
                              "</NoncurrentVersionExpiration>")), 400, "InvalidArgument"),
    (rule_xml(OK_RULE.replace("<Expiration><Days>1</Days></Expiration>",
                              "<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays><NewerNoncurrentVersions>"
                              "101</NewerNoncurrentVersions></NoncurrentVersionExpiration>")), 400, "InvalidArgument"),
    (rule_xml("<ID>r</ID><Filter><And><ObjectSizeGreaterThan>9</ObjectSizeGreaterThan><ObjectSizeLessThan>9"
              "</ObjectSizeLessThan></And></Filter><Status>Enabled</Status><Expiration><Days>1</Days></Expiration>"),
     400, "InvalidArgument"),
    (rule_xml("<ID>r</ID><Filter><Tag><Key>a</Key><Value>b</Value></Tag></Filter><Status>Enabled</Status>"
              "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>"
              "</AbortIncompleteMultipartUpload>"), 400, "InvalidRequest"),
    (rule_xml("<ID>r</ID><Filter><And><Tag><Key>a</Key><Value>b</Value></Tag><Tag><Key>a</Key><Value>c</Value>"
              "</Tag></And></Filter><Status>Enabled</Status><Expiration><Days>1</Days></Expiration>"),
     400, "InvalidRequest"),
    (rule_xml(OK_RULE + "<Transition><Days>1</Days><StorageClass>GLACIER</StorageClass></Transition>"),
     501, "NotImplemented"),
])
def test_put_refuses_invalid_documents(server: Server, bucket: str, body: bytes, status: int, code: str) -> None:
    assert_s3_error(put_xml(server, bucket, body), status, code)
    assert_s3_error(request(server, "GET", f"/{bucket}?lifecycle", sign(server, "GET", f"/{bucket}?lifecycle")),
                    404, "NoSuchLifecycleConfiguration")  # nothing was stored


def test_put_needs_an_integrity_header(server: Server, bucket: str) -> None:
    assert_s3_error(put_xml(server, bucket, rule_xml(OK_RULE), md5=False), 400, "InvalidRequest")
    assert put_xml(server, bucket, rule_xml(OK_RULE)).status == 200


def test_only_the_bucket_owner_reads_or_changes_the_rules(server: Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=ROUND_TRIP)
    other = new_account(server, "lifecycle").s3(server.url)
    for call in (lambda: other.get_bucket_lifecycle_configuration(Bucket=bucket),
                 lambda: other.delete_bucket_lifecycle(Bucket=bucket),
                 lambda: other.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=ROUND_TRIP)):
        with pytest.raises(ClientError) as caught:
            call()
        assert code_of(caught) == "AccessDenied"
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 5
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_lifecycle_configuration(Bucket="no-such-bucket-lifecycle")
    assert code_of(caught) == "NoSuchBucket"


# -- passes with the clock moved forward ---------------------------------------------------------

def usage(server: Server) -> dict[str, int]:
    return dict(Client(server.url, ROOT_AK, ROOT_SK).api("GET", "/_manta/admin/users/root")["usage"])


def body_of(s3: Any, bucket: str, key: str, version: str | None = None) -> bytes:
    extra = {"VersionId": version} if version else {}
    return bytes(s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())


def versions_of(s3: Any, bucket: str) -> set[tuple[str, str, bool]]:
    """(key, version id, is a delete marker) of every version."""
    listing = s3.list_object_versions(Bucket=bucket)
    return ({(v["Key"], v["VersionId"], False) for v in listing.get("Versions", [])}
            | {(m["Key"], m["VersionId"], True) for m in listing.get("DeleteMarkers", [])})


def uploads_of(s3: Any, bucket: str) -> list[str]:
    return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_a_pass_with_the_clock_moved_forward_expires_exactly_what_the_rules_name(
        server: Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}},
        {"ID": "tmp", "Filter": {"Tag": {"Key": "class", "Value": "tmp"}}, "Status": "Enabled",
         "Expiration": {"Days": 30}},
        {"ID": "big", "Filter": {"And": {"Prefix": "sized/", "ObjectSizeGreaterThan": 1000}}, "Status": "Enabled",
         "Expiration": {"Days": 30}},
        {"ID": "off", "Filter": {"Prefix": "keep/"}, "Status": "Disabled", "Expiration": {"Days": 1}},
        {"ID": "uploads", "Filter": {"Prefix": "up/"}, "Status": "Enabled",
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
        {"ID": "later", "Filter": {"Prefix": "later/"}, "Status": "Enabled",
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 60}},
    ]})
    objects = {"logs/a": b"log" * 10, "data/a": b"data", "t1": b"tagged tmp", "t2": b"tagged keep",
               "sized/big": b"B" * 2000, "sized/small": b"s" * 10, "keep/a": b"kept by a disabled rule"}
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    s3.put_object_tagging(Bucket=bucket, Key="t1", Tagging={"TagSet": [{"Key": "class", "Value": "tmp"}]})
    s3.put_object_tagging(Bucket=bucket, Key="t2", Tagging={"TagSet": [{"Key": "class", "Value": "keep"}]})
    for key in ("up/old", "later/new", "other/u"):
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"p" * 100)
    before = usage(server)

    early = manta(server, "admin", "lifecycle", "run", "--days-ahead", "5", "--bucket", bucket, "--json")
    assert early.returncode == 0, early.stderr
    assert json.loads(early.stdout)["expired"] == json.loads(early.stdout)["aborted"] == 0  # not old enough yet

    ran = manta(server, "admin", "lifecycle", "run", "--days-ahead", "40", "--bucket", bucket)
    assert ran.returncode == 0, ran.stderr
    assert (b"3 objects expired, 0 noncurrent versions removed, 0 delete markers removed, 1 uploads aborted"
            in ran.stdout), ran.stdout

    gone = {"logs/a", "t1", "sized/big"}
    for key in gone:
        with pytest.raises(ClientError) as caught:
            s3.head_object(Bucket=bucket, Key=key)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    for key in set(objects) - gone:
        assert body_of(s3, bucket, key) == objects[key]
    assert uploads_of(s3, bucket) == ["later/new", "other/u"]
    after = usage(server)
    assert before["objects"] - after["objects"] == 3 + 1  # + the aborted upload
    assert before["bytes"] - after["bytes"] == sum(len(objects[k]) for k in gone) + 100  # + the aborted part

    again = manta(server, "admin", "lifecycle", "run", "--days-ahead", "40", "--bucket", bucket, "--json")
    assert {k: v for k, v in json.loads(again.stdout).items() if k != "at"} == {
        "buckets": 1, "expired": 0, "noncurrent": 0, "markers": 0, "aborted": 0, "failed": 0, "truncated": False}
    assert usage(server) == after


def test_a_pass_over_a_versioned_bucket_removes_old_versions_and_lone_markers(
        server: Server, s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "noncurrent", "Filter": {"Prefix": "doc"}, "Status": "Enabled",
         "NoncurrentVersionExpiration": {"NoncurrentDays": 10, "NewerNoncurrentVersions": 1}},
        {"ID": "markers", "Filter": {"Prefix": "gone"}, "Status": "Enabled",
         "Expiration": {"ExpiredObjectDeleteMarker": True}},
    ]})
    ids = [s3.put_object(Bucket=bucket, Key="doc", Body=f"v{i}".encode())["VersionId"] for i in range(3)]
    s3.put_object(Bucket=bucket, Key="gone/kept", Body=b"under a marker")
    s3.delete_object(Bucket=bucket, Key="gone/kept")  # a marker over a version: not alone
    lone = s3.put_object(Bucket=bucket, Key="gone/lone", Body=b"x")["VersionId"]
    s3.delete_object(Bucket=bucket, Key="gone/lone")
    s3.delete_object(Bucket=bucket, Key="gone/lone", VersionId=lone)  # its marker is all that is left
    s3.put_object(Bucket=bucket, Key="other", Body=b"o1")
    s3.put_object(Bucket=bucket, Key="other", Body=b"o2")  # a noncurrent version outside the rules
    listed = versions_of(s3, bucket)
    before = usage(server)

    report = Client(server.url, ROOT_AK, ROOT_SK).api("POST", "/_manta/admin/lifecycle",
                                                       {"days_ahead": 40, "bucket": bucket})
    assert (report["noncurrent"], report["markers"], report["expired"], report["failed"]) == (1, 1, 0, 0)

    assert len(listed) == 8
    assert versions_of(s3, bucket) == {v for v in listed if v[1] != ids[0] and v[0] != "gone/lone"}
    assert [body_of(s3, bucket, "doc", vid) for vid in ids[1:]] == [b"v1", b"v2"]
    assert body_of(s3, bucket, "other") == b"o2"
    assert usage(server)["objects"] == before["objects"] - 1
    assert usage(server)["bytes"] == before["bytes"] - 2

    report = Client(server.url, ROOT_AK, ROOT_SK).api("POST", "/_manta/admin/lifecycle",
                                                       {"days_ahead": 40, "bucket": bucket})
    assert report["noncurrent"] + report["markers"] + report["expired"] + report["aborted"] == 0


def test_object_lock_keeps_what_a_rule_would_expire(server: Server, s3: Any) -> None:
    """A pass moved 40 days ahead removes an unlocked old version but not one under
    retention or a legal hold: Object Lock counts real time, whatever the daemon's clock.
    A dry run first says so and changes nothing."""
    name = f"lc-lock-{time.time_ns()}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [
        {"ID": "old", "Filter": {}, "Status": "Enabled", "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    kept = s3.put_object(Bucket=name, Key="kept", Body=b"k1", ObjectLockMode="COMPLIANCE",
                         ObjectLockRetainUntilDate=until)["VersionId"]
    s3.put_object(Bucket=name, Key="kept", Body=b"k2")
    held = s3.put_object(Bucket=name, Key="held", Body=b"h1", ObjectLockLegalHoldStatus="ON")["VersionId"]
    s3.put_object(Bucket=name, Key="held", Body=b"h2")
    free = s3.put_object(Bucket=name, Key="free", Body=b"f1")["VersionId"]
    s3.put_object(Bucket=name, Key="free", Body=b"f2")

    before = versions_of(s3, name)
    dry = manta(server, "admin", "lifecycle", "run", "--days-ahead", "40", "--bucket", name, "--dry-run")
    assert dry.returncode == 1, dry.stderr  # the locked versions would be kept
    lines = dry.stdout.decode().splitlines()
    assert lines[0] == f"would remove noncurrent version\t{name}/free\t{free}", lines
    assert "1 noncurrent versions would be removed" in lines[-1] and "2 locked" in lines[-1], lines
    assert versions_of(s3, name) == before  # a dry run changes nothing

    run = manta(server, "admin", "lifecycle", "run", "--days-ahead", "40", "--bucket", name, "--json")
    assert run.returncode == 1, run.stderr  # something failed: the locked versions
    report = json.loads(run.stdout)
    assert (report["noncurrent"], report["failed"]) == (1, 2)
    old = {vid for key, vid, _ in versions_of(s3, name)}
    assert kept in old and held in old and free not in old
    assert body_of(s3, name, "kept", kept) == b"k1" and body_of(s3, name, "held", held) == b"h1"


def test_the_admin_command_is_root_only_and_checks_its_time(server: Server) -> None:
    other = new_account(server, "lifecycle-admin")
    with pytest.raises(Exception) as caught:
        Client(server.url, other.access_key, other.secret_key).api("POST", "/_manta/admin/lifecycle", {})
    assert "AccessDenied" in str(caught.value)
    with pytest.raises(Exception) as caught:
        Client(server.url, ROOT_AK, ROOT_SK).api("POST", "/_manta/admin/lifecycle", {"now": "tomorrow"})
    assert "InvalidArgument" in str(caught.value)
    with pytest.raises(SystemExit):  # one or the other
        manta(server, "admin", "lifecycle", "run", "--now", "2030-01-01", "--days-ahead", "1")
    bad = manta(server, "admin", "lifecycle", "run", "--now", "tomorrow")
    assert bad.returncode != 0 and b"ISO 8601" in bad.stderr, bad.stderr
    fine = manta(server, "admin", "lifecycle", "run", "--now", "2000-01-01T00:00:00Z", "--json")
    assert fine.returncode == 0 and json.loads(fine.stdout)["at"] == 946684800


def test_the_servers_daemon_enforces_rules_on_its_own() -> None:
    """The leader's daemon runs every MANTA_LIFECYCLE_INTERVAL_S with the real clock: a
    Date in the past expires its prefix at the next pass."""
    with running_server(env={"MANTA_LIFECYCLE_INTERVAL_S": "0.2"}) as srv:
        s3: Any = srv.client()
        s3.create_bucket(Bucket="daemon-lifecycle")
        s3.put_object(Bucket="daemon-lifecycle", Key="old/a", Body=b"a")
        s3.put_object(Bucket="daemon-lifecycle", Key="new/a", Body=b"b")
        s3.put_bucket_lifecycle_configuration(Bucket="daemon-lifecycle", LifecycleConfiguration={"Rules": [
            {"ID": "past", "Filter": {"Prefix": "old/"}, "Status": "Enabled",
             "Expiration": {"Date": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}}]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="daemon-lifecycle").get("Contents", [])]
            if keys == ["new/a"]:
                break
            time.sleep(0.1)
        assert keys == ["new/a"]
        assert body_of(s3, "daemon-lifecycle", "new/a") == b"b"
