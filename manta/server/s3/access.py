"""Authorization for S3 requests: the request's action, resource and condition keys handed
to the one decision (`storage.access.decide`), and its answer as AccessDenied.

    common.owned_ref (every operation's bucket read) -> authorize(req, bucket record, txn)
        x-amz-expected-bucket-owner names another owner      -> AccessDenied, first of all
        owner of a bucket without a policy                 -> allowed, nothing read or built
        otherwise: BucketAccess (policy, public access block, ownership: read only when the
        record's `conf` lists them), Ask(principal, action_of(req), bucket, key, context_of(req))
        -> decide -> ALLOW | DENY (AccessDenied) | NOT_ALLOWED: for an action an object ACL
           can allow (GetObject...), decided again with the ACL of the version asked for
           (`versionId`; else the current one); a missing object or version is NoSuchKey /
           NoSuchVersion to whoever may list the bucket, AccessDenied to others (as S3 does)

The operation is chosen once, by `subresource_of`: the dispatch (app.py) and `action_of`
both take its answer, and a request naming two operation sub-resources (`?policy&acl`) is
InvalidRequest rather than one operation checked and another run. A copy source is
authorised as `s3:GetObject` on it, `s3:GetObjectVersion` when it names a version, whose
ACL is the one consulted (`authorize_source`); DeleteObjects checks `s3:DeleteObject` per
key (`may`). Unsigned requests reach the operations with no account (`S3Request.account`
None) and are decided the same way: only `*` in a policy or an AllUsers grant lets them in.
"""

from __future__ import annotations

from typing import Any

from manta.server.s3 import errors as s3e
from manta.server.s3.context import S3Request, copy_source_version
from storage import BucketRecord
from storage import errors as se
from storage.access import (
    ACL_KINDS,
    POLICY_KIND,
    Ask,
    BucketAccess,
    Decision,
    bucket_access,
    decide,
    object_acl_permission,
    time_keys,
)
from storage.policy import HEADER_KEYS, LIST_KEYS

__all__ = ["EXPECTED_OWNER", "SUBRESOURCES", "action_of", "authorize", "authorize_source", "context_of",
           "expect_owner", "may", "plain", "subresource_of"]

EXPECTED_OWNER = "x-amz-expected-bucket-owner"
EXPECTED_SOURCE_OWNER = "x-amz-source-expected-bucket-owner"

BUCKET_ACTIONS: dict[tuple[str, str], str] = {
    ("HEAD", ""): "s3:ListBucket", ("GET", ""): "s3:ListBucket", ("DELETE", ""): "s3:DeleteBucket",
    ("PUT", ""): "s3:CreateBucket",
    ("GET", "location"): "s3:GetBucketLocation", ("GET", "versions"): "s3:ListBucketVersions",
    ("GET", "versioning"): "s3:GetBucketVersioning", ("PUT", "versioning"): "s3:PutBucketVersioning",
    ("GET", "acl"): "s3:GetBucketAcl", ("PUT", "acl"): "s3:PutBucketAcl",
    ("GET", "cors"): "s3:GetBucketCORS", ("PUT", "cors"): "s3:PutBucketCORS", ("DELETE", "cors"): "s3:PutBucketCORS",
    ("GET", "lifecycle"): "s3:GetLifecycleConfiguration", ("PUT", "lifecycle"): "s3:PutLifecycleConfiguration",
    ("DELETE", "lifecycle"): "s3:PutLifecycleConfiguration",
    ("GET", "uploads"): "s3:ListBucketMultipartUploads", ("POST", "delete"): "s3:DeleteObject",
    ("GET", "tagging"): "s3:GetBucketTagging", ("PUT", "tagging"): "s3:PutBucketTagging",
    ("DELETE", "tagging"): "s3:PutBucketTagging",
    ("GET", "policy"): "s3:GetBucketPolicy", ("PUT", "policy"): "s3:PutBucketPolicy",
    ("DELETE", "policy"): "s3:DeleteBucketPolicy", ("GET", "policyStatus"): "s3:GetBucketPolicyStatus",
    ("GET", "publicAccessBlock"): "s3:GetBucketPublicAccessBlock",
    ("PUT", "publicAccessBlock"): "s3:PutBucketPublicAccessBlock",
    ("DELETE", "publicAccessBlock"): "s3:PutBucketPublicAccessBlock",
    ("GET", "ownershipControls"): "s3:GetBucketOwnershipControls",
    ("PUT", "ownershipControls"): "s3:PutBucketOwnershipControls",
    ("DELETE", "ownershipControls"): "s3:PutBucketOwnershipControls",
    ("GET", "object-lock"): "s3:GetBucketObjectLockConfiguration",
    ("PUT", "object-lock"): "s3:PutBucketObjectLockConfiguration",
}
OBJECT_ACTIONS: dict[tuple[str, str], str] = {
    ("PUT", ""): "s3:PutObject", ("GET", ""): "s3:GetObject", ("HEAD", ""): "s3:GetObject",
    ("DELETE", ""): "s3:DeleteObject", ("GET", "acl"): "s3:GetObjectAcl", ("PUT", "acl"): "s3:PutObjectAcl",
    ("GET", "attributes"): "s3:GetObjectAttributes", ("POST", "uploads"): "s3:PutObject",
    ("PUT", "uploadId"): "s3:PutObject", ("POST", "uploadId"): "s3:PutObject",
    ("DELETE", "uploadId"): "s3:AbortMultipartUpload", ("GET", "uploadId"): "s3:ListMultipartUploadParts",
    ("GET", "tagging"): "s3:GetObjectTagging", ("PUT", "tagging"): "s3:PutObjectTagging",
    ("DELETE", "tagging"): "s3:DeleteObjectTagging",
    ("GET", "retention"): "s3:GetObjectRetention", ("PUT", "retention"): "s3:PutObjectRetention",
    ("GET", "legal-hold"): "s3:GetObjectLegalHold", ("PUT", "legal-hold"): "s3:PutObjectLegalHold",
}
VERSIONED = {"s3:GetObject": "s3:GetObjectVersion", "s3:DeleteObject": "s3:DeleteObjectVersion",
             "s3:GetObjectAcl": "s3:GetObjectVersionAcl", "s3:PutObjectAcl": "s3:PutObjectVersionAcl",
             "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
             "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
             "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging"}
