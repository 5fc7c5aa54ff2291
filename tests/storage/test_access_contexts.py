"""Reads made later on behalf of requests (storage.access.readable with request contexts):
decided under each recorded context, at the time of the check, and for the worst case when
no context is known, so a missing condition key never turns a Deny into an Allow."""

from __future__ import annotations

import json
from typing import Any

from storage import Store, StoreConfig
from storage.access import (
    POLICY_KIND,
    Ask,
    BucketAccess,
    Decision,
    decide,
    lasting,
    readable,
    worst_case,
)
from storage.policy import parse_policy

BUCKET = "shared"
PLAIN = {"aws:securetransport": "false", "aws:sourceip": "127.0.0.1", "aws:principalaccount": "bob"}
TLS = {**PLAIN, "aws:securetransport": "true"}
ALLOW_BOB = {"Effect": "Allow", "Principal": {"AWS": "bob"}, "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{BUCKET}/*"}
DENY_PLAIN = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*",
              "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def policy(*statements: dict[str, Any]) -> bytes:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}).encode()


def settings(*statements: dict[str, Any]) -> BucketAccess:
    return BucketAccess("alice", policy=parse_policy(policy(*statements), BUCKET))


def test_an_empty_context_misses_the_deny_and_the_worst_case_does_not() -> None:
    shared = settings(ALLOW_BOB, DENY_PLAIN)
    ask = Ask("bob", "s3:GetObject", BUCKET, "k")
    assert decide(ask, shared) is Decision.ALLOW  # the defect: a key missing skips the Deny
    assert decide(ask, worst_case(shared)) is Decision.DENY
    conditional_allow = {**ALLOW_BOB, "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}}
    assert decide(ask, worst_case(settings(conditional_allow))) is Decision.NOT_ALLOWED
    assert decide(ask, worst_case(settings(ALLOW_BOB))) is Decision.ALLOW


def test_lasting_keeps_the_connection_and_the_principal_only() -> None:
    context = {**PLAIN, "aws:currenttime": "2026-01-01T00:00:00Z", "s3:x-amz-content-sha256": "ab",
               "aws:useragent": "boto3"}
    assert lasting(context) == {**PLAIN, "aws:useragent": "boto3"}


def test_readable_decides_under_every_context_at_the_time_of_the_check(tmp_path: Any) -> None:
    store = Store(StoreConfig(str(tmp_path / "data")))
    try:
        store.catalog.buckets.create(BUCKET, "alice")
        store.catalog.bucketconf.set(BUCKET, POLICY_KIND, policy(ALLOW_BOB, DENY_PLAIN))
        assert readable(store, "bob", BUCKET, "k", [TLS]) is not None
        assert readable(store, "bob", BUCKET, "k", [PLAIN]) is None
        assert readable(store, "bob", BUCKET, "k", [TLS, PLAIN]) is None
        assert readable(store, "bob", BUCKET, "k") is None  # not known: the worst case
        assert readable(store, "bob", BUCKET, "k", []) is None
        assert readable(store, "alice", BUCKET, "k", [PLAIN]) is None  # the owner too
        # aws:CurrentTime is the check's, whatever the recorded context says
        until_2000 = {**ALLOW_BOB, "Condition": {"DateLessThan": {"aws:CurrentTime": "2000-01-01T00:00:00Z"}}}
        store.catalog.bucketconf.set(BUCKET, POLICY_KIND, policy(until_2000))
        old = {**TLS, "aws:currenttime": "1999-01-01T00:00:00Z", "aws:epochtime": "915148800"}
        assert readable(store, "bob", BUCKET, "k", [old]) is None
    finally:
        store.close()
