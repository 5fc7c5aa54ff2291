"""Object and bucket tags on the real server: boto3 for what it sends, raw signed HTTP for
what it refuses to send (empty keys, malformed XML, bad x-amz-tagging headers)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import NO_USER_CONFIG, REPO, ROOT_AK, ROOT_SK, Server

MiB = 1024 * 1024
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status_of(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def tag_set(n: int, prefix: str = "k") -> list[dict[str, str]]:
    return [{"Key": f"{prefix}{i:02d}", "Value": f"v{i}"} for i in range(n)]


def signed(server: Server, method: str, path: str, body: bytes = b"",
           headers: dict[str, str] | None = None) -> requests.Response:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=server.url + path, data=body, headers=headers or {})
    S3SigV4Auth(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1").add_auth(req)
    return requests.request(method, server.url + path, data=body, headers=dict(req.headers.items()), timeout=30)


def tagging_body(pairs: list[tuple[str, str]]) -> bytes:
    tags = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f"<Tagging><TagSet>{tags}</TagSet></Tagging>".encode()


def error_code(resp: requests.Response) -> str:
    return ET.fromstring(resp.content).findtext("Code") or ""


# -- object tags ---------------------------------------------------------------------------

def test_object_tagging_put_get_delete(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="obj", Body=b"data")
    assert s3.get_object_tagging(Bucket=bucket, Key="obj")["TagSet"] == []
    assert "TagCount" not in s3.head_object(Bucket=bucket, Key="obj")
    tags = [{"Key": "project", "Value": "manta"}, {"Key": "empty", "Value": ""},
            {"Key": "ünï cödé +-=._:/@", "Value": "wert 1 +-=._:/@"}]
    s3.put_object_tagging(Bucket=bucket, Key="obj", Tagging={"TagSet": tags})
    got = s3.get_object_tagging(Bucket=bucket, Key="obj")["TagSet"]
    assert got == sorted(tags, key=lambda t: t["Key"])
    assert s3.head_object(Bucket=bucket, Key="obj")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "3"
    assert s3.get_object(Bucket=bucket, Key="obj")["TagCount"] == 3
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"data"  # the bytes are untouched
    s3.put_object_tagging(Bucket=bucket, Key="obj", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="obj")["TagSet"] == [{"Key": "only", "Value": "one"}]
    deleted = s3.delete_object_tagging(Bucket=bucket, Key="obj")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="obj")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="obj")


def test_object_tagging_of_a_missing_key(s3, bucket: str) -> None:
    for call in (lambda: s3.get_object_tagging(Bucket=bucket, Key="nope"),
                 lambda: s3.put_object_tagging(Bucket=bucket, Key="nope", Tagging={"TagSet": tag_set(1)}),
                 lambda: s3.delete_object_tagging(Bucket=bucket, Key="nope")):
        with pytest.raises(ClientError) as exc:
            call()
        assert code_of(exc) == "NoSuchKey" and status_of(exc) == 404


def test_object_tag_limits(s3, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="lim", Body=b"x")
    most = [{"Key": f"{i}" + "k" * 127, "Value": "v" * 256} for i in range(10)]
    s3.put_object_tagging(Bucket=bucket, Key="lim", Tagging={"TagSet": most})
    assert len(s3.get_object_tagging(Bucket=bucket, Key="lim")["TagSet"]) == 10
    refused = {
        "BadRequest": [tag_set(11)],
        "InvalidTag": [[{"Key": "k" * 129, "Value": "v"}], [{"Key": "k", "Value": "v" * 257}],
                       [{"Key": "aws:cloudformation", "Value": "v"}], [{"Key": "AWS:x", "Value": "v"}],
                       [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}],
                       [{"Key": "semi;colon", "Value": "v"}], [{"Key": "k", "Value": "star*"}],
                       [{"Key": "k", "Value": "tab\there"}]],
    }
    for code, cases in refused.items():
        for tags in cases:
            with pytest.raises(ClientError) as exc:
                s3.put_object_tagging(Bucket=bucket, Key="lim", Tagging={"TagSet": tags})
            assert (code_of(exc), status_of(exc)) == (code, 400), tags
    assert len(s3.get_object_tagging(Bucket=bucket, Key="lim")["TagSet"]) == 10  # nothing refused was kept
    empty_key = signed(server, "PUT", f"/{bucket}/lim?tagging", tagging_body([("", "v")]))
    assert empty_key.status_code == 400 and error_code(empty_key) == "InvalidTag"
    for body in (b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",  # no Value
                 b"<Tagging><Tag><Key>k</Key><Value>v</Value></Tag></Tagging>",  # no TagSet
                 b"<Tagging><TagSet><Tag><Key>k</Key>", b"<Other/>", b""):
        resp = signed(server, "PUT", f"/{bucket}/lim?tagging", body)
        assert resp.status_code == 400 and error_code(resp) == "MalformedXML", body


def test_put_object_with_tagging_header_and_overwrite_drops_tags(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="h", Body=b"x", Tagging="b=2&a=1&empty=&bare&sp%20ace=%C3%BC%2B")
    got = s3.get_object_tagging(Bucket=bucket, Key="h")["TagSet"]
    assert got == [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}, {"Key": "bare", "Value": ""},
                   {"Key": "empty", "Value": ""}, {"Key": "sp ace", "Value": "ü+"}]
    assert s3.head_object(Bucket=bucket, Key="h")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "5"
    big = b"y" * (200 * 1024)  # past the small-object path: the streamed PUT keeps tags too
    s3.put_object(Bucket=bucket, Key="big", Body=big, Tagging="size=big")
    assert s3.get_object_tagging(Bucket=bucket, Key="big")["TagSet"] == [{"Key": "size", "Value": "big"}]
    s3.put_object(Bucket=bucket, Key="h", Body=b"new")  # a new object: no tags unless given again
    assert s3.get_object_tagging(Bucket=bucket, Key="h")["TagSet"] == []
    assert "x-amz-tagging-count" not in s3.head_object(Bucket=bucket, Key="h")["ResponseMetadata"]["HTTPHeaders"]


def test_tagging_header_refusals(s3, server: Server, bucket: str) -> None:
    cases = {
        "a=1&a=2": "InvalidArgument",
        "k=%FF": "InvalidArgument",  # not UTF-8
        "&".join(f"k{i}=v" for i in range(11)): "BadRequest",
        "aws%3Aname=v": "InvalidTag",
        "k=" + "v" * 257: "InvalidTag",
        "k=a%2Ab": "InvalidTag",
    }
    for header, code in cases.items():
        resp = signed(server, "PUT", f"/{bucket}/bad", b"body", {"x-amz-tagging": header})
        assert resp.status_code == 400 and error_code(resp) == code, header
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad")
    assert status_of(exc) == 404  # a refused tag set stores no object
    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(Bucket=bucket, Key="bad", Tagging="a=1&a=2")
    assert code_of(exc) == "InvalidArgument"


def test_copy_object_tagging_directive(s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"source", Tagging="color=blue&size=s")
    source = {"Bucket": bucket, "Key": "src"}
    s3.copy_object(Bucket=bucket, Key="copied", CopySource=source)
    assert s3.get_object_tagging(Bucket=bucket, Key="copied")["TagSet"] == [
        {"Key": "color", "Value": "blue"}, {"Key": "size", "Value": "s"}]
    s3.copy_object(Bucket=bucket, Key="copied-explicit", CopySource=source, TaggingDirective="COPY",
                   Tagging="ignored=yes")
    assert len(s3.get_object_tagging(Bucket=bucket, Key="copied-explicit")["TagSet"]) == 2
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource=source, TaggingDirective="REPLACE",
                   Tagging="color=red")
    assert s3.get_object_tagging(Bucket=bucket, Key="replaced")["TagSet"] == [{"Key": "color", "Value": "red"}]
    s3.copy_object(Bucket=bucket, Key="cleared", CopySource=source, TaggingDirective="REPLACE")
    assert s3.get_object_tagging(Bucket=bucket, Key="cleared")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="cleared")
    assert len(s3.get_object_tagging(Bucket=bucket, Key="src")["TagSet"]) == 2  # the source keeps its own
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="x", CopySource=source, TaggingDirective="REPLACE",
                       Tagging="&".join(f"k{i}=v" for i in range(11)))
    assert code_of(exc) == "BadRequest"


def test_copy_object_unknown_tagging_directive(server: Server, s3, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"x")
    resp = signed(server, "PUT", f"/{bucket}/dst", b"", {"x-amz-copy-source": f"/{bucket}/src",
                                                          "x-amz-tagging-directive": "MERGE"})
    assert resp.status_code == 400 and error_code(resp) == "InvalidArgument"


def test_multipart_upload_with_tags(s3, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="stage=raw&team=data")
    parts = []
    for number, body in ((1, b"a" * (5 * MiB)), (2, b"tail")):
        etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=number,
                              Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    assert s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"] == [
        {"Key": "stage", "Value": "raw"}, {"Key": "team", "Value": "data"}]
    assert s3.head_object(Bucket=bucket, Key="mp")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    plain = s3.create_multipart_upload(Bucket=bucket, Key="mp")  # completing over it drops the tags
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=plain["UploadId"], PartNumber=1, Body=b"z")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=plain["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"] == []


def test_public_read_object_hides_its_tags_from_anonymous(s3, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="pub", Body=b"open", ACL="public-read", Tagging="secret=yes")
    anon = requests.get(f"{server.url}/{bucket}/pub", timeout=10)
    assert anon.status_code == 200 and anon.content == b"open"
    assert "x-amz-tagging-count" not in anon.headers
    tags = requests.get(f"{server.url}/{bucket}/pub?tagging", timeout=10)
    assert tags.status_code == 403 and error_code(tags) == "AccessDenied"


# -- bucket tags ---------------------------------------------------------------------------

def test_bucket_tagging_put_get_delete(s3, server: Server, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    assert (code_of(exc), status_of(exc)) == ("NoSuchTagSet", 404)
    tags = [{"Key": "cost-center", "Value": "42"}, {"Key": "owner", "Value": "ops team"}]
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tags
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set(50)})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tag_set(50)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []  # objects do not inherit them
    assert s3.delete_bucket_tagging(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    assert code_of(exc) == "NoSuchTagSet"
    s3.delete_bucket_tagging(Bucket=bucket)  # deleting none is fine
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket="no-such-bucket-for-tags")
    assert code_of(exc) == "NoSuchBucket"


def test_bucket_tag_limits(s3, server: Server, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set(51)})
    assert (code_of(exc), status_of(exc)) == ("BadRequest", 400)
    for tags in ([{"Key": "k" * 129, "Value": "v"}], [{"Key": "aws:x", "Value": "v"}],
                 [{"Key": "d", "Value": "1"}, {"Key": "d", "Value": "2"}], [{"Key": "k", "Value": "<>"}]):
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tags})
        assert code_of(exc) == "InvalidTag", tags
    resp = signed(server, "PUT", f"/{bucket}?tagging", b"<Tagging><TagSet><Tag>")
    assert resp.status_code == 400 and error_code(resp) == "MalformedXML"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=bucket)
    assert code_of(exc) == "NoSuchTagSet"  # nothing refused was kept


def test_bucket_tags_go_with_the_bucket(s3, server: Server) -> None:
    name = f"tagged-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_set(2)})
    s3.delete_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_tagging(Bucket=name)
    assert code_of(exc) == "NoSuchTagSet"


# -- another account -------------------------------------------------------------------------

def _new_account(server: Server) -> object:
    env = {"MANTA_URL": server.url, "MANTA_ACCESS_KEY": ROOT_AK, "MANTA_SECRET_KEY": ROOT_SK,
           "PATH": "/usr/bin:/bin", **NO_USER_CONFIG}
    added = subprocess.run([sys.executable, "-m", "manta", "admin", "user", "add",
                            f"tagger{int(time.time() * 1000)}", "--json"],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert added.returncode == 0, added.stderr
    keys = json.loads(added.stdout)
    return server.client(keys["access_key"], keys["secret_key"])


def test_another_account_cannot_read_or_change_tags(s3, server: Server, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="mine", Body=b"x", Tagging="keep=me")
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set(1)})
    other = _new_account(server)
    for call in (lambda: other.get_object_tagging(Bucket=bucket, Key="mine"),
                 lambda: other.put_object_tagging(Bucket=bucket, Key="mine", Tagging={"TagSet": tag_set(1, "x")}),
                 lambda: other.delete_object_tagging(Bucket=bucket, Key="mine"),
                 lambda: other.get_bucket_tagging(Bucket=bucket),
                 lambda: other.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_set(1, "x")}),
                 lambda: other.delete_bucket_tagging(Bucket=bucket)):
        with pytest.raises(ClientError) as exc:
            call()
        assert (code_of(exc), status_of(exc)) == ("AccessDenied", 403)
    assert s3.get_object_tagging(Bucket=bucket, Key="mine")["TagSet"] == [{"Key": "keep", "Value": "me"}]
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == tag_set(1)
