from __future__ import annotations

import hmac
import io
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials

from manta.server.s3 import errors as s3e
from manta.server.s3 import sigv4

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EMPTY = sigv4.EMPTY_SHA256


def auth_request(method: str, url: str, headers: dict[str, str | bytes]) -> sigv4.AuthRequest:
    parts = urlsplit(url)
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        text = value.decode() if isinstance(value, bytes) else value
        name = name.lower()
        lowered[name] = f"{lowered[name]},{text}" if name in lowered else text
    lowered.setdefault("host", parts.netloc)
    return sigv4.AuthRequest(
        method=method,
        raw_path=parts.path,
        query=parse_qsl(parts.query, keep_blank_values=True),
        headers=lowered,
    )


class _EmptyBody:
    def stream(self, **_: object):
        yield b""


@pytest.fixture
def client_for():
    """A boto3 S3 client whose requests are captured instead of sent."""
    sent: list[tuple[sigv4.AuthRequest, bytes]] = []

    def capture(request, **_):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        sent.append((auth_request(request.method, request.url, dict(request.headers)), body))
        return AWSResponse(request.url, 200, {}, _EmptyBody())

    def make(endpoint: str = "http://localhost:9000"):
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
            ),
        )
        client.meta.events.register("before-send", capture)
        return client, sent

    return make


def accepted(req: sigv4.AuthRequest, secret: str = SECRET_KEY) -> bool:
    auth = sigv4.parse(req)
    assert auth is not None
    try:
        sigv4.verify(auth, req, secret)
    except s3e.SignatureDoesNotMatch:
        return False
    return True


# -- AWS documented examples -------------------------------------------------


