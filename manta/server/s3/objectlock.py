"""Object Lock: the bucket's configuration, each version's retention and legal hold, and
their request and response headers. The rules live in storage (storage.objectlock): a
version's delete or retention change is refused in its storage transaction (ObjectLocked,
answered AccessDenied), so every path meets them.

- CreateBucket with ``x-amz-bucket-object-lock-enabled: true``: versioning Enabled for good
  and Object Lock on (kept in the bucket record, so a bucket without it pays nothing).
- ``?object-lock`` on the bucket: GetObjectLockConfiguration (none:
  ObjectLockConfigurationNotFoundError) and PutObjectLockConfiguration (its default
  retention; it also turns Object Lock on for a bucket whose versioning is Enabled).
- PutObject, CopyObject and CreateMultipartUpload take ``x-amz-object-lock-mode`` with
  ``x-amz-object-lock-retain-until-date`` and ``x-amz-object-lock-legal-hold``; a new
  version without them gets the bucket's default retention (setting them takes
  s3:PutObjectRetention / s3:PutObjectLegalHold besides s3:PutObject). GET and HEAD
  answer them.
- ``?retention`` and ``?legal-hold`` on an object (with ``versionId``): get and put. A
  GOVERNANCE retention is shortened or removed, and a version under it deleted, only with
  ``x-amz-bypass-governance-retention: true`` by a caller allowed
  s3:BypassGovernanceRetention (the bucket's owner is, unless its policy denies it).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from starlette.responses import Response

from manta.server.s3 import access
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small, require_integrity
from manta.server.s3.common import (
    in_thread,
    owned_bucket,
    owned_ref,
    read_catalog,
    requested_version,
    xml_response,
)
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import child_text, children, document, el, iso8601, parse
from storage import BucketRef
from storage.objectlock import MODES, LockConfig

__all__ = ["HEADERS", "bypass_governance", "bypass_keys", "from_headers", "get_legal_hold", "get_lock_configuration",
           "get_retention", "put_legal_hold", "put_lock_configuration", "put_retention",
           "response_headers"]

MODE_HEADER = "x-amz-object-lock-mode"
UNTIL_HEADER = "x-amz-object-lock-retain-until-date"
HOLD_HEADER = "x-amz-object-lock-legal-hold"
HEADERS = frozenset((MODE_HEADER, UNTIL_HEADER, HOLD_HEADER))
BYPASS_HEADER = "x-amz-bypass-governance-retention"
MAX_BODY_BYTES = 64 * 1024
HOLD_STATES = ("ON", "OFF")
_NO_LOCK = "Bucket is missing Object Lock Configuration"


def _parse_date(text: str, name: str) -> float:
    """An ISO 8601 date (no zone: UTC) as epoch seconds, to the millisecond."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise s3e.InvalidArgument("The retain until date is not a valid ISO 8601 date.", ArgumentName=name,
                                  ArgumentValue=text) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return math.floor(when.timestamp() * 1000) / 1000


def _future(until: float, name: str, text: str) -> float:
    if until <= time.time():
        raise s3e.InvalidArgument("The retain until date must be in the future!", ArgumentName=name,
                                  ArgumentValue=text)
    return until


def from_headers(req: S3Request) -> dict[str, Any]:
    """The Object Lock fields a write's headers set ({} without any), checked; the caller
    read the bucket's record first (`owned_ref`), so a bucket without Object Lock is
    refused here, before any body is read."""
    mode, until, hold = req.header(MODE_HEADER), req.header(UNTIL_HEADER), req.header(HOLD_HEADER)
    if mode is None and until is None and hold is None:
        return {}
    fields: dict[str, Any] = {}
    if (mode is None) != (until is None):
        raise s3e.InvalidArgument("x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be "
                                  "supplied", ArgumentName=MODE_HEADER if mode is None else UNTIL_HEADER)
    if mode is not None and until is not None:
        if mode not in MODES:
            raise s3e.InvalidArgument("Unknown wormMode directive.", ArgumentName=MODE_HEADER, ArgumentValue=mode)
        fields["lock_mode"] = mode
        fields["lock_until"] = _future(_parse_date(until, UNTIL_HEADER), UNTIL_HEADER, until)
    if hold is not None:
        if hold not in HOLD_STATES:
            raise s3e.InvalidArgument("Legal Hold must be either of 'ON' or 'OFF'", ArgumentName=HOLD_HEADER,
                                      ArgumentValue=hold)
        fields["legal_hold"] = hold == "ON"
    if not req.bucket_lock:
        raise s3e.InvalidRequest(_NO_LOCK)
    if ("lock_mode" in fields and not access.may(req, "s3:PutObjectRetention", req.key)) or (
            "legal_hold" in fields and not access.may(req, "s3:PutObjectLegalHold", req.key)):
        raise s3e.AccessDenied()
    return fields


def response_headers(req: S3Request, record: dict[str, Any]) -> dict[str, str]:
    """GET and HEAD's Object Lock headers for a version that has any, those the requester
    may read (s3:GetObjectRetention, s3:GetObjectLegalHold), as S3 answers them."""
    out = {}
    if "lock_mode" in record and access.may(req, "s3:GetObjectRetention", req.key):
        out[MODE_HEADER] = record["lock_mode"]
        out[UNTIL_HEADER] = iso8601(record["lock_until"])
    if "legal_hold" in record and access.may(req, "s3:GetObjectLegalHold", req.key):
        out[HOLD_HEADER] = "ON" if record["legal_hold"] else "OFF"
    return out


