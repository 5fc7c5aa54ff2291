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
- A deadline on a request's head (`head_timeout_s`): armed when a connection opens and when
  the first bytes of a later request arrive, cancelled when the head is complete. A silent
  connection is closed when it passes; one holding half a head first gets 400
  RequestTimeout. Between requests uvicorn's keep-alive timer closes an idle connection
  (`timeout_keep_alive`, the server's `idle_timeout_s`). Bodies have their own timeout in
  the app (`body_timeout_s`).
- A client that half-closes (shuts down its sending side) in the middle of a request body
  has ended the body: the app sees it end short and answers 400 IncompleteBody before the
  connection closes, as S3 does, instead of the close without an answer that uvicorn gives
  every EOF.
- A cap on open connections (`max_connections`), kept well below the file-descriptor limit
  so blob files and the catalog always find descriptors. A connection arriving at the cap
  takes the place of an idle one, which is closed:

      idle, never finished a request (silent, or inside its first head)   closed first
      idle between requests (keep-alive, or inside a later head)          closed next
      busy (head complete, response not yet sent)                         never closed

  oldest idle first within each group, so a flood of silent connections displaces only
  itself and clients that have been served keep their connections. When every connection
  is busy the new one is answered 503 SlowDown with `Connection: close`.

- The head of a response is held back until its first body bytes (or its end), so a small
  response leaves in one send(2), not two: on loopback each send runs the receiver's TCP
  path too, and for a 4 KiB GET the second one was a third of the event loop's time.

- While a server has several connections open, a connection's small writes (at most
  BATCH_WRITE_BYTES: every answer of a 4 KiB GET or a PUT) wait for the end of the event
  loop's pass (`BatchingTransport`), so the worker finishes all it has ready (the
  answers, and the bookkeeping after each) before its sends wake any client. On loopback
  a send runs the receiver's TCP path and wakes its process, which on a busy machine then
  takes the CPU from the worker in the middle of its pass. 16 clients and two workers on
  two cores got 6,474 GETs/s of 4 KiB with a send per answer and 8,167/s batched (medians
  of five alternating runs), with less CPU per GET. A larger write first sends what
  waits, then goes out at once, so flow control for big answers is unchanged; close and
  write_eof send what waits first, abort drops it.

- A request body reaches the app as the parser's pieces, joined only when the app takes
  more than one at a time (`BodyReceiver`). uvicorn copies each piece into a bytearray and
  out again into bytes; for a large PUT that was two of the five copies the event loop made
  of every byte. Reading pauses when BODY_HIGH_WATER (256 KiB) bytes wait untaken (uvicorn:
  64 KiB; 1 MiB measured no faster), so a connection holds at most that and one read.

- Connections spread over the workers of `manta serve --workers N`. They share one
  listening socket, and a worker that wakes first may accept a whole burst of new
  connections while another accepts none: with 16 keep-alive clients, 1 run in 5 put all
  16 on one worker and served 20-30 % fewer 4 KiB GETs, one core busy and one idle. Each
  worker publishes how many of its connections have sent a request (`WorkerShares`, a
  shared memory array the supervisor makes; a silent connection is no client's load, and
  the head deadline deals with it). A worker holding more than its share plus one asks the client of
  a new request to reconnect (`Connection: close` on the answer, then the close), at most
  one every SHED_GAP_S and never below SHED_MIN_CONNECTIONS; the reconnect is most
  likely taken by a worker waiting in epoll rather than the busy one, and the split
  settles within tens of milliseconds. A pipelined request is never the one asked.

- Websockets (`manta login`) leave the connection cap when they upgrade and have a cap of
  their own, `max_websockets` (MANTA_MAX_WEBSOCKETS, 128): an upgrade past it is 503
  SlowDown. The app accepts a refused one to say why in a frame, then closes it; uvicorn
  waits 10 s for the client's answer to a close, manta WEBSOCKET_CLOSE_S.

