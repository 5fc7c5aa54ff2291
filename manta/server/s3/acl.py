"""Access control lists: the two canned ACLs this server keeps, `private` and `public-read`.

An ACL is stored as its canned name in the bucket record and the object record (field
``acl``; absent means private). A request names one in any of the forms S3 takes:

- the `x-amz-acl` header (CreateBucket, PutObject, CopyObject, CreateMultipartUpload,
  PUT ?acl); `bucket-owner-full-control` on an object is private here, since the object's
  owner is the bucket's owner;
- `x-amz-grant-*` headers (`x-amz-grant-full-control: id="OWNER"`, the form tools send);
- an AccessControlPolicy body (PUT ?acl).

Grants are read as a set of (grantee, permission): the owner's FULL_CONTROL alone is
private; with READ for the AllUsers group added it is public-read; anything else (other
users, other groups, other permissions) is NotImplemented.

public-read lets an unsigned GET or HEAD of an object through when the object's ACL or its
bucket's ACL is public-read (`anonymous_reader`); every other unsigned request stays
AccessDenied (listing, writes, deletes, ?acl and other sub-resources).
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree as ET

from starlette.responses import Response

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
from storage import Store

__all__ = ["PRIVATE", "PUBLIC_READ", "acl_of", "anonymous_reader", "from_body", "from_request",
           "get_bucket_acl", "get_object_acl", "policy_xml", "put_bucket_acl", "put_object_acl",
           "requested"]

PRIVATE = "private"
PUBLIC_READ = "public-read"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
OBJECT_ONLY_CANNED = {"bucket-owner-full-control": PRIVATE}
GRANT_HEADERS = {"x-amz-grant-read": "READ", "x-amz-grant-write": "WRITE",
                 "x-amz-grant-read-acp": "READ_ACP", "x-amz-grant-write-acp": "WRITE_ACP",
                 "x-amz-grant-full-control": "FULL_CONTROL"}
# query parameters an unsigned GetObject/HeadObject may carry
ANONYMOUS_READ_PARAMS = {"partNumber", "versionId", "x-id", "response-content-type",
                         "response-content-language", "response-expires", "response-cache-control",
                         "response-content-disposition", "response-content-encoding"}
ANONYMOUS_LIST_PARAMS = {"prefix", "delimiter", "marker", "max-keys", "encoding-type", "list-type",
                         "continuation-token", "start-after", "fetch-owner", "x-id"}
GRANTEE_KINDS = {"id": "id", "uri": "uri", "emailaddress": "email"}
_GRANTEE = re.compile(r'\s*(id|uri|emailAddress)\s*=\s*"?([^",]*)"?\s*(?:,|$)', re.IGNORECASE)

Grant = tuple[str, str, str]  # (grantee kind, grantee, permission)


def _canned_of(grants: set[Grant], owner: str) -> str:
    owner_full = ("id", owner, "FULL_CONTROL")
    if grants == {owner_full}:
        return PRIVATE
    if grants == {owner_full, ("uri", ALL_USERS, "READ")}:
        return PUBLIC_READ
    raise s3e.NotImplemented_("Only the private and public-read access control lists are implemented.")


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
            grants.add((GRANTEE_KINDS[match.group(1).lower()], match.group(2).strip(), permission))
            pos = match.end()
    return grants


def requested(req: S3Request, on_object: bool) -> str | None:
    """The canned ACL the request's headers name, or None when they name none."""
    canned = req.header("x-amz-acl")
    grants = _header_grants(req)
    if canned is not None and grants:
        raise s3e.InvalidRequest("Specifying both Canned ACLs and Header Grants is not allowed")
    if grants:
        return _canned_of(grants, req.owner)
    if canned is None:
        return None
    canned = canned.strip()
    if canned in (PRIVATE, PUBLIC_READ):
        return canned
    if on_object and canned in OBJECT_ONLY_CANNED:
        return OBJECT_ONLY_CANNED[canned]
    raise s3e.NotImplemented_(f"The {canned} canned ACL is not implemented.")


def from_request(req: S3Request, on_object: bool) -> str:
    """The ACL a created bucket or object gets: the one the headers name, else private."""
    return requested(req, on_object) or PRIVATE


