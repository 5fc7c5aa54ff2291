"""Bucket operations: create, head, delete, location, versioning, listings (objects and
versions), DeleteObjects (a version Object Lock keeps is that key's AccessDenied)."""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from itertools import chain
from typing import Any

from starlette.responses import Response

from manta.server.s3 import access, acl, objectlock, policy
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small
from manta.server.s3.common import (
    free_blobs,
    in_thread,
    owned_bucket,
    owned_ref,
    read_catalog,
    xml_response,
)
from manta.server.s3.context import S3Request, validate_key
from manta.server.s3.xmlio import child_text, children, document, el, iso8601, parse
from manta.server.s3.xmltext import fit_all, fits
from storage import BucketRef, Listing
from storage import errors as se
from storage.versions import VersionListing, is_marker, parse_version_id, version_id

_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BAD_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BAD_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
MAX_KEYS = 1000
LEGACY_REGION = "us-east-1"  # re-creating a bucket you own answers 200 here, 409 elsewhere


def validate_bucket_name(name: str) -> None:
    bad = (not _NAME.match(name) or ".." in name or ".-" in name or "-." in name
           or name.startswith(_BAD_PREFIXES) or name.endswith(_BAD_SUFFIXES))
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise s3e.InvalidBucketName(BucketName=name)


async def create_bucket(req: S3Request) -> Response:
    validate_bucket_name(req.bucket)
    body = await read_small(req, 64 * 1024)
    if body.strip():
        root = parse(body, "CreateBucketConfiguration")
        location = child_text(root, "LocationConstraint")
        if location and location != req.settings.region:
            raise s3e.InvalidLocationConstraint(
                "The specified location-constraint is not valid.", LocationConstraint=location)
    lock = req.header("x-amz-bucket-object-lock-enabled", "").strip().lower() == "true"  # s3/objectlock.py
    canned = await read_catalog(req.store, acl.requested, req, False)  # an id grant reads its account
    ownership = policy.requested_ownership(req, canned)
    try:
        await in_thread(req.store.catalog.buckets.create, req.bucket, req.owner, canned, lock)
        if ownership is not None:
            await in_thread(policy.set_ownership, req, ownership)
    except se.BucketAlreadyExists as exc:
        # the bucket lives in the server's region (a LocationConstraint naming another one
        # was refused above); there, S3's legacy answer to re-creating your own bucket is
        # 200 with the bucket's ACL reset to the one asked for
        if not exc.owned_by_you or req.settings.region != LEGACY_REGION:
            raise
        await in_thread(lambda: req.store.catalog.buckets.set_acl(owned_ref(req), canned or acl.PRIVATE))
    return Response(b"", headers={"location": f"/{req.bucket}"})


async def head_bucket(req: S3Request) -> Response:
    await owned_bucket(req)
    return Response(b"", headers={"x-amz-bucket-region": req.settings.region})


async def delete_bucket(req: S3Request) -> Response:
    bucket, freed = await in_thread(_abort_uploads, req)
    await free_blobs(req, freed)
    await in_thread(req.store.catalog.buckets.delete, bucket)
    return Response(b"", status_code=204)


def _abort_uploads(req: S3Request) -> tuple[BucketRef, list[str]]:
    """The first step of a bucket's delete: refuse while objects exist; pending multipart
    uploads are aborted with the bucket (their in-flight parts then fail NoSuchBucket).
    Both steps re-check the bucket's generation, so a bucket re-created meanwhile is not
    touched. Returns the bucket and the blobs the aborts freed."""
    bucket = owned_ref(req)
    if req.store.objects.list(bucket, max_keys=1).contents or req.store.objects.has_versions(bucket):
        raise s3e.BucketNotEmpty(BucketName=req.bucket)
    return bucket, req.store.uploads.abort_all(bucket)