def test_aws_get_object_example():
    req = sigv4.AuthRequest(
        method="GET",
        raw_path="/test.txt",
        query=[],
        headers={
            "host": "examplebucket.s3.amazonaws.com",
            "range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY,
            "x-amz-date": "20130524T000000Z",
            "authorization": (
                f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request,"
                "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
        },
    )
    auth = sigv4.parse(req)
    assert auth is not None
    assert auth.access_key == ACCESS_KEY
    assert auth.scope == "20130524/us-east-1/s3/aws4_request"
    assert auth.amz_date == datetime(2013, 5, 24, tzinfo=UTC)
    assert auth.signed_headers == ("host", "range", "x-amz-content-sha256", "x-amz-date")
    key = sigv4.verify(auth, req, SECRET_KEY)
    assert key == sigv4.signing_key(SECRET_KEY, "20130524", "us-east-1", "s3")
    tampered = replace(req, headers={**req.headers, "range": "bytes=0-10"})
    with pytest.raises(s3e.SignatureDoesNotMatch):
        sigv4.verify(auth, tampered, SECRET_KEY)


def test_aws_presigned_get_example():
    req = sigv4.AuthRequest(
        method="GET",
        raw_path="/test.txt",
        query=[
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{ACCESS_KEY}/20130524/us-east-1/s3/aws4_request"),
            ("X-Amz-Date", "20130524T000000Z"),
            ("X-Amz-Expires", "86400"),
            ("X-Amz-SignedHeaders", "host"),
            (
                "X-Amz-Signature",
                "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
            ),
        ],
        headers={"host": "examplebucket.s3.amazonaws.com"},
    )
    auth = sigv4.parse(req)
    assert auth is not None and auth.presigned and auth.expires_s == 86400
    assert auth.payload_hash == sigv4.UNSIGNED_PAYLOAD
    sigv4.verify(auth, req, SECRET_KEY)


def test_aws_streaming_put_seed_signature():
    req = sigv4.AuthRequest(
        method="PUT",
        raw_path="/examplebucket/chunkObject.txt",
        query=[],
        headers={
            "host": "s3.amazonaws.com",
            "x-amz-date": "20130524T000000Z",
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": sigv4.STREAMING_PAYLOAD,
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": "66560",
            "content-length": "66824",
            "authorization": (
                f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request,"
                "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
                "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
            ),
        },
    )
    auth = sigv4.parse(req)
    assert auth is not None
    sigv4.verify(auth, req, SECRET_KEY)


# -- requests signed by botocore ---------------------------------------------

KEYS = ["plain.txt", "a b/c d.txt", "ünï/cødé.bin", "a+b=c~d", "x!y$z'(1)*,;:@&.txt", "%41.txt"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("endpoint", ["http://localhost:9000", "https://s3.example.com"])
def test_boto3_requests_verify(client_for, key, endpoint):
    client, sent = client_for(endpoint)
    client.put_object(Bucket="bkt", Key=key, Body=io.BytesIO(b"hello" * 100))
    client.get_object(Bucket="bkt", Key=key, Range="bytes=0-3")
    client.list_objects_v2(Bucket="bkt", Prefix=key, Delimiter="/")
    client.create_multipart_upload(Bucket="bkt", Key=key, Metadata={"k": "v  with  spaces"})
    client.head_object(Bucket="bkt", Key=key, VersionId="v1/=+")
    assert len(sent) == 5
    for req, _ in sent:
        assert accepted(req), req


def test_query_sub_resources_are_canonicalised(client_for):
    client, sent = client_for()
    client.create_multipart_upload(Bucket="bkt", Key="k")
    client.list_objects_v2(Bucket="bkt", Prefix="a b")
    uploads, listing = (req for req, _ in sent)
    assert uploads.query == [("uploads", "")]
    assert ("prefix", "a b") in listing.query
    assert accepted(uploads) and accepted(listing)
    assert not accepted(replace(listing, query=[*listing.query[:-1], ("prefix", "a c")]))
    assert not accepted(replace(uploads, query=[("uploadId", "")]))


def test_tampering_is_rejected(client_for):
    client, sent = client_for()
    client.put_object(Bucket="bkt", Key="a b.txt", Body=b"x", ContentType="text/plain")
    req, _ = sent[0]
    assert accepted(req)
    assert not accepted(req, secret="wrong-secret")
    assert not accepted(replace(req, raw_path="/bkt/a%20c.txt"))
    assert not accepted(replace(req, method="POST"))
    assert not accepted(replace(req, query=[("acl", "")]))
    assert not accepted(replace(req, headers={**req.headers, "content-type": "text/html"}))
    assert not accepted(replace(req, headers={**req.headers, "host": "evil:9000"}))


def test_header_values_are_trimmed_and_collapsed(client_for):
    client, sent = client_for()
    client.put_object(Bucket="bkt", Key="k", Body=b"x", Metadata={"note": "a b"})
    req, _ = sent[0]
    spaced = {**req.headers, "x-amz-meta-note": "  a    b  "}
    assert accepted(replace(req, headers=spaced))


def test_unescaped_path_characters_are_encoded(client_for):
    client, sent = client_for()
    client.get_object(Bucket="bkt", Key="a b/ü=c")
    req, _ = sent[0]
    assert req.raw_path == "/bkt/a%20b/%C3%BC%3Dc"
    assert accepted(replace(req, raw_path="/bkt/a b/ü=c"))
    assert sigv4.canonical_uri("/bkt/a b/%41%zz") == "/bkt/a%20b/%41%25zz"
    assert sigv4.canonical_uri("") == "/"


def test_botocore_signer_directly():
    request = AWSRequest(
        method="GET",
        url="http://localhost:9000/bkt/obj%20one?versionId=abc&uploads=",
        headers={"X-Amz-Content-SHA256": EMPTY},
    )
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "eu-west-1").add_auth(request)
    req = auth_request("GET", request.url, dict(request.headers))
    auth = sigv4.parse(req)
    assert auth is not None and auth.region == "eu-west-1"
    sigv4.verify(auth, req, SECRET_KEY)


def test_presigned_urls_verify(client_for):
    client, _ = client_for()
    for method, params in [
        ("get_object", {"Bucket": "bkt", "Key": "ünï code/a+b=c~.txt"}),
        ("put_object", {"Bucket": "bkt", "Key": "a b"}),
        ("list_objects_v2", {"Bucket": "bkt", "Prefix": "a b"}),
    ]:
        url = client.generate_presigned_url(method, Params=params, ExpiresIn=600)
        http_method = "PUT" if method == "put_object" else "GET"
        req = auth_request(http_method, url, {})
        auth = sigv4.parse(req)
        assert auth is not None and auth.presigned and auth.expires_s == 600
        sigv4.verify(auth, req, SECRET_KEY)
        sigv4.check_time(auth, auth.amz_date + timedelta(seconds=599))
        with pytest.raises(s3e.AccessDenied, match="expired"):
            sigv4.check_time(auth, auth.amz_date + timedelta(seconds=601))
        with pytest.raises(s3e.AccessDenied):
            sigv4.check_time(auth, auth.amz_date - timedelta(hours=1))
        other_key = [(n, "x" if n == "versionId" else v) for n, v in req.query]
        other_key.append(("versionId", "1"))
        with pytest.raises(s3e.SignatureDoesNotMatch):
            sigv4.verify(auth, replace(req, query=other_key), SECRET_KEY)
        with pytest.raises(s3e.SignatureDoesNotMatch):
            sigv4.verify(auth, req, "wrong")


# -- time checks ---------------------------------------------------------------


def test_header_auth_clock_skew(client_for):
    client, sent = client_for()
    client.list_buckets()
    auth = sigv4.parse(sent[0][0])
    assert auth is not None
    sigv4.check_time(auth, auth.amz_date + timedelta(seconds=899))
    sigv4.check_time(auth, auth.amz_date - timedelta(seconds=899))
    for delta in (901, -901):
        with pytest.raises(s3e.RequestTimeTooSkewed) as caught:
            sigv4.check_time(auth, auth.amz_date + timedelta(seconds=delta))
        assert caught.value.extra["MaxAllowedSkewMilliseconds"] == "900000"


# -- parse errors --------------------------------------------------------------

GOOD_AUTHORIZATION = (
    f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20130524/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0" * 64
)


def header_request(**headers: str) -> sigv4.AuthRequest:
    base = {
        "host": "localhost",
        "x-amz-date": "20130524T000000Z",
        "x-amz-content-sha256": EMPTY,
        "authorization": GOOD_AUTHORIZATION,
    }
    base.update({name.replace("_", "-"): value for name, value in headers.items()})
    return sigv4.AuthRequest("GET", "/", [], {k: v for k, v in base.items() if v != "-"})


def test_anonymous_request():
    assert sigv4.parse(sigv4.AuthRequest("GET", "/bkt", [("prefix", "a")], {})) is None


def test_spacing_in_authorization_header_is_tolerated():
    compact = GOOD_AUTHORIZATION.replace(", ", ",")
    loose = GOOD_AUTHORIZATION.replace(", ", " ,  ")
    for value in (compact, loose):
        auth = sigv4.parse(header_request(authorization=value))
        assert auth is not None and auth.signature == "0" * 64


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        ({"authorization": "AWS AKID:c2lnbmF0dXJl"}, s3e.InvalidRequest, "AWS4-HMAC-SHA256"),
        ({"authorization": "Bearer xyz"}, s3e.InvalidArgument, "Unsupported"),
        (
            {"authorization": GOOD_AUTHORIZATION.replace("/s3/", "/ec2/")},
            s3e.AuthorizationHeaderMalformed,
            "service",
        ),
        (
            {"authorization": GOOD_AUTHORIZATION.replace("aws4_request", "aws5")},
            s3e.AuthorizationHeaderMalformed,
            "terminal",
        ),
        (
            {"authorization": GOOD_AUTHORIZATION.replace(f"{ACCESS_KEY}/", "")},
            s3e.AuthorizationHeaderMalformed,
            "Credential",
        ),
        (
            {"authorization": GOOD_AUTHORIZATION.split(", Signature")[0]},
            s3e.AuthorizationHeaderMalformed,
            "Signature",
        ),
        (
            {"authorization": "AWS4-HMAC-SHA256 garbage"},
            s3e.AuthorizationHeaderMalformed,
            "garbage",
        ),
        ({"x_amz_content_sha256": "-"}, s3e.InvalidRequest, "x-amz-content-sha256"),
        ({"x_amz_content_sha256": "nope"}, s3e.InvalidArgument, "x-amz-content-sha256"),
        ({"x_amz_date": "2013-05-24"}, s3e.AccessDenied, "valid Date or x-amz-date"),
        ({"x_amz_date": "20131324T000000Z"}, s3e.AccessDenied, "valid Date"),
        ({"x_amz_date": "-"}, s3e.AccessDenied, "valid Date"),
        ({"x_amz_date": "20130525T000000Z"}, s3e.AuthorizationHeaderMalformed, "credential date"),
    ],
)
def test_header_parse_errors(headers, error, message):
    with pytest.raises(error, match=message):
        sigv4.parse(header_request(**headers))


