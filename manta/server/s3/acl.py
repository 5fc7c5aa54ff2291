"""Access control lists on buckets and objects: canned ACLs and grants, read from requests
and shown by GET ?acl. What they allow is decided in storage.access with everything else.

A request names an ACL in one of the forms S3 takes:

- `x-amz-acl` (CreateBucket, PutObject, CopyObject, CreateMultipartUpload, PUT ?acl):
  private, public-read, public-read-write, authenticated-read; on objects also
  bucket-owner-read and bucket-owner-full-control, which are private here (objects belong
  to their bucket's owner);
- `x-amz-grant-read|write|read-acp|write-acp|full-control` headers: `id="account"`,
  `uri="http://acs.amazonaws.com/groups/global/AllUsers"` (or AuthenticatedUsers,
  LogDelivery), comma-separated; an id must name an account; emailAddress grantees are
  UnresolvableGrantByEmailAddress;
- an AccessControlPolicy body (PUT ?acl), whose Owner must be the bucket's owner.

The grants are kept as storage.access stores them (a canned name when they amount to one).
A write that names an ACL in its headers (PutObject, CopyObject, CreateMultipartUpload)
takes s3:PutObjectAcl besides s3:PutObject, as in S3 (`from_request`: AccessDenied before
anything is written).

Two bucket settings refuse ACLs: ownership BucketOwnerEnforced (ACLs disabled: only
bucket-owner-full-control or the owner's FULL_CONTROL alone may be sent, anything else is
AccessControlListNotSupported; GET ?acl shows the owner's FULL_CONTROL) and a public access
block with BlockPublicAcls (a public ACL is AccessDenied).
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree as ET

from starlette.responses import Response

from manta.server.s3 import access
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small
from manta.server.s3.common import (
    in_thread,
    object_record,
    owned_bucket,
    owned_ref,
    read_catalog,
    xml_response,
)
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import child_text, children, document, el, local, parse
from storage import errors as se
from storage.access import (
    ALL_USERS,
    AUTHENTICATED_USERS,
    CANNED,
    OWNERSHIP_KIND,
    PUBLIC_BLOCK_KIND,
    BucketAccess,
    Grant,
    acl_text,
    bucket_access,
    grants_of,
    is_public_acl,
)

__all__ = ["PRIVATE", "PUBLIC_READ", "from_request", "get_bucket_acl", "get_object_acl", "names_acl", "policy_xml",
           "put_bucket_acl", "put_object_acl", "requested"]

PRIVATE = "private"
PUBLIC_READ = "public-read"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
GROUPS = (ALL_USERS, AUTHENTICATED_USERS, LOG_DELIVERY)
OBJECT_ONLY_CANNED = {"bucket-owner-full-control": PRIVATE, "bucket-owner-read": PRIVATE}
GRANT_HEADERS = {"x-amz-grant-read": "READ", "x-amz-grant-write": "WRITE",
                 "x-amz-grant-read-acp": "READ_ACP", "x-amz-grant-write-acp": "WRITE_ACP",
                 "x-amz-grant-full-control": "FULL_CONTROL"}
PERMISSIONS = set(GRANT_HEADERS.values())
XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"?([^",]*)"?\s*(?:,|$)', re.IGNORECASE)


def _grantee_checked(req: S3Request, kind: str, who: str) -> Grant | tuple[str, str]:
    if kind == "email":
        raise s3e.UnresolvableGrantByEmailAddress(EmailAddress=who)
    if kind == "uri" and who not in GROUPS:
        raise s3e.InvalidArgument("Invalid group uri", ArgumentName="uri", ArgumentValue=who)
    if kind == "id":
        try:
            req.store.catalog.accounts.named(who)
        except se.NoSuchAccount:
            raise s3e.InvalidArgument("Invalid id", ArgumentName="CanonicalUser/ID", ArgumentValue=who) from None
    return kind, who


def _header_grants(req: S3Request) -> set[Grant]:
    grants: set[Grant] = set()
    for header, permission in GRANT_HEADERS.items():
        value = req.header(header)
        if value is None:
            continue
        pos = 0
        while pos < len(value):
            match = _GRANTEE.match(value, pos)
            if match is None or match.end() == pos:
                raise s3e.InvalidArgument("Invalid grant header.", ArgumentName=header)
            kind = {"id": "id", "uri": "uri", "emailaddress": "email"}[match.group(1).lower()]
            grants.add((*_grantee_checked(req, kind, match.group(2).strip()), permission))
            pos = match.end()
    return grants


def _bucket_owner(req: S3Request) -> str:
    """The owner of the request's bucket: the one authorised against, else (creating it, or
    its owner acting on it) the signer."""
    return req.access.owner if req.access is not None else req.owner


def _settings(req: S3Request, txn: Any = None) -> BucketAccess | None:
    """The bucket's access settings if it has any that limit ACLs (none: nothing read)."""
    if req.access is not None:
        return req.access  # type: ignore[no-any-return]
    if not (req.bucket_conf or frozenset()) & {PUBLIC_BLOCK_KIND, OWNERSHIP_KIND}:
        return None
    if txn is None:
        with req.store.catalog.read() as t:
            return _settings(req, t)
    record = req.store.catalog.buckets.get(req.bucket, txn)
    return bucket_access(req.store.catalog, record, txn)


