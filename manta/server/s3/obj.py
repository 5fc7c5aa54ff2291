"""Object operations: PutObject, GetObject, HeadObject, DeleteObject, CopyObject.

PUT streams the body once into a new blob (hashing as it goes), makes the blob durable,
then commits the object record; only then is the object visible. Any failure before
the commit deletes the blob, so a partial object never exists. A small body (up to
SMALL_OBJECT_BYTES) is gathered in memory, its blob placed on the loop without fsync (a
worker thread for remote nodes) and its record queued with the bytes for the catalog
journal; the PUT returns when that group commit is durable. A big one is hashed and written on worker threads
(body.receive_into) and fsync'd before its record is queued.

GET of a small object (one segment, up to INLINE_READ_BYTES) reads record and bytes on
the event loop (page-cache hits cost less than a thread hop) and answers with a plain
response; bigger ones stream, read a few blocks per worker-thread hop. With a remote
catalog (common.read_catalog) every catalog read leaves the loop: a GET reads the record
and opens its blobs in one worker-thread hop, a PUT makes its checks before the body in
one, and DELETE and COPY read inside the hop that makes their write.

Versioning (storage.versions): a write to a versioned bucket answers its `x-amz-version-id`;
GET, HEAD, DELETE and a copy source take `versionId`; a plain DELETE there adds a delete
marker; a GET whose key's latest version is a marker is 404 with `x-amz-delete-marker`.

Object Lock (s3/objectlock.py): PUT and COPY take its headers, GET and HEAD answer them,
and a DELETE of a version it keeps is AccessDenied (storage refuses it).
"""

from __future__ import annotations

import email.utils
import re
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from manta.server.s3 import access, acl, objectlock, tagging
from manta.server.s3 import errors as s3e
from manta.server.s3.body import BodyResult, expected_size, receive_into
from manta.server.s3.common import (
    Opened,
    abandon_blobs,
    catalog_write,
    check_storage_class,
    checksum_headers,
    commit_blob,
    free_blobs,
    in_thread,
    new_writer,
    object_headers,
    object_record,
    on_current_record,
    open_segments,
    owned_ref,
    part_number,
    prefetched,
    read_catalog,
    read_small,
    request_headers,
    requested_version,
    source_ref,
    stream_opened,
    version_header,
    xml_response,
)
from manta.server.s3.context import S3Request, copy_source_path, copy_source_version, validate_key
from manta.server.s3.readcache import CACHED_BLOB_BYTES
from manta.server.s3.xmlio import document, el, iso8601
from storage import BlobMeta, BucketRef, MemoryBlobWriter, WriteCondition
from storage import errors as se
from storage.versions import NULL, is_marker, version_id

# bodies up to this size are gathered in memory and made durable through the catalog
# journal (one group-committed fsync) instead of fsyncing the blob file on the request path
SMALL_OBJECT_BYTES = 64 * 1024

# reads up to this size are opened and read on the event loop (a page-cache hit costs
# less than the hand-off to a worker thread); larger ones go through threads
INLINE_READ_BYTES = 64 * 1024


RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


def write_condition(req: S3Request) -> WriteCondition | None:
    """A conditional write's If-None-Match (only "*") / If-Match (ETags) headers."""
    if_none = req.header("if-none-match")
    if_match = req.header("if-match")
    if if_none is None and if_match is None:
        return None
    if if_none is not None and if_none.strip() != "*":
        raise s3e.NotImplemented_("A header you provided implies functionality that is not implemented",
                                  Header="If-None-Match")
    etags = () if if_match is None else tuple(
        t.strip().removeprefix("W/").strip('"') for t in if_match.split(","))
    return WriteCondition(absent=if_none is not None, etags=etags)


