"""Multipart uploads: create, upload part (and part copy), complete, abort, list.

Each part is streamed into its own blob. Completion validates the chosen parts
(InvalidPart, InvalidPartOrder, EntityTooSmall) and writes one object record whose
segments are the part blobs: the bytes are never copied a second time. It honours
If-None-Match: * / If-Match like PutObject, and a repeat of a completion that succeeded
answers the same result (storage.uploads keeps completions for a day).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from starlette.responses import Response

from manta.server.s3 import acl, checksums, objectlock, tagging
from manta.server.s3 import errors as s3e
from manta.server.s3.body import expected_size, read_small, receive_into
from manta.server.s3.common import (
    MAX_PART_NUMBER,
    Opened,
    abandon_blobs,
    commit_blob,
    free_blobs,
    in_thread,
    new_writer,
    on_current_record,
    open_segments,
    owned_bucket,
    owned_ref,
    part_number,
    read_catalog,
    request_headers,
    source_ref,
    stream_opened,
    xml_response,
)
from manta.server.s3.context import S3Request
from manta.server.s3.obj import (
    byte_pos,
    check_conditions,
    parse_copy_source,
    read_copy_source,
    version_header,
    write_condition,
)
from manta.server.s3.xmlio import child_text, children, document, el, iso8601, parse
from storage import BlobMeta, BucketRef
from storage.objectlock import LOCK_FIELDS

MAX_PART_SIZE = 5 * 1024**3


def _upload(req: S3Request) -> tuple[BucketRef, dict[str, Any]]:
    """The caller's bucket and the request's upload in it (catalog reads)."""
    bucket = owned_ref(req)
    return bucket, req.store.uploads.get(bucket, req.key, req.query["uploadId"])


def _owner_xml(tag: str, owner: str) -> str:
    return f"<{tag}>{el('ID', owner)}{el('DisplayName', owner)}</{tag}>"


async def create_upload(req: S3Request) -> Response:
    return await in_thread(_create_upload, req)  # its checks and its write: one hop


def _create_upload(req: S3Request) -> Response:
    bucket = owned_ref(req)
    headers, meta = request_headers(req)
    tags = tagging.from_header(req)
    algorithm = req.header("x-amz-checksum-algorithm")
    ctype = req.header("x-amz-checksum-type")
    if algorithm is not None:
        algorithm = algorithm.upper()
        if algorithm not in checksums.ALGORITHMS:
            raise s3e.InvalidRequest("Checksum algorithm provided is unsupported.")
        if ctype is None:
            ctype = "FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE"
    if ctype is not None:
        ctype = ctype.upper()
        if algorithm is None or ctype not in ("COMPOSITE", "FULL_OBJECT"):
            raise s3e.InvalidRequest("The x-amz-checksum-type header needs a valid x-amz-checksum-algorithm.")
        if ctype == "FULL_OBJECT" and not algorithm.startswith("CRC"):
            raise s3e.InvalidRequest(f"The FULL_OBJECT checksum type cannot be used with {algorithm}.")
        if ctype == "COMPOSITE" and algorithm == "CRC64NVME":
            raise s3e.InvalidRequest("The COMPOSITE checksum type cannot be used with CRC64NVME.")
    fields = {"headers": headers, "meta": meta, "algorithm": algorithm, "checksum_type": ctype,
              "acl": acl.from_request(req, on_object=True)}
    if tags:
        fields["tags"] = tags
    fields.update(objectlock.from_headers(req))  # the completed object's
    upload = req.store.uploads.create(bucket, req.key, req.owner, fields)
    out = {}
    if algorithm:
        out = {"x-amz-checksum-algorithm": algorithm, "x-amz-checksum-type": ctype or ""}
    return xml_response(document("InitiateMultipartUploadResult", [
        el("Bucket", req.bucket), el("Key", req.key), el("UploadId", upload["upload_id"])]), headers=out)


async def upload_part(req: S3Request) -> Response:
    bucket, upload, number = await read_catalog(req.store, _part_target, req)
    if "x-amz-copy-source" in req.headers:
        return await on_current_record(lambda: _upload_part_copy(req, bucket, upload, number))
    writer = await new_writer(req)
    try:
        body = await receive_into(req, writer, MAX_PART_SIZE, default_algorithm=upload.get("algorithm"))
        blob = await commit_blob(writer)
    except BaseException:
        writer.abort()
        raise
    if upload.get("algorithm") and upload["algorithm"] not in body.checksums:
        await free_blobs(req, [blob.blob_id])
        raise s3e.InvalidRequest(f"The upload was created using the {upload['algorithm']} checksum algorithm.")
    part = {"number": number, "blob": blob.blob_id, "size": blob.size, "etag": blob.md5.hex(),
            "checksums": body.checksums}
    await _record_part(req, bucket, part, blob)
    headers = {"etag": f'"{part["etag"]}"'}
    headers.update({f"x-amz-checksum-{a.lower()}": v for a, v in body.checksums.items()})
    return Response(b"", headers=headers)


def _part_target(req: S3Request) -> tuple[BucketRef, dict[str, Any], int]:
    """The bucket, upload and part number a part goes to; for a part sent in the body,
    checked against the owner's room for its announced size."""
    bucket, upload = _upload(req)
    number = part_number(req)
    if "x-amz-copy-source" not in req.headers:
        size = expected_size(req)
        if size is not None:
            req.store.uploads.check_room(bucket, req.key, upload["upload_id"], number, size)
    return bucket, upload, number


