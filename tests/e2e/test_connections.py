"""Connections that do not behave: silent ones, half a request head, a flood past the cap,
and a server out of file descriptors (manta/server/protocol.py, storage.errors.ResourceExhausted).

Each test runs a server of its own with a small cap and short deadlines (env), and reaches
it with raw sockets and http.client on presigned URLs, so every connection is one the test
controls. Nothing here may be queued for repair: the catalog's `repairs` table stays empty
and the server never logs a replica as damaged.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import resource
import selectors
import socket
import time
from dataclasses import dataclass
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import Server
from tests.e2e.test_nodes import read_catalog

CAP = 64
HEAD_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 2.0
SERVED_WITHIN_S = 1.0  # the acceptance bound for a normal client during the flood
CLOSE_SLACK_S = 3.0
DATA = os.urandom(200 * 1024)  # above the small-object size: a blob file is opened per GET
HALF_HEAD = b"GET /conn/k HTTP/1.1\r\nHost: 127.0.0.1\r\nx-still-typing: "


@dataclass
class Reply:
    status: int
    body: bytes
    seconds: float

    @property
    def code(self) -> str | None:
        return ET.fromstring(self.body).findtext("Code") if self.body.startswith(b"<?xml") else None


def start(server: Server, **env: str) -> object:
    server.env = {"MANTA_MAX_CONNECTIONS": str(CAP), "MANTA_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
                  "MANTA_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), **env}
    server.start()
    s3 = server.client(signature_version="s3v4")  # boto3 would presign with SigV2
    s3.create_bucket(Bucket="conn")  # type: ignore[attr-defined]
    s3.put_object(Bucket="conn", Key="k", Body=DATA)  # type: ignore[attr-defined]
    return s3


def presigned(server: Server, s3: object, method: str, key: str = "k") -> str:
    url: str = s3.generate_presigned_url(method, Params={"Bucket": "conn", "Key": key},  # type: ignore[attr-defined]
                                         ExpiresIn=600)
    return url[len(server.url):]


def call(conn: http.client.HTTPConnection, method: str, target: str, body: bytes | None = None) -> Reply:
    started = time.monotonic()
    conn.request(method, target, body=body)
    resp = conn.getresponse()
    data = resp.read()
    return Reply(resp.status, data, time.monotonic() - started)


def assert_nothing_queued_for_repair(server: Server) -> None:
    assert read_catalog(server.data_dir).repairs == set()
    assert "queued for repair" not in server.log()
    assert "failed during a write" not in server.log()


def wait_closed(socks: list[socket.socket], within_s: float) -> dict[socket.socket, tuple[bytes, float]]:
    """Read every socket until the server closes it (EOF or reset): what each received and
    when it was closed; sockets still open after `within_s` are left out."""
    received = {s: b"" for s in socks}
    closed: dict[socket.socket, tuple[bytes, float]] = {}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + within_s
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[s] += chunk
                else:
                    sel.unregister(s)
                    closed[s] = (received[s], time.monotonic())
    return closed


@pytest.mark.parametrize("workers", [None, 2], ids=["default-workers", "2-workers"])
def test_flood_of_idle_and_half_head_connections(fresh_server: Server, workers: int | None) -> None:
    """3x the cap of silent and half-head connections: a client on its existing keep-alive
    connection and a new client are served within 1 s, the flood is closed by the head
    deadline (half heads with 400 RequestTimeout), and nothing is queued for repair."""
    fresh_server.workers = workers or fresh_server.workers
    s3 = start(fresh_server)
    target = presigned(fresh_server, s3, "get_object")
    existing = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
    assert call(existing, "GET", target).body == DATA
    sock_before = existing.sock

    flood: list[socket.socket] = []
    half_heads: set[socket.socket] = set()
    try:
        for i in range(3 * CAP):
            sock = socket.create_connection(("127.0.0.1", fresh_server.port), timeout=5)
            flood.append(sock)
            if i % 2:
                half_heads.add(sock)
                try:
                    sock.sendall(HALF_HEAD)
                except OSError:
                    pass  # already closed to make room: the reads below see it
        flood_opened = time.monotonic()

        again = call(existing, "GET", target)
        assert (again.status, again.body) == (200, DATA)
        assert existing.sock is sock_before, "the existing keep-alive connection was replaced"
        newcomer = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
        first = call(newcomer, "GET", target)
        assert (first.status, first.body) == (200, DATA)
        print(f"during a flood of {len(flood)} connections (cap {CAP}): existing connection served in "
              f"{again.seconds:.3f}s, new one in {first.seconds:.3f}s")
        assert again.seconds < SERVED_WITHIN_S and first.seconds < SERVED_WITHIN_S

        closed = wait_closed(flood, flood_opened - time.monotonic() + HEAD_TIMEOUT_S + CLOSE_SLACK_S)
        assert len(closed) == len(flood), f"{len(flood) - len(closed)} flood connections still open"
        timed_out = [s for s in half_heads if closed[s][0]]
        for s in timed_out:
            assert closed[s][0].startswith(b"HTTP/1.1 400 "), closed[s][0][:200]
            assert b"<Code>RequestTimeout</Code>" in closed[s][0]
        assert all(not closed[s][0] for s in flood if s not in half_heads), "a silent connection got bytes"
        assert timed_out, "no half-head connection lasted until its deadline"
        last = max(at for _, at in closed.values()) - flood_opened
        print(f"{len(timed_out)} half heads answered RequestTimeout; the last flood connection closed "
              f"{last:.2f}s after the flood (head deadline {HEAD_TIMEOUT_S}s)")

        # both clients' connections, idle since their last response, are closed by the idle deadline
        idle = wait_closed([existing.sock, newcomer.sock], IDLE_TIMEOUT_S + CLOSE_SLACK_S)
        assert len(idle) == 2 and all(data == b"" for data, _ in idle.values())
        newcomer.close()
    finally:
        existing.close()
        for sock in flood:
            sock.close()
    assert_nothing_queued_for_repair(fresh_server)


def test_cap_of_busy_connections_refuses_new_ones_with_slowdown(fresh_server: Server) -> None:
    """When every connection under the cap has a request in progress, a new connection gets
    503 SlowDown and is closed; the requests in progress are not cut and complete. One
    process, whatever MANTA_TEST_WORKERS says: the cap holds in each worker, and which
    worker accepts a connection is the kernel's choice."""
    fresh_server.workers = 1
    cap = 8
    s3 = start(fresh_server, MANTA_MAX_CONNECTIONS=str(cap))
    body = b"x" * 1000
    busy: list[http.client.HTTPConnection] = []
    try:
        for i in range(cap):
            conn = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
            conn.putrequest("PUT", presigned(fresh_server, s3, "put_object", f"busy-{i}"))
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body[:10])  # the head is complete, the body is not: a request in progress
            busy.append(conn)
        time.sleep(0.2)  # let the server parse the heads (they count as busy once parsed)

        refused = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
        reply = call(refused, "GET", presigned(fresh_server, s3, "get_object"))
        assert (reply.status, reply.code) == (503, "SlowDown"), reply
        assert reply.seconds < SERVED_WITHIN_S
        refused.close()

        for conn in busy:
            conn.send(body[10:])
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        newcomer = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
        assert call(newcomer, "GET", presigned(fresh_server, s3, "get_object", "busy-0")).body == body
        newcomer.close()
    finally:
        for conn in busy:
            conn.close()
    assert_nothing_queued_for_repair(fresh_server)