# the query parameters that select an operation (versionId, partNumber, list and response-*
# parameters only qualify one)
SUBRESOURCES = frozenset((
    "policyStatus", "policy", "publicAccessBlock", "ownershipControls", "location", "versions", "versioning",
    "acl", "uploads", "delete", "uploadId", "attributes", "tagging", "cors", "object-lock", "retention",
    "legal-hold", "lifecycle"))


def subresource_of(req: S3Request) -> str:
    """The sub-resource that selects the request's operation ("" for none): what the
    dispatch runs and what `action_of` authorizes. Two or more are InvalidRequest: no
    client sends them, and picking one would let a check of one operation admit another."""
    named = SUBRESOURCES.intersection(req.query)
    if len(named) > 1:
        raise s3e.InvalidRequest(f"A request may name one sub-resource, not several: {', '.join(sorted(named))}.")
    return next(iter(named), "")


def action_of(req: S3Request) -> str:
    """The IAM action the request asks for (`s3:GetObject`...)."""
    sub = subresource_of(req)
    if req.key:
        action = OBJECT_ACTIONS.get((req.method, sub), "s3:GetObject" if req.method in ("GET", "HEAD") else "s3:PutObject")
        if "versionId" in req.query:
            action = VERSIONED.get(action, action)
        return action
    return BUCKET_ACTIONS.get((req.method, sub), "s3:ListBucket" if req.method in ("GET", "HEAD") else "s3:PutBucketAcl")


def attribute_actions(record: BucketRecord) -> tuple[str, str]:
    """What GetObjectAttributes needs, as S3 has it: it answers what a GET would (ETag,
    size, checksums), so a Deny of the GET binds it too; in a versioned bucket the
    version forms of both."""
    if record.versioning is not None:
        return "s3:GetObjectVersionAttributes", "s3:GetObjectVersion"
    return "s3:GetObjectAttributes", "s3:GetObject"


def context_of(req: S3Request) -> dict[str, str]:
    """The request's condition keys (lower-cased names)."""
    context = {"aws:securetransport": "true" if req.secure else "false", **time_keys()}
    if req.auth is not None:  # an anonymous request has no signature, so no version of one
        context["s3:signatureversion"] = "AWS4-HMAC-SHA256"
    if req.client_ip:
        context["aws:sourceip"] = req.client_ip
    if req.account is not None:
        context["aws:principalaccount"] = req.account.name
        context["aws:principalarn"] = f"arn:aws:iam::{req.account.name}:root"
        context["aws:principaltype"] = "Account"
        context["s3:authtype"] = "REST-QUERY-STRING" if "X-Amz-Signature" in req.query else "REST-HEADER"
    else:
        context["aws:principaltype"] = "Anonymous"
    for header, key in (("user-agent", "aws:useragent"), ("referer", "aws:referer")):
        if header in req.headers:
            context[key] = req.headers[header]
    for header in HEADER_KEYS:
        if header in req.headers:
            context["s3:" + header] = req.headers[header]
    if not req.key and req.method == "GET" and subresource_of(req) in ("", "versions"):
        # listings only (ListObjects, ListObjectVersions), as in S3: any other request could
        # add ?prefix= to meet a condition on s3:prefix (or to escape a Deny that names one)
        for name in LIST_KEYS:
            if name in req.query:
                context["s3:" + name] = req.query[name]
    if "versionId" in req.query:
        context["s3:versionid"] = req.query["versionId"]
    return context


