"""Tags: object tags and bucket tags, with S3's limits.

Object tags are part of the object record (field ``tags``, {key: value}, absent when
none), so they come and go with the record: a PUT or CompleteMultipartUpload without
tags makes an object without any. They are set by

- PUT/GET/DELETE ``?tagging`` on the object (a Tagging document), of its current version
  or of the one ``versionId`` names;
- ``x-amz-tagging`` (URL query form, ``k=v&k2=v2``) on PutObject and
  CreateMultipartUpload (kept in the upload record, applied at completion);
- CopyObject: the source's tags (``x-amz-tagging-directive: COPY``, the default), which
  take s3:GetObjectTagging on the source and s3:PutObjectTagging on the copy
  (`copied_tags`), or the ones ``x-amz-tagging`` names (``REPLACE``).

Tags set by ``x-amz-tagging`` on a write take s3:PutObjectTagging besides s3:PutObject, as
in S3 (`from_header`: AccessDenied before anything is written).

GET and HEAD answer ``x-amz-tagging-count`` to a signed request when the object has tags.

Bucket tags (PUT/GET/DELETE ``?tagging`` on the bucket, its owner only) are kept as the
Tagging document GetBucketTagging answers, in the bucket's configurations
(storage.records.bucketconf, kind "tagging"); none is NoSuchTagSet.

Limits (AWS's): 10 tags on an object (BadRequest past them), 50 on a bucket; keys of 1 to
128 characters, unique, not starting with ``aws:``; values of 0 to 256 characters; both
made of letters, digits, spaces and ``+ - = . _ : / @`` (InvalidTag).
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from typing import Any

from starlette.responses import Response

from manta.server.s3 import access
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small
from manta.server.s3.common import (
    in_thread,
    meta_text,
    object_record,
    owned_bucket,
    owned_ref,
    read_catalog,
    requested_version,
    version_header,
    xml_response,
)
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import child_text, children, document, el, parse
from storage import BucketRef
from storage import errors as se
from storage.versions import version_id

__all__ = ["count_header", "delete_bucket_tagging", "delete_object_tagging", "from_header",
           "get_bucket_tagging", "get_object_tagging", "put_bucket_tagging", "put_object_tagging",
           "replaced_tags", "tagging_xml", "validate"]

MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256
MAX_BODY_BYTES = 64 * 1024
RESERVED_PREFIX = "aws:"
CONF_KIND = "tagging"
_SIGNS = frozenset("+-=._:/@")
DIRECTIVES = ("COPY", "REPLACE")

Tags = dict[str, str]


def _allowed(text: str) -> bool:
    """Letters, digits and spaces of any script (Unicode L, N, Z), and + - = . _ : / @."""
    return all(c in _SIGNS or unicodedata.category(c)[0] in "LNZ" for c in text)


def validate(pairs: list[tuple[str, str]], limit: int, what: str) -> Tags:
    """Check a tag set against S3's limits; returns it as {key: value}."""
    if len(pairs) > limit:
        raise s3e.BadRequest(f"{what} tags cannot be greater than {limit}" if what == "Object"
                             else f"{what} tag count cannot be greater than {limit}")
    tags: Tags = {}
    for key, value in pairs:
        if len(key) > MAX_KEY_CHARS:
            raise s3e.InvalidTag(f"The TagKey you have provided is too long, max {MAX_KEY_CHARS}", TagKey=key)
        if len(value) > MAX_VALUE_CHARS:
            raise s3e.InvalidTag(f"The TagValue you have provided is too long, max {MAX_VALUE_CHARS}",
                                 TagKey=key, TagValue=value)
        if not key or not _allowed(key):
            raise s3e.InvalidTag("The TagKey you have provided is invalid", TagKey=key)
        if not _allowed(value):
            raise s3e.InvalidTag("The TagValue you have provided is invalid", TagKey=key, TagValue=value)
        if key.lower().startswith(RESERVED_PREFIX):
            raise s3e.InvalidTag(f"Your TagKey cannot be prefixed with {RESERVED_PREFIX}", TagKey=key)
        if key in tags:
            raise s3e.InvalidTag("Cannot provide multiple Tags with the same key", TagKey=key)
        tags[key] = value
    return tags


def from_header(req: S3Request) -> Tags:
    """The tags `x-amz-tagging` names ({} without one): URL query form (percent escapes of
    UTF-8; raw UTF-8 is taken too, as metadata is), checked. Setting them takes
    s3:PutObjectTagging (AccessDenied); the caller read the bucket's record first
    (`owned_ref`), so this is decided before anything is written."""
    raw = req.header("x-amz-tagging")
    if not raw:
        return {}
    if not access.may(req, "s3:PutObjectTagging", req.key):
        raise s3e.AccessDenied()
    bad = s3e.InvalidArgument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
                              "parameters without tag name duplicates.", ArgumentName="x-amz-tagging",
                              ArgumentValue=raw)
    try:
        pairs = urllib.parse.parse_qsl(meta_text(raw), keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeError, ValueError):
        raise bad from None
    if len({k for k, _ in pairs}) != len(pairs):
        raise bad
    return validate(pairs, MAX_OBJECT_TAGS, "Object")


def replaced_tags(req: S3Request) -> Tags | None:
    """CopyObject's new tags: None to keep the source's (x-amz-tagging-directive COPY, the
    default: the copy reads them in its write), else those of x-amz-tagging (REPLACE)."""
    directive = req.header("x-amz-tagging-directive", "COPY").upper()
    if directive not in DIRECTIVES:
        raise s3e.InvalidArgument("Unknown tagging directive.", ArgumentName="x-amz-tagging-directive",
                                  ArgumentValue=directive)
    return from_header(req) if directive == "REPLACE" else None