def test_a_client_that_stops_reading_its_answer_is_cut_off_and_a_slow_one_is_not(fresh_server: Server) -> None:
    """A client that takes no byte of its answer for the send timeout (MANTA_BODY_TIMEOUT_S)
    loses its connection, so it holds neither a slot of the cap nor the buffered bytes for
    ever; one that reads slowly but steadily gets its whole answer. One process, as the cap
    is per worker."""
    fresh_server.workers = 1
    cap, timeout_s, size = 4, 1.5, 12 * 1024 * 1024
    s3 = start(fresh_server, MANTA_MAX_CONNECTIONS=str(cap), MANTA_BODY_TIMEOUT_S=str(timeout_s))
    s3.put_object(Bucket="conn", Key="big", Body=os.urandom(size))  # type: ignore[attr-defined]
    target = presigned(fresh_server, s3, "get_object", "big")
    stalled = []
    try:
        for _ in range(cap):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect(("127.0.0.1", fresh_server.port))
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{fresh_server.port}\r\n\r\n".encode())
            stalled.append(sock)  # and never read
        time.sleep(0.5)
        refused = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
        assert call(refused, "GET", presigned(fresh_server, s3, "get_object")).code == "SlowDown"
        refused.close()
        deadline = time.monotonic() + 4 * timeout_s + 5
        while time.monotonic() < deadline:
            newcomer = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
            reply = call(newcomer, "GET", presigned(fresh_server, s3, "get_object"))
            newcomer.close()
            if reply.status == 200:
                break
            time.sleep(0.5)
        assert reply.status == 200 and reply.body == DATA, "the stalled clients still hold the cap"
        for sock in stalled:  # each got part of its answer, then the connection was cut
            got = 0
            sock.settimeout(5)
            try:
                while chunk := sock.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < size
    finally:
        for sock in stalled:
            sock.close()
    # a slow reader (a few MB/s) is not cut: the server's buffers stay full for longer than
    # the timeout at a time, but the client takes bytes
    slow = socket.create_connection(("127.0.0.1", fresh_server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    slow.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{fresh_server.port}\r\nConnection: close\r\n\r\n".encode())
    got = b""
    slow.settimeout(10)
    while chunk := slow.recv(256 * 1024):
        got += chunk
        time.sleep(0.02)
    slow.close()
    assert got.startswith(b"HTTP/1.1 200") and len(got) > size


def test_out_of_file_descriptors_is_slowdown_not_damage(fresh_server: Server) -> None:
    """The server's descriptor limit is lowered under it (prlimit) to a few dozen above what
    it uses, with the connection cap far above that: connections are opened one by one, each
    doing a GET and a replicated PUT, until the server can no longer accept. Answers are 200
    or 503 SlowDown (EMFILE opening a blob or a temp file), never 500; no node is marked
    down and nothing is queued for repair; with descriptors free again all works. One
    worker, whatever MANTA_TEST_WORKERS says (the limit is lowered for the process that
    serves: the server itself, or its one worker under a supervisor, as with a PostgreSQL
    catalog)."""
    fresh_server.workers = 1
    fresh_server.extra_args = ["--nodes", "2"]
    s3 = start(fresh_server, MANTA_MAX_CONNECTIONS="1000")
    assert fresh_server.proc is not None
    pid = fresh_server.worker_pids()[0] if fresh_server.catalog else fresh_server.proc.pid
    get_target = presigned(fresh_server, s3, "get_object")
    put_target = presigned(fresh_server, s3, "put_object", "new")
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    limit = in_use + 40
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))  # the soft limit: no privilege needed
    conns: list[http.client.HTTPConnection] = []
    statuses: list[tuple[int, str | None]] = []
    try:
        for _ in range(80):
            conn = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
            conns.append(conn)
            try:
                got = call(conn, "GET", get_target)
                put = call(conn, "PUT", put_target, DATA)
            except (ConnectionError, http.client.HTTPException):
                break  # accept failed (EMFILE): the connection was closed unanswered
            for reply in (got, put):
                statuses.append((reply.status, reply.code))
                assert reply.status == 200 or (reply.status, reply.code) == (503, "SlowDown"), reply
            assert got.status != 200 or got.body == DATA
        slow = sum(status == 503 for status, _ in statuses)
        print(f"fd limit {limit} ({in_use} in use at start): {len(conns)} connections, "
              f"{len(statuses) - slow} answers 200, {slow} SlowDown")
        assert slow, "the descriptor limit was never reached: no SlowDown seen"
    finally:
        for conn in conns:
            conn.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))

    conn = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=10)
    try:
        assert call(conn, "GET", get_target).body == DATA
        assert call(conn, "PUT", put_target, DATA).status == 200  # 2 copies: both nodes still up
    finally:
        conn.close()
    assert_nothing_queued_for_repair(fresh_server)


