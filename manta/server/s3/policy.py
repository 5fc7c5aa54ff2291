"""Bucket policies, the public access block and ownership controls: the bucket
configurations that storage.access reads to decide requests.

    PUT/GET/DELETE ?policy              the JSON policy as sent (validated: storage.policy),
                                        kind "policy"; GET ?policyStatus: IsPublic
    PUT/GET/DELETE ?publicAccessBlock   PublicAccessBlockConfiguration, kind "publicaccessblock"
    PUT/GET/DELETE ?ownershipControls   OwnershipControls (one rule), kind "ownership"

Only the bucket owner's account manages them: another account that a policy lets in gets
405 MethodNotAllowed, as in S3. The owner may always manage the policy, even one that
denies the owner (storage.access). BlockPublicPolicy refuses a public policy (AccessDenied);
BucketOwnerEnforced is refused while the bucket's ACL grants more than the owner's
FULL_CONTROL (InvalidBucketAclWithObjectOwnership).
"""

from __future__ import annotations

from starlette.responses import Response

from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small
from manta.server.s3.common import in_thread, owned_ref, read_catalog, xml_response
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import child_text, children, document, el, parse
from storage import BucketRef
from storage import errors as se
from storage.access import (
    OWNER_ENFORCED,
    OWNERSHIP_KIND,
    OWNERSHIPS,
    POLICY_KIND,
    PUBLIC_BLOCK_KIND,
    PublicAccessBlock,
    grants_of,
)
from storage.policy import MAX_POLICY_BYTES, PolicyError, check_keys, parse_policy

__all__ = ["delete_bucket_policy", "delete_ownership_controls", "delete_public_access_block",
           "get_bucket_policy", "get_ownership_controls", "get_policy_status", "get_public_access_block",
           "put_bucket_policy", "put_ownership_controls", "put_public_access_block", "requested_ownership",
           "set_ownership"]

BLOCK_FIELDS = (("BlockPublicAcls", "block_public_acls"), ("IgnorePublicAcls", "ignore_public_acls"),
                ("BlockPublicPolicy", "block_public_policy"), ("RestrictPublicBuckets", "restrict_public_buckets"))


def _owners_bucket(req: S3Request, txn: object = None) -> BucketRef:
    """The request's bucket, authorised, and only for its owner's account."""
    ref = owned_ref(req, txn=txn)
    if ref.owner != req.owner:
        raise s3e.MethodNotAllowed(Method=req.method, ResourceType="BUCKET")
    return ref


def _conf(req: S3Request, kind: str) -> tuple[BucketRef, bytes | None]:
    with req.store.catalog.read() as txn:
        ref = _owners_bucket(req, txn)
        return ref, req.store.catalog.bucketconf.get(ref, kind, txn)


async def _set(req: S3Request, ref: BucketRef, kind: str, value: bytes | None) -> None:
    await in_thread(req.store.catalog.bucketconf.set, ref, kind, value)
    if req.buckets is not None:  # this door's PUTs see the change at once (s3/doorcache.py)
        req.buckets.drop(ref.name)


# -- policies ------------------------------------------------------------------------------