async def put_object(req: S3Request) -> Response:
    if "x-amz-copy-source" in req.headers:
        return await copy_object(req)
    checks = _cached_put_checks(req)
    if checks is None:
        checks = await read_catalog(req.store, _put_checks, req)
    bucket, headers, meta, canned, condition, size, extra = checks
    small = MemoryBlobWriter() if size is not None and size <= SMALL_OBJECT_BYTES else None
    if small is not None:
        body = await receive_into(req, small)
        # placed (one small file write, no fsync) and submitted to the catalog's group commit
        # right here: a worker-thread hop for it cost more (thread switches) than the write;
        # placing on remote nodes talks to them, in a worker thread
        if req.store.remote:
            record, committed = await in_thread(_place_and_submit, req, bucket, small, body, headers, meta,
                                                canned, condition, extra)
        else:
            record, committed = _place_and_submit(req, bucket, small, body, headers, meta, canned, condition, extra)
        try:
            freed = await catalog_write(committed)
        except BaseException as exc:
            await abandon_blobs(req, [record["segments"][0][0]], exc)
            raise
    else:
        writer = await new_writer(req)
        try:
            body = await receive_into(req, writer)
            blob = await commit_blob(writer)
        except BaseException:
            writer.abort()
            raise
        record = new_record(blob, body, headers, meta, canned, extra)
        try:
            freed = await catalog_write(req.store.objects.put_async(
                bucket, req.key, record, None, {blob.blob_id: blob.record()}, condition))
        except BaseException as exc:
            await abandon_blobs(req, [blob.blob_id], exc)
            raise
    await free_blobs(req, freed)
    out = {"etag": f'"{record["etag"]}"', **checksum_headers(record), **version_header(record)}
    return Response(b"", headers=out)


def _version_record(req: S3Request, vid: str, txn: Any) -> dict[str, Any]:
    """The version `vid` of the request's object in the caller's bucket (as
    common.object_record reads the current one)."""
    return req.store.objects.get_version(owned_ref(req, txn=txn), req.key, vid, txn)


def _current_record(req: S3Request, txn: Any) -> dict[str, Any]:
    """The current record; a key whose latest version is a delete marker is NoSuchKey
    carrying the marker's headers."""
    try:
        return object_record(req, txn)
    except se.NoSuchKey:
        marker = req.store.objects.latest_marker(req.bucket, req.key, txn)
        if marker is None:
            if not access.may(req, "s3:ListBucket", None):
                # as S3: a caller who may not list the bucket is not told a key is absent
                raise s3e.AccessDenied() from None
            raise
        raise se.DeleteMarker(req.bucket, req.key, version_id(marker), marker["mtime"], latest=True) from None


PutChecks = tuple[BucketRef, dict[str, str], dict[str, str], str, WriteCondition | None, int | None,
                  dict[str, Any]]


def _put_checks(req: S3Request) -> PutChecks:
    """What a PUT checks before it reads the body, in order: the bucket, the stored headers,
    the ACL, the tags, the Object Lock headers, the write condition against the key's
    object, the owner's room for the announced size. Returns (bucket, headers, metadata,
    ACL, condition, size, the fields the record gets beside the body's: tags, Object Lock's)."""
    with req.store.catalog.read() as txn:  # one snapshot: with PostgreSQL, round trips count
        bucket = owned_ref(req, txn=txn)
        if req.buckets is not None and access.plain(req):  # no settings a cached PUT would skip
            req.buckets.put(req.bucket, BucketRef(bucket.name, bucket.owner))
        headers, meta = request_headers(req)
        canned = acl.from_request(req, on_object=True)
        extra = _tags_field(req)
        extra.update(objectlock.from_headers(req))
        condition = write_condition(req)
        if condition is not None:
            req.store.objects.check_condition(bucket, req.key, condition, txn)
        size = expected_size(req)
        if size is not None and not _unlimited(req, bucket):
            req.store.objects.check_room(bucket, req.key, size, txn)
    return bucket, headers, meta, canned, condition, size, extra


def _tags_field(req: S3Request) -> dict[str, Any]:
    tags = tagging.from_header(req)
    return {"tags": tags} if tags else {}


def _cached_put_checks(req: S3Request) -> PutChecks | None:
    """`_put_checks` without a catalog read, when this door (over a remote catalog) checked
    the bucket within the last second (s3/doorcache.py) and there is nothing else to read:
    no ACL header (a public access block or BucketOwnerEnforced set since, on any door,
    would refuse it), no write condition, no Object Lock header, and no room to check (no
    announced size, or an owner without limits). None: read them."""
    bucket = req.buckets.get(req.bucket) if req.buckets is not None else None
    if bucket is None or bucket.owner != req.owner or write_condition(req) is not None \
            or access.EXPECTED_OWNER in req.headers:
        return None
    if acl.names_acl(req):
        return None  # the bucket's settings may refuse any ACL header (and a grant reads its account)
    if not objectlock.HEADERS.isdisjoint(req.headers):
        return None  # the bucket's record says whether it has Object Lock
    size = expected_size(req)
    if size is not None and not _unlimited(req, bucket):
        return None
    headers, meta = request_headers(req)
    return bucket, headers, meta, acl.from_request(req, on_object=True), None, size, _tags_field(req)


