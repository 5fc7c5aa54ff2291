"""Service-level operations: ListBuckets.

ListBuckets pages like S3: `max-buckets` (1..10000) caps a page; with `prefix`,
`continuation-token` or `bucket-region` but no `max-buckets` a page holds at most 10000.
A page with more buckets after it carries `ContinuationToken`, an opaque token (the last
bucket name, base64url) that the next request sends back; `Prefix` is echoed when sent.
"""

from __future__ import annotations

import base64

from starlette.responses import Response

from manta.server.s3 import errors as s3e
from manta.server.s3.common import read_catalog, xml_response
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import document, el, iso8601

MAX_BUCKETS = 10_000


def _max_buckets(req: S3Request) -> int:
    raw = req.query.get("max-buckets")
    if raw is None:
        return MAX_BUCKETS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BUCKETS:
        raise s3e.InvalidArgument(f"max-buckets must be between 1 and {MAX_BUCKETS}.",
                                  ArgumentName="max-buckets", ArgumentValue=raw)
    return value


def _after(req: S3Request) -> str:
    token = req.query.get("continuation-token")
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise s3e.InvalidArgument("The continuation token provided is incorrect.",
                                  ArgumentName="continuation-token") from None


async def list_buckets(req: S3Request) -> Response:
    limit = _max_buckets(req)
    prefix = req.query.get("prefix", "")
    after = _after(req)
    region = req.settings.region
    in_region = req.query.get("bucket-region", region) == region
    buckets = await read_catalog(req.store, req.store.catalog.buckets.owned_by, req.owner)
    names = sorted((b for b in buckets
                    if in_region and b.name.startswith(prefix) and b.name > after),
                   key=lambda b: b.name)
    page = names[:limit]
    body = [f"<Owner>{el('ID', req.owner)}{el('DisplayName', req.owner)}</Owner><Buckets>"]
    for b in page:
        body.append(f"<Bucket>{el('Name', b.name)}{el('CreationDate', iso8601(b.created))}"
                    f"{el('BucketRegion', region)}</Bucket>")
    body.append("</Buckets>")
    if len(names) > limit:
        body.append(el("ContinuationToken", base64.urlsafe_b64encode(page[-1].name.encode()).decode()))
    if "prefix" in req.query:
        body.append(el("Prefix", prefix))
    return xml_response(document("ListAllMyBucketsResult", body))