def _settable(req: S3Request, public: bool, owner_only: bool) -> None:
    """Refuse an ACL the bucket's settings do not take (see the module docstring):
    `public`, it grants to AllUsers or AuthenticatedUsers; `owner_only`, it is
    bucket-owner-full-control or the owner's FULL_CONTROL alone."""
    settings = _settings(req)
    if settings is None:
        return
    if not settings.acls_enabled and not owner_only:
        raise s3e.AccessControlListNotSupported()
    if settings.block.block_public_acls and public:
        raise s3e.AccessDenied()


def _settable_grants(req: S3Request, grants: set[Grant], owner: str) -> None:
    _settable(req, is_public_acl(grants), grants == {("id", owner, "FULL_CONTROL")})


def requested(req: S3Request, on_object: bool) -> str | None:
    """The ACL (as stored) the request's headers name, or None when they name none."""
    canned = req.header("x-amz-acl")
    grants = _header_grants(req)
    if canned is not None and grants:
        raise s3e.InvalidRequest("Specifying both Canned ACLs and Header Grants is not allowed")
    owner = _bucket_owner(req)
    if grants:
        _settable_grants(req, grants, owner)
        return acl_text(grants, owner)
    if canned is None:
        return None
    canned = canned.strip()
    if on_object and canned in OBJECT_ONLY_CANNED:
        _settable(req, False, canned == "bucket-owner-full-control")
        return OBJECT_ONLY_CANNED[canned]
    if canned not in CANNED:
        raise s3e.InvalidArgument(f"The canned ACL {canned} is not valid.", ArgumentName="x-amz-acl",
                                  ArgumentValue=canned)
    _settable(req, is_public_acl(CANNED[canned]), False)
    return canned


def names_acl(req: S3Request) -> bool:
    """Whether the request's headers name an ACL (x-amz-acl or an x-amz-grant-* header)."""
    return req.header("x-amz-acl") is not None or not GRANT_HEADERS.keys().isdisjoint(req.headers)


def from_request(req: S3Request, on_object: bool) -> str:
    """The ACL a created bucket or object gets: the one the headers name, else private.
    On an object, naming one takes s3:PutObjectAcl (AccessDenied); the caller read the
    bucket's record first (`owned_ref`), so this is decided before anything is written."""
    if on_object and names_acl(req) and not access.may(req, "s3:PutObjectAcl", req.key):
        raise s3e.AccessDenied()
    return requested(req, on_object) or PRIVATE


def _grantee(req: S3Request, node: ET.Element) -> tuple[str, str]:
    for tag, kind in (("ID", "id"), ("URI", "uri"), ("EmailAddress", "email")):
        value = child_text(node, tag)
        if value is not None:
            return _grantee_checked(req, kind, value.strip())  # type: ignore[return-value]
    raise s3e.MalformedXML()