async def get_location(req: S3Request) -> Response:
    await owned_bucket(req)
    region = req.settings.region
    value = "" if region == "us-east-1" else region
    return xml_response(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
        f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{value}</LocationConstraint>'.encode())


async def get_versioning(req: S3Request) -> Response:
    status = await read_catalog(req.store, _versioning_status, req)
    return xml_response(document("VersioningConfiguration", [] if status is None else [el("Status", status)]))


def _versioning_status(req: S3Request) -> str | None:
    owned_ref(req)
    return req.store.catalog.buckets.get(req.bucket).versioning


async def put_versioning(req: S3Request) -> Response:
    """Enabled or Suspended (a bucket never versioned has no status: GetBucketVersioning
    answers an empty configuration). MFA delete is not supported."""
    bucket = await owned_bucket(req)
    root = parse(await read_small(req, 64 * 1024), "VersioningConfiguration")
    status = child_text(root, "Status")
    mfa = child_text(root, "MfaDelete") or child_text(root, "MFADelete")
    if mfa not in (None, "Disabled") or "x-amz-mfa" in req.headers:
        raise s3e.NotImplemented_("MFA delete is not supported.")
    if status is None:
        return Response(b"")
    if status not in ("Enabled", "Suspended"):
        raise s3e.MalformedXML()
    await in_thread(req.store.catalog.buckets.set_versioning, bucket, status)
    return Response(b"")


def _max_keys(req: S3Request) -> int:
    raw = req.query.get("max-keys", str(MAX_KEYS))
    try:
        value = int(raw)
    except ValueError:
        raise s3e.InvalidArgument("max-keys must be an integer.", ArgumentName="max-keys") from None
    if value < 0:
        raise s3e.InvalidArgument("max-keys must be >= 0.", ArgumentName="max-keys")
    return min(value, MAX_KEYS)


def _url_asked(req: S3Request) -> bool:
    encoding = req.query.get("encoding-type")
    if encoding not in (None, "url"):
        raise s3e.InvalidArgument("Invalid Encoding Method specified in Request",
                                  ArgumentName="encoding-type")
    return encoding == "url"


def _encoder(url_asked: bool, listing: Listing, *asked: str) -> tuple[bool, Callable[[str], str]]:
    """Whether the listing's keys are url-encoded, and the encoder: they are when the client
    asks, and when one of them (or a prefix, marker or delimiter echoed) holds a character
    XML 1.0 cannot carry (see manta.server.s3.xmltext)."""
    texts = chain(asked, (r["key"] for r in listing.contents), listing.common_prefixes,
                  [listing.next_marker or ""])
    if url_asked or not fit_all(texts):
        return True, lambda s: urllib.parse.quote(s, safe="/")
    return False, lambda s: s


def _contents(record: dict[str, Any], enc: Any, owner: str | None) -> str:
    parts = [el("Key", enc(record["key"])), el("LastModified", iso8601(record["mtime"])),
             el("ETag", f'"{record["etag"]}"'), el("Size", record["size"])]
    if record.get("checksums"):
        parts.extend(el("ChecksumAlgorithm", alg) for alg in record["checksums"])
        if record.get("checksum_type"):
            parts.append(el("ChecksumType", record["checksum_type"]))
    parts.append(el("StorageClass", "STANDARD"))
    if owner is not None:
        parts.append(f"<Owner>{el('ID', owner)}{el('DisplayName', owner)}</Owner>")
    return "".join(parts)


def _list(req: S3Request, prefix: str, delimiter: str, start: str, max_keys: int) -> Listing:
    """One page of the bucket; max-keys 0 is an empty page that is not truncated."""
    if max_keys == 0:
        return Listing()
    return req.store.objects.list(req.bucket, prefix, delimiter, start, max_keys)


async def list_objects(req: S3Request) -> Response:
    return await read_catalog(req.store, _list_objects, req)


def _list_objects(req: S3Request) -> Response:
    owner = owned_ref(req).owner
    v2 = req.query.get("list-type") == "2"
    url_asked = _url_asked(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    max_keys = _max_keys(req)
    if v2:
        token = req.query.get("continuation-token")
        if token is not None:
            try:
                start = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise s3e.InvalidArgument("The continuation token provided is incorrect.",
                                          ArgumentName="continuation-token") from None
        else:
            start = req.query.get("start-after", "")
    else:
        start = req.query.get("marker", "")
    listing = _list(req, prefix, delimiter, start, max_keys)
    url, enc = _encoder(url_asked, listing, prefix, delimiter, start, req.query.get("start-after", ""))
    fetch_owner = not v2 or req.query.get("fetch-owner") == "true"
    # ListObjects (v1) echoes Prefix as sent even with encoding-type=url (clients decode
    # only keys, common prefixes, Delimiter and the markers); V2 encodes it
    body = [el("Name", req.bucket), el("Prefix", prefix if not v2 and fits(prefix) else enc(prefix))]
    if v2:
        if "continuation-token" in req.query:
            body.append(el("ContinuationToken", req.query["continuation-token"]))
        if "start-after" in req.query:
            body.append(el("StartAfter", enc(req.query["start-after"])))
        body.append(el("KeyCount", len(listing.contents) + len(listing.common_prefixes)))
    else:
        body.append(el("Marker", enc(start)))
    body.append(el("MaxKeys", max_keys))
    if delimiter:
        body.append(el("Delimiter", enc(delimiter)))
    if url:
        body.append(el("EncodingType", "url"))
    body.append(el("IsTruncated", "true" if listing.truncated else "false"))
    if listing.truncated and listing.next_marker is not None:
        if v2:
            token = base64.urlsafe_b64encode(listing.next_marker.encode()).decode()
            body.append(el("NextContinuationToken", token))
        elif delimiter:
            body.append(el("NextMarker", enc(listing.next_marker)))
    for record in listing.contents:
        body.append(f"<Contents>{_contents(record, enc, owner if fetch_owner else None)}</Contents>")
    for common in listing.common_prefixes:
        body.append(f"<CommonPrefixes>{el('Prefix', enc(common))}</CommonPrefixes>")
    return xml_response(document("ListBucketResult", body))


async def list_object_versions(req: S3Request) -> Response:
    return await read_catalog(req.store, _list_object_versions, req)


def _list_object_versions(req: S3Request) -> Response:
    bucket = owned_ref(req)
    url_asked = _url_asked(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    key_marker = req.query.get("key-marker", "")
    version_marker = req.query.get("version-id-marker", "")
    if version_marker and not key_marker:
        raise s3e.InvalidArgument("A version-id marker cannot be specified without a key marker.",
                                  ArgumentName="version-id-marker", ArgumentValue=version_marker)
    max_keys = _max_keys(req)
    page = (req.store.objects.list_versions(bucket, prefix, delimiter, key_marker, version_marker, max_keys)
            if max_keys else VersionListing())
    seen = Listing([r for r, _ in page.entries], page.common_prefixes, page.truncated, page.next_key_marker)
    url, enc = _encoder(url_asked, seen, prefix, delimiter, key_marker)
    body = [el("Name", req.bucket), el("Prefix", enc(prefix)), el("KeyMarker", enc(key_marker)),
            el("VersionIdMarker", version_marker), el("MaxKeys", max_keys)]
    if delimiter:
        body.append(el("Delimiter", enc(delimiter)))
    if url:
        body.append(el("EncodingType", "url"))
    body.append(el("IsTruncated", "true" if page.truncated else "false"))
    if page.truncated and page.next_key_marker is not None:
        body.append(el("NextKeyMarker", enc(page.next_key_marker)))
        if page.next_version_marker is not None:
            body.append(el("NextVersionIdMarker", page.next_version_marker))
    owner = f"<Owner>{el('ID', bucket.owner)}{el('DisplayName', bucket.owner)}</Owner>"
    for record, latest in page.entries:
        head = (f"{el('Key', enc(record['key']))}{el('VersionId', version_id(record))}"
                f"{el('IsLatest', 'true' if latest else 'false')}{el('LastModified', iso8601(record['mtime']))}")
        if is_marker(record):
            body.append(f"<DeleteMarker>{head}{owner}</DeleteMarker>")
        else:
            body.append(f"<Version>{head}{el('ETag', chr(34) + record['etag'] + chr(34))}"
                        f"{el('Size', record['size'])}{el('StorageClass', 'STANDARD')}{owner}</Version>")
    for common in page.common_prefixes:
        body.append(f"<CommonPrefixes>{el('Prefix', enc(common))}</CommonPrefixes>")
    return xml_response(document("ListVersionsResult", body))


async def delete_objects(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    root = parse(await read_small(req, 2 * 1024 * 1024), "Delete")
    quiet = (child_text(root, "Quiet") or "").strip().lower() == "true"
    objects = children(root, "Object")
    if not objects or len(objects) > 1000:
        raise s3e.MalformedXML()
    failed: list[tuple[str, str, str]] = []
    valid: list[tuple[str, str | None]] = []
    for node in objects:
        key = child_text(node, "Key")
        if key is None:
            raise s3e.MalformedXML()
        version = child_text(node, "VersionId")
        try:
            if not key:
                raise s3e.UserKeyMustBeSpecified()
            validate_key(key)
            if version is not None:
                parse_version_id(version)
        except s3e.S3Error as err:
            failed.append((key, err.code, err.text))
            continue
        except se.InvalidVersionId:
            failed.append((key, "NoSuchVersion", "The specified version does not exist."))
            continue
        if not access.may(req, "s3:DeleteObjectVersion" if version is not None else "s3:DeleteObject", key):
            failed.append((key, "AccessDenied", "Access Denied"))
            continue
        valid.append((key, version))
    bypass = objectlock.bypass_keys(req, [key for key, _ in valid])
    freed, results = (await in_thread(req.store.objects.delete_each, bucket, valid, bypass)
                      if valid else ([], []))
    await free_blobs(req, freed)
    body: list[str] = []
    for (key, version), done in zip(valid, results, strict=True):
        if isinstance(done, se.ObjectLocked):
            body.append(f"<Error>{el('Key', key)}{el('VersionId', version)}{el('Code', 'AccessDenied')}"
                        f"{el('Message', 'Access Denied because object protected by object lock.')}</Error>")
        elif not quiet:
            parts = [el("Key", key)]
            if version is not None:
                parts.append(el("VersionId", version))
            if done is not None and is_marker(done):
                parts.append(el("DeleteMarker", "true"))
                parts.append(el("DeleteMarkerVersionId", version_id(done)))
            body.append(f"<Deleted>{''.join(parts)}</Deleted>")
    body.extend(f"<Error>{el('Key', k)}{el('Code', c)}{el('Message', m)}</Error>" for k, c, m in failed)
    return xml_response(document("DeleteResult", body))