def test_date_header_fallback():
    auth = sigv4.parse(header_request(x_amz_date="-", date="Fri, 24 May 2013 00:00:00 GMT"))
    assert auth is not None and auth.amz_date_raw == "20130524T000000Z"


def test_both_mechanisms_rejected():
    req = replace(header_request(), query=[("X-Amz-Algorithm", "AWS4-HMAC-SHA256")])
    with pytest.raises(s3e.InvalidArgument, match="Only one auth mechanism"):
        sigv4.parse(req)


def test_sigv2_query_rejected():
    req = sigv4.AuthRequest("GET", "/b/k", [("AWSAccessKeyId", "AK"), ("Signature", "x")], {})
    with pytest.raises(s3e.InvalidRequest, match="AWS4-HMAC-SHA256"):
        sigv4.parse(req)


PRESIGNED = {
    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
    "X-Amz-Credential": f"{ACCESS_KEY}/20130524/us-east-1/s3/aws4_request",
    "X-Amz-Date": "20130524T000000Z",
    "X-Amz-Expires": "86400",
    "X-Amz-SignedHeaders": "host",
    "X-Amz-Signature": "0" * 64,
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"X-Amz-Algorithm": "AWS4-HMAC-SHA1"}, "only supports"),
        ({"X-Amz-Signature": None}, "requires"),
        ({"X-Amz-Expires": None}, "requires"),
        ({"X-Amz-Expires": "soon"}, "number"),
        ({"X-Amz-Date": "yesterday"}, "ISO8601"),
        ({"X-Amz-Date": "20130525T000000Z"}, "credential date"),
        ({"X-Amz-Credential": "AK/2013/us-east-1/s3/aws4_request"}, "date format"),
        ({"X-Amz-Credential": "AK/20130524/us-east-1/s3"}, "mal-formed"),
    ],
)
def test_presigned_parse_errors(changes, message):
    params = {**PRESIGNED, **changes}
    query = [(name, value) for name, value in params.items() if value is not None]
    req = sigv4.AuthRequest("GET", "/b/k", query, {"host": "localhost"})
    with pytest.raises(s3e.AuthorizationQueryParametersError, match=message):
        sigv4.parse(req)


