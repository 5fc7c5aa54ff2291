"""aws-chunked request bodies, decoded incrementally and without I/O.

Wire format (Content-Encoding: aws-chunked):

    body     = *chunk last-chunk trailers CRLF
    chunk    = HEX-SIZE [";chunk-signature=" SIG] CRLF DATA CRLF
    last     = "0" [";chunk-signature=" SIG] CRLF
    trailers = *(NAME ":" VALUE CRLF) ["x-amz-trailer-signature:" SIG CRLF]

States of the decoder (`feed()` moves along them as bytes arrive, at any
byte boundary; `finish()` is the end of the stream):

    SIZE_LINE --size > 0--> DATA --size bytes--> DATA_CRLF --> SIZE_LINE
        |
        +--size = 0--> TRAILER_LINES --blank line, or end of stream--> DONE

Chunk data is passed through as it arrives, never buffered. With a signing
key each chunk's SHA-256 is computed incrementally and its signature checked
when the chunk ends:

    HMAC(key, "AWS4-HMAC-SHA256-PAYLOAD\\n" date "\\n" scope "\\n"
              previous-signature "\\n" sha256("") "\\n" sha256(chunk))

the first previous signature being the seed (the Authorization header's).
Data of a chunk whose signature fails has already been returned: the caller
aborts the whole upload on any error, so nothing unverified is committed.
With a signed trailer, x-amz-trailer-signature signs
"AWS4-HMAC-SHA256-TRAILER\\n" date "\\n" scope "\\n" last-chunk-signature "\\n"
sha256 of the trailer lines as "name:value\\n" in the order sent.

Tolerated: a blank line between the last chunk and its trailers (as AWS's
own example shows), and the stream ending right after the last trailer line
(or right after the last chunk) without the final CRLF.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from manta.server.s3 import errors as s3e
from manta.server.s3 import sigv4

__all__ = ["AwsChunkedDecoder", "decoder_for"]

_SIZE_LINE, _DATA, _DATA_CRLF, _TRAILER_LINES, _DONE = range(5)
_MAX_LINE = 4096
_MAX_TRAILER_SECTION = 16 * 1024
_HEX_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_EMPTY_SHA256 = sigv4.EMPTY_SHA256.encode()
_TRAILER_SIGNATURE = "x-amz-trailer-signature"


class AwsChunkedDecoder:
    def __init__(
        self,
        *,
        signing_key: bytes | None = None,
        amz_date_raw: str = "",
        scope: str = "",
        seed_signature: str | None = None,
        trailer_names: Sequence[str] = (),
        signed_trailer: bool = False,
        max_chunk_size: int = 64 * 2**20,
        decoded_content_length: int | None = None,
    ) -> None:
        if signing_key is not None and seed_signature is None:
            raise ValueError("a signing key needs the seed signature")
        if signed_trailer and signing_key is None:
            raise ValueError("a signed trailer needs a signing key")
        self._key = signing_key
        self._chunk_prefix = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date_raw}\n{scope}\n".encode()
        self._trailer_prefix = f"AWS4-HMAC-SHA256-TRAILER\n{amz_date_raw}\n{scope}\n".encode()
        self._previous = (seed_signature or "").encode()
        self._declared = frozenset(n.strip().lower() for n in trailer_names if n.strip())
        self._signed_trailer = signed_trailer
        self._max_chunk_size = max_chunk_size
        self.expected_length = decoded_content_length  # x-amz-decoded-content-length, if sent
        self._state = _SIZE_LINE
        self._line = bytearray()
        self._remaining = 0
        self._chunk_signature = b""
        self._hasher = hashlib.sha256()
        self._trailer_section = 0
        self._trailer_signature: str | None = None
        self.trailers: dict[str, str] = {}
        self.decoded_length = 0
        self.done = False

    def feed(self, data: bytes | bytearray) -> bytes:
        """Decode the next piece of the body; return the payload bytes it held."""
        n = len(data)
        if not n:
            return b""
        if self._state == _DATA and self._remaining >= n:  # all of it is chunk data
            self._take_data(data)
            return data if type(data) is bytes else bytes(data)
        view = memoryview(data)
        out: list[memoryview] = []
        pos = 0
        while pos < n:
            if self._state == _DATA:
                piece = view[pos : pos + self._remaining]
                self._take_data(piece)
                out.append(piece)
                pos += len(piece)
                continue
            if self._state == _DONE:
                raise s3e.InvalidRequest("Data found after the end of the aws-chunked body.")
            line, pos = self._take_line(data, pos)
            if line is None:
                break
            if self._state == _SIZE_LINE:
                self._on_size_line(line)
            elif self._state == _DATA_CRLF:
                if line:
                    raise s3e.InvalidRequest("Chunk data is longer than its declared size.")
                self._state = _SIZE_LINE
            else:
                self._on_trailer_line(line)
        if len(out) == 1:
            return out[0].tobytes()
        return b"".join(out)

    def finish(self) -> None:
        """The body ended: raise IncompleteBody unless it ended where it may."""
        if self.done:
            return
        if self._state == _TRAILER_LINES and not self._line:
            self._end_of_trailers()
            return
        raise s3e.IncompleteBody("The aws-chunked body ended before its final chunk.")

    def _take_data(self, piece: bytes | bytearray | memoryview) -> None:
        size = len(piece)
        self._remaining -= size
        self.decoded_length += size
        if self._key is not None:
            self._hasher.update(piece)
            if not self._remaining:
                self._verify_chunk()
        if not self._remaining:
            self._state = _DATA_CRLF

    def _take_line(self, data: bytes | bytearray, pos: int) -> tuple[bytes | None, int]:
        limit = _MAX_LINE + 2 - len(self._line)
        end = data.find(b"\n", pos, pos + limit)
        if end < 0:
            if len(data) - pos >= limit:
                raise s3e.InvalidRequest("An aws-chunked framing line is too long.")
            self._line += data[pos:]
            return None, len(data)
        if self._line:
            self._line += data[pos : end + 1]
            line = bytes(self._line)
            self._line.clear()
        else:
            line = bytes(data[pos : end + 1])
        if line[-2:-1] != b"\r":
            raise s3e.InvalidRequest("aws-chunked framing lines must end with CRLF.")
        return line[:-2], end + 1

    def _on_size_line(self, line: bytes) -> None:
        size_text, _, extensions = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size_text):
            raise s3e.InvalidRequest("Invalid aws-chunked chunk size.")
        size = int(size_text, 16)
        if size > self._max_chunk_size:
            raise s3e.InvalidRequest(
                f"Chunk size {size} exceeds the maximum of {self._max_chunk_size} bytes."
            )
        expected = self.expected_length
        if expected is not None and self.decoded_length + size > expected:
            raise s3e.InvalidRequest("The chunks are longer than x-amz-decoded-content-length.")
        if self._key is not None:
            self._chunk_signature = _chunk_signature(extensions)
            self._hasher = hashlib.sha256()
        if size:
            self._remaining = size
            self._state = _DATA
            return
        if self._key is not None:
            self._verify_chunk()
        if expected is not None and self.decoded_length != expected:
            raise s3e.IncompleteBody(
                "The decoded body is shorter than x-amz-decoded-content-length."
            )
        self._state = _TRAILER_LINES

    def _verify_chunk(self) -> None:
        assert self._key is not None
        to_sign = b"".join(
            (
                self._chunk_prefix,
                self._previous,
                b"\n",
                _EMPTY_SHA256,
                b"\n",
                self._hasher.hexdigest().encode(),
            )
        )
        expected = sigv4.hmac_sha256(self._key, to_sign).hex().encode()
        if not hmac.compare_digest(expected, self._chunk_signature):
            raise s3e.SignatureDoesNotMatch(
                "The chunk signature we calculated does not match the signature you provided."
            )
        self._previous = expected

    def _on_trailer_line(self, line: bytes) -> None:
        if not line:
            if self._declared and not self.trailers and self._trailer_signature is None:
                return  # a blank line before the trailers
            self._end_of_trailers()
            return
        self._trailer_section += len(line) + 2
        if self._trailer_section > _MAX_TRAILER_SECTION:
            raise s3e.InvalidRequest("The aws-chunked trailer section is too large.")
        raw_name, colon, raw_value = line.partition(b":")
        try:
            name = raw_name.strip().lower().decode("ascii")
            value = raw_value.strip().decode("utf-8")
        except UnicodeDecodeError:
            raise s3e.InvalidRequest("Malformed aws-chunked trailer.") from None
        if not colon or not name:
            raise s3e.InvalidRequest("Malformed aws-chunked trailer.")
        if self._trailer_signature is not None:
            raise s3e.InvalidRequest(f"The trailer {name} follows the trailer signature.")
        if name == _TRAILER_SIGNATURE:
            self._trailer_signature = value
            return
        if name not in self._declared:
            raise s3e.InvalidRequest(f"The trailer {name} was not declared in x-amz-trailer.")
        if name in self.trailers:
            raise s3e.InvalidRequest(f"The trailer {name} was sent twice.")
        self.trailers[name] = value

    def _end_of_trailers(self) -> None:
        missing = self._declared - self.trailers.keys()
        if missing:
            raise s3e.InvalidRequest(
                f"The declared trailer {', '.join(sorted(missing))} was not sent."
            )
        if self._signed_trailer and (self.trailers or self._trailer_signature is not None):
            self._verify_trailer()
        elif self._trailer_signature is not None:
            raise s3e.InvalidRequest("x-amz-trailer-signature sent for an unsigned trailer.")
        self._state = _DONE
        self.done = True

    def _verify_trailer(self) -> None:
        assert self._key is not None
        if self._trailer_signature is None:
            raise s3e.SignatureDoesNotMatch("The trailer signature is missing.")
        canonical = "".join(f"{name}:{value}\n" for name, value in self.trailers.items())
        to_sign = b"".join(
            (
                self._trailer_prefix,
                self._previous,
                b"\n",
                hashlib.sha256(canonical.encode()).hexdigest().encode(),
            )
        )
        expected = sigv4.hmac_sha256(self._key, to_sign).hex()
        if not hmac.compare_digest(expected.encode(), self._trailer_signature.encode()):
            raise s3e.SignatureDoesNotMatch(
                "The trailer signature we calculated does not match the signature you provided."
            )


def _chunk_signature(extensions: bytes) -> bytes:
    for extension in extensions.split(b";"):
        name, _, value = extension.partition(b"=")
        if name.strip() == b"chunk-signature":
            return value.strip()
    raise s3e.SignatureDoesNotMatch("A chunk of a signed aws-chunked body has no signature.")


def decoder_for(
    headers: Mapping[str, str],
    auth: sigv4.SigV4Auth | None = None,
    signing_key: bytes | None = None,
    *,
    max_chunk_size: int = 64 * 2**20,
) -> AwsChunkedDecoder | None:
    """The decoder a request body needs, or None if it is not aws-chunked.

    `headers` are the request's (lower-case names); `auth` and `signing_key`
    come from sigv4.parse() and sigv4.verify() (None for anonymous requests).
    """
    mode = auth.payload_hash if auth is not None else headers.get("x-amz-content-sha256", "")
    if not mode.startswith("STREAMING-"):
        return None
    trailer_names = [n for n in headers.get("x-amz-trailer", "").split(",") if n.strip()]
    raw_length = headers.get("x-amz-decoded-content-length")
    decoded_length = None
    if raw_length is not None:
        if not (raw_length.isascii() and raw_length.isdigit()):
            raise s3e.InvalidArgument(
                "Invalid x-amz-decoded-content-length",
                ArgumentName="x-amz-decoded-content-length",
                ArgumentValue=raw_length,
            )
        decoded_length = int(raw_length)
    if mode == sigv4.STREAMING_UNSIGNED_TRAILER:
        return AwsChunkedDecoder(
            trailer_names=trailer_names,
            max_chunk_size=max_chunk_size,
            decoded_content_length=decoded_length,
        )
    if mode not in (sigv4.STREAMING_PAYLOAD, sigv4.STREAMING_PAYLOAD_TRAILER):
        raise s3e.NotImplemented_(f"x-amz-content-sha256 {mode} is not supported.")
    if auth is None or auth.presigned or signing_key is None:
        raise s3e.InvalidRequest(f"{mode} needs a request signed with the Authorization header.")
    signed_trailer = mode == sigv4.STREAMING_PAYLOAD_TRAILER
    if trailer_names and not signed_trailer:
        raise s3e.InvalidRequest(f"x-amz-trailer cannot be used with {mode}.")
    return AwsChunkedDecoder(
        signing_key=signing_key,
        amz_date_raw=auth.amz_date_raw,
        scope=auth.scope,
        seed_signature=auth.signature,
        trailer_names=trailer_names,
        signed_trailer=signed_trailer,
        max_chunk_size=max_chunk_size,
        decoded_content_length=decoded_length,
    )