async def _record_part(req: S3Request, bucket: BucketRef, part: dict[str, Any], blob: BlobMeta) -> None:
    try:
        freed = await in_thread(req.store.uploads.put_part, bucket, req.key,
                                req.query["uploadId"], part, {blob.blob_id: blob.record()})
    except BaseException as exc:
        await abandon_blobs(req, [blob.blob_id], exc)
        raise
    await free_blobs(req, freed)


def _copy_range(value: str | None, size: int) -> tuple[int, int]:
    if value is None:
        return 0, size
    unit, _, spec = value.partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit != "bytes":
            raise ValueError(unit)
        start, end = byte_pos(first), byte_pos(last)
    except ValueError:
        raise s3e.InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last.",
                                  ArgumentName="x-amz-copy-source-range") from None
    if end < start or end >= size:
        raise s3e.InvalidRange(RangeRequested=value, ActualObjectSize=str(size))
    return start, end - start + 1


async def _upload_part_copy(req: S3Request, bucket: BucketRef, upload: dict[str, Any], number: int) -> Response:
    source, opened = await in_thread(_open_source, req, bucket, upload, number)
    algorithm = upload.get("algorithm")
    summer = checksums.new(algorithm) if algorithm else None
    writer = await new_writer(req)
    try:
        async for chunk in stream_opened(opened):
            if writer.blocking:
                await in_thread(writer.write, chunk)
            else:
                writer.write(chunk)
            if summer is not None:
                summer.update(chunk)
        blob = await commit_blob(writer)
    except BaseException:
        writer.abort()
        raise
    sums = {algorithm: summer.b64()} if summer is not None and algorithm else {}
    part = {"number": number, "blob": blob.blob_id, "size": blob.size, "etag": blob.md5.hex(),
            "checksums": sums}
    await _record_part(req, bucket, part, blob)
    body = [el("LastModified", iso8601(source["mtime"])), el("ETag", f'"{part["etag"]}"')]
    body += [el(f"Checksum{a}", v) for a, v in sums.items()]
    return xml_response(document("CopyPartResult", body))


def _open_source(req: S3Request, bucket: BucketRef, upload: dict[str, Any],
                 number: int) -> tuple[dict[str, Any], Opened]:
    """UploadPartCopy's source record, checked (conditions, range, the owner's room for
    the part), and its range's blobs opened."""
    src_bucket, src_key = parse_copy_source(req)
    source = read_copy_source(req, source_ref(req, src_bucket, src_key), src_key)
    if check_conditions(req, source, prefix="x-amz-copy-source-if-") is not None:
        raise s3e.PreconditionFailed(Condition="x-amz-copy-source-If-Match")
    start, length = _copy_range(req.header("x-amz-copy-source-range"), source["size"])
    req.store.uploads.check_room(bucket, req.key, upload["upload_id"], number, length)
    return source, open_segments(req, source["segments"], start, length)