@pytest.mark.parametrize(("expires", "message"), [("-1", "non-negative"), ("604801", "less than a week")])
def test_presigned_expiry_out_of_range_is_access_denied(expires, message):
    query = list({**PRESIGNED, "X-Amz-Expires": expires}.items())
    with pytest.raises(s3e.AccessDenied, match=message):
        sigv4.parse(sigv4.AuthRequest("GET", "/b/k", query, {"host": "localhost"}))


def test_presigned_max_expiry_is_accepted():
    query = list({**PRESIGNED, "X-Amz-Expires": "604800"}.items())
    auth = sigv4.parse(sigv4.AuthRequest("GET", "/b/k", query, {"host": "localhost"}))
    assert auth is not None and auth.expires_s == 604800


# -- verify() policy -----------------------------------------------------------


def test_host_must_be_signed(client_for):
    client, sent = client_for()
    client.list_buckets()
    req, _ = sent[0]
    auth = sigv4.parse(req)
    assert auth is not None
    unsigned_host = replace(auth, signed_headers=("x-amz-content-sha256", "x-amz-date"))
    with pytest.raises(s3e.AccessDenied, match="host"):
        sigv4.verify(unsigned_host, req, SECRET_KEY)


def test_unsigned_amz_headers_are_rejected(client_for):
    client, sent = client_for()
    client.list_buckets()
    req, _ = sent[0]
    auth = sigv4.parse(req)
    assert auth is not None
    smuggled = replace(req, headers={**req.headers, "x-amz-acl": "public-read"})
    with pytest.raises(s3e.AccessDenied) as caught:
        sigv4.verify(auth, smuggled, SECRET_KEY)
    assert caught.value.extra["HeadersNotSigned"] == "x-amz-acl"


def test_signature_mismatch_explains_itself(client_for):
    client, sent = client_for()
    client.list_buckets()
    req, _ = sent[0]
    auth = sigv4.parse(req)
    assert auth is not None
    with pytest.raises(s3e.SignatureDoesNotMatch) as caught:
        sigv4.verify(auth, req, "wrong")
    assert caught.value.extra["CanonicalRequest"].startswith("GET\n/\n")
    assert caught.value.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n")


def test_signing_key_is_cached():
    sigv4.signing_key.cache_clear()
    first = sigv4.signing_key(SECRET_KEY, "20130524", "us-east-1", "s3")
    assert sigv4.signing_key(SECRET_KEY, "20130524", "us-east-1", "s3") is first
    assert sigv4.signing_key.cache_info().hits == 1


def test_hmac_sha256_from_kept_key_states_is_hmac() -> None:
    for key_size in (0, 1, 32, 63, 64, 65, 200):  # a key longer than the block is hashed first
        key = os.urandom(key_size)
        for msg in (b"", b"x", os.urandom(100), os.urandom(5000)):
            assert sigv4.hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")
            assert sigv4.hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")  # the states are kept
