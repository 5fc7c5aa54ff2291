"""GetObjectAttributes (`GET /bucket/key?attributes`): an object's metadata without its body.

The client names what it wants in `x-amz-object-attributes` (ETag, Checksum, ObjectParts,
StorageClass, ObjectSize); the answer holds only those, in S3's order. ObjectParts appears
for multipart objects only: the part count always (PartsCount on the wire, TotalPartsCount
in the SDKs), and, when the object has a checksum (its upload named an algorithm) and its
record keeps the part checksums (objects completed since records keep them), a page of
parts with their checksums: those after `x-amz-part-number-marker`, at most
`x-amz-max-parts` (1000), with NextPartNumberMarker and IsTruncated to continue.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from manta.server.s3 import errors as s3e
from manta.server.s3.common import object_record, read_catalog, xml_response
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import document, el, http_date

__all__ = ["ATTRIBUTES", "get_object_attributes"]

ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
MAX_PARTS = 1000


def _wanted(req: S3Request) -> set[str]:
    names = {n.strip() for n in req.header("x-amz-object-attributes", "").split(",") if n.strip()}
    if not names:
        raise s3e.InvalidArgument(
            "x-amz-object-attributes header specifying the attributes to be retrieved is either missing or empty",
            ArgumentName="x-amz-object-attributes")
    unknown = names.difference(ATTRIBUTES)
    if unknown:
        raise s3e.InvalidArgument("Invalid attribute name specified.", ArgumentName="x-amz-object-attributes",
                                  ArgumentValue=sorted(unknown)[0])
    return names


def _int_header(req: S3Request, name: str, default: int) -> int:
    raw = req.header(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise s3e.InvalidArgument(f"{name} must be a non-negative integer.", ArgumentName=name, ArgumentValue=raw)
    return value


def _checksum_xml(record: dict[str, Any]) -> str:
    sums = record.get("checksums") or {}
    if not sums:
        return ""
    inner = "".join(el(f"Checksum{alg}", value) for alg, value in sums.items())
    if record.get("checksum_type"):
        inner += el("ChecksumType", record["checksum_type"])
    return f"<Checksum>{inner}</Checksum>"


def _parts_xml(req: S3Request, record: dict[str, Any]) -> str:
    sizes = record.get("parts")
    if not sizes:
        return ""
    inner = el("PartsCount", len(sizes))  # TotalPartsCount in the SDKs; PartsCount on the wire
    algorithms = set(record.get("checksums") or {})
    listed = record.get("part_checksums")
    if algorithms and listed:
        marker = _int_header(req, "x-amz-part-number-marker", 0)
        max_parts = min(_int_header(req, "x-amz-max-parts", MAX_PARTS), MAX_PARTS)
        after = [(number, size, {a: v for a, v in sums.items() if a in algorithms})
                 for (number, sums), size in zip(listed, sizes, strict=True) if number > marker]
        page = after[:max_parts]
        inner += (el("PartNumberMarker", marker)
                  + el("NextPartNumberMarker", page[-1][0] if page else marker)
                  + el("MaxParts", max_parts)
                  + el("IsTruncated", "true" if len(after) > len(page) else "false"))
        for number, size, sums in page:
            inner += ("<Part>" + "".join(el(f"Checksum{alg}", v) for alg, v in sums.items())
                      + el("PartNumber", number) + el("Size", size) + "</Part>")
    return f"<ObjectParts>{inner}</ObjectParts>"


async def get_object_attributes(req: S3Request) -> Response:
    wanted = _wanted(req)
    record = await read_catalog(req.store, object_record, req)
    body = []
    if "ETag" in wanted:
        body.append(el("ETag", record["etag"]))
    if "Checksum" in wanted:
        body.append(_checksum_xml(record))
    if "ObjectParts" in wanted:
        body.append(_parts_xml(req, record))
    if "StorageClass" in wanted:
        body.append(el("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        body.append(el("ObjectSize", record["size"]))
    return xml_response(document("GetObjectAttributesResponse", body),
                        headers={"last-modified": http_date(record["mtime"])})
