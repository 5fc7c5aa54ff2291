"""The three handlers of a bucket configuration kept as one document (CORS rules, lifecycle
rules): PUT parses and validates the document and stores the kind's form of it (owner
only; Content-MD5 or a flexible checksum required, as S3 requires for these), GET answers
it rebuilt from what was stored, DELETE removes it (storage.records.bucketconf)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response

from manta.server.s3.body import read_small, require_integrity
from manta.server.s3.common import in_thread, owned_ref, read_catalog, xml_response
from manta.server.s3.context import S3Request

__all__ = ["handlers"]

Handler = Callable[[S3Request], Awaitable[Response]]


def handlers(kind: str, max_bytes: int, store: Callable[[bytes], bytes], show: Callable[[bytes], bytes],
             missing: Callable[..., Exception]) -> tuple[Handler, Handler, Handler]:
    """(PUT, GET, DELETE) of the configuration `kind`: `store(body)` validates a document
    and returns what to keep, `show(kept)` the XML a GET answers, `missing(BucketName=...)`
    the error of a GET when there is none."""

    async def put(req: S3Request) -> Response:
        bucket = await read_catalog(req.store, owned_ref, req)
        body = await read_small(req, max_bytes)
        require_integrity(req, body)
        kept = store(body)
        await in_thread(req.store.catalog.bucketconf.set, bucket, kind, kept)
        return Response(b"")

    def owned(req: S3Request) -> bytes | None:
        with req.store.catalog.read() as txn:
            return req.store.catalog.bucketconf.get(owned_ref(req, txn=txn), kind, txn)

    async def get(req: S3Request) -> Response:
        kept = await read_catalog(req.store, owned, req)
        if kept is None:
            raise missing(BucketName=req.bucket)
        return xml_response(show(kept))

    async def delete(req: S3Request) -> Response:
        bucket = await read_catalog(req.store, owned_ref, req)
        await in_thread(req.store.catalog.bucketconf.set, bucket, kind, None)
        return Response(b"", status_code=204)

    return put, get, delete