The connections of one server share one ConnectionTable: `protocol_for(limits, shares)`
makes the protocol class a server hands to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http
import logging
import mmap
import struct
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from manta.server.s3 import errors as s3e
from manta.server.s3.app import request_id

__all__ = [
    "HEAD_LIMIT_BYTES",
    "WRITE_BUFFER_BYTES",
    "BodyReceiver",
    "ConnectionLimits",
    "ConnectionTable",
    "HttpProtocol",
    "WorkerShares",
    "default_max_connections",
    "protocol_for",
]

WRITE_BUFFER_BYTES = 4 * 1024 * 1024
BODY_HIGH_WATER = 256 * 1024  # body bytes received and not yet taken by the app: reading pauses above
JOIN_BODY_BYTES = 64 * 1024  # a first body write up to this size is joined to the held head
BATCH_WRITE_BYTES = 64 * 1024  # writes up to this size wait for the end of the loop's pass
HEAD_LIMIT_BYTES = 256 * 1024
WEBSOCKET_CLOSE_S = 2.0  # how long a websocket's close waits for the client's answer
REFUSED_CLOSE_S = 1.0
FD_RESERVE = 256
MAX_CONNECTIONS_CEILING = 16384
CAP_LOG_INTERVAL_S = 10.0
SHED_MIN_CONNECTIONS = 4  # a worker holding fewer never asks a client to reconnect
SHED_GAP_S = 0.01  # at most one ask per gap: reconnects land before the next look, and a
# peer that does not accept (stopped) costs at most 1/SHED_GAP_S reconnects a second

log = logging.getLogger("manta")


