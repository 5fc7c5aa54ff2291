"""CORS in-process (tests/inprocess.py): how rules match, and what a request costs — a
request without Origin, or on a bucket without rules, reads no rules; one with Origin on
a bucket with rules reads them once."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from manta.server.s3.cors import CorsRule, decode, encode, match, parse_rules
from tests.inprocess import InProcessS3

ORIGIN = "https://app.example"
DOCUMENT = (b"<CORSConfiguration><CORSRule><AllowedOrigin>https://app.example</AllowedOrigin>"
            b"<AllowedMethod>GET</AllowedMethod><ExposeHeader>ETag</ExposeHeader></CORSRule></CORSConfiguration>")


@pytest.mark.parametrize(("pattern", "origin", "fits"), [
    ("*", "", True),
    ("*", "http://anything:1", True),
    ("http://*.example.org", "http://a.example.org", True),
    ("http://*.example.org", "http://.example.org", True),  # * matches the empty run too
    ("http://*.example.org", "https://a.example.org", False),
    ("http://*.example.org", "http://a.example.org.evil", False),  # anchored at both ends
    ("start*end", "startend", True),
    ("start*end", "0start12end", False),
    ("prefix*", "prefix.suffix", True),
    ("*suffix", "foo.suffix.get", False),
    ("http://test.origin.com", "http://test.origin.com/", False),
])
def test_origin_patterns(pattern: str, origin: str, fits: bool) -> None:
    rule = CorsRule((pattern,), ("GET",))
    assert (match([rule], origin, "GET") is rule) is fits


def test_method_and_every_requested_header_must_be_allowed() -> None:
    rule = CorsRule(("*",), ("GET", "PUT"), ("Content-Type", "x-amz-meta-*"))
    assert match([rule], "o", "PUT", ["content-type", "x-amz-meta-a"]) is rule
    assert match([rule], "o", "PUT", ["x-amz-meta-"]) is rule
    assert match([rule], "o", "DELETE") is None
    assert match([rule], "o", "PUT", ["content-type", "authorization"]) is None
    assert match([CorsRule(("*",), ("GET",))], "o", "GET", ["content-type"]) is None  # no AllowedHeader: none


def test_first_matching_rule_wins_and_rules_round_trip() -> None:
    rules = parse_rules(b"<CORSConfiguration xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
                        b"<CORSRule><ID>a</ID><AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
                        b"<MaxAgeSeconds>5</MaxAgeSeconds></CORSRule>"
                        b"<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
                        b"<AllowedMethod>PUT</AllowedMethod></CORSRule></CORSConfiguration>")
    assert match(rules, "o", "GET") is rules[0]
    assert match(rules, "o", "PUT") is rules[1]
    assert decode(encode(rules)) == rules
    assert rules[0] == CorsRule(("*",), ("GET",), max_age_s=5, id="a")


# -- what a request costs ---------------------------------------------------------------------

@pytest.fixture
def reads(s3: InProcessS3) -> Iterator[list[tuple[Any, str]]]:
    """The bucket configuration reads the server makes (a spy on the real catalog's)."""
    conf = s3.store.catalog.bucketconf
    real = conf.get
    seen: list[tuple[Any, str]] = []
    depth = [0]

    def spy(bucket: Any, kind: str, txn: Any = None) -> bytes | None:
        if depth[0] == 0:  # get() without a transaction opens one and calls itself
            seen.append((bucket, kind))
        depth[0] += 1
        try:
            return real(bucket, kind, txn)
        finally:
            depth[0] -= 1

    conf.get = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        conf.get = real  # type: ignore[method-assign]


def _put_rules(s3: InProcessS3, bucket: str) -> None:
    md5 = base64.b64encode(hashlib.md5(DOCUMENT).digest()).decode()
    response = s3.request("PUT", f"/{bucket}", query={"cors": ""}, body=DOCUMENT, headers={"Content-MD5": md5})
    assert response.status_code == 200, response.text


def test_no_rules_read_without_origin_or_without_rules(s3: InProcessS3, bucket: str,
                                                       reads: list[tuple[Any, str]]) -> None:
    s3.put(bucket, "k", b"v")
    assert "access-control-allow-origin" not in s3.request("GET", f"/{bucket}/k", headers={"Origin": ORIGIN}).headers
    assert "access-control-allow-origin" not in s3.request("GET", f"/{bucket}/k").headers
    assert reads == []
    _put_rules(s3, bucket)
    assert s3.request("GET", f"/{bucket}/k").headers.get("access-control-allow-origin") is None
    assert reads == []


def test_origin_on_a_bucket_with_rules_reads_them_once(s3: InProcessS3, bucket: str,
                                                       reads: list[tuple[Any, str]]) -> None:
    s3.put(bucket, "k", b"v")
    _put_rules(s3, bucket)
    response = s3.request("GET", f"/{bucket}/k", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-expose-headers"] == "ETag"
    assert reads == [(bucket, "cors")]