def _build(upload: dict[str, Any], parts: list[dict[str, Any]],
           claimed: dict[tuple[int, str], dict[str, str]]) -> dict[str, Any]:
    digest = hashlib.md5(b"".join(bytes.fromhex(p["etag"]) for p in parts)).hexdigest()
    record: dict[str, Any] = {
        "size": sum(p["size"] for p in parts), "etag": f"{digest}-{len(parts)}", "sha256": None,
        "headers": upload["headers"], "meta": upload["meta"], "checksums": {}, "checksum_type": None,
        "parts": [p["size"] for p in parts], "acl": upload.get("acl", acl.PRIVATE),
    }
    if upload.get("tags"):
        record["tags"] = upload["tags"]
    record.update({name: upload[name] for name in LOCK_FIELDS if name in upload})
    algorithm = upload.get("algorithm")
    for p in parts:
        for alg, value in claimed.get((p["number"], p["etag"]), {}).items():
            if p["checksums"].get(alg) != value:
                raise s3e.InvalidPart(f"The {alg} checksum of part {p['number']} does not match.",
                                      PartNumber=str(p["number"]))
    if algorithm:
        raw = [base64.b64decode(p["checksums"][algorithm]) for p in parts]
        if upload.get("checksum_type") == "FULL_OBJECT":
            value = checksums.full_object_crc(algorithm, [(r, p["size"]) for r, p in zip(raw, parts, strict=True)])
        else:
            value = checksums.composite(algorithm, raw)
        record["checksums"] = {algorithm: value}
        record["checksum_type"] = upload.get("checksum_type") or "COMPOSITE"
    return record


def _listed_part_number(text: str) -> int:
    """A CompleteMultipartUpload <PartNumber>: a decimal integer (else MalformedXML) in
    1..MAX_PART_NUMBER (else InvalidArgument, AWS's answer for one below 1)."""
    written = text.strip()
    digits = written[1:] if written[:1] in ("+", "-") else written
    if not (digits.isascii() and digits.isdigit()):
        raise s3e.MalformedXML()
    magnitude = digits.lstrip("0")
    if not magnitude or written.startswith("-"):
        raise s3e.InvalidArgument("PartNumber must be >= 1", ArgumentName="PartNumber",
                                  ArgumentValue=written)
    if len(magnitude) > len(str(MAX_PART_NUMBER)) or int(magnitude) > MAX_PART_NUMBER:
        raise s3e.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive",
                                  ArgumentName="PartNumber", ArgumentValue=written)
    return int(magnitude)


