"""Helpers shared by the S3 operation modules: catalog reads (in place or in a thread, by
engine), ownership, metadata headers, blob I/O."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from starlette.responses import Response

from manta.server.s3 import access
from manta.server.s3 import errors as s3e
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import http_date
from storage import BlobMeta, BlobReader, BucketRef, ReplicatedWriter, Store
from storage.engine import EngineUnavailable
from storage.errors import NoSuchBlob
from storage.threads import ProcessPool
from storage.versions import NULL

STORED_HEADERS = ("content-type", "content-encoding", "content-disposition",
                  "content-language", "cache-control", "expires")
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


T = TypeVar("T")


async def read_catalog(store: Store, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, a call that reads the catalog (and may do other work around its reads):
    in place with an embedded engine, whose reads take microseconds (a thread hop would
    cost more), in a worker thread with a remote one, whose every read waits on the
    network. Group one request's reads into one call: one hop per request."""
    if store.catalog.engine.remote:
        return await in_thread(fn, *args)
    return fn(*args)


def owned_ref(req: S3Request, name: str | None = None, txn: Any = None) -> BucketRef:
    """The bucket the request is authorised against, if it exists and the caller may do
    the request's action on it (`access.authorize`: the owner, a policy, an ACL). Storage
    calls take this ref and re-check it when they commit. A catalog read (in `txn`, a read
    transaction, if given): call it inside a function given to `read_catalog` or
    `in_thread`, else `owned_bucket`."""
    record = req.store.catalog.buckets.get(name or req.bucket, txn)
    if name is None or name == req.bucket:
        req.bucket_conf = record.conf  # manta.server.s3.cors: no second read for an Origin
        req.bucket_lock = record.lock  # manta.server.s3.objectlock
    access.authorize(req, record, txn)
    return record.ref()


def source_ref(req: S3Request, name: str, key: str, txn: Any = None) -> BucketRef:
    """A copy source's bucket, if the caller may read `key` in it (s3:GetObject)."""
    record = req.store.catalog.buckets.get(name, txn)
    access.authorize_source(req, record, key, txn=txn)
    return record.ref()


async def owned_bucket(req: S3Request, name: str | None = None) -> BucketRef:
    """`owned_ref`, read through `read_catalog`."""
    return await read_catalog(req.store, owned_ref, req, name)


def object_record(req: S3Request, txn: Any = None) -> dict[str, Any]:
    """The record of the request's object in the caller's bucket (a catalog read, in `txn`
    if given)."""
    if txn is None:
        with req.store.catalog.read() as txn:  # one snapshot: one round trip fewer with PostgreSQL
            return object_record(req, txn)
    return req.store.objects.get(owned_ref(req, txn=txn), req.key, txn)