def _unlimited(req: S3Request, bucket: BucketRef) -> bool:
    """Whether the bucket's owner is the signer and has no limits (nothing to read to know
    the PUT has room; the commit checks again in any case)."""
    limits = req.account.limits if req.account is not None and req.account.name == bucket.owner else None
    return limits is not None and limits.objects is None and limits.bytes is None


def new_record(blob: BlobMeta, body: BodyResult, headers: dict[str, str], meta: dict[str, str],
               canned: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A PUT's object record; `extra`: fields beside the body's (tags, Object Lock's)."""
    record = {
        "size": blob.size, "etag": blob.md5.hex(), "sha256": blob.sha256, "mtime": time.time(),
        "segments": [[blob.blob_id, blob.size]], "headers": headers, "meta": meta,
        "checksums": body.checksums, "checksum_type": "FULL_OBJECT" if body.checksums else None,
        "parts": None, "acl": canned,
    }
    if extra:
        record.update(extra)
    return record


def _place_and_submit(req: S3Request, bucket: BucketRef, small: MemoryBlobWriter, body: BodyResult,
                      headers: dict[str, str], meta: dict[str, str], canned: str | None,
                      condition: WriteCondition | None,
                      extra: dict[str, Any]) -> tuple[dict[str, Any], Future[list[str]]]:
    """Place a small blob (no fsync) and submit its record with the blob's bytes for the
    journal; returns the record and the commit's future (the blob is freed on failure)."""
    blob = req.store.place_small(small)
    record = new_record(blob, body, headers, meta, canned, extra)
    try:
        return record, req.store.objects.put_async(bucket, req.key, record, {blob.blob_id: bytes(small.buffer)},
                                                   {blob.blob_id: blob.record()}, condition)
    except BaseException:
        req.store.free([blob.blob_id])
        raise


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or etag in tags


def check_conditions(req: S3Request, record: dict[str, Any], prefix: str = "if-") -> int | None:
    """Evaluate conditional headers; returns 304 or 412 when the request must stop."""
    etag = record["etag"]
    mtime = int(record["mtime"])
    if_match = req.header(prefix + "match")
    if_none = req.header(prefix + "none-match")
    if_unmod = _parse_http_date(req.header(prefix + "unmodified-since"))
    if_mod = _parse_http_date(req.header(prefix + "modified-since"))
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            return 412
    elif if_unmod is not None and mtime > if_unmod:
        return 412
    if if_none is not None:
        if _etag_matches(if_none, etag):
            return 304
    elif if_mod is not None and mtime <= if_mod:
        return 304
    return None


def byte_pos(text: str) -> int:
    """A range's byte position: ASCII digits only, as RFC 9110 has it (int() would also
    take "+1", " 1", "1_0" and other scripts' digits); ValueError otherwise."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"not a byte position: {text!r}")
    return int(text)


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, length) for a satisfiable single range; None to ignore (a malformed or
    multi-range header, or a suffix range of an empty object: the whole empty body, as
    RFC 9110 makes a suffix range the one form an empty representation satisfies);
    raises InvalidRange when the first byte is at or past the end."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = byte_pos(last)
            if n <= 0:
                raise s3e.InvalidRange(RangeRequested=value, ActualObjectSize=str(size))
            return (max(0, size - n), min(n, size)) if size else None
        start = byte_pos(first)
        end = byte_pos(last) if last else None
    except ValueError:
        return None
    if end is not None and end < start:
        return None
    if start >= size:
        raise s3e.InvalidRange(RangeRequested=value, ActualObjectSize=str(size))
    end = size - 1 if end is None else min(end, size - 1)
    return start, end - start + 1


def _part_range(req: S3Request, record: dict[str, Any]) -> tuple[int, int] | None:
    """(start, length) of the part `partNumber` names; a simple object is its one part."""
    if "partNumber" not in req.query:
        return None
    number = part_number(req)
    sizes = record.get("parts") or [record["size"]]
    if number > len(sizes):
        raise s3e.InvalidPart("The requested partnumber is not satisfiable", PartNumber=str(number))
    return sum(sizes[: number - 1]), sizes[number - 1]


async def get_object(req: S3Request, head: bool = False) -> Response:
    return await on_current_record(lambda: _get_object(req, head))


@dataclass
class _Found:
    """A GET's answer before its body: status, headers, the bytes to send, and with a
    remote catalog their blobs, opened in the thread that read the record."""

    code: int
    headers: dict[str, str]
    segments: list[list[Any]]
    start: int
    length: int
    opened: Opened | None = None


async def _get_object(req: S3Request, head: bool) -> Response:
    if req.store.catalog.engine.remote:  # one worker-thread hop reads the record and opens its blobs
        found = await in_thread(_find, req, head, True)
    else:
        found = _find(req, head, False)
    if isinstance(found, Response):
        return found
    opened = found.opened  # (a remote catalog's doors open blobs with the record: no cache)
    cache = req.blob_cache if opened is None and len(found.segments) == 1 \
        and found.segments[0][1] <= CACHED_BLOB_BYTES else None
    if cache is not None and (data := cache.get(found.segments[0][0])) is not None:
        return Response(data[found.start:found.start + found.length], status_code=found.code, headers=found.headers)
    if opened is None:
        if len(found.segments) == 1 and found.length <= INLINE_READ_BYTES:
            opened = open_segments(req, found.segments, found.start, found.length)  # one open: no thread hop
        else:
            opened = await in_thread(open_segments, req, found.segments, found.start, found.length)
    whole = read_small(opened)
    if whole is not None:
        if cache is not None and found.length == found.segments[0][1]:  # the whole blob, checked
            cache.put(found.segments[0][0], whole)
        return Response(whole, status_code=found.code, headers=found.headers)
    stream = await prefetched(stream_opened(opened))
    return StreamingResponse(stream, status_code=found.code, headers=found.headers)


def _find(req: S3Request, head: bool, open_blobs: bool) -> Response | _Found:
    """The key's record checked against the request's conditions and range: the whole
    answer for a HEAD, a 304 or an empty range, else what to send (opened if `open_blobs`,
    with the record's blobs read in the record's snapshot)."""
    with req.store.catalog.read() as txn:
        return _find_in(req, head, open_blobs, txn)


def _overrides(req: S3Request) -> dict[str, str]:
    """The response headers a signed GET or HEAD asks for (`response-content-type` ...).
    S3 refuses them on anonymous requests; a value no header may hold is refused here,
    before uvicorn would refuse to send it and drop the connection."""
    if req.query.keys().isdisjoint(RESPONSE_OVERRIDES):
        return {}  # the usual case
    if req.auth is None:
        raise s3e.InvalidRequest("Request specific response headers cannot be used for anonymous GET requests.")
    asked = {}
    for param, name in RESPONSE_OVERRIDES.items():
        if (value := req.query.get(param)) is not None:
            if not _HEADER_VALUE.fullmatch(value):
                raise s3e.InvalidArgument(f"{param} must be a valid HTTP header value.", ArgumentName=param)
            asked[name] = value
    return asked


# what a header value may hold and still go out as latin-1: no control characters but tab
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _find_in(req: S3Request, head: bool, open_blobs: bool, txn: Any) -> Response | _Found:
    overrides = _overrides(req)
    vid = requested_version(req)
    record = _current_record(req, txn) if vid is None else _version_record(req, vid, txn)
    headers = object_headers(record)
    if vid is None:
        headers.update(version_header(record))
    elif vid != NULL or req.store.catalog.buckets.get(req.bucket, txn).versioning is not None:
        headers["x-amz-version-id"] = vid  # the null version names itself where versioning ever was
    headers.update(tagging.count_header(req, record))
    if "lock_mode" in record or "legal_hold" in record:
        headers.update(objectlock.response_headers(req, record))
    status = check_conditions(req, record)
    if status == 412:
        raise s3e.PreconditionFailed(Condition="If-Match")
    if status == 304:
        keep = ("etag", "last-modified", "cache-control", "expires")
        return Response(b"", status_code=304, headers={k: headers[k] for k in keep if k in headers})
    size = record["size"]
    start, length, code = 0, size, 200
    part = _part_range(req, record)
    range_header = req.header("range")
    if part is not None:
        start, length = part
        code = 206 if record.get("parts") else 200
        if record.get("parts"):
            headers["x-amz-mp-parts-count"] = str(len(record["parts"]))
    elif range_header:
        parsed = _parse_range(range_header, size)
        if parsed is not None:
            start, length = parsed
            code = 206
    if code == 206:
        headers["content-range"] = f"bytes {start}-{start + length - 1}/{size}"
    elif req.header("x-amz-checksum-mode", "").upper() == "ENABLED":
        headers.update(checksum_headers(record))
    headers.update(overrides)
    headers["content-length"] = str(length)
    if head:
        return Response(b"", status_code=code, headers=headers)
    found = _Found(code, headers, record["segments"], start, length)
    if open_blobs:
        found.opened = open_segments(req, found.segments, start, length, txn)
    return found


async def head_object(req: S3Request) -> Response:
    return await get_object(req, head=True)


async def delete_object(req: S3Request) -> Response:
    vid = requested_version(req)
    freed, done = await in_thread(_delete, req, vid)
    await free_blobs(req, freed)
    headers: dict[str, str] = {}
    if vid is not None:
        headers["x-amz-version-id"] = vid
    elif done is not None:  # the delete marker it added
        headers["x-amz-version-id"] = version_id(done)
    if done is not None and is_marker(done):
        headers["x-amz-delete-marker"] = "true"
    return Response(b"", status_code=204, headers=headers)


def _delete(req: S3Request, vid: str | None) -> tuple[list[str], dict[str, Any] | None]:
    bucket = owned_ref(req)
    bypass = vid is not None and objectlock.bypass_governance(req, [req.key])
    return req.store.objects.delete_version(bucket, req.key, vid, bypass)  # type: ignore[no-any-return]


def parse_copy_source(req: S3Request) -> tuple[str, str]:
    raw = req.headers["x-amz-copy-source"]
    source, _, query = raw.partition("?")
    source = copy_source_path(source).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise s3e.InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                                  ArgumentName="x-amz-copy-source")
    validate_key(key)
    return bucket, key


def read_copy_source(req: S3Request, bucket: BucketRef, key: str) -> dict[str, Any]:
    """The copy source's record: its current version, or the one `?versionId=` names (a
    delete marker cannot be copied: InvalidRequest, as S3 answers)."""
    vid = copy_source_version(req)
    if vid is None:
        return req.store.objects.get(bucket, key)
    try:
        return req.store.objects.get_version(bucket, key, vid)
    except se.DeleteMarker:
        raise s3e.InvalidRequest("The source of a copy request may not specifically refer to a delete marker "
                                 "by version id.") from None


async def copy_object(req: S3Request) -> Response:
    record, freed, source = await in_thread(_copy, req)  # its reads and its write: one hop
    await free_blobs(req, freed)
    headers = version_header(record)
    if "vid" in source or copy_source_version(req) is not None:
        headers["x-amz-copy-source-version-id"] = version_id(source)
    body = document("CopyObjectResult", [el("LastModified", iso8601(record["mtime"])),
                                         el("ETag", f'"{record["etag"]}"')]
                    + [el(f"Checksum{alg}", v) for alg, v in record.get("checksums", {}).items()])
    return xml_response(body, headers=headers)


def _copy(req: S3Request) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Check both buckets and the source, then link it under the new key; returns the new
    record, the blobs the overwrite freed and the source's record."""
    dst = owned_ref(req)
    src_bucket, src_key = parse_copy_source(req)
    src = source_ref(req, src_bucket, src_key)
    source = read_copy_source(req, src, src_key)
    if check_conditions(req, source, prefix="x-amz-copy-source-if-") is not None:
        raise s3e.PreconditionFailed(Condition="x-amz-copy-source-If-Match")
    directive = req.header("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise s3e.InvalidArgument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    check_storage_class(req)
    update: dict[str, Any] = {"mtime": time.time(), "acl": acl.from_request(req, on_object=True),
                              **objectlock.from_headers(req)}
    tags = tagging.replaced_tags(req)
    update["tags"] = tagging.copied_tags(req, src_bucket, src_key, source) if tags is None else tags
    if directive == "REPLACE":
        update["headers"], update["meta"] = request_headers(req)
    elif (src_bucket == req.bucket and src_key == req.key and copy_source_version(req) is None
          and req.header("x-amz-storage-class") is None):  # naming a storage class is a change to S3
        raise s3e.InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect location "
            "or encryption attributes.")
    record, freed = req.store.objects.copy(src, src_key, dst, req.key, update, source["etag"],
                                           copy_source_version(req))
    return record, freed, source