def _grantee(node: ET.Element) -> tuple[str, str]:
    for tag, kind in (("ID", "id"), ("URI", "uri"), ("EmailAddress", "email")):
        value = child_text(node, tag)
        if value is not None:
            return kind, value.strip()
    raise s3e.MalformedXML()


def from_body(body: bytes, owner: str) -> str:
    """The canned ACL an AccessControlPolicy document amounts to."""
    root = parse(body, "AccessControlPolicy")
    owner_node = next(iter(children(root, "Owner")), None)
    if owner_node is not None and (child_text(owner_node, "ID") or "").strip() != owner:
        raise s3e.AccessDenied()
    grants: set[Grant] = set()
    for acl in children(root, "AccessControlList"):
        for grant in children(acl, "Grant"):
            grantee = next((c for c in grant if local(c.tag) == "Grantee"), None)
            permission = (child_text(grant, "Permission") or "").strip()
            if grantee is None or not permission:
                raise s3e.MalformedXML()
            grants.add((*_grantee(grantee), permission))
    return _canned_of(grants, owner)


def policy_xml(owner: str, acl: str) -> bytes:
    """The AccessControlPolicy document GET ?acl answers."""
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    grants = [f'<Grant><Grantee {xsi} xsi:type="CanonicalUser">{el("ID", owner)}{el("DisplayName", owner)}'
              "</Grantee><Permission>FULL_CONTROL</Permission></Grant>"]
    if acl == PUBLIC_READ:
        grants.append(f'<Grant><Grantee {xsi} xsi:type="Group">{el("URI", ALL_USERS)}</Grantee>'
                      "<Permission>READ</Permission></Grant>")
    return document("AccessControlPolicy", [
        f"<Owner>{el('ID', owner)}{el('DisplayName', owner)}</Owner>",
        f"<AccessControlList>{''.join(grants)}</AccessControlList>"])


def acl_of(record: dict[str, Any] | None) -> str:
    return str(record.get("acl", PRIVATE)) if record else PRIVATE


def anonymous_reader(store: Store, req: S3Request) -> str | None:
    """For an unsigned request: the bucket owner to act as, or None (AccessDenied). As in
    S3, READ for AllUsers (public-read) on an object lets anyone GET/HEAD that object; on a
    bucket it lets anyone list the bucket (ListObjects, ListObjectsV2, HeadBucket), and so
    learn that a missing key is missing (404), but read none of its objects. A catalog
    read (common.read_catalog)."""
    if req.method not in ("GET", "HEAD") or not req.bucket:
        return None
    found = store.objects.acls(req.bucket, req.key)
    if found is None:
        return None
    owner, bucket_acl, object_acl = found
    if not req.key:
        listing = set(req.query) <= ANONYMOUS_LIST_PARAMS
        return owner if bucket_acl == PUBLIC_READ and listing else None
    if not set(req.query) <= ANONYMOUS_READ_PARAMS:
        return None
    if object_acl == PUBLIC_READ or (object_acl is None and bucket_acl == PUBLIC_READ):
        return owner
    return None


async def get_bucket_acl(req: S3Request) -> Response:
    return xml_response(policy_xml(req.owner, await read_catalog(req.store, _bucket_acl, req)))


def _bucket_acl(req: S3Request) -> str:
    return req.store.catalog.buckets.get(owned_ref(req).name).acl or PRIVATE


async def put_bucket_acl(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    await in_thread(req.store.catalog.buckets.set_acl, bucket, await _acl_to_put(req, on_object=False))
    return Response(b"")


async def get_object_acl(req: S3Request) -> Response:
    record = await read_catalog(req.store, object_record, req)
    return xml_response(policy_xml(req.owner, acl_of(record)))


async def put_object_acl(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    await in_thread(req.store.objects.set_acl, bucket, req.key, await _acl_to_put(req, on_object=True))
    return Response(b"")


async def _acl_to_put(req: S3Request, on_object: bool) -> str:
    """PUT ?acl: the ACL named by headers or by an AccessControlPolicy body (not both)."""
    body = await read_small(req, 64 * 1024)
    named = requested(req, on_object)
    if named is not None:
        if body.strip():
            raise s3e.InvalidRequest("This request does not support content with an ACL header.")
        return named
    return from_body(body, req.owner)
