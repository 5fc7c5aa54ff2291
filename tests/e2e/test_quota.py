"""Per-account storage quotas as an operator and a user meet them: `manta admin user
add/set/get --quota`, 403 QuotaExceeded on the write past a limit, other accounts unaffected."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.conftest import Server
from tests.e2e.test_cli_objects import manta


def user_client(server: Server, user: dict[str, Any]) -> Any:
    return boto3.client("s3", endpoint_url=server.url, aws_access_key_id=user["access_key"],
                        aws_secret_access_key=user["secret_key"], region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}))


def add_user(server: Server, name: str, *args: str) -> dict[str, Any]:
    out = manta(server, "admin", "user", "add", name, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def get_user(server: Server, name: str) -> dict[str, Any]:
    out = manta(server, "admin", "user", "get", name, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def refused(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call(**kwargs)
    return err.value.response  # type: ignore[no-any-return]


def headers_only_put(server: Server, user: dict[str, Any], path: str, length: int) -> tuple[int, bytes]:
    """Send a PUT's head announcing `length` bytes and no body; the answer comes before any body."""
    host = f"127.0.0.1:{server.port}"
    request = AWSRequest(method="PUT", url=f"http://{host}{path}", headers={
        "Host": host, "Content-Length": str(length), "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(user["access_key"], user["secret_key"]), "s3", "us-east-1").add_auth(request)
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_an_account_over_its_object_quota_gets_quota_exceeded(server: Server) -> None:
    name = f"bobq-{os.getpid()}"
    user = add_user(server, name, "--quota", "objects=3")
    assert user["quota_set"] == {"objects": 3}
    s3 = user_client(server, user)
    bucket = f"quota-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x" * 10)

    response = refused(s3.put_object, Bucket=bucket, Key="k3", Body=b"one too many")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert response["Error"]["Code"] == "QuotaExceeded"
    assert "objects quota of 3" in response["Error"]["Message"]
    status, body = headers_only_put(server, user, f"/{bucket}/k4", 5)  # the S3 XML error body
    assert status == 403
    assert b"<Code>QuotaExceeded</Code>" in body and b"<Limit>3</Limit>" in body
    assert refused(s3.copy_object, Bucket=bucket, Key="copy",
                   CopySource={"Bucket": bucket, "Key": "k0"})["Error"]["Code"] == "QuotaExceeded"

    s3.put_object(Bucket=bucket, Key="k0", Body=b"an overwrite at the limit is fine")
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["k0", "k1", "k2"]

    other = add_user(server, f"carolq-{os.getpid()}")  # other accounts are unaffected
    s3c = user_client(server, other)
    s3c.create_bucket(Bucket=f"{bucket}-carol")
    for i in range(5):
        s3c.put_object(Bucket=f"{bucket}-carol", Key=f"k{i}", Body=b"y")
    root = server.client()
    root.create_bucket(Bucket=f"{bucket}-root")  # type: ignore[attr-defined]
    root.put_object(Bucket=f"{bucket}-root", Key="k", Body=b"z")  # type: ignore[attr-defined]

    shown = get_user(server, name)
    assert shown["quota"]["objects"] == 3 and shown["quota"]["bytes"] is None
    assert shown["quota_set"] == {"objects": 3}
    assert shown["usage"] == {"objects": 3, "bytes": 20 + len(b"an overwrite at the limit is fine")}
    human = manta(server, "admin", "user", "get", name)
    assert human.returncode == 0
    assert "objects:    3 used of 3" in human.stdout.decode()
    assert "jobs:       limit 64  (default)" in human.stdout.decode()

    s3.delete_object(Bucket=bucket, Key="k1")  # a delete makes room
    s3.put_object(Bucket=bucket, Key="k3", Body=b"fits now")


def test_a_byte_quota_refuses_a_put_from_its_content_length_and_counts_multipart(server: Server) -> None:
    name = f"daveq-{os.getpid()}"
    user = add_user(server, name)
    out = manta(server, "admin", "user", "set", name, "--quota", "bytes=6M", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["quota"]["bytes"] == 6 * 1024 * 1024
    s3 = user_client(server, user)
    bucket = f"quota-bytes-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)

    status, body = headers_only_put(server, user, f"/{bucket}/big", 7 * 1024 * 1024)
    assert status == 403
    assert b"<Code>QuotaExceeded</Code>" in body and b"bytes quota" in body

    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                          Body=b"p" * (5 * 1024 * 1024))["ETag"]
    assert get_user(server, name)["usage"] == {"objects": 1, "bytes": 5 * 1024 * 1024}  # one pending
    response = refused(s3.upload_part, Bucket=bucket, Key="mp", UploadId=upload, PartNumber=2,
                       Body=b"q" * (2 * 1024 * 1024))
    assert response["Error"]["Code"] == "QuotaExceeded"
    etag2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=2, Body=b"q" * 1000)["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 2, "ETag": etag2}]})
    assert get_user(server, name)["usage"] == {"objects": 1, "bytes": 5 * 1024 * 1024 + 1000}

    out = manta(server, "admin", "user", "set", name, "--quota", "bytes=none")
    assert out.returncode == 0, out.stderr
    assert "bytes:      5243880 used of unlimited  (default)" in out.stdout.decode()
    s3.put_object(Bucket=bucket, Key="big", Body=b"b" * (2 * 1024 * 1024))


def test_bad_quota_text_and_unknown_users_are_clear_errors(server: Server) -> None:
    out = manta(server, "admin", "user", "add", f"eveq-{os.getpid()}", "--quota", "objects=lots")
    assert out.returncode == 1
    assert out.stderr.decode().startswith("manta: quota 'objects=lots'")
    out = manta(server, "admin", "user", "set", "nobody-at-all", "--quota", "objects=1")
    assert out.returncode == 1
    assert "NoSuchUser" in out.stderr.decode()
    out = manta(server, "admin", "user", "get", "nobody-at-all")
    assert out.returncode == 1
    assert "NoSuchUser" in out.stderr.decode()


def test_a_multipart_upload_by_another_account_is_charged_to_and_checked_for_the_bucket_owner(
        server: Server) -> None:
    owner_name, writer_name = f"annaq-{os.getpid()}", f"benq-{os.getpid()}"
    owner = add_user(server, owner_name, "--quota", "bytes=1000,objects=3")
    writer = add_user(server, writer_name)
    s3a, s3b = user_client(server, owner), user_client(server, writer)
    bucket = f"quota-shared-{os.getpid()}"
    s3a.create_bucket(Bucket=bucket)
    s3a.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{writer_name}:root"},
        "Action": ["s3:PutObject"], "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    s3b.create_bucket(Bucket=f"{bucket}-ben")
    s3b.put_object(Bucket=f"{bucket}-ben", Key="src", Body=b"s" * 2000)

    def usage() -> tuple[dict[str, int], dict[str, int]]:
        return get_user(server, owner_name)["usage"], get_user(server, writer_name)["usage"]

    def complete(key: str, upload: str, etag: str) -> Any:
        return s3b.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": etag}]})

    assert refused(s3b.put_object, Bucket=bucket, Key="x", Body=b"a" * 2000)["Error"]["Code"] == "QuotaExceeded"
    upload = s3b.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    response = refused(s3b.upload_part, Bucket=bucket, Key="big", UploadId=upload, PartNumber=1,
                       Body=b"b" * 50_000)  # the bucket owner's bytes, refused as a PutObject is
    assert response["Error"]["Code"] == "QuotaExceeded" and "bytes quota of 1000" in response["Error"]["Message"]
    assert refused(s3b.upload_part_copy, Bucket=bucket, Key="big", UploadId=upload, PartNumber=1,
                   CopySource={"Bucket": f"{bucket}-ben", "Key": "src"})["Error"]["Code"] == "QuotaExceeded"
    # the pending upload holds one of the owner's objects
    assert usage() == ({"objects": 1, "bytes": 0}, {"objects": 1, "bytes": 2000})

    for i in range(2):
        s3a.put_object(Bucket=bucket, Key=f"k{i}", Body=b"o" * 100)
    response = refused(s3a.put_object, Bucket=bucket, Key="k2", Body=b"o" * 100)  # a 4th object
    assert response["Error"]["Code"] == "QuotaExceeded" and "objects quota of 3" in response["Error"]["Message"]
    response = refused(s3b.create_multipart_upload, Bucket=bucket, Key="other")  # a 4th, pending
    assert response["Error"]["Code"] == "QuotaExceeded" and "objects quota of 3" in response["Error"]["Message"]
    etag = s3b.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=1, Body=b"b" * 600)["ETag"]
    assert usage() == ({"objects": 3, "bytes": 800}, {"objects": 1, "bytes": 2000})  # pending: the owner's
    assert [u["UploadId"] for u in s3a.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload]
    assert refused(s3a.head_object, Bucket=bucket, Key="big")["ResponseMetadata"]["HTTPStatusCode"] == 404

    complete("big", upload, etag)  # started within the limit, it completes within it
    assert s3a.head_object(Bucket=bucket, Key="big")["ContentLength"] == 600
    assert usage() == ({"objects": 3, "bytes": 800}, {"objects": 1, "bytes": 2000})
    assert "Uploads" not in s3a.list_multipart_uploads(Bucket=bucket)

    # at the limit even an overwrite's upload needs room while it is pending
    assert refused(s3b.create_multipart_upload, Bucket=bucket, Key="k1")["Error"]["Code"] == "QuotaExceeded"
    s3a.delete_object(Bucket=bucket, Key="k0")  # room for one object
    small = s3b.create_multipart_upload(Bucket=bucket, Key="k1")["UploadId"]  # an overwrite
    assert refused(s3b.upload_part, Bucket=bucket, Key="k1", UploadId=small, PartNumber=1,
                   Body=b"c" * 400)["Error"]["Code"] == "QuotaExceeded"
    etag = s3b.upload_part(Bucket=bucket, Key="k1", UploadId=small, PartNumber=1, Body=b"c" * 150)["ETag"]
    assert usage() == ({"objects": 3, "bytes": 850}, {"objects": 1, "bytes": 2000})
    s3a.abort_multipart_upload(Bucket=bucket, Key="k1", UploadId=small)
    assert usage() == ({"objects": 2, "bytes": 700}, {"objects": 1, "bytes": 2000})
    small = s3b.create_multipart_upload(Bucket=bucket, Key="k1")["UploadId"]
    etag = s3b.upload_part(Bucket=bucket, Key="k1", UploadId=small, PartNumber=1, Body=b"c" * 150)["ETag"]
    complete("k1", small, etag)
    assert usage() == ({"objects": 2, "bytes": 750}, {"objects": 1, "bytes": 2000})
