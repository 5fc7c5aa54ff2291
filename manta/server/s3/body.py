"""Request bodies: stream a PUT body into a blob while verifying everything the client claimed.

One pass over the bytes as they arrive: aws-chunked framing is decoded (and chunk
signatures checked), the payload is written to the blob writer (which hashes MD5 and
SHA-256), and the flexible checksum (from a header or a trailer) is computed. At the end
the x-amz-content-sha256 payload hash, x-amz-decoded-content-length, Content-MD5 and
the flexible checksum are compared; any mismatch raises and the caller aborts the blob,
so nothing half-written is ever visible. A body bigger than HANDOFF goes to a worker thread
1 MiB at a time, and its payload SHA-256 and flexible checksum are computed there too, on
the writer's helper threads beside its MD5 (`ReplicatedWriter.write_parts(also=)`): the
event loop only receives.

An unsigned request's payload is unsigned (`payload_mode`): UNSIGNED-PAYLOAD, or an
unsigned aws-chunked stream; a signed stream without a signature is InvalidRequest.

A client that stops sending for `body_timeout_s` gets RequestTimeout, and so does one that
trickles: past its first `body_timeout_s`, a body must average `min_body_rate` bytes a
second (`BodyClock`; 500, MANTA_MIN_BODY_RATE), or a byte every 29 s would hold a busy
connection, which the connection cap never displaces, for as long as the client likes.
One that disconnects mid-body raises ClientGone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from dataclasses import dataclass, field
from typing import Any

from manta.server.s3 import checksums
from manta.server.s3 import errors as s3e
from manta.server.s3.chunked import AwsChunkedDecoder, decoder_for
from manta.server.s3.common import in_thread
from manta.server.s3.context import S3Request
from manta.server.s3.sigv4 import STREAMING_UNSIGNED_TRAILER, UNSIGNED_PAYLOAD
from storage import MemoryBlobWriter, ReplicatedWriter

MAX_SINGLE_PUT = 5 * 1024**3
HANDOFF = 1 << 20  # bytes of a big body gathered per hand-off to a worker thread
STREAMING = {
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
}


class BodyClock:
    """When a body's next bytes are due (loop time): within `timeout_s` of the last ones,
    and no later than the body's start + `timeout_s` + received / `min_rate` (one second
    more for every `min_rate` bytes: a slow link keeps up, a trickle falls behind)."""

    __slots__ = ("start", "timeout_s", "per_byte_s")

    def __init__(self, now: float, timeout_s: float, min_rate: float) -> None:
        self.start = now
        self.timeout_s = timeout_s
        self.per_byte_s = 1.0 / min_rate if min_rate > 0 else 0.0

    def due(self, now: float, received: int) -> float:
        due = now + self.timeout_s
        if self.per_byte_s:
            due = min(due, self.start + self.timeout_s + received * self.per_byte_s)
        return due


class ClientGone(Exception):
    """The client disconnected before the body was complete."""


@dataclass
class BodyResult:
    size: int
    checksums: dict[str, str] = field(default_factory=dict)


def _checksum_request(req: S3Request, default: str | None = None) -> tuple[str | None, str | None, bool]:
    """(algorithm, expected value or None, value comes in a trailer)."""
    found = [(alg, req.headers[checksums.header_name(alg)]) for alg in checksums.ALGORITHMS
             if checksums.header_name(alg) in req.headers]
    trailer = req.header("x-amz-trailer", "").strip().lower()
    trailer_alg = checksums.algorithm_from_header(trailer) if trailer else None
    if trailer and trailer_alg is None:
        raise s3e.InvalidRequest(f"Unsupported trailer {trailer!r}.")
    declared = req.header("x-amz-sdk-checksum-algorithm") or req.header("x-amz-checksum-algorithm")
    if len(found) + (trailer_alg is not None) > 1:
        raise s3e.InvalidRequest("Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.")
    if found:
        alg, value = found[0]
        if declared and declared.upper() != alg:
            raise s3e.InvalidRequest("Value for x-amz-sdk-checksum-algorithm header is invalid.")
        checksums.decode(alg, value)  # malformed: BadDigest before any byte is stored
        return alg, value, False
    if trailer_alg:
        return trailer_alg, None, True
    if declared:
        if declared.upper() not in checksums.ALGORITHMS:
            raise s3e.InvalidRequest("Value for x-amz-sdk-checksum-algorithm header is invalid.")
        return declared.upper(), None, False
    return default, None, False


def payload_mode(req: S3Request) -> str:
    """The request's x-amz-content-sha256 as its signature covers it (a hash, UNSIGNED-PAYLOAD
    or a STREAMING- mode). An unsigned request's payload is unsigned: UNSIGNED-PAYLOAD, or
    STREAMING-UNSIGNED-PAYLOAD-TRAILER when it says so; a signed stream cannot come without
    a signature (InvalidRequest, before any byte is read)."""
    if req.auth is not None:
        return req.auth.payload_hash
    mode = req.header("x-amz-content-sha256", "")
    if mode == STREAMING_UNSIGNED_TRAILER:
        return mode
    if mode.startswith("STREAMING-"):
        raise s3e.InvalidRequest(f"{mode} needs a request signed with the Authorization header.")
    return UNSIGNED_PAYLOAD


def chunked_decoder(req: S3Request) -> AwsChunkedDecoder | None:
    """The aws-chunked decoder of this request's body, or None if it is not aws-chunked:
    the one place a request's decoder is built (chunked.decoder_for reads the mode,
    trailers and decoded length from the headers and refuses what it cannot verify)."""
    return decoder_for(req.headers, req.auth, req.signing_key or None)


def _content_md5(req: S3Request) -> bytes | None:
    value = req.header("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise s3e.InvalidDigest() from None
    if len(digest) != 16:
        raise s3e.InvalidDigest()
    return digest


def expected_size(req: S3Request) -> int | None:
    """The payload size the client announced (decoded size for aws-chunked), if any."""
    name = "x-amz-decoded-content-length" if payload_mode(req) in STREAMING else "content-length"
    value = req.header(name)
    return int(value) if value is not None and value.isdigit() else None


async def receive_into(req: S3Request, writer: ReplicatedWriter | MemoryBlobWriter, max_size: int = MAX_SINGLE_PUT,
                       default_algorithm: str | None = None) -> BodyResult:
    """Stream the body into `writer`; `default_algorithm` is computed when the client
    names no checksum (a part of an upload created with a checksum algorithm)."""
    payload_hash = payload_mode(req)
    length_header = req.header("content-length")
    transfer = req.header("transfer-encoding", "")
    if length_header is None and "chunked" not in transfer.lower():
        raise s3e.MissingContentLength()
    try:
        wire_length = int(length_header) if length_header is not None else None
    except ValueError:
        raise s3e.InvalidArgument("Invalid Content-Length.") from None
    if wire_length is not None and (wire_length < 0):
        raise s3e.InvalidArgument("Invalid Content-Length.")

    expected_md5 = _content_md5(req)
    algorithm, expected_sum, in_trailer = _checksum_request(req, default_algorithm)
    summer = checksums.new(algorithm) if algorithm else None

    decoder = chunked_decoder(req)
    if decoder is None and in_trailer:
        raise s3e.InvalidRequest("Trailing checksums need an aws-chunked body.")
    expected_size = decoder.expected_length if decoder is not None else wire_length
    if expected_size is not None and expected_size > max_size:
        raise s3e.EntityTooLarge(ProposedSize=str(expected_size), MaxSizeAllowed=str(max_size))

    content_sha = None
    if payload_hash not in STREAMING and payload_hash != "UNSIGNED-PAYLOAD":
        content_sha = hashlib.sha256()

    loop = asyncio.get_running_loop()
    clock = BodyClock(loop.time(), req.settings.body_timeout_s, req.settings.min_body_rate)
    received = 0
    # big bodies go to the writer (hashing and file writes) on a worker thread, HANDOFF
    # bytes at a time, one batch in flight while the next is received; small ones and
    # memory writers are written right here
    write_parts = writer.write_parts if isinstance(writer, ReplicatedWriter) and (
        writer.blocking or expected_size is None or expected_size > HANDOFF) else None
    handoff: list[bytes] = []  # received, not yet handed off (each piece as it came)
    pending = 0  # their bytes
    # a handed-off body's payload SHA-256 and flexible checksum are computed beside its
    # writes (a payload hash comes only without aws-chunked, so both see the same bytes)
    hashers = [h for h in (content_sha, summer) if h is not None] if write_parts is not None else []
    in_flight: asyncio.Future[Any] | None = None
    size = 0
    try:
        async with asyncio.timeout(None) as deadline:
            more = True
            while more:
                deadline.reschedule(clock.due(loop.time(), received))
                try:
                    message = await req.receive()
                except asyncio.CancelledError:
                    # the deadline cancels the receive; asyncio.timeout would turn that into
                    # TimeoutError only on leaving the `async with`, past any except here
                    if deadline.expired():
                        raise s3e.RequestTimeout() from None
                    raise
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                received += len(chunk)
                if content_sha is not None and write_parts is None:
                    content_sha.update(chunk)
                if decoder is not None:
                    chunk = decoder.feed(chunk)
                if chunk:
                    size += len(chunk)
                    if size > max_size:
                        raise s3e.EntityTooLarge(MaxSizeAllowed=str(max_size))
                    if summer is not None and write_parts is None:
                        summer.update(chunk)
                    if write_parts is None:
                        writer.write(chunk)
                        continue
                    handoff.append(chunk)
                    pending += len(chunk)
                    if pending >= HANDOFF:
                        if in_flight is not None:
                            await in_flight
                        in_flight = asyncio.ensure_future(in_thread(write_parts, handoff, hashers))
                        handoff, pending = [], 0
            deadline.reschedule(None)
        if in_flight is not None:
            await in_flight
        if write_parts is not None and handoff:
            await in_thread(write_parts, handoff, hashers)
    finally:
        while in_flight is not None and not in_flight.done():
            # the caller aborts the writer on an error: never while a write is running
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([in_flight])
        if in_flight is not None and in_flight.done() and not in_flight.cancelled():
            in_flight.exception()  # retrieved: an error raised here already says what went wrong

    if wire_length is not None and received != wire_length:
        raise s3e.IncompleteBody()
    if decoder is not None:
        decoder.finish()  # the decoded length, if announced, was checked at the final chunk
    if content_sha is not None and content_sha.hexdigest() != payload_hash.lower():
        raise s3e.XAmzContentSHA256Mismatch(
            ClientComputedContentSHA256=payload_hash, S3ComputedContentSHA256=content_sha.hexdigest())
    if expected_md5 is not None and writer.md5 != expected_md5:
        raise s3e.BadDigest(ExpectedDigest=base64.b64encode(expected_md5).decode())
    result = BodyResult(size=writer.size)
    if summer is not None and algorithm is not None:
        actual = summer.b64()
        if in_trailer and decoder is not None:
            expected_sum = decoder.trailers.get(checksums.header_name(algorithm))
            if expected_sum is None:
                raise s3e.InvalidRequest("The declared trailing checksum was not sent.")
            checksums.decode(algorithm, expected_sum)
        if expected_sum is not None and expected_sum != actual:
            raise s3e.BadDigest(f"The {algorithm} you specified did not match the calculated checksum.")
        result.checksums[algorithm] = actual
    return result


async def read_small(req: S3Request, limit: int) -> bytes:
    """Read a whole (XML) body of at most `limit` bytes, decoding aws-chunked if used."""
    payload_hash = payload_mode(req)
    parts: list[bytes] = []
    total = 0
    decoder = chunked_decoder(req)
    loop = asyncio.get_running_loop()
    clock = BodyClock(loop.time(), req.settings.body_timeout_s, req.settings.min_body_rate)
    received = 0
    more = True
    while more:
        try:
            async with asyncio.timeout_at(clock.due(loop.time(), received)):
                message = await req.receive()
        except TimeoutError:
            raise s3e.RequestTimeout() from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if decoder is not None:
            chunk = decoder.feed(chunk)
        total += len(chunk)
        if total > limit:
            raise s3e.MalformedXML("The XML you provided was too large.")
        parts.append(chunk)
    if decoder is not None:
        decoder.finish()
    body = b"".join(parts)
    if payload_hash not in STREAMING and payload_hash != "UNSIGNED-PAYLOAD":
        if hashlib.sha256(body).hexdigest() != payload_hash.lower():
            raise s3e.XAmzContentSHA256Mismatch()
    md5 = _content_md5(req)
    if md5 is not None and hashlib.md5(body).digest() != md5:
        raise s3e.BadDigest()
    return body


def require_integrity(req: S3Request, body: bytes) -> None:
    """A configuration PUT (PutBucketCors, PutBucketLifecycleConfiguration...) needs Content-MD5
    or a flexible checksum (read_small checked the MD5)."""
    if req.header("content-md5") is not None or req.header("x-amz-trailer") is not None:
        return
    sent = [(alg, req.headers[checksums.header_name(alg)]) for alg in checksums.ALGORITHMS
            if checksums.header_name(alg) in req.headers]
    if not sent:
        raise s3e.InvalidRequest("Missing required header for this request: Content-MD5")
    for algorithm, value in sent:
        summer = checksums.new(algorithm)
        summer.update(body)
        if summer.digest() != checksums.decode(algorithm, value):
            raise s3e.BadDigest(f"The {algorithm} you specified did not match the calculated checksum.")