def bypass_governance(req: S3Request, keys: list[str]) -> bool:
    """Whether the request asks to bypass GOVERNANCE retention and may, for each of `keys`
    (s3:BypassGovernanceRetention; the caller's `owned_ref` read the bucket's settings)."""
    return bool(keys) and len(bypass_keys(req, keys)) == len(set(keys))


def bypass_keys(req: S3Request, keys: list[str]) -> set[str]:
    """Those of `keys` whose GOVERNANCE retention the request asks to bypass and may (a
    DeleteObjects decides key by key, as a policy may allow the bypass on some keys only)."""
    if req.header(BYPASS_HEADER, "").strip().lower() != "true":
        return set()
    return {key for key in set(keys) if access.may(req, "s3:BypassGovernanceRetention", key)}


# -- the bucket's configuration --------------------------------------------------------

async def _integral_body(req: S3Request) -> bytes:
    """The body of an Object Lock PUT, which S3 takes only with Content-MD5 or a checksum."""
    body = await read_small(req, MAX_BODY_BYTES)
    require_integrity(req, body)
    return body


def _lock_of(req: S3Request) -> LockConfig | None:
    owned_ref(req)
    return req.bucket_lock  # type: ignore[no-any-return]


async def get_lock_configuration(req: S3Request) -> Response:
    config = await read_catalog(req.store, _lock_of, req)
    if config is None:
        raise s3e.ObjectLockConfigurationNotFoundError(BucketName=req.bucket)
    body = [el("ObjectLockEnabled", "Enabled")]
    if config.mode is not None:
        period = el("Days", config.days) if config.days is not None else el("Years", config.years)
        body.append(f"<Rule><DefaultRetention>{el('Mode', config.mode)}{period}</DefaultRetention></Rule>")
    return xml_response(document("ObjectLockConfiguration", body))


def _period(node: Any, name: str) -> int | None:
    text = child_text(node, name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise s3e.MalformedXML() from None
    if value <= 0:
        raise s3e.InvalidArgument("Default retention period must be a positive integer value.",
                                  ArgumentName=name, ArgumentValue=text)
    return value


async def put_lock_configuration(req: S3Request) -> Response:
    bucket = await owned_bucket(req)
    root = parse(await _integral_body(req), "ObjectLockConfiguration")
    if child_text(root, "ObjectLockEnabled") != "Enabled":
        raise s3e.MalformedXML()
    config = LockConfig()
    rules = children(root, "Rule")
    if len(rules) > 1:
        raise s3e.MalformedXML()
    if rules:
        retention = children(rules[0], "DefaultRetention")
        if len(retention) != 1:
            raise s3e.MalformedXML()
        mode = child_text(retention[0], "Mode")
        days, years = _period(retention[0], "Days"), _period(retention[0], "Years")
        if mode not in MODES or (days is None) == (years is None):
            raise s3e.MalformedXML()
        config = LockConfig(mode, days, years)
    await in_thread(req.store.catalog.buckets.set_lock, bucket, config)
    return Response(b"")


# -- a version's retention and legal hold ----------------------------------------------

def _record(req: S3Request) -> dict[str, Any]:
    """The version the request names (its current one without versionId), in a bucket
    with Object Lock (InvalidRequest otherwise)."""
    vid = requested_version(req)
    with req.store.catalog.read() as txn:
        bucket = owned_ref(req, txn=txn)
        if not req.bucket_lock:
            raise s3e.InvalidRequest(_NO_LOCK)
        if vid is None:
            return req.store.objects.get(bucket, req.key, txn)
        return req.store.objects.get_version(bucket, req.key, vid, txn)


async def get_retention(req: S3Request) -> Response:
    record = await read_catalog(req.store, _record, req)
    if "lock_mode" not in record:
        raise s3e.NoSuchObjectLockConfiguration()
    return xml_response(document("Retention", [el("Mode", record["lock_mode"]),
                                               el("RetainUntilDate", iso8601(record["lock_until"]))]))


async def get_legal_hold(req: S3Request) -> Response:
    record = await read_catalog(req.store, _record, req)
    if "legal_hold" not in record:
        raise s3e.NoSuchObjectLockConfiguration()
    return xml_response(document("LegalHold", [el("Status", "ON" if record["legal_hold"] else "OFF")]))


def _set_retention(req: S3Request, mode: str | None, until: float | None) -> None:
    bucket: BucketRef = owned_ref(req)
    bypass = bypass_governance(req, [req.key])
    req.store.objects.set_retention(bucket, req.key, requested_version(req), mode, until, bypass)


async def put_retention(req: S3Request) -> Response:
    root = parse(await _integral_body(req), "Retention")
    mode, text = child_text(root, "Mode"), child_text(root, "RetainUntilDate")
    if (mode is None) != (text is None) or (mode is not None and mode not in MODES):
        raise s3e.MalformedXML()
    until = None if text is None else _future(_parse_date(text, "RetainUntilDate"), "RetainUntilDate", text)
    await in_thread(_set_retention, req, mode, until)
    return Response(b"")


async def put_legal_hold(req: S3Request) -> Response:
    root = parse(await _integral_body(req), "LegalHold")
    status = child_text(root, "Status")
    if status not in HOLD_STATES:
        raise s3e.MalformedXML()
    await in_thread(lambda: req.store.objects.set_legal_hold(owned_ref(req), req.key, requested_version(req),
                                                             status == "ON"))
    return Response(b"")
