"""The access decision and the policy language (storage.access, storage.policy), as pure
functions, and `readable` over a real embedded catalog."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage import Store, StoreConfig
from storage.access import (
    ALL_USERS,
    AUTHENTICATED_USERS,
    OWNERSHIP_KIND,
    POLICY_KIND,
    PUBLIC_BLOCK_KIND,
    Ask,
    BucketAccess,
    Decision,
    PublicAccessBlock,
    acl_text,
    decide,
    grants_of,
    readable,
)
from storage.policy import PolicyError, check_keys, parse_policy

BUCKET = "shared"


def policy(*statements: dict[str, Any]) -> bytes:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}).encode()


READ_FOR_BOB = {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::bob:root"},
                "Action": ["s3:GetObject", "s3:List*"],
                "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}


def access(*statements: dict[str, Any], **fields: Any) -> BucketAccess:
    parsed = parse_policy(policy(*statements), BUCKET) if statements else None
    return BucketAccess("alice", policy=parsed, **fields)


def ask(principal: str | None, action: str, key: str | None = "k", **context: str) -> Ask:
    return Ask(principal, action, BUCKET, key, context)


def test_the_owner_is_allowed_and_others_are_not_without_a_policy() -> None:
    plain = access()
    assert decide(ask("alice", "s3:PutObject"), plain) is Decision.ALLOW
    assert decide(ask("bob", "s3:GetObject"), plain) is Decision.NOT_ALLOWED
    assert decide(ask(None, "s3:ListBucket", None), plain) is Decision.NOT_ALLOWED


def test_a_policy_shares_read_only() -> None:
    shared = access(READ_FOR_BOB)
    assert decide(ask("bob", "s3:GetObject"), shared) is Decision.ALLOW
    assert decide(ask("bob", "s3:ListBucket", None), shared) is Decision.ALLOW
    assert decide(ask("bob", "s3:PutObject"), shared) is Decision.NOT_ALLOWED
    assert decide(ask("bob", "s3:DeleteObject"), shared) is Decision.NOT_ALLOWED
    assert decide(ask("carol", "s3:GetObject"), shared) is Decision.NOT_ALLOWED
    assert decide(ask(None, "s3:GetObject"), shared) is Decision.NOT_ALLOWED


def test_an_explicit_deny_wins_over_an_allow_and_over_ownership() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{BUCKET}/secret/*"}
    both = access(READ_FOR_BOB, deny)
    assert decide(ask("bob", "s3:GetObject", "public/x"), both) is Decision.ALLOW
    assert decide(ask("bob", "s3:GetObject", "secret/x"), both) is Decision.DENY
    assert decide(ask("alice", "s3:GetObject", "secret/x"), both) is Decision.DENY
    # the owner may always manage the policy, even one that denies everything
    lockout = access({"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}"})
    assert decide(ask("alice", "s3:PutBucketPolicy", None), lockout) is Decision.ALLOW
    assert decide(ask("alice", "s3:ListBucket", None), lockout) is Decision.DENY


@pytest.mark.parametrize(("condition", "context", "allowed"), [
    ({"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}}, {"aws:sourceip": "127.0.0.1"}, True),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:sourceip": "127.0.0.1"}, False),
    ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, False),  # a missing key: false
    ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:sourceip": "127.0.0.1"}, True),
    ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, True),  # negated and missing: true
    ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:securetransport": "false"}, False),
    ({"Bool": {"aws:SecureTransport": True}}, {"aws:securetransport": "true"}, True),
    ({"StringLike": {"s3:prefix": ["home/bob/*", ""]}}, {"s3:prefix": "home/bob/x"}, True),
    ({"StringLike": {"s3:prefix": "home/bob/*"}}, {"s3:prefix": "home/eve/"}, False),
    ({"StringEqualsIfExists": {"s3:delimiter": "/"}}, {}, True),
    ({"StringEquals": {"s3:delimiter": "/"}}, {}, False),
    ({"NumericLessThanEquals": {"s3:max-keys": "10"}}, {"s3:max-keys": "5"}, True),
    ({"NumericLessThanEquals": {"s3:max-keys": "10"}}, {"s3:max-keys": "50"}, False),
    ({"Null": {"s3:prefix": "true"}}, {}, True),
    ({"StringEqualsIgnoreCase": {"aws:UserAgent": "BOTO"}}, {"aws:useragent": "boto"}, True),
    ({"DateLessThan": {"aws:CurrentTime": "2999-01-01T00:00:00Z"}}, {"aws:currenttime": "2026-01-01T00:00:00Z"}, True),
])
def test_conditions(condition: dict[str, Any], context: dict[str, str], allowed: bool) -> None:
    statement = {**READ_FOR_BOB, "Condition": condition}
    decision = decide(ask("bob", "s3:ListBucket", None, **context), access(statement))
    assert (decision is Decision.ALLOW) == allowed


def test_principals_actions_and_resources_in_their_forms() -> None:
    for principal in ("*", {"AWS": "*"}, {"AWS": "bob"}, {"AWS": ["x", "arn:aws:iam::bob:root"]},
                      {"CanonicalUser": "bob"}):
        statement = {"Effect": "Allow", "Principal": principal, "Action": "s3:get*",
                     "Resource": f"arn:aws:s3:::{BUCKET}/k?y*"}
        shared = access(statement)
        assert decide(ask("bob", "s3:GetObject", "key1"), shared) is Decision.ALLOW, principal
        assert decide(ask("bob", "s3:GetObject", "k"), shared) is Decision.NOT_ALLOWED
        assert decide(ask("bob", "s3:PutObject", "key1"), shared) is Decision.NOT_ALLOWED
    not_action = access({"Effect": "Allow", "Principal": {"AWS": "bob"}, "NotAction": "s3:Delete*",
                         "Resource": f"arn:aws:s3:::{BUCKET}/*"})
    assert decide(ask("bob", "s3:PutObject"), not_action) is Decision.ALLOW
    assert decide(ask("bob", "s3:DeleteObject"), not_action) is Decision.NOT_ALLOWED
    not_principal = access({"Effect": "Deny", "NotPrincipal": {"AWS": "bob"}, "Action": "s3:*",
                            "Resource": f"arn:aws:s3:::{BUCKET}/*"}, READ_FOR_BOB)
    assert decide(ask("bob", "s3:GetObject"), not_principal) is Decision.ALLOW
    assert decide(ask("alice", "s3:GetObject"), not_principal) is Decision.DENY


@pytest.mark.parametrize(("document", "message"), [
    (b"not json", "valid JSON"),
    (b"[]", "valid JSON"),
    (json.dumps({"Version": "2012-10-17"}).encode(), "Statement"),
    (json.dumps({"Version": "2001-01-01", "Statement": [READ_FOR_BOB]}).encode(), "version"),
    (policy({**READ_FOR_BOB, "Effect": "Maybe"}), "effect"),
    (policy({k: v for k, v in READ_FOR_BOB.items() if k != "Principal"}), "principal"),
    (policy({**READ_FOR_BOB, "Action": "s3:NoSuchAction"}), "invalid action"),
    (policy({**READ_FOR_BOB, "Action": "ec2:RunInstances"}), "invalid action"),
    (policy({**READ_FOR_BOB, "Resource": "arn:aws:s3:::another-bucket/*"}), "invalid resource"),
    (policy({**READ_FOR_BOB, "Resource": "not-an-arn"}), "invalid resource"),
    (policy({**READ_FOR_BOB, "Condition": {"StringSortOf": {"s3:prefix": "a"}}}), "Condition type"),
    (policy({**READ_FOR_BOB, "Condition": {"IpAddress": {"aws:SourceIp": "300.1.1.1/8"}}}), "Condition value"),
    (policy({**READ_FOR_BOB, "Principal": {"Robot": "x"}}), "principal"),
    (policy({**READ_FOR_BOB, "Surprise": 1}), "Unknown field"),
    (b"{" + b" " * 21000 + b"}", "20 KB"),
])
def test_malformed_policies(document: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(document, BUCKET)


def test_which_policies_are_public() -> None:
    def public(*statements: dict[str, Any]) -> bool:
        return parse_policy(policy(*statements), BUCKET).public

    anyone = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    assert public(anyone)
    assert not public(READ_FOR_BOB)
    assert not public({**anyone, "Effect": "Deny"})
    assert not public({**anyone, "Condition": {"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}})
    assert public({**anyone, "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}})
    assert public({**anyone, "Condition": {"StringLike": {"s3:prefix": "x"}}})
    # only a positive comparison of who comes makes it non-public: Null holds for anyone
    # without the key (anonymous), and a request header is whatever the client sends
    assert public({**anyone, "Condition": {"Null": {"aws:PrincipalAccount": "true"}}})
    assert public({**anyone, "Condition": {"Null": {"aws:PrincipalAccount": "false"}}})
    assert public({**anyone, "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "bob"}}})
    assert public({**anyone, "Condition": {"StringEquals": {"s3:x-amz-acl": "private"}}})
    assert not public({**anyone, "Condition": {"StringEquals": {"aws:PrincipalAccount": "bob"}}})
    assert public({**anyone, "Condition": {"ForAllValues:StringEquals": {"aws:PrincipalAccount": "bob"}}})


@pytest.mark.parametrize("key", ["s3:ExistingObjectTag/classification", "aws:SourceAccount", "aws:userid",
                                 "s3:TlsVersion", "s3:x-amz-server-side-encryption-aws-kms-key-id"])
def test_a_condition_on_a_key_no_request_holds(key: str) -> None:
    """S3 refuses a policy with a condition key it does not know (check_keys, at PUT). One
    stored before that check is read for the worst case: such a Deny binds as if its
    condition held, such an Allow grants nothing."""
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*",
            "Condition": {"StringEquals": {key: "secret"}}}
    document = policy(READ_FOR_BOB, deny)
    with pytest.raises(PolicyError, match=f"invalid condition key: {key}"):
        check_keys(document)
    assert decide(ask("bob", "s3:GetObject"), access(READ_FOR_BOB, deny)) is Decision.DENY
    assert decide(ask("bob", "s3:ListBucket", None), access(READ_FOR_BOB, deny)) is Decision.ALLOW
    allow = {**deny, "Effect": "Allow", "Condition": {"StringNotEquals": {key: "x"}}}
    assert decide(ask("bob", "s3:GetObject"), access(allow)) is Decision.NOT_ALLOWED
    known = policy({**deny, "Condition": {"StringEquals": {"aws:UserAgent": "secret"}}})
    check_keys(known)  # a key requests hold: accepted


def test_acls_grants_and_what_they_allow() -> None:
    public_read = access(acl="public-read")
    assert decide(ask(None, "s3:ListBucket", None), public_read) is Decision.ALLOW
    assert decide(ask(None, "s3:GetObject"), public_read) is Decision.NOT_ALLOWED  # objects have their own ACL
    assert decide(ask(None, "s3:GetObject"), public_read, "public-read") is Decision.ALLOW
    assert decide(ask(None, "s3:PutObject"), public_read) is Decision.NOT_ALLOWED
    assert decide(ask(None, "s3:PutObject"), access(acl="public-read-write")) is Decision.ALLOW
    authenticated = access(acl="authenticated-read")
    assert decide(ask("bob", "s3:ListBucket", None), authenticated) is Decision.ALLOW
    assert decide(ask(None, "s3:ListBucket", None), authenticated) is Decision.NOT_ALLOWED
    grants = {("id", "alice", "FULL_CONTROL"), ("id", "bob", "WRITE"), ("id", "carol", "READ_ACP")}
    text = acl_text(grants, "alice")
    assert grants_of(text, "alice") == grants
    granted = access(acl=text)
    assert decide(ask("bob", "s3:PutObject"), granted) is Decision.ALLOW
    assert decide(ask("bob", "s3:GetBucketAcl", None), granted) is Decision.NOT_ALLOWED
    assert decide(ask("carol", "s3:GetBucketAcl", None), granted) is Decision.ALLOW
    assert acl_text({("id", "alice", "FULL_CONTROL"), ("uri", ALL_USERS, "READ")}, "alice") == "public-read"
    assert acl_text({("id", "alice", "FULL_CONTROL"), ("uri", AUTHENTICATED_USERS, "READ")},
                    "alice") == "authenticated-read"
    # ACLs disabled: grants count for nothing
    enforced = access(acl="public-read", ownership="BucketOwnerEnforced")
    assert decide(ask(None, "s3:ListBucket", None), enforced) is Decision.NOT_ALLOWED


def test_the_public_access_block_overrides_public_acls_and_policies() -> None:
    ignore = PublicAccessBlock(ignore_public_acls=True)
    assert decide(ask(None, "s3:ListBucket", None), access(acl="public-read", block=ignore)) is Decision.NOT_ALLOWED
    assert decide(ask(None, "s3:GetObject"), access(block=ignore), "public-read") is Decision.NOT_ALLOWED
    bob_grant = acl_text({("id", "alice", "FULL_CONTROL"), ("id", "bob", "READ")}, "alice")
    assert decide(ask("bob", "s3:ListBucket", None), access(acl=bob_grant, block=ignore)) is Decision.ALLOW
    anyone = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    restrict = PublicAccessBlock(restrict_public_buckets=True)
    assert decide(ask(None, "s3:GetObject"), access(anyone)) is Decision.ALLOW
    assert decide(ask(None, "s3:GetObject"), access(anyone, block=restrict)) is Decision.NOT_ALLOWED
    assert decide(ask("bob", "s3:GetObject"), access(anyone, READ_FOR_BOB, block=restrict)) is Decision.NOT_ALLOWED
    assert decide(ask("bob", "s3:GetObject"), access(READ_FOR_BOB, block=restrict)) is Decision.ALLOW
    assert decide(ask("alice", "s3:GetObject"), access(anyone, block=restrict)) is Decision.ALLOW


def test_readable_reads_only_what_the_bucket_record_lists(tmp_path: Any) -> None:
    store = Store(StoreConfig(str(tmp_path / "data")))
    try:
        store.catalog.buckets.create(BUCKET, "alice")
        store.catalog.buckets.create("plain", "alice")
        assert readable(store, "alice", "plain", "k") is not None
        assert readable(store, "bob", BUCKET, "k") is None
        store.catalog.bucketconf.set(BUCKET, POLICY_KIND, policy(READ_FOR_BOB))
        assert readable(store, "bob", BUCKET, "k") is not None
        assert readable(store, "carol", BUCKET, "k") is None
        store.catalog.bucketconf.set(BUCKET, OWNERSHIP_KIND, b"BucketOwnerEnforced")
        store.catalog.bucketconf.set(BUCKET, PUBLIC_BLOCK_KIND, PublicAccessBlock(True, True, True, True).encode())
        assert readable(store, "bob", BUCKET, "k") is not None  # not a public policy: still shared
        assert store.catalog.buckets.get(BUCKET).conf == {POLICY_KIND, OWNERSHIP_KIND, PUBLIC_BLOCK_KIND}
        assert store.catalog.buckets.get("plain").conf == frozenset()
    finally:
        store.close()


def test_for_all_values_holds_for_a_missing_key_as_in_iam() -> None:
    """ForAllValues over no values is true (IAM), so a Deny written with it binds a request
    without the key; ForAnyValue over none is false."""
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    for_all = access(READ_FOR_BOB, {**deny, "Condition": {"ForAllValues:StringEquals": {"aws:Referer": "x"}}})
    assert decide(ask("bob", "s3:GetObject"), for_all) is Decision.DENY
    assert decide(ask("bob", "s3:GetObject", **{"aws:referer": "y"}), for_all) is Decision.ALLOW
    assert decide(ask("bob", "s3:GetObject", **{"aws:referer": "x"}), for_all) is Decision.DENY
    for_any = access(READ_FOR_BOB, {**deny, "Condition": {"ForAnyValue:StringEquals": {"aws:Referer": "x"}}})
    assert decide(ask("bob", "s3:GetObject"), for_any) is Decision.ALLOW