async def complete_upload(req: S3Request) -> Response:
    bucket = await owned_bucket(req)  # the upload is checked in the completion (it may be done already)
    root = parse(await read_small(req, 4 * 1024 * 1024), "CompleteMultipartUpload")
    chosen: list[tuple[int, str]] = []
    claimed: dict[tuple[int, str], dict[str, str]] = {}
    for node in children(root, "Part"):
        number_text = child_text(node, "PartNumber")
        etag = child_text(node, "ETag")
        if number_text is None or etag is None:
            raise s3e.MalformedXML()
        number = _listed_part_number(number_text)
        chosen.append((number, etag.strip().strip('"')))
        claimed[chosen[-1]] = {alg: text for alg in checksums.ALGORITHMS
                               if (text := child_text(node, f"Checksum{alg}")) is not None}
    if not chosen:
        raise s3e.MalformedXML("You must specify at least one part.")
    condition = write_condition(req)
    completed_at = time.time()

    def build(up: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
        record = _build(up, parts, claimed)
        record["mtime"] = completed_at
        expected = _whole_checksum(req, up)
        if expected is not None and record["checksums"].get(up["algorithm"], "").split("-")[0] != expected:
            raise s3e.BadDigest(f"The {up['algorithm']} you specified for the whole object did not match.")
        return record

    record, freed = await in_thread(req.store.uploads.complete, bucket, req.key,
                                    req.query["uploadId"], chosen, build, condition)
    await free_blobs(req, freed)
    body = [el("Location", f"/{req.bucket}/{req.key}"), el("Bucket", req.bucket), el("Key", req.key),
            el("ETag", f'"{record["etag"]}"')]
    body += [el(f"Checksum{a}", v) for a, v in record["checksums"].items()]
    if record.get("checksum_type"):
        body.append(el("ChecksumType", record["checksum_type"]))
    return xml_response(document("CompleteMultipartUploadResult", body), headers=version_header(record))


def _whole_checksum(req: S3Request, upload: dict[str, Any]) -> str | None:
    algorithm = upload.get("algorithm")
    if not algorithm:
        return None
    value = req.header(checksums.header_name(algorithm))
    return value.split("-")[0] if value else None


async def abort_upload(req: S3Request) -> Response:
    freed = await in_thread(lambda: req.store.uploads.abort(owned_ref(req), req.key, req.query["uploadId"]))
    await free_blobs(req, freed)
    return Response(b"", status_code=204)


def _int_param(req: S3Request, name: str, default: int) -> int:
    """A count or marker parameter: an integer >= 0 (else InvalidArgument, as for max-keys)."""
    try:
        value = int(req.query.get(name, default))
    except ValueError:
        raise s3e.InvalidArgument(f"{name} must be an integer.", ArgumentName=name) from None
    if value < 0:
        raise s3e.InvalidArgument(f"{name} must be >= 0.", ArgumentName=name)
    return value


async def list_parts(req: S3Request) -> Response:
    return await read_catalog(req.store, _list_parts, req)


def _list_parts(req: S3Request) -> Response:
    _, upload = _upload(req)
    marker = _int_param(req, "part-number-marker", 0)
    max_parts = max(0, min(_int_param(req, "max-parts", 1000), 1000))
    parts = req.store.uploads.parts(upload["upload_id"], after=marker)
    # max-parts 0 is an empty page that is not truncated (as max-keys 0): a truncated one
    # would send a client after its next page for ever, from the same marker
    page, truncated = parts[:max_parts], len(parts) > max_parts > 0
    body = [el("Bucket", req.bucket), el("Key", req.key), el("UploadId", upload["upload_id"]),
            _owner_xml("Initiator", upload["owner"]), _owner_xml("Owner", upload["owner"]),
            el("StorageClass", "STANDARD"), el("PartNumberMarker", marker),
            el("NextPartNumberMarker", page[-1]["number"] if page else 0),
            el("MaxParts", max_parts), el("IsTruncated", "true" if truncated else "false")]
    if upload.get("algorithm"):
        body += [el("ChecksumAlgorithm", upload["algorithm"]), el("ChecksumType", upload["checksum_type"])]
    for p in page:
        body.append("<Part>" + el("PartNumber", p["number"]) + el("LastModified", iso8601(p["mtime"]))
                    + el("ETag", f'"{p["etag"]}"') + el("Size", p["size"])
                    + "".join(el(f"Checksum{a}", v) for a, v in p["checksums"].items()) + "</Part>")
    return xml_response(document("ListPartsResult", body))


async def list_uploads(req: S3Request) -> Response:
    return await read_catalog(req.store, _list_uploads, req)


def _list_uploads(req: S3Request) -> Response:
    owned_ref(req)
    prefix = req.query.get("prefix", "")
    delimiter = req.query.get("delimiter", "")
    key_marker = req.query.get("key-marker", "")
    id_marker = req.query.get("upload-id-marker", "")
    max_uploads = max(0, min(_int_param(req, "max-uploads", 1000), 1000))
    uploads = req.store.uploads.iter_uploads(req.bucket, prefix, key_marker, id_marker, page=max_uploads + 1)
    items: list[str] = []
    commons: list[str] = []
    truncated = False
    last_key, last_id = "", ""  # the page's last upload or common prefix: the next page's markers
    for up in uploads:
        cut = up["key"].find(delimiter, len(prefix)) if delimiter else -1
        common = up["key"][: cut + len(delimiter)] if cut >= 0 else None
        if common is not None and (common in commons or common <= key_marker):
            continue  # rolled up into a prefix listed on this page or an earlier one
        if len(items) + len(commons) >= max_uploads:
            truncated = max_uploads > 0  # max-uploads 0: an empty page, not truncated (as max-keys 0)
            break
        if common is not None:
            commons.append(common)
            last_key, last_id = common, ""
            continue
        last_key, last_id = up["key"], up["upload_id"]
        items.append("<Upload>" + el("Key", up["key"]) + el("UploadId", up["upload_id"])
                     + _owner_xml("Initiator", up["owner"]) + _owner_xml("Owner", up["owner"])
                     + el("StorageClass", "STANDARD") + el("Initiated", iso8601(up["initiated"]))
                     + (el("ChecksumAlgorithm", up["algorithm"]) if up.get("algorithm") else "")
                     + "</Upload>")
    body = [el("Bucket", req.bucket), el("KeyMarker", key_marker), el("UploadIdMarker", id_marker),
            el("NextKeyMarker", last_key), el("NextUploadIdMarker", last_id),
            el("MaxUploads", max_uploads), el("IsTruncated", "true" if truncated else "false")]
    if prefix:
        body.append(el("Prefix", prefix))
    if delimiter:
        body.append(el("Delimiter", delimiter))
    body += items
    body += [f"<CommonPrefixes>{el('Prefix', c)}</CommonPrefixes>" for c in commons]
    return xml_response(document("ListMultipartUploadsResult", body))
