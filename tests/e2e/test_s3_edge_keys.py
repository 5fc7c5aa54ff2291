"""Edge keys and edge numbers, end to end: keys holding a newline, a carriage return, a tab
or another control character are stored, listed, fetched, copied and deleted; every XML
answer stays well-formed; CompleteMultipartUpload part numbers outside 1..10000 are
400 InvalidArgument; an empty key in DeleteObjects is an error for that entry only.

Hand-made requests are signed with botocore (tests.e2e.test_crash.sign) and sent with
http.client, so the exact path and body reach the server.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from xml.etree import ElementTree as ET

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_crash import sign

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
PRINTABLE_CONTROL_KEYS = ["a\nb", "a\rb", "tab\tkey", "crlf\r\nkey", "del\x7fkey", "\n"]
NON_XML_KEYS = ["ctl\x01key", "esc\x1b[0m", "ff\x0ckey"]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def xml(self) -> ET.Element:
        assert self.body.startswith(b"<?xml"), self.body[:200]
        return ET.fromstring(self.body)

    def error_code(self) -> str | None:
        return self.xml().findtext("Code")


def request(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, target, body=body, headers=headers or {"Host": f"127.0.0.1:{server.port}"})
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def send(server: Server, method: str, target: str, body: bytes = b"") -> Reply:
    return request(server, method, target, sign(server, method, target, None, body), body)


def path_of(bucket: str, key: str) -> str:
    return f"/{bucket}/" + urllib.parse.quote(key, safe="/")


def assert_s3_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, (reply.status, reply.body[:300])
    root = reply.xml()
    assert root.findtext("Code") == code
    assert root.findtext("RequestId") == reply.headers["x-amz-request-id"] != ""


# -- keys with control characters ----------------------------------------------------

def test_control_character_keys_round_trip_with_boto3(s3: object, bucket: str) -> None:
    keys = PRINTABLE_CONTROL_KEYS + NON_XML_KEYS
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()  # type: ignore[attr-defined]
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(key)  # type: ignore[attr-defined]
        copy = key + ".copy"
        s3.copy_object(Bucket=bucket, Key=copy,  # type: ignore[attr-defined]
                       CopySource={"Bucket": bucket, "Key": key})
        assert s3.get_object(Bucket=bucket, Key=copy)["Body"].read() == key.encode()  # type: ignore[attr-defined]
    listed = s3.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    expected = sorted(keys + [k + ".copy" for k in keys], key=str.encode)
    assert [c["Key"] for c in listed["Contents"]] == expected
    for key in expected:
        s3.delete_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # type: ignore[attr-defined]


def test_presigned_url_of_newline_key(s3: object, server: Server, bucket: str) -> None:
    key = "pre\nsigned\r\tkey"
    s3.put_object(Bucket=bucket, Key=key, Body=b"signed")  # type: ignore[attr-defined]
    url = server.client(signature_version="s3v4").generate_presigned_url(  # type: ignore[attr-defined]
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    reply = requests.get(url, timeout=15)
    assert reply.status_code == 200, reply.content[:300]
    assert reply.content == b"signed"


def test_unsigned_request_for_newline_key_answers_s3_xml(server: Server, bucket: str) -> None:
    reply = request(server, "GET", path_of(bucket, "a\nb"))
    assert_s3_error(reply, 403, "AccessDenied")


def test_missing_newline_key_is_no_such_key(server: Server, bucket: str) -> None:
    assert_s3_error(send(server, "GET", path_of(bucket, "a\nb")), 404, "NoSuchKey")


@pytest.mark.parametrize("key", NON_XML_KEYS)
def test_missing_non_xml_key_error_is_well_formed(s3: object, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    assert caught.value.response["ResponseMetadata"]["RequestId"]


def test_unknown_method_answers_s3_xml(server: Server, bucket: str) -> None:
    assert_s3_error(send(server, "PATCH", path_of(bucket, "k")), 405, "MethodNotAllowed")


@pytest.mark.parametrize("query", ["list-type=2", "", "versions"])
def test_listing_without_encoding_type_keeps_cr_lf_tab(s3: object, server: Server, bucket: str,
                                                      query: str) -> None:
    for key in PRINTABLE_CONTROL_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    reply = send(server, "GET", f"/{bucket}?{query}" if query else f"/{bucket}")
    assert reply.status == 200, reply.body[:300]
    root = reply.xml()
    assert root.find(f"{NS}EncodingType") is None
    keys = [k.text or "" for k in root.iter(f"{NS}Key")]
    assert keys == sorted(PRINTABLE_CONTROL_KEYS, key=str.encode)


@pytest.mark.parametrize("query", ["list-type=2", "", "versions"])
def test_listing_of_non_xml_key_is_url_encoded_and_says_so(s3: object, server: Server, bucket: str,
                                                           query: str) -> None:
    keys = ["plain", *NON_XML_KEYS]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")  # type: ignore[attr-defined]
    reply = send(server, "GET", f"/{bucket}?{query}" if query else f"/{bucket}")
    assert reply.status == 200, reply.body[:300]
    root = reply.xml()
    assert root.findtext(f"{NS}EncodingType") == "url"
    listed = [urllib.parse.unquote(k.text or "") for k in root.iter(f"{NS}Key")]
    assert listed == sorted(keys, key=str.encode)


def test_multipart_upload_of_non_xml_key_answers_well_formed_xml(s3: object, bucket: str) -> None:
    key = NON_XML_KEYS[0]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],  # type: ignore[attr-defined]
                          PartNumber=1, Body=b"abc")
    s3.complete_multipart_upload(  # type: ignore[attr-defined]
        Bucket=bucket, Key=key, UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"abc"  # type: ignore[attr-defined]


# -- CompleteMultipartUpload part numbers ------------------------------------------------

def complete_body(number: str, etag: str) -> bytes:
    return (f"<CompleteMultipartUpload><Part><PartNumber>{number}</PartNumber>"
            f"<ETag>{etag}</ETag></Part></CompleteMultipartUpload>").encode()


@pytest.mark.parametrize("number", ["0", "-1", "10001", str(2**32), str(2**64), "-" + str(2**40)])
def test_complete_part_number_out_of_range_is_invalid_argument(
        s3: object, server: Server, bucket: str, number: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")  # type: ignore[attr-defined]
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],  # type: ignore[attr-defined]
                          PartNumber=1, Body=b"abc")
    target = f"/{bucket}/mp?uploadId={upload['UploadId']}"
    reply = send(server, "POST", target, complete_body(number, part["ETag"]))
    assert_s3_error(reply, 400, "InvalidArgument")
    # the upload is untouched: completing it with the real part still works
    reply = send(server, "POST", target, complete_body("1", part["ETag"]))
    assert reply.status == 200, reply.body[:300]
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"abc"  # type: ignore[attr-defined]


def test_complete_part_number_not_an_integer_is_malformed(s3: object, server: Server, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")  # type: ignore[attr-defined]
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],  # type: ignore[attr-defined]
                          PartNumber=10, Body=b"abc")
    for number in ["1_0", "\u0661", "one", "", "1.0", "+-1"]:
        reply = send(server, "POST", f"/{bucket}/mp?uploadId={upload['UploadId']}",
                     complete_body(number, part["ETag"]))
        assert_s3_error(reply, 400, "MalformedXML")


@pytest.mark.parametrize("marker", [str(2**32), str(2**32 - 1), "-5"])
def test_list_parts_with_any_integer_marker_is_not_a_server_error(
        s3: object, server: Server, bucket: str, marker: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")  # type: ignore[attr-defined]
    s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=1,  # type: ignore[attr-defined]
                   Body=b"abc")
    reply = send(server, "GET", f"/{bucket}/mp?uploadId={upload['UploadId']}&part-number-marker={marker}")
    assert reply.status < 500, reply.body[:300]
    reply.xml()


# -- DeleteObjects --------------------------------------------------------------------

def delete_body(keys: list[str], quiet: bool = False) -> bytes:
    objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    return f"<Delete><Quiet>{str(quiet).lower()}</Quiet>{objects}</Delete>".encode()


@pytest.mark.parametrize("quiet", [False, True])
@pytest.mark.parametrize("empty", ["<Key></Key>", "<Key/>"])
def test_delete_objects_empty_or_invalid_key_is_an_error_entry(
        s3: object, server: Server, bucket: str, quiet: bool, empty: str) -> None:
    for key in ("x", "y"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")  # type: ignore[attr-defined]
    too_long = "k" * 1025
    body = delete_body(["x", "EMPTY", too_long, "y"], quiet).replace(b"<Key>EMPTY</Key>", empty.encode())
    reply = send(server, "POST", f"/{bucket}?delete", body)
    assert reply.status == 200, reply.body[:300]
    root = reply.xml()
    deleted = [d.findtext(f"{NS}Key") for d in root.iter(f"{NS}Deleted")]
    errors = [(e.findtext(f"{NS}Key"), e.findtext(f"{NS}Code")) for e in root.iter(f"{NS}Error")]
    assert deleted == ([] if quiet else ["x", "y"])
    assert errors == [("", "UserKeyMustBeSpecified"), (too_long, "KeyTooLongError")]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # type: ignore[attr-defined]


def test_delete_objects_of_newline_keys(s3: object, server: Server, bucket: str) -> None:
    keys = ["a\nb", "tab\tkey", "a\rb"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")  # type: ignore[attr-defined]
    answer = s3.delete_objects(Bucket=bucket, Delete={  # type: ignore[attr-defined]
        "Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == sorted(keys)
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # type: ignore[attr-defined]