def default_max_connections(fd_limit: int) -> int:
    """Half of the descriptors above a fixed reserve, the other half (and the reserve) left
    for blob files, temp files, the catalog, job sandboxes and the connections that are
    refused or closing; at most MAX_CONNECTIONS_CEILING (each idle connection costs memory)."""
    return max(16, min(MAX_CONNECTIONS_CEILING, (fd_limit - FD_RESERVE) // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    head_timeout_s: float = 30.0
    max_connections: int = 1024
    send_timeout_s: float = 30.0  # a client that takes no byte of its answer for this long is cut off
    max_websockets: int = 128  # open websocket connections (outside max_connections); more: 503


class WorkerShares:
    """How many clients (connections that sent a request) each worker of one `manta serve
    --workers N` holds: one 8-byte slot per worker in shared memory (`fd`, made by the
    supervisor), written only by its worker. A worker that dies leaves its last count
    until its successor writes 0, so the others ask no client to move to it meanwhile."""

    def __init__(self, fd: int, index: int, workers: int) -> None:
        self._map = mmap.mmap(fd, 8 * workers)
        self._format = f"<{workers}q"
        self.index = index
        self.workers = workers
        self.publish(0)

    def publish(self, count: int) -> None:
        struct.pack_into("<q", self._map, 8 * self.index, count)

    def counts(self) -> tuple[int, ...]:
        return struct.unpack_from(self._format, self._map)

    def over(self, mine: int, moving: int = 0) -> bool:
        """Whether this worker, holding `mine` and with `moving` clients asked to reconnect
        (who count in the total until they land somewhere), holds more than its share plus one."""
        if mine < SHED_MIN_CONNECTIONS:
            return False
        counts = self.counts()
        total = sum(counts) - counts[self.index] + mine + moving
        return mine > -(-total // self.workers) + 1


class ConnectionTable:
    """The open connections of one server and, in closing order, the idle ones; with
    `shares`, those of every worker."""

    def __init__(self, limits: ConnectionLimits, shares: WorkerShares | None = None) -> None:
        self.limits = limits
        self.shares = shares
        self.leaving: set[HttpProtocol] = set()  # asked to reconnect, not yet closed
        self.shed = 0  # clients asked to reconnect (for tests)
        self._shed_at = 0.0
        self.open: set[HttpProtocol] = set()
        self.fresh: dict[HttpProtocol, None] = {}  # idle, no request finished yet; oldest first
        self.resting: dict[HttpProtocol, None] = {}  # idle after a response; oldest first
        self.closed_idle = 0
        self.refused = 0
        self._logged_at = 0.0
        self.websockets = 0  # upgraded connections still open (they left `open`)

    def admit(self, conn: HttpProtocol) -> bool:
        """Make room for a new connection; False when every open one is busy."""
        if len(self.open) >= self.limits.max_connections:
            victim = next(iter(self.fresh), None) or next(iter(self.resting), None)
            if victim is None:
                self.refused += 1
                self._report()
                return False
            self.closed_idle += 1
            self._report()
            victim.close_idle()
        self.open.add(conn)
        self.fresh[conn] = None
        return True

    def move_one(self, conn: HttpProtocol) -> bool:
        """Whether to ask `conn`'s client to reconnect: this worker holds more than its share
        of all the workers' clients (at most one ask every SHED_GAP_S)."""
        if self.shares is None or conn in self.leaving:
            return False
        now = time.monotonic()
        if now - self._shed_at < SHED_GAP_S or not self.shares.over(self.clients(), len(self.leaving)):
            return False
        self._shed_at = now
        self.leaving.add(conn)
        self.shed += 1
        self._publish()
        return True

    def crowded(self) -> bool:
        """Whether this server has other connections open (see BatchingTransport)."""
        return len(self.open) > 1

    def clients(self) -> int:
        """Open connections that have sent a request and were not asked to reconnect."""
        return len(self.open) - len(self.fresh) - len(self.leaving)

    def _publish(self) -> None:
        if self.shares is not None:
            self.shares.publish(self.clients())

    def busy(self, conn: HttpProtocol) -> None:
        if conn in self.fresh:
            del self.fresh[conn]
            self._publish()  # its first request: one more client
        self.resting.pop(conn, None)

    def rest(self, conn: HttpProtocol) -> None:
        if conn in self.open:
            self.busy(conn)
            self.resting[conn] = None

    def drop(self, conn: HttpProtocol) -> None:
        self.fresh.pop(conn, None)  # not through busy(): a closed connection is no new client
        self.resting.pop(conn, None)
        self.open.discard(conn)
        self.leaving.discard(conn)
        self._publish()

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._logged_at >= CAP_LOG_INTERVAL_S:
            log.warning("%d connections open, the cap (MANTA_MAX_CONNECTIONS): %d idle ones closed and "
                        "%d new ones refused since the last report",
                        len(self.open), self.closed_idle, self.refused)
            self._logged_at = now
            self.closed_idle = self.refused = 0


class BatchingTransport:
    """A connection's transport as its protocol writes to it: while `crowded()` (the server
    has other connections open), writes of at most BATCH_WRITE_BYTES wait for the end of
    the event loop's pass and leave together, in order; a larger one sends them first. A
    connection alone writes at once: nothing else competes for the worker, and the wait
    costs a pass (one client's GETs: 6 % fewer). Everything else is the transport's."""

    __slots__ = ("crowded", "loop", "pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 crowded: Callable[[], bool]) -> None:
        self.transport = transport
        self.loop = loop
        self.crowded = crowded
        self.pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        pending = self.pending
        if len(data) <= BATCH_WRITE_BYTES and (pending is not None or self.crowded()):
            if pending is None:
                self.pending = [data]
                self.loop.call_soon(self.send_pending)
            else:
                pending.append(data)
            return
        if pending is not None:
            self.send_pending()
        self.transport.write(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def send_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(map(len, self.pending or ()))

    def write_eof(self) -> None:
        self.send_pending()
        self.transport.write_eof()

    def close(self) -> None:
        self.send_pending()
        self.transport.close()

    def abort(self) -> None:
        self.pending = None
        self.transport.abort()

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


class HeadHoldingTransport:
    """The transport as one response cycle sees it: the response head (its first write
    once the response has started) is held and goes out with the first body write, or
    when the response ends or the connection closes. A 100 Continue (written before the
    response starts) and the head of a HEAD answer pass straight through."""

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self.transport = transport
        self.cycle = cycle
        self.held: bytes | None = None
        self.head_seen = False

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= JOIN_BODY_BYTES:
                self.transport.write(held + data)
                return
            self.transport.write(held)
        elif not self.head_seen and self.cycle.response_started:
            self.head_seen = True
            if self.cycle.scope["method"] != "HEAD":  # a HEAD answer has no body write to wait for
                self.held = data
                return
        self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


class BodyReceiver:
    """The app's `receive` for one request (uvicorn's, without its copies): the body pieces
    the parser hands over are kept as they are, and a receive takes them all, joined (one
    piece is passed on as is)."""

    __slots__ = ("cycle", "flow", "parts", "size")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle
        self.flow = cycle.flow
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, body: bytes) -> None:
        self.parts.append(body)
        self.size += len(body)
        if self.size > BODY_HIGH_WATER:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    async def receive(self) -> dict:
        cycle = self.cycle
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        if not cycle.disconnected and not cycle.response_complete:
            self.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected or cycle.response_complete:
            return {"type": "http.disconnect"}
        parts = self.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.parts, self.size = [], 0
        return {"type": "http.request", "body": body, "more_body": cycle.more_body}


class HttpProtocol(HttpToolsProtocol):
    table: ClassVar[ConnectionTable]  # one per server: see protocol_for()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self._in_body = False
        self._head_bytes = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._unsent = 0
        self._body: BodyReceiver | None = None
        super().connection_made(transport)
        self.transport = BatchingTransport(transport, self.loop, self.table.crowded)  # type: ignore[assignment]
        if self.table.admit(self):
            self._arm_head_timer()
        else:
            self._close_with(s3e.SlowDown())

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_send_timer()
        self.table.drop(self)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The answer's bytes fill the write buffer: from now on the client must take some
        every `send_timeout_s`, or the connection is cut (a client that never reads would
        hold its connection, a slot of the cap and the buffered bytes for ever)."""
        super().pause_writing()
        if self._send_timer is None:
            self._unsent = self._unsent_bytes()
            self._send_timer = self.loop.call_later(self.table.limits.send_timeout_s, self._send_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()

    def _unsent_bytes(self) -> int:
        """Bytes of the answer the client has not taken yet: the transport's buffer and the
        socket's send queue (which drains first: the transport writes again only once the
        kernel has room for a third of its buffer, megabytes on loopback)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return unsent

    def _send_stalled(self) -> None:
        self._send_timer = None
        unsent = self._unsent_bytes()
        if unsent < self._unsent:  # the client takes bytes, slowly: look again later
            self._unsent = unsent
            self._send_timer = self.loop.call_later(self.table.limits.send_timeout_s, self._send_stalled)
            return
        self.logger.warning("closing a connection whose client took no byte of its answer in %g s",
                            self.table.limits.send_timeout_s)
        self.transport.abort()  # connection_lost ends the answer (uvicorn resumes its send)

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_body:
            if self._head_timer is None:
                self._arm_head_timer()
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT_BYTES:
                self.logger.warning("closing a connection whose request head passed %d bytes", HEAD_LIMIT_BYTES)
                self._close_with(s3e.RequestHeaderSectionTooLarge(MaxSizeAllowed=str(HEAD_LIMIT_BYTES)))
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_bytes = 0
        self._cancel_head_timer()
        self.table.busy(self)
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, HeadHoldingTransport):
            cycle.transport = HeadHoldingTransport(self.transport, cycle)  # type: ignore[assignment]
            # the app's task has not run yet (pipelined: it waits in self.pipeline), so it
            # reads `receive` from the cycle after this
            self._body = BodyReceiver(cycle)
            cycle.receive = self._body.receive  # type: ignore[method-assign, assignment]
        # (no new cycle for a websocket upgrade: self.cycle is then the last, finished one)
        if cycle is not None and not cycle.response_complete and cycle.keep_alive and not self.pipeline \
                and self.table.move_one(self):
            cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_body(self, body: bytes) -> None:
        cycle, receiver = self.cycle, self._body
        if receiver is None or cycle is None or receiver.cycle is not cycle:
            super().on_body(body)  # not a cycle of ours (none is made for an upgrade)
            return
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        receiver.add(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        """EOF inside a request body ends the body (the answer is still sent); any other
        EOF closes the connection at once, as in uvicorn."""
        cycle = self.cycle
        if not self._in_body or self._refused or cycle is None or cycle.response_complete:
            return None
        self._in_body = False
        cycle.keep_alive = False
        cycle.more_body = False
        cycle.message_event.set()
        return True  # keep the transport open for writing

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and isinstance(cycle.transport, HeadHoldingTransport):
            cycle.transport.flush()  # a HEAD or bodiless answer writes no body bytes
        super().on_response_complete()
        if not self._busy() and not self.transport.is_closing():
            self.table.rest(self)

    def handle_websocket_upgrade(self) -> None:
        """The connection leaves HTTP for a websocket (`manta login`): uvicorn hands the
        transport to its websocket protocol, so this one's connection_lost never comes; it
        leaves the table now, and counts among the websockets until that protocol's
        connection_lost. At `max_websockets` open ones the upgrade is answered 503 SlowDown
        instead. A websocket's close waits WEBSOCKET_CLOSE_S for the client's answer
        (uvicorn: 10 s), so a refused one, which the app accepts to say why, is not held long."""
        self._cancel_head_timer()
        self._cancel_send_timer()
        table = self.table
        if table.websockets >= table.limits.max_websockets:
            self._close_with(s3e.SlowDown())
            return
        table.drop(self)
        if isinstance(self.transport, BatchingTransport):  # the websocket writes at once
            self.transport.send_pending()
            self.transport = self.transport.transport
        super().handle_websocket_upgrade()
        ws = self.transport.get_protocol()
        if ws is self:
            return
        table.websockets += 1
        lost = ws.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            table.websockets -= 1
            lost(exc)

        ws.connection_lost = connection_lost  # type: ignore[method-assign]
        if getattr(ws, "close_timeout", 0) > WEBSOCKET_CLOSE_S:
            ws.close_timeout = WEBSOCKET_CLOSE_S  # type: ignore[attr-defined]

    def close_idle(self) -> None:
        """Closed to make room for a new connection (the table has chosen this one)."""
        self._refused = True
        self._cancel_head_timer()
        self.table.drop(self)
        self.transport.close()

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.table.limits.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self._busy() or self._in_body:  # a pipelined head waits behind a response in progress
            self._arm_head_timer()
            return
        if self._head_bytes:
            self._close_with(s3e.RequestTimeout())
        else:
            self.table.drop(self)
            self.transport.close()

    def _close_with(self, error: s3e.S3Error) -> None:
        """Answer `error` and close the connection, discarding what the client still sends."""
        self._refused = True
        self.keep_alive = False
        self._cancel_head_timer()
        self.table.drop(self)
        if self._busy():
            self.transport.close()  # a pipelined head while a response is still being sent
            return
        rid = request_id()
        body = error.to_xml("", rid)
        self.transport.write(b"".join([
            f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n".encode(),
            b"content-type: application/xml\r\n",
            b"x-amz-request-id: " + rid.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_CLOSE_S, self.transport.close)


def protocol_for(limits: ConnectionLimits, shares: WorkerShares | None = None) -> type[HttpProtocol]:
    """The protocol class for one server (a worker, with `shares`): its connections share
    one ConnectionTable."""

    class ServerHttpProtocol(HttpProtocol):
        table = ConnectionTable(limits, shares)

    return ServerHttpProtocol