def copied_tags(req: S3Request, bucket: str, key: str, source: dict[str, Any]) -> Tags | None:
    """The tags CopyObject copies from its source (x-amz-tagging-directive COPY): the
    source's, as read for the copy (None: none), which takes s3:GetObjectTagging on the
    source (s3:GetObjectVersionTagging for a version) and s3:PutObjectTagging on the
    copy, as in S3 (AccessDenied); a caller who may read the object but not its tags would
    otherwise read them from the copy. The caller read the destination bucket's record."""
    tags = source.get("tags")
    if not tags:
        return None
    if not access.may(req, "s3:PutObjectTagging", req.key):
        raise s3e.AccessDenied()
    record = req.store.catalog.buckets.get(bucket)
    access.authorize_source(req, record, key, "s3:GetObjectTagging")
    return dict(tags)


def count_header(req: S3Request, record: dict[str, Any]) -> dict[str, str]:
    """x-amz-tagging-count for a GET or HEAD: a signed request's, when there are tags (an
    unsigned public-read one may read the object, not its tags)."""
    tags = record.get("tags")
    return {"x-amz-tagging-count": str(len(tags))} if tags and req.account is not None else {}


def tagging_xml(tags: Tags) -> bytes:
    """The Tagging document, tags in key order."""
    body = "".join(f"<Tag>{el('Key', k)}{el('Value', v)}</Tag>" for k, v in sorted(tags.items()))
    return document("Tagging", [f"<TagSet>{body}</TagSet>"])


async def _body_tags(req: S3Request, limit: int, what: str) -> Tags:
    root = parse(await read_small(req, MAX_BODY_BYTES), "Tagging")
    sets = children(root, "TagSet")
    if len(sets) != 1:
        raise s3e.MalformedXML()
    pairs = []
    for tag in children(sets[0], "Tag"):
        key, value = child_text(tag, "Key"), child_text(tag, "Value")
        if key is None or value is None:
            raise s3e.MalformedXML()
        pairs.append((key, value))
    return validate(pairs, limit, what)


# -- objects ---------------------------------------------------------------------------

def _no_current(req: S3Request, txn: Any = None) -> se.StorageError:
    """What a tagging request on a key without a current object is: a key whose latest
    version is a delete marker answers 405 MethodNotAllowed with the marker's headers, as
    S3 does (tags belong to object versions, and a marker is none); else NoSuchKey."""
    marker = req.store.objects.latest_marker(req.bucket, req.key, txn)
    if marker is None:
        return se.NoSuchKey(req.bucket, req.key)
    return se.DeleteMarker(req.bucket, req.key, version_id(marker), marker["mtime"], latest=False)


def _tagged_record(req: S3Request) -> dict[str, Any]:
    vid = requested_version(req)
    with req.store.catalog.read() as txn:
        if vid is not None:
            return req.store.objects.get_version(owned_ref(req, txn=txn), req.key, vid, txn)
        try:
            return object_record(req, txn)
        except se.NoSuchKey:
            raise _no_current(req, txn) from None


async def _set_tags(req: S3Request, bucket: BucketRef, tags: Tags) -> dict[str, str]:
    """Replace the tags of the request's object (version) in `bucket` (the caller's, as
    `owned_bucket` checked it); the version header it names."""
    vid = requested_version(req)
    try:
        record = await in_thread(req.store.objects.set_tags, bucket, req.key, tags, vid)
    except se.NoSuchKey:
        if vid is not None:
            raise
        raise await in_thread(_no_current, req) from None
    return {"x-amz-version-id": vid} if vid is not None else version_header(record)


async def put_object_tagging(req: S3Request) -> Response:
    bucket = await owned_bucket(req)  # authorized before the body is read
    tags = await _body_tags(req, MAX_OBJECT_TAGS, "Object")
    return Response(b"", headers=await _set_tags(req, bucket, tags))


async def get_object_tagging(req: S3Request) -> Response:
    record = await read_catalog(req.store, _tagged_record, req)
    vid = requested_version(req)
    return xml_response(tagging_xml(record.get("tags") or {}),
                        headers={"x-amz-version-id": vid} if vid is not None else version_header(record))


async def delete_object_tagging(req: S3Request) -> Response:
    return Response(b"", status_code=204, headers=await _set_tags(req, await owned_bucket(req), {}))


# -- buckets ---------------------------------------------------------------------------

async def put_bucket_tagging(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    tags = await _body_tags(req, MAX_BUCKET_TAGS, "Bucket")
    await in_thread(req.store.catalog.bucketconf.set, bucket, CONF_KIND, tagging_xml(tags))
    return Response(b"", status_code=204)


def _bucket_tagging(req: S3Request) -> bytes | None:
    with req.store.catalog.read() as txn:
        return req.store.catalog.bucketconf.get(owned_ref(req, txn=txn), CONF_KIND, txn)


async def get_bucket_tagging(req: S3Request) -> Response:
    stored = await read_catalog(req.store, _bucket_tagging, req)
    if stored is None:
        raise s3e.NoSuchTagSet(BucketName=req.bucket)
    return xml_response(stored)


async def delete_bucket_tagging(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    await in_thread(req.store.catalog.bucketconf.set, bucket, CONF_KIND, None)
    return Response(b"", status_code=204)