def _principal(req: S3Request) -> str | None:
    return req.account.name if req.account is not None else None


def _ask(req: S3Request, action: str, bucket: str, key: str | None) -> Ask:
    if req.access_context is None:
        req.access_context = context_of(req)
    return Ask(_principal(req), action, bucket, key, req.access_context)


def _settings(req: S3Request, record: BucketRecord, txn: Any) -> BucketAccess:
    if txn is None:
        with req.store.catalog.read() as t:
            return bucket_access(req.store.catalog, record, t)
    return bucket_access(req.store.catalog, record, txn)


def _decide_object(req: S3Request, record: BucketRecord, settings: BucketAccess, ask: Ask, vid: str | None,
                   txn: Any) -> Decision:
    """A decision that needs the ACL of the object's version `vid` (None: its current one):
    read it (NoSuchKey, NoSuchVersion or a delete marker to whoever may list the bucket,
    AccessDenied to others)."""
    objects = req.store.objects
    try:
        if vid is None:
            found = objects.get(record.ref(), ask.key or "", txn)
        else:
            found = objects.get_version(record.ref(), ask.key or "", vid, txn)
    except (se.NoSuchKey, se.NoSuchVersion, se.DeleteMarker):
        listing = Ask(ask.principal, "s3:ListBucket", ask.bucket, None, ask.context)
        if decide(listing, settings) is Decision.ALLOW:
            raise
        raise s3e.AccessDenied() from None
    return decide(ask, settings, found.get("acl"))


def _check(req: S3Request, record: BucketRecord, txn: Any, action: str, key: str | None,
           vid: str | None = None) -> None:
    principal = _principal(req)
    if principal == record.owner and POLICY_KIND not in record.conf:
        return  # the owner, and no policy that could deny: nothing to read
    settings = _settings(req, record, txn)
    if record.name == req.bucket:
        req.access = settings
    ask = _ask(req, action, record.name, key)
    decision = decide(ask, settings)
    if decision is Decision.NOT_ALLOWED and key is not None and object_acl_permission(action) \
            and settings.acls_enabled:
        decision = _decide_object(req, record, settings, ask, vid, txn)
    if decision is not Decision.ALLOW:
        raise s3e.AccessDenied()


def expect_owner(req: S3Request, record: BucketRecord, header: str = EXPECTED_OWNER) -> None:
    """AccessDenied when the request names the account it expects to own the bucket
    (x-amz-expected-bucket-owner; x-amz-source-expected-bucket-owner for a copy source)
    and another owns it, as S3 answers: a client's guard against writing to, or reading
    from, a bucket of the same name that someone else holds. Owners are named as in
    ListBuckets' Owner/ID: the account name."""
    expected = req.headers.get(header)
    if expected is not None and expected != record.owner:
        raise s3e.AccessDenied()


def authorize(req: S3Request, record: BucketRecord, txn: Any = None) -> None:
    """Raise AccessDenied unless the request's principal may do the request's action on
    its bucket (or key), and the bucket has the owner the request expects, if it names
    one. A catalog read for anyone but the owner of a bucket without a policy (in `txn`
    if given)."""
    expect_owner(req, record)
    if _principal(req) == record.owner and POLICY_KIND not in record.conf:
        return  # the owner, and no policy that could deny: nothing to read
    if req.method == "POST" and not req.key and subresource_of(req) == "delete":
        req.access = _settings(req, record, txn)  # DeleteObjects: each key is checked (`may`)
        return
    action = action_of(req)
    vid = req.query.get("versionId") if req.key else None
    for needed in attribute_actions(record) if action == "s3:GetObjectAttributes" else (action,):
        _check(req, record, txn, needed, req.key or None, vid)


def authorize_source(req: S3Request, record: BucketRecord, key: str, action: str = "s3:GetObject",
                     txn: Any = None) -> None:
    """A copy source: `action` (s3:GetObject; s3:GetObjectTagging to copy its tags) on
    bucket/key, its version form (s3:GetObjectVersion..., and that version's ACL) when
    x-amz-copy-source names a version."""
    expect_owner(req, record, EXPECTED_SOURCE_OWNER)
    vid = copy_source_version(req)
    _check(req, record, txn, action if vid is None else VERSIONED[action], key, vid)


def may(req: S3Request, action: str, key: str | None) -> bool:
    """Whether the request's principal may do `action` on a key of the request's bucket,
    by the settings its `authorize` read (the owner of a bucket without a policy: yes)."""
    if req.access is None:
        return True
    return decide(_ask(req, action, req.bucket, key), req.access) is Decision.ALLOW


def plain(req: S3Request) -> bool:
    """Whether the request's bucket (its record read) has no access settings at all: no
    policy, public access block or ownership controls (what the door's bucket cache holds)."""
    return req.bucket_conf is not None and not req.bucket_conf & ACL_KINDS