async def put_bucket_policy(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    body = await read_small(req, MAX_POLICY_BYTES + 1)
    try:
        policy = parse_policy(body, ref.name)
        check_keys(body)
    except PolicyError as exc:
        raise s3e.MalformedPolicy(str(exc)) from None
    await in_thread(_check_principals, req, policy.principals())
    _, block = await read_catalog(req.store, _conf, req, PUBLIC_BLOCK_KIND)
    if PublicAccessBlock.decode(block).block_public_policy and policy.public:
        raise s3e.AccessDenied()
    await _set(req, ref, POLICY_KIND, body)
    return Response(b"", status_code=204)


def _check_principals(req: S3Request, names: set[str]) -> None:
    for name in names:
        try:
            req.store.catalog.accounts.named(name)
        except se.NoSuchAccount:
            raise s3e.MalformedPolicy("Invalid principal in policy") from None


async def get_bucket_policy(req: S3Request) -> Response:
    _, raw = await read_catalog(req.store, _conf, req, POLICY_KIND)
    if raw is None:
        raise s3e.NoSuchBucketPolicy(BucketName=req.bucket)
    return Response(bytes(raw), media_type="application/json")


async def delete_bucket_policy(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    await _set(req, ref, POLICY_KIND, None)
    return Response(b"", status_code=204)


async def get_policy_status(req: S3Request) -> Response:
    ref, raw = await read_catalog(req.store, _conf, req, POLICY_KIND)
    if raw is None:
        raise s3e.NoSuchBucketPolicy(BucketName=req.bucket)
    public = parse_policy(bytes(raw), ref.name).public
    return xml_response(document("PolicyStatus", [el("IsPublic", "true" if public else "false")]))


# -- public access block ------------------------------------------------------------------


def _flag(text: str | None) -> bool:
    if text is None:
        return False
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise s3e.MalformedXML()
    return value == "true"


async def put_public_access_block(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    root = parse(await read_small(req, 64 * 1024), "PublicAccessBlockConfiguration")
    block = PublicAccessBlock(**{field: _flag(child_text(root, tag)) for tag, field in BLOCK_FIELDS})
    await _set(req, ref, PUBLIC_BLOCK_KIND, block.encode())
    return Response(b"")


async def get_public_access_block(req: S3Request) -> Response:
    _, raw = await read_catalog(req.store, _conf, req, PUBLIC_BLOCK_KIND)
    if raw is None:
        raise s3e.NoSuchPublicAccessBlockConfiguration(BucketName=req.bucket)
    block = PublicAccessBlock.decode(raw)
    return xml_response(document("PublicAccessBlockConfiguration", [
        el(tag, "true" if getattr(block, field) else "false") for tag, field in BLOCK_FIELDS]))


async def delete_public_access_block(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    await _set(req, ref, PUBLIC_BLOCK_KIND, None)
    return Response(b"", status_code=204)


# -- ownership controls -------------------------------------------------------------------


async def put_ownership_controls(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    root = parse(await read_small(req, 64 * 1024), "OwnershipControls")
    rules = children(root, "Rule")
    if len(rules) != 1:
        raise s3e.MalformedXML()
    ownership = (child_text(rules[0], "ObjectOwnership") or "").strip()
    if ownership not in OWNERSHIPS:
        raise s3e.MalformedXML()
    if ownership == OWNER_ENFORCED:
        record = await read_catalog(req.store, req.store.catalog.buckets.get, ref.name)
        if grants_of(record.acl, ref.owner) != {("id", ref.owner, "FULL_CONTROL")}:
            raise s3e.InvalidBucketAclWithObjectOwnership()
    await _set(req, ref, OWNERSHIP_KIND, ownership.encode())
    return Response(b"")


def requested_ownership(req: S3Request, canned: str | None) -> str | None:
    """CreateBucket's x-amz-object-ownership, checked (None: not sent)."""
    ownership = req.header("x-amz-object-ownership")
    if ownership is None:
        return None
    if ownership not in OWNERSHIPS:
        raise s3e.InvalidArgument("Invalid x-amz-object-ownership header", ArgumentName="x-amz-object-ownership",
                                  ArgumentValue=ownership)
    if ownership == OWNER_ENFORCED and canned not in (None, "private"):
        raise s3e.InvalidBucketAclWithObjectOwnership()
    return ownership


def set_ownership(req: S3Request, ownership: str) -> None:
    """The ownership controls of a bucket just created (a second write: a crash between
    the two leaves the bucket without them)."""
    record = req.store.catalog.buckets.get(req.bucket)
    req.store.catalog.bucketconf.set(record.ref(), OWNERSHIP_KIND, ownership.encode())
    if req.buckets is not None:  # one of the same name, deleted a moment ago, may be cached
        req.buckets.drop(req.bucket)


async def get_ownership_controls(req: S3Request) -> Response:
    _, raw = await read_catalog(req.store, _conf, req, OWNERSHIP_KIND)
    if raw is None:
        raise s3e.OwnershipControlsNotFoundError(BucketName=req.bucket)
    rule = f"<Rule>{el('ObjectOwnership', bytes(raw).decode())}</Rule>"
    return xml_response(document("OwnershipControls", [rule]))


async def delete_ownership_controls(req: S3Request) -> Response:
    ref = await read_catalog(req.store, _owners_bucket, req)
    await _set(req, ref, OWNERSHIP_KIND, None)
    return Response(b"", status_code=204)
