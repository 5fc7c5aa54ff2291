"""Service-level operations: ListBuckets."""

from __future__ import annotations

from starlette.responses import Response

from manta.s3.common import xml_response
from manta.s3.context import S3Request
from manta.s3.xmlio import document, el, iso8601


async def list_buckets(req: S3Request) -> Response:
    buckets = req.store.catalog.buckets(req.owner)
    body = [f"<Owner>{el('ID', req.owner)}{el('DisplayName', req.owner)}</Owner><Buckets>"]
    for b in buckets:
        body.append(f"<Bucket>{el('Name', b['name'])}{el('CreationDate', iso8601(b['created']))}</Bucket>")
    body.append("</Buckets>")
    return xml_response(document("ListAllMyBucketsResult", body))