# S3's storage classes: a write may name any (every object is stored alike, and answers
# STANDARD); another name is InvalidStorageClass, as in S3
STORAGE_CLASSES = frozenset(("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                             "GLACIER", "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE"))


def check_storage_class(req: S3Request) -> None:
    storage_class = req.header("x-amz-storage-class")
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise s3e.InvalidStorageClass(StorageClassRequested=storage_class)


def request_headers(req: S3Request) -> tuple[dict[str, str], dict[str, str]]:
    """(stored standard headers, user metadata) from a PUT/POST/COPY request (whose
    storage class, if named, must be one of S3's)."""
    check_storage_class(req)
    headers = {}
    for name in STORED_HEADERS:
        value = req.header(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = stored_content_encoding(value)
            if not value:
                continue
        headers[name] = value
    headers.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    meta = {k[len("x-amz-meta-"):]: meta_text(v) for k, v in req.headers.items() if k.startswith("x-amz-meta-")}
    size = sum(len(k) + len(v) for k, v in meta.items())
    if size > req.settings.max_meta_bytes:
        raise s3e.MetadataTooLarge(MaxSizeAllowed=str(req.settings.max_meta_bytes))
    return headers, meta


def stored_content_encoding(sent: str) -> str:
    """Content-Encoding as sent (spacing kept), less the aws-chunked transfer coding."""
    codings = sent.split(",")
    kept = [c for c in codings if c.strip().lower() != "aws-chunked"]
    return sent if len(kept) == len(codings) else ",".join(kept).strip()


def meta_text(wire: str) -> str:
    """A metadata value as the client meant it: its wire bytes (which the server decodes as
    latin-1) read as UTF-8, as SDKs send non-ASCII values; bytes that are not UTF-8 stay
    latin-1 characters."""
    raw = wire.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return wire


def meta_header(text: str) -> str:
    """A stored metadata value as a response header: latin-1 text goes out as is (clients
    decode headers as latin-1, so it reads back as sent); anything wider is RFC 2047
    encoded, as S3 does with non-ASCII metadata."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode() + "?="


def object_headers(record: dict[str, Any]) -> dict[str, str]:
    out = {
        "etag": f'"{record["etag"]}"',
        "last-modified": http_date(record["mtime"]),
        "accept-ranges": "bytes",
    }
    out.update(record.get("headers", {}))
    for k, v in record.get("meta", {}).items():
        out[f"x-amz-meta-{k}"] = meta_header(v)
    return out


def checksum_headers(record: dict[str, Any]) -> dict[str, str]:
    out = {f"x-amz-checksum-{alg.lower()}": value for alg, value in record.get("checksums", {}).items()}
    if out and record.get("checksum_type"):
        out["x-amz-checksum-type"] = record["checksum_type"]
    return out


def xml_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/xml")


async def new_writer(req: S3Request) -> ReplicatedWriter:
    """A writer for a new blob; with remote nodes it is opened in a worker thread (it
    connects to them)."""
    if req.store.remote:
        return await in_thread(req.store.writer)  # type: ignore[no-any-return]
    return req.store.writer()


async def commit_blob(writer: ReplicatedWriter) -> BlobMeta:
    return await in_thread(writer.commit)  # type: ignore[no-any-return]


async def free_blobs(req: S3Request, blob_ids: list[str]) -> None:
    if blob_ids:
        await in_thread(req.store.free, blob_ids)


async def abandon_blobs(req: S3Request, blob_ids: list[str], exc: BaseException) -> None:
    """After a write that failed: free its new blobs, unless the catalog could not say
    whether the commit happened (EngineUnavailable: a connection lost during COMMIT), when a
    committed record may reference them: they stay, and the orphan GC takes them if not."""
    if not isinstance(exc, EngineUnavailable):
        await free_blobs(req, blob_ids)


async def catalog_write(future: Any) -> Any:
    """The outcome of a submitted catalog write. A cancel (shutdown) cancels the write if it
    has not started; once it runs, its outcome is awaited: a write that committed returns as
    if no cancel had come (its caller must not free what the record now references), one
    that did not raises CancelledError."""
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.shield(wrapped)
    except asyncio.CancelledError:
        if future.cancel():  # not started: it will not be applied
            raise
        await _until_done(wrapped)
        if wrapped.exception() is not None:
            raise
        return wrapped.result()


THREADS = 40  # as many blocking calls at once as anyio's default limiter allowed
BLOCKING_POOL = ProcessPool(THREADS, "manta-io")  # this process's threads for blocking storage calls


async def in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking storage call (fsync, catalog commit) off the event loop. A cancel
    takes effect once the call has returned (the caller's clean-up never runs beside it),
    as with anyio's to_thread, without anyio's per-call task and cancel-scope machinery."""
    future = asyncio.get_running_loop().run_in_executor(BLOCKING_POOL.get(), fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _until_done(future)
        raise


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait for `future` to finish, however often this task is cancelled meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])


MAX_PART_NUMBER = 10000


def version_header(record: dict[str, Any]) -> dict[str, str]:
    """`x-amz-version-id` of a record written in a versioned bucket (null: suspended)."""
    if "vid" in record:
        return {"x-amz-version-id": record["vid"]}
    return {"x-amz-version-id": NULL} if "vsk" in record else {}


def requested_version(req: S3Request) -> str | None:
    """The request's `versionId` (None: the current version); an empty one is invalid."""
    vid = req.query.get("versionId")
    if vid == "":
        raise s3e.InvalidArgument("Version id cannot be the empty string", ArgumentName="versionId",
                                  ArgumentValue="")
    return vid


def part_number(req: S3Request) -> int:
    """The request's `partNumber`: 1..10000, else InvalidArgument (a missing one included)."""
    raw = req.query.get("partNumber", "")
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART_NUMBER:
        raise s3e.InvalidArgument("Part number must be an integer between 1 and 10000, inclusive",
                                  ArgumentName="partNumber", ArgumentValue=raw)
    return number


RECORD_RACE_TRIES = 3


async def on_current_record(handler: Callable[[], Awaitable[T]]) -> T:
    """Run a handler that reads an object's record and then opens its blobs. In between,
    the object can be overwritten or deleted and its blobs freed (NoSuchBlob): the handler
    then runs again on the key's current record (NoSuchKey once it is gone), as if the
    request had arrived after that write."""
    for _ in range(RECORD_RACE_TRIES - 1):
        try:
            return await handler()
        except NoSuchBlob:
            continue
    return await handler()


Opened = list[tuple[BlobReader, int, int]]
SMALL_READ_BYTES = 64 * 1024  # read on the event loop: a page-cache hit costs less than a thread hop
READ_AHEAD_BLOCKS = 4  # 1 MiB blocks read per worker-thread hand-off


def open_segments(req: S3Request, segments: list[list[Any]], start: int, length: int,
                  txn: Any = None) -> Opened:
    """Readers for the blobs covering [start, start+length), each with a replica open
    up front, so a concurrent overwrite or delete cannot pull a segment away mid-response
    (the blob records read in `txn`, a read transaction, if given). Returns (reader,
    offset in blob, bytes to read) triples."""
    wanted: list[tuple[str, int, int]] = []
    offset = 0
    remaining = length
    for blob_id, size, *_ in segments:
        if remaining <= 0:
            break
        if start < offset + size:
            skip = max(0, start - offset)
            take = min(size - skip, remaining)
            wanted.append((blob_id, skip, take))
            remaining -= take
        offset += size
    readers = req.store.readers([blob_id for blob_id, _, _ in wanted], txn)
    return [(reader, skip, take) for reader, (_, skip, take) in zip(readers, wanted, strict=True)]


def _next_blocks(pieces: Iterator[bytes], n: int = READ_AHEAD_BLOCKS) -> list[bytes]:
    return list(itertools.islice(pieces, n))


async def stream_opened(opened: Opened) -> AsyncIterator[bytes]:
    """Verified bytes of the opened segments. Blocks of big blobs are read in a worker
    thread a few blocks at a time and one batch ahead, so reading overlaps sending and the
    thread hand-off is paid once per batch, not once per block.

    A client that goes away cancels the response task while a worker may still read: the
    batch is shielded from the cancel, and the files close when it is done (never under a
    running read: a descriptor closed there fails the read with EBADF, or once its number
    is reused, reads another request's file)."""
    loop = asyncio.get_running_loop()
    ahead: asyncio.Future[list[bytes]] | None = None
    try:
        for reader, skip, take in opened:
            pieces = reader.read(skip, take)
            if take <= SMALL_READ_BYTES and not reader.blocking:
                for small in pieces:
                    yield small
                continue
            ahead = loop.run_in_executor(None, _next_blocks, pieces)
            while blocks := await asyncio.shield(ahead):
                ahead = loop.run_in_executor(None, _next_blocks, pieces)
                for block in blocks:
                    yield block
            ahead = None
    finally:
        if ahead is None or ahead.done():
            _close_all(opened)
        else:  # no await here: a cancelled task is cancelled again at every await
            ahead.add_done_callback(lambda batch: _close_after(batch, opened))


def read_small(opened: Opened) -> bytes | None:
    """The whole body of small local segments, read right here (closing them); None,
    with nothing read or closed, when they are too big or remote (stream them instead)."""
    if any(take > SMALL_READ_BYTES or reader.blocking for reader, _, take in opened):
        return None
    try:
        return b"".join(piece for reader, skip, take in opened for piece in reader.read(skip, take))
    finally:
        _close_all(opened)


def _close_all(opened: Opened) -> None:
    for reader, _, _ in opened:
        reader.close()


def _close_after(batch: asyncio.Future[list[bytes]], opened: Opened) -> None:
    if not batch.cancelled():
        batch.exception()  # retrieved: a failed read nobody waits for is not an error here
    _close_all(opened)


async def prefetched(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Read the first chunk now, so an unreadable object fails before the status line is
    sent (an error, not a truncated 200); returns a stream that starts with that chunk."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""

    async def chained() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in stream:
            yield chunk

    return chained()
