"""CORS end to end: Put/Get/DeleteBucketCors through boto3 and by hand, preflight OPTIONS
answered from the rules (and refused: no Origin, no rules, no matching rule), and the
Access-Control-* headers of actual requests, errors included. The browser's view is in
test_s3_cors_browser.py."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_bucket_race import new_account
from tests.e2e.test_crash import sign
from tests.e2e.test_s3_edge_keys import NS, Reply, assert_s3_error, request

ORIGIN = "https://app.example"
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
RULES: dict[str, Any] = {"CORSRules": [
    {"ID": "uploads", "AllowedOrigins": [ORIGIN, "http://*.example.org"], "AllowedMethods": ["GET", "PUT"],
     "AllowedHeaders": ["content-type", "x-amz-*"], "ExposeHeaders": ["ETag", "x-amz-request-id"],
     "MaxAgeSeconds": 600},
    {"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"]},
]}


def preflight(server: Server, target: str, origin: str | None = ORIGIN, method: str | None = "PUT",
              req_headers: str | None = None) -> Reply:
    headers = {"Host": f"127.0.0.1:{server.port}"}
    if origin is not None:
        headers["Origin"] = origin
    if method is not None:
        headers["Access-Control-Request-Method"] = method
    if req_headers is not None:
        headers["Access-Control-Request-Headers"] = req_headers
    return request(server, "OPTIONS", target, headers)


def signed(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
           body: bytes = b"") -> Reply:
    return request(server, method, target, sign(server, method, target, headers, body), body)


def cors_headers(reply: Reply) -> dict[str, str]:
    return {k.lower(): v for k, v in reply.headers.items() if k.lower().startswith("access-control-")}


def forbidden(reply: Reply, message_start: str, method: str, resource_type: str) -> None:
    assert_s3_error(reply, 403, "AccessForbidden")
    root = reply.xml()
    assert (root.findtext("Message") or "").startswith(message_start)
    assert root.findtext("Method") == method
    assert root.findtext("ResourceType") == resource_type
    assert cors_headers(reply) == {}


@pytest.fixture
def cors_bucket(s3: Any, bucket: str) -> str:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    return bucket


# -- the configuration ------------------------------------------------------------------------

def test_put_get_delete_round_trip_through_boto3(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert caught.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == RULES["CORSRules"]

    replaced = {"CORSRules": [{"AllowedOrigins": [""], "AllowedMethods": ["DELETE"]}]}
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=replaced)
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"] == replaced["CORSRules"]

    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_bucket_cors(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert caught.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"


def test_get_cors_answers_the_document_in_s3s_namespace(server: Server, cors_bucket: str) -> None:
    reply = signed(server, "GET", f"/{cors_bucket}?cors")
    assert reply.status == 200
    root = reply.xml()
    assert root.tag == f"{NS}CORSConfiguration"
    first = root.findall(f"{NS}CORSRule")[0]
    assert [child.tag[len(NS):] for child in first] == [
        "ID", "AllowedHeader", "AllowedHeader", "AllowedMethod", "AllowedMethod", "AllowedOrigin",
        "AllowedOrigin", "ExposeHeader", "ExposeHeader", "MaxAgeSeconds"]


def _document(*rules: str) -> bytes:
    return ("<CORSConfiguration>" + "".join(f"<CORSRule>{r}</CORSRule>" for r in rules)
            + "</CORSConfiguration>").encode()


def _put(server: Server, bucket: str, body: bytes, md5: bool = True) -> Reply:
    headers = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()} if md5 else {}
    return signed(server, "PUT", f"/{bucket}?cors", headers, body)


GOOD = "<AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"


@pytest.mark.parametrize(("body", "code", "message"), [
    (b"<CORSConfiguration", "MalformedXML", None),
    (b"<CORSConfiguration/>", "MalformedXML", None),
    (b"<Other>" + _document(GOOD)[19:-20] + b"</Other>", "MalformedXML", None),
    (_document("<AllowedMethod>GET</AllowedMethod>"), "MalformedXML", None),
    (_document("<AllowedOrigin>*</AllowedOrigin>"), "MalformedXML", None),
    (_document(GOOD + "<MaxAgeSeconds>soon</MaxAgeSeconds>"), "MalformedXML", None),
    (_document(GOOD + "<Colour>red</Colour>"), "MalformedXML", None),
    (_document(*[GOOD] * 101), "MalformedXML", None),
    (_document("<AllowedOrigin>*</AllowedOrigin><AllowedMethod>PATCH</AllowedMethod>"), "InvalidRequest",
     "Found unsupported HTTP method in CORS config. Unsupported method is PATCH"),
    (_document("<AllowedOrigin>*</AllowedOrigin><AllowedMethod>get</AllowedMethod>"), "InvalidRequest",
     "Found unsupported HTTP method in CORS config. Unsupported method is get"),
    (_document("<AllowedOrigin>*a*.com</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"), "InvalidRequest",
     'AllowedOrigin "*a*.com" can not have more than one wildcard.'),
    (_document(GOOD + "<AllowedHeader>x-*-*</AllowedHeader>"), "InvalidRequest",
     'AllowedHeader "x-*-*" can not have more than one wildcard.'),
    (_document(GOOD + "<ExposeHeader>x-amz-*</ExposeHeader>"), "InvalidRequest", None),
    (_document(GOOD + "<ID>" + "i" * 256 + "</ID>"), "InvalidArgument", None),
])
def test_put_refuses_invalid_documents(server: Server, bucket: str, body: bytes, code: str,
                                       message: str | None) -> None:
    reply = _put(server, bucket, body)
    assert_s3_error(reply, 400, code)
    if message is not None:
        assert reply.xml().findtext("Message") == message
    assert_s3_error(signed(server, "GET", f"/{bucket}?cors"), 404, "NoSuchCORSConfiguration")


def test_put_accepts_a_hundred_rules(server: Server, bucket: str) -> None:
    assert _put(server, bucket, _document(*[GOOD] * 100)).status == 200


def test_put_needs_an_integrity_header_and_checks_it(server: Server, bucket: str) -> None:
    body = _document(GOOD)
    reply = _put(server, bucket, body, md5=False)
    assert_s3_error(reply, 400, "InvalidRequest")
    assert "Content-MD5" in (reply.xml().findtext("Message") or "")
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert_s3_error(signed(server, "PUT", f"/{bucket}?cors", {"Content-MD5": wrong_md5}, body), 400, "BadDigest")
    wrong_crc = base64.b64encode(b"\0\0\0\0").decode()
    assert_s3_error(signed(server, "PUT", f"/{bucket}?cors", {"x-amz-checksum-crc32": wrong_crc}, body),
                    400, "BadDigest")
    assert_s3_error(signed(server, "GET", f"/{bucket}?cors"), 404, "NoSuchCORSConfiguration")


def test_only_the_bucket_owner_reads_or_changes_the_rules(server: Server, s3: Any, cors_bucket: str) -> None:
    other = new_account(server, "cors").s3(server.url)
    for call in (lambda: other.get_bucket_cors(Bucket=cors_bucket),
                 lambda: other.put_bucket_cors(Bucket=cors_bucket, CORSConfiguration=RULES),
                 lambda: other.delete_bucket_cors(Bucket=cors_bucket)):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_bucket_cors(Bucket=cors_bucket)["CORSRules"] == RULES["CORSRules"]


def test_unsigned_put_cors_is_refused(server: Server, bucket: str) -> None:
    body = _document(GOOD)
    reply = request(server, "PUT", f"/{bucket}?cors",
                    {"Host": f"127.0.0.1:{server.port}", "Content-Length": str(len(body))}, body)
    assert_s3_error(reply, 403, "AccessDenied")


def test_missing_bucket(s3: Any) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_bucket_cors(Bucket="no-such-cors-bucket", CORSConfiguration=RULES)
    assert caught.value.response["Error"]["Code"] == "NoSuchBucket"


def test_rules_go_with_the_bucket(s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=RULES)
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert caught.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"


# -- preflight --------------------------------------------------------------------------------

def test_preflight_from_an_allowed_origin(server: Server, cors_bucket: str) -> None:
    reply = preflight(server, f"/{cors_bucket}/some/key", req_headers="Content-Type,X-Amz-Meta-Colour")
    assert reply.status == 200, reply.body
    assert reply.body == b""
    assert cors_headers(reply) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "content-type, x-amz-meta-colour",
        "access-control-expose-headers": "ETag, x-amz-request-id",
        "access-control-max-age": "600",
        "access-control-allow-credentials": "true",
    }
    assert reply.headers["Vary"] == VARY


def test_preflight_matches_one_wildcard_in_an_origin(server: Server, cors_bucket: str) -> None:
    assert preflight(server, f"/{cors_bucket}/k", "http://a.b.example.org").headers[
        "Access-Control-Allow-Origin"] == "http://a.b.example.org"
    forbidden(preflight(server, f"/{cors_bucket}/k", "https://a.example.org"),
              "CORSResponse: This CORS request is not allowed", "PUT", "OBJECT")


def test_preflight_falls_through_to_the_first_rule_that_matches(server: Server, cors_bucket: str) -> None:
    reply = preflight(server, f"/{cors_bucket}", "http://elsewhere.test", "HEAD")
    assert reply.status == 200
    assert cors_headers(reply) == {"access-control-allow-origin": "*",
                                   "access-control-allow-methods": "GET, HEAD"}
    assert reply.headers["Vary"] == VARY


def test_preflight_refusals(server: Server, cors_bucket: str) -> None:
    not_allowed = "CORSResponse: This CORS request is not allowed"
    forbidden(preflight(server, f"/{cors_bucket}/k", "http://elsewhere.test", "PUT"), not_allowed, "PUT", "OBJECT")
    forbidden(preflight(server, f"/{cors_bucket}", ORIGIN, "DELETE"), not_allowed, "DELETE", "BUCKET")
    forbidden(preflight(server, f"/{cors_bucket}/k", ORIGIN, "PUT", "authorization"), not_allowed, "PUT", "OBJECT")
    forbidden(preflight(server, f"/{cors_bucket}/k", "http://elsewhere.test", "GET", "content-type"),
              not_allowed, "GET", "OBJECT")
    assert_s3_error(preflight(server, f"/{cors_bucket}/k", ORIGIN, None), 400, "BadRequest")
    reply = preflight(server, f"/{cors_bucket}/k", None, None)
    assert_s3_error(reply, 400, "BadRequest")
    assert reply.xml().findtext("Message") == "Insufficient information. Origin request header needed."


def test_preflight_on_a_bucket_without_rules_or_no_bucket(server: Server, bucket: str) -> None:
    enabled = "CORSResponse: CORS is not enabled for this bucket."
    forbidden(preflight(server, f"/{bucket}/k"), enabled, "PUT", "BUCKET")
    forbidden(preflight(server, f"/{bucket}", method=None), enabled, "OPTIONS", "BUCKET")
    forbidden(preflight(server, "/no-such-cors-bucket/k"), "CORSResponse: Bucket not found", "PUT", "BUCKET")


def test_rules_removed_stop_the_preflight(server: Server, s3: Any, cors_bucket: str) -> None:
    assert preflight(server, f"/{cors_bucket}/k").status == 200
    s3.delete_bucket_cors(Bucket=cors_bucket)
    forbidden(preflight(server, f"/{cors_bucket}/k"), "CORSResponse: CORS is not enabled", "PUT", "BUCKET")


def test_preflight_to_a_presigned_url_needs_no_signature(server: Server, s3: Any, cors_bucket: str) -> None:
    url = s3.generate_presigned_url("put_object", Params={"Bucket": cors_bucket, "Key": "up"}, ExpiresIn=60)
    reply = requests.options(url, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"}, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN


# -- actual requests --------------------------------------------------------------------------

def test_actual_requests_get_the_headers_of_the_first_matching_rule(server: Server, s3: Any,
                                                                  cors_bucket: str) -> None:
    s3.put_object(Bucket=cors_bucket, Key="k", Body=b"body")
    reply = signed(server, "GET", f"/{cors_bucket}/k", {"Origin": ORIGIN})
    assert reply.status == 200 and reply.body == b"body"
    assert cors_headers(reply) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "GET, PUT",
        "access-control-expose-headers": "ETag, x-amz-request-id",
        "access-control-max-age": "600",
        "access-control-allow-credentials": "true",
    }
    assert reply.headers["Vary"] == VARY
    anyone = signed(server, "HEAD", f"/{cors_bucket}/k", {"Origin": "http://elsewhere.test"})
    assert anyone.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in anyone.headers


def test_actual_requests_that_no_rule_allows_are_served_without_cors_headers(server: Server, s3: Any,
                                                                            cors_bucket: str) -> None:
    reply = signed(server, "PUT", f"/{cors_bucket}/put", {"Origin": "http://elsewhere.test"}, b"data")
    assert reply.status == 200
    assert cors_headers(reply) == {} and "Vary" not in reply.headers
    assert s3.get_object(Bucket=cors_bucket, Key="put")["Body"].read() == b"data"
    # the Access-Control-Request-Method of a request, not its method, picks the rule
    asked = signed(server, "GET", f"/{cors_bucket}/put", {"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"})
    assert asked.status == 200 and cors_headers(asked) == {}


def test_error_responses_carry_the_headers(server: Server, cors_bucket: str) -> None:
    missing = signed(server, "GET", f"/{cors_bucket}/missing", {"Origin": ORIGIN})
    assert_s3_error(missing, 404, "NoSuchKey")
    assert missing.headers["Access-Control-Allow-Origin"] == ORIGIN
    unsigned = request(server, "PUT", f"/{cors_bucket}/k",
                       {"Host": f"127.0.0.1:{server.port}", "Origin": ORIGIN, "Content-Length": "1"}, b"x")
    assert_s3_error(unsigned, 403, "AccessDenied")
    assert unsigned.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_requests_without_origin_or_rules_are_unchanged(server: Server, s3: Any, cors_bucket: str) -> None:
    s3.put_object(Bucket=cors_bucket, Key="k", Body=b"body")
    plain = signed(server, "GET", f"/{cors_bucket}/k")
    assert plain.status == 200 and cors_headers(plain) == {} and "Vary" not in plain.headers
    other = f"{cors_bucket}-plain"
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="k", Body=b"body")
    reply = signed(server, "GET", f"/{other}/k", {"Origin": ORIGIN})
    assert reply.status == 200 and cors_headers(reply) == {} and "Vary" not in reply.headers
    s3.delete_object(Bucket=other, Key="k")
    s3.delete_bucket(Bucket=other)


def test_object_level_cors_is_not_implemented(server: Server, cors_bucket: str) -> None:
    assert_s3_error(signed(server, "GET", f"/{cors_bucket}/k?cors"), 501, "NotImplemented")
