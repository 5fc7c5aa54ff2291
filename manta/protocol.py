"""uvicorn's httptools protocol, tuned for an object store.

- A deeper write buffer: a GET streaming 1 MiB blocks keeps the socket busy while the next
  block is read, instead of pausing at uvloop's default 64 KiB high-water mark after every
  write.
- A bound on a request's head: httptools buffers a header line until it ends, so a client
  that never finishes its headers could grow the process without limit. The app answers
  RequestHeaderSectionTooLarge above `max_header_bytes` (8 KiB) once the head is parsed;
  a head that passes HEAD_LIMIT_BYTES before it is complete gets the same answer here; the
  rest of what the client sends is discarded unread, and the connection closed shortly
  after (a close with unread bytes would reset it and could lose the answer).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from manta.s3 import errors as s3e
from manta.s3.app import request_id

__all__ = ["HEAD_LIMIT_BYTES", "WRITE_BUFFER_BYTES", "HttpProtocol"]

WRITE_BUFFER_BYTES = 4 * 1024 * 1024
HEAD_LIMIT_BYTES = 256 * 1024
REFUSED_CLOSE_S = 1.0


class HttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self._in_body = False
        self._head_bytes = 0
        self._refused = False
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body:
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT_BYTES:
                self._refuse_head()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._refused = True
        self.keep_alive = False
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head while a response is still being sent
            return
        rid = request_id()
        body = s3e.RequestHeaderSectionTooLarge(MaxSizeAllowed=str(HEAD_LIMIT_BYTES)).to_xml("", rid)
        self.logger.warning("closing a connection whose request head passed %d bytes", HEAD_LIMIT_BYTES)
        self.transport.write(b"".join([
            b"HTTP/1.1 400 Bad Request\r\n",
            b"content-type: application/xml\r\n",
            b"x-amz-request-id: " + rid.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_CLOSE_S, self.transport.close)