def from_body(req: S3Request, body: bytes, owner: str) -> str:
    """The ACL an AccessControlPolicy document states."""
    root = parse(body, "AccessControlPolicy")
    owner_node = next(iter(children(root, "Owner")), None)
    if owner_node is not None and (child_text(owner_node, "ID") or "").strip() != owner:
        raise s3e.AccessDenied()
    grants: set[Grant] = set()
    for acl in children(root, "AccessControlList"):
        for grant in children(acl, "Grant"):
            grantee = next((c for c in grant if local(c.tag) == "Grantee"), None)
            permission = (child_text(grant, "Permission") or "").strip()
            if grantee is None or permission not in PERMISSIONS:
                raise s3e.MalformedACLError()
            grants.add((*_grantee(req, grantee), permission))
    _settable_grants(req, grants, owner)
    return acl_text(grants, owner)


def _grant_xml(grant: Grant) -> str:
    kind, who, permission = grant
    if kind == "id":
        grantee = f'<Grantee {XSI} xsi:type="CanonicalUser">{el("ID", who)}{el("DisplayName", who)}</Grantee>'
    else:
        grantee = f'<Grantee {XSI} xsi:type="Group">{el("URI", who)}</Grantee>'
    return f"<Grant>{grantee}{el('Permission', permission)}</Grant>"


def policy_xml(owner: str, acl: Any, acls_enabled: bool = True) -> bytes:
    """The AccessControlPolicy document GET ?acl answers (the owner's grant first)."""
    grants = grants_of(acl, owner) if acls_enabled else grants_of(PRIVATE, owner)
    first = ("id", owner, "FULL_CONTROL")
    ordered = ([first] if first in grants else []) + sorted(g for g in grants if g != first)
    return document("AccessControlPolicy", [
        f"<Owner>{el('ID', owner)}{el('DisplayName', owner)}</Owner>",
        f"<AccessControlList>{''.join(_grant_xml(g) for g in ordered)}</AccessControlList>"])


def acl_of(record: dict[str, Any] | None) -> str:
    return str(record.get("acl", PRIVATE)) if record else PRIVATE


def _enabled(req: S3Request) -> bool:
    settings = _settings(req)
    return settings is None or settings.acls_enabled


async def get_bucket_acl(req: S3Request) -> Response:
    owner, text = await read_catalog(req.store, _bucket_acl, req)
    return xml_response(policy_xml(owner, text, await read_catalog(req.store, _enabled, req)))


def _bucket_acl(req: S3Request) -> tuple[str, str]:
    with req.store.catalog.read() as txn:
        ref = owned_ref(req, txn=txn)
        return ref.owner, req.store.catalog.buckets.get(ref.name, txn).acl or PRIVATE


async def put_bucket_acl(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    await in_thread(req.store.catalog.buckets.set_acl, bucket, await _acl_to_put(req, bucket.owner, on_object=False))
    return Response(b"")


async def get_object_acl(req: S3Request) -> Response:
    record = await read_catalog(req.store, object_record, req)
    owner = _bucket_owner(req)
    return xml_response(policy_xml(owner, acl_of(record), await read_catalog(req.store, _enabled, req)))


async def put_object_acl(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    await in_thread(req.store.objects.set_acl, bucket, req.key, await _acl_to_put(req, bucket.owner, on_object=True))
    return Response(b"")


async def _acl_to_put(req: S3Request, owner: str, on_object: bool) -> str:
    """PUT ?acl: the ACL named by headers or by an AccessControlPolicy body (not both)."""
    body = await read_small(req, 64 * 1024)
    named = await in_thread(requested, req, on_object)
    if named is not None:
        if body.strip():
            raise s3e.InvalidRequest("This request does not support content with an ACL header.")
        return named  # type: ignore[no-any-return]
    return await in_thread(from_body, req, body, owner)  # type: ignore[no-any-return]