def _reply(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, bytearray]:
    """One response read off a raw socket (Content-Length bodies): status, body, what is left."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(fields.get("content-length", "0"))
    rest_buf = bytearray(rest)
    while len(rest_buf) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        rest_buf += chunk
    return int(lines[0].split()[1]), bytes(rest_buf[:length]), rest_buf[length:]


def test_bodies_sent_in_pieces_pipelined_or_after_100_continue_are_stored_whole(server: Server) -> None:
    """Request bodies reach the app as the parser's pieces (protocol.BodyReceiver): a body
    sent in thousands of small writes, above the read-pause mark (256 KiB), two PUTs
    pipelined in one send, and a body sent only after 100 Continue are all stored byte for
    byte, each under its own key."""
    s3 = server.client(signature_version="s3v4")  # boto3 would presign with SigV2
    s3.create_bucket(Bucket="pieces")  # type: ignore[attr-defined]

    def put_url(key: str) -> str:
        url: str = s3.generate_presigned_url("put_object", Params={"Bucket": "pieces", "Key": key},  # type: ignore[attr-defined]
                                             ExpiresIn=600)
        return url[len(server.url):]

    def head(key: str, length: int, *extra: str) -> bytes:
        return (f"PUT {put_url(key)} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"Content-Length: {length}\r\n" + "".join(f"{h}\r\n" for h in extra) + "\r\n").encode()

    bodies = {"trickled": os.urandom(3 * 1024 * 1024 + 17), "first": os.urandom(300_000),
              "second": os.urandom(2 * 1024 * 1024 + 5), "continued": os.urandom(1_500_001)}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        data = bodies["trickled"]
        sock.sendall(head("trickled", len(data)))
        for i in range(0, len(data), 1500):  # a piece per segment, as a slow link delivers them
            sock.sendall(data[i:i + 1500])
        status, answer, buf = _reply(sock, buf)
        assert status == 200, answer

        sock.sendall(head("first", len(bodies["first"])) + bodies["first"]
                     + head("second", len(bodies["second"])) + bodies["second"])
        for _ in range(2):
            status, answer, buf = _reply(sock, buf)
            assert status == 200, answer

        sock.sendall(head("continued", len(bodies["continued"]), "Expect: 100-continue"))
        status, _, buf = _reply(sock, buf)
        assert status == 100
        sock.sendall(bodies["continued"])
        status, answer, buf = _reply(sock, buf)
        assert status == 200, answer
        assert not buf
    for key, body in bodies.items():
        got = s3.get_object(Bucket="pieces", Key=key)  # type: ignore[attr-defined]
        assert got["ETag"].strip('"') == hashlib.md5(body).hexdigest(), key
        assert got["Body"].read() == body, key


def test_pipelined_answers_small_and_large_leave_whole_and_in_order(server: Server) -> None:
    """Small answers wait for the end of the event loop's pass (protocol.BatchingTransport)
    and a large one goes at once: requests pipelined in one send (GETs small and large, a
    HEAD, an error, a PUT and a GET of what it wrote) are answered in order, each whole."""
    s3 = server.client(signature_version="s3v4")
    s3.create_bucket(Bucket="pipelined")  # type: ignore[attr-defined]
    objects = {"a": os.urandom(4096), "big": os.urandom(300_000), "b": os.urandom(10)}
    for key, body in objects.items():
        s3.put_object(Bucket="pipelined", Key=key, Body=body)  # type: ignore[attr-defined]
    new = os.urandom(5000)

    def request(method: str, key: str, body: bytes = b"") -> bytes:
        op = {"GET": "get_object", "HEAD": "head_object", "PUT": "put_object"}[method]
        url: str = s3.generate_presigned_url(op, Params={"Bucket": "pipelined", "Key": key},  # type: ignore[attr-defined]
                                             ExpiresIn=600)
        length = f"Content-Length: {len(body)}\r\n" if method == "PUT" else ""
        return (f"{method} {url[len(server.url):]} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"{length}\r\n").encode() + body

    sent = [("GET", "a", b""), ("HEAD", "a", b""), ("GET", "missing", b""), ("GET", "big", b""),
            ("GET", "b", b""), ("PUT", "c", new), ("GET", "c", b""), ("GET", "a", b"")]
    want = [(200, objects["a"]), (200, b""), (404, None), (200, objects["big"]), (200, objects["b"]),
            (200, b""), (200, new), (200, objects["a"])]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"".join(request(*r) for r in sent))
        buf = bytearray()
        for (method, key, _), (status, body) in zip(sent, want, strict=True):
            if method == "HEAD":  # Content-Length without a body
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(65536)
                head, _, rest = bytes(buf).partition(b"\r\n\r\n")
                got_status, got, buf = int(head.split()[1]), b"", bytearray(rest)
                assert f"content-length: {len(objects[key])}".encode() in head.lower()
            else:
                got_status, got, buf = _reply(sock, buf)
            assert got_status == status, (method, key, got[:200])
            if body is None:
                assert b"<Code>NoSuchKey</Code>" in got
            else:
                assert got == body, (method, key, len(got))
        assert not buf


def _upgrade(server: Server, path: str = "/_manta/login/conn/k") -> socket.socket:
    """An unsigned websocket upgrade, sent and not answered by the client."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    return sock


def test_websockets_have_a_cap_of_their_own_and_a_refused_one_is_not_held(fresh_server: Server) -> None:
    """Websocket upgrades leave the connection cap, so they have one of their own
    (MANTA_MAX_WEBSOCKETS, 4 here): the fifth open one is 503 SlowDown. A refused upgrade
    (unsigned: the app accepts it to say AccessDenied in a frame) is closed 2 s after, when
    its client does not answer the close, not 10 s; then the next upgrade is taken again."""
    fresh_server.workers = 1  # the cap holds per process
    start(fresh_server, MANTA_MAX_WEBSOCKETS="4")
    held = [_upgrade(fresh_server) for _ in range(4)]
    try:
        for sock in held:  # each answered 101 and its refusal, and counted
            assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
        extra = _upgrade(fresh_server)
        answer = extra.recv(65536)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"<Code>SlowDown</Code>" in answer, answer
        started = time.monotonic()
        closed = wait_closed(held, within_s=8.0)
        assert len(closed) == 4 and max(t for _, t in closed.values()) - started < 4.0, closed
        again = _upgrade(fresh_server)
        assert again.recv(65536).startswith(b"HTTP/1.1 101 ")
        again.close()
    finally:
        for sock in held:
            sock.close()
