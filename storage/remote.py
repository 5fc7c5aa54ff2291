"""RemoteNode: storage.Node over HTTP to a `manta node` process (MinIO's storage REST client).

Every request is signed (storage.clusterauth) for the node's id, so that it cannot be replayed
to another node; until the id is known (before `connect`), only GET /v1/health goes unbound,
and any other request first asks for the id (`bound_id`). Requests go over a small per-node
pool of keep-alive http.client connections. Health comes from a `Heartbeat` thread polling
GET /v1/health; `healthy()` is False once no answer came for `down_after_s`, when the node
says it is unhealthy, or after `mark_failed` until the next good answer.

Errors: a connection failure or timeout raises ConnectionError (an OSError: the node is
gone); a read of a missing blob BlobMissing, of a damaged one BlobDamaged(reason); a raw read
(`read_upto`) of a missing blob FileNotFoundError, as LocalNode does; a refused signature
PermissionError; any other failure answer OSError(EIO).

A blob write (`open_write`) is one chunked PUT ?mode=staged streamed by a background thread
fed through a bounded queue (8 MiB), so `write()` only waits when the node falls that far
behind; a sender failure surfaces on the next write() or on commit(). commit() ends the
body, checks the size and SHA-256 the node counted against what was sent, then POSTs commit.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from storage.blobs import BlobInfo
from storage.clusterauth import EMPTY_SHA256, STREAMING, UNBOUND, UNBOUND_OK, sign
from storage.errors import BlobDamaged, BlobMissing
from storage.nodeapi import BLOCK, Node

__all__ = ["Heartbeat", "RemoteNode", "RemoteWriter"]

QUEUE_BYTES = 8 << 20
READ_TIMEOUT_S = 3.0  # one block (1 MiB) from a healthy node takes milliseconds
POOL_SIZE = 8
IDLE_S = 20.0  # a pooled connection idle longer is dropped (the node closes after 75 s)
VERIFY_MB_S = 20.0  # verify's timeout allows at least this rate


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> dict[str, Any]:
        try:
            out = json.loads(self.body or b"{}")
        except ValueError:
            out = {"error": self.body[:200].decode(errors="replace")}
        return out if isinstance(out, dict) else {"value": out}

    @property
    def error(self) -> str:
        return str(self.json().get("error") or f"HTTP {self.status}")


class RemoteNode(Node):
    remote = True

    def __init__(self, url: str, secret: str, node_id: str | None = None, timeout_s: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"node URL {url!r}: expected http://HOST:PORT")
        self.url = url.rstrip("/")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.secret = secret
        self.id = node_id or self.url  # the URL until the node says its id (connect)
        self.timeout_s = timeout_s
        self.down_after_s: float | None = None  # set by a Heartbeat
        self._pool: list[tuple[float, http.client.HTTPConnection]] = []
        self._pool_lock = threading.Lock()
        self._health: dict[str, Any] = {}
        self._health_at = 0.0  # monotonic time of the last answer
        self._latency_ms: float | None = None
        self._failed: str | None = None

    @property
    def address(self) -> str:
        return self.url

    # -- signing -------------------------------------------------------------------------

    def bound_id(self) -> str:
        """The node id requests are signed for; asked of the node (`connect`) when not known."""
        if self.id == self.url:
            self.connect()
        return self.id

    def signed_headers(self, method: str, path: str, content_sha256: str) -> dict[str, str]:
        """The signing headers of one request to this node (storage.clusterauth.sign), bound
        to its id; unbound only for a health request before the id is known."""
        unbound_ok = self.id == self.url and (method, path) in UNBOUND_OK
        node = UNBOUND if unbound_ok else self.bound_id()
        return sign(self.secret, method, path, content_sha256, node=node)

    # -- transport -----------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        now = time.monotonic()
        with self._pool_lock:
            while self._pool:
                idle_since, conn = self._pool.pop()
                if now - idle_since < IDLE_S:
                    return conn, True
                conn.close()
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            if len(self._pool) < POOL_SIZE:
                self._pool.append((time.monotonic(), conn))
                return
        conn.close()

    def request(self, method: str, path: str, body: bytes = b"", timeout_s: float | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        """One signed request; ConnectionError when the node cannot be reached or times out.
        A failure on a reused keep-alive connection is retried once on a fresh one, except
        for commits and tasks (not idempotent)."""
        retriable = not (path.endswith("/commit") or path.startswith("/v1/tasks"))
        digest = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        for attempt in range(2):
            all_headers = {**(headers or {}), **self.signed_headers(method, path, digest)}
            conn, reused = self._connection()
            conn.timeout = timeout_s or self.timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, path, body=body or None, headers=all_headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                                    BrokenPipeError))
                if stale and retriable and attempt == 0:
                    continue
                raise ConnectionError(f"node {self.url}: {method} {path.split('?')[0]}: {exc or type(exc).__name__}") from exc
            if resp.will_close:
                conn.close()
            else:
                self._release(conn)
            return Answer(resp.status, data)
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, obj: Any = None, timeout_s: float | None = None,
              ok: tuple[int, ...] = (200,)) -> Answer:
        body = json.dumps(obj).encode() if obj is not None else b""
        answer = self.request(method, path, body, timeout_s,
                              {"content-type": "application/json"} if body else None)
        if answer.status not in ok:
            raise self._failure(answer, f"{method} {path.split('?')[0]}")
        return answer

    def _failure(self, answer: Answer, what: str) -> OSError:
        if answer.status == 403:
            return PermissionError(errno.EACCES, f"node {self.url} refused {what}: {answer.error}")
        return OSError(errno.EIO, f"node {self.url}: {what}: {answer.error}")

    def post_json(self, path: str, obj: Any, timeout_s: float) -> dict[str, Any]:
        """A long call (a task) on a connection of its own: ConnectionError when the heartbeat
        says the node went down while waiting (the socket is closed to abandon the call)."""
        body = json.dumps(obj).encode()
        headers = {"content-type": "application/json",
                   **self.signed_headers("POST", path, hashlib.sha256(body).hexdigest())}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        done = threading.Event()
        abandoned: list[str] = []

        def watch() -> None:
            while not done.wait(0.25):
                if self.down_after_s is not None and not self.healthy():
                    abandoned.append("node down")
                    if conn.sock is not None:
                        try:
                            conn.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return

        watcher = threading.Thread(target=watch, name=f"watch-{self.id}", daemon=True)
        try:
            conn.request("POST", path, body=body, headers=headers)
            watcher.start()
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            why = abandoned[0] if abandoned else str(exc) or type(exc).__name__
            raise ConnectionError(f"node {self.url}: POST {path}: {why}") from exc
        finally:
            done.set()
            conn.close()
        if abandoned:
            raise ConnectionError(f"node {self.url}: POST {path}: node down")
        if answer.status != 200:
            raise self._failure(answer, f"POST {path}")
        return answer.json()

    # -- health --------------------------------------------------------------------------

    def connect(self) -> RemoteNode:
        """Ask the node who it is (GET /v1/health); ValueError when it is not `node_id`."""
        health = self.poll()
        if health is None:
            raise ConnectionError(f"node {self.url} does not answer")
        if self.id not in (self.url, health["id"]):
            raise ValueError(f"node at {self.url} is {health['id']}, expected {self.id}")
        self.id = health["id"]
        return self

    def poll(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """One health request: the answer (also kept for healthy/space/info), or None."""
        started = time.monotonic()
        try:
            health = self._call("GET", "/v1/health", timeout_s=timeout_s).json()
        except OSError:
            return None
        now = time.monotonic()
        self._health, self._health_at = health, now
        self._latency_ms = (now - started) * 1000
        self._failed = None
        return health

    def healthy(self) -> bool:
        if self._failed is not None or not self._health:
            return False
        if self.down_after_s is not None and time.monotonic() - self._health_at > self.down_after_s:
            return False
        return bool(self._health.get("healthy"))

    def recheck(self, pool: bool = True) -> bool:
        """A fresh check: a node that does not answer it is down until a heartbeat answers
        (so a caller that just saw it fail stops choosing it at once, not after 3 s)."""
        if self.poll() is None:
            self.mark_failed("not answering")
        return self.healthy()

    def mark_failed(self, reason: str) -> None:
        self._failed = reason

    def space(self, max_age_s: float = 0.0) -> tuple[int, int]:
        """From the last health answer when it is recent enough (a heartbeat's figure will do
        for any `max_age_s`: asking per write would add a round trip to every write)."""
        fresh_s = max(max_age_s, 2.0 if self.down_after_s is not None else 0.0)
        if not (max_age_s and self._health and time.monotonic() - self._health_at < fresh_s):
            health = self.poll()
            if health is None:
                raise ConnectionError(f"node {self.url} does not answer")
        return int(self._health["used_bytes"]), int(self._health["free_bytes"])

    def info(self) -> dict[str, Any]:
        self.poll()
        h = self._health
        healthy = self.healthy()
        reason = self._failed or h.get("reason") or ("no heartbeat" if not h else "not answering")
        return {"id": self.id, "spec": self.url, "address": self.url, "backend": "remote",
                "healthy": healthy, "health": "ok" if healthy else reason,
                "used_bytes": h.get("used_bytes", 0), "free_bytes": h.get("free_bytes", 0),
                "pool": h.get("pool"), "pool_health": h.get("pool_health"),
                "slots": h.get("slots", 0), "busy": h.get("busy", 0),
                "last_heartbeat": time.time() - (time.monotonic() - self._health_at) if h else None,
                "latency_ms": round(self._latency_ms, 2) if self._latency_ms is not None else None}

    def pool_key(self) -> str | None:
        pool = self._health.get("pool")
        return f"{self.url}#{pool}" if pool else None

    def scrub_pool(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        out = self._call("POST", "/v1/scrub-pool", {"timeout_s": timeout_s}, timeout_s=timeout_s + 30).json()
        return (f"{self.url}#{out['pool']}", out["result"]) if out.get("pool") else None

    # -- blobs ---------------------------------------------------------------------------

    @staticmethod
    def _blob(blob_id: str, suffix: str = "") -> str:
        if len(blob_id) != 32 or any(c not in "0123456789abcdef" for c in blob_id):
            raise ValueError(f"invalid blob id {blob_id!r}")
        return f"/v1/blobs/{blob_id}{suffix}"

    def open_write(self, blob_id: str) -> RemoteWriter:
        return RemoteWriter(self, blob_id)

    def put_unsynced(self, blob_id: str, data: bytes) -> None:
        answer = self.request("PUT", self._blob(blob_id, "?mode=unsynced"), bytes(data))
        if answer.status != 200:
            raise self._failure(answer, "PUT unsynced")

    def sync(self, blob_ids: list[str]) -> None:
        self._call("POST", "/v1/sync", {"ids": blob_ids}, timeout_s=max(self.timeout_s, 60.0))

    def read(self, blob_id: str, offset: int, length: int, crcs: bytes | None = None,
             handle: Any = None) -> bytes:
        headers = {}
        if crcs:
            first, last = offset // BLOCK, (offset + max(length, 1) - 1) // BLOCK
            headers = {"x-manta-crcs": crcs[4 * first:4 * last + 4].hex(), "x-manta-crcs-from": str(first)}
        # a block read that stalls fails over to another replica soon, not after timeout_s
        answer = self.request("GET", self._blob(blob_id, f"?offset={offset}&length={length}"),
                              timeout_s=min(self.timeout_s, READ_TIMEOUT_S), headers=headers)
        if answer.status == 200:
            return answer.body
        if answer.status == 404:
            raise BlobMissing(blob_id)
        if answer.status == 409:
            raise BlobDamaged(blob_id, answer.error)
        raise self._failure(answer, "GET blob")

    def read_upto(self, blob_id: str, offset: int, length: int) -> bytes:
        answer = self.request("GET", self._blob(blob_id, f"/raw?offset={offset}&length={length}"))
        if answer.status == 404:
            raise FileNotFoundError(errno.ENOENT, f"blob {blob_id} is not on node {self.id}")
        if answer.status != 200:
            raise self._failure(answer, "GET raw blob")
        return answer.body

    def delete(self, blob_id: str) -> bool:
        return bool(self._call("DELETE", self._blob(blob_id)).json().get("deleted"))

    def exists(self, blob_id: str) -> bool:
        return self._call("HEAD", self._blob(blob_id), ok=(200, 404)).status == 200

    def verify(self, blob_id: str, size: int, sha256: bytes, crcs: bytes,
               paced: Callable[[int], None] | None = None) -> str | None:
        """The node reads the blob at its own speed; `paced` hears of the bytes afterwards."""
        out = self._call("POST", self._blob(blob_id, "/verify"),
                         {"size": size, "sha256": sha256.hex(), "crcs": crcs.hex()},
                         timeout_s=self.timeout_s + size / (VERIFY_MB_S * 1e6)).json()
        if paced is not None and out.get("bytes"):
            paced(int(out["bytes"]))
        problem = out.get("problem")
        return str(problem) if problem is not None else None

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        out = self._call("GET", "/v1/blobs", timeout_s=max(self.timeout_s, 120.0)).json()
        return iter([(str(b), float(m)) for b, m in out["blobs"]])

    def sweep_temp(self) -> int:
        return int(self._call("POST", "/v1/sweep-temp", {}).json()["removed"])

    def copy_from(self, peer: Node, blob_id: str) -> None:
        """Node to node, never through the front door: from another remote node, this node
        fetches the blob itself; from the caller's own node (a task agent copying its
        outputs), the bytes are pushed from there."""
        if isinstance(peer, RemoteNode):
            self._call("POST", self._blob(blob_id, "/fetch"), {"from": peer.url, "id": peer.bound_id()},
                       timeout_s=max(self.timeout_s, 600.0))
        else:
            self.copy_by_reading(peer, blob_id)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, []
        for _, conn in pool:
            conn.close()


class RemoteWriter:
    """One staged blob PUT, streamed by a background thread (see the module docstring)."""

    def __init__(self, node: RemoteNode, blob_id: str) -> None:
        self.node = node
        self.blob_id = blob_id
        self.size = 0
        self._sha = hashlib.sha256()
        self._queue: collections.deque[bytes | None] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._answer: Answer | None = None
        self._closed = False
        path = node._blob(blob_id, "?mode=staged")
        signed = node.signed_headers("PUT", path, STREAMING)
        self._conn = http.client.HTTPConnection(node.host, node.port, timeout=node.timeout_s)
        try:
            self._conn.putrequest("PUT", path, skip_accept_encoding=True)
            for name, value in signed.items():
                self._conn.putheader(name, value)
            self._conn.putheader("transfer-encoding", "chunked")
            self._conn.endheaders()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise ConnectionError(f"node {node.url}: PUT blob: {exc}") from exc
        self._thread = threading.Thread(target=self._send, name=f"put-{node.id}", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        sock = self._conn.sock
        assert sock is not None
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait()
                    data = self._queue.popleft()
                    if data is not None:
                        self._queued -= len(data)
                    self._cond.notify_all()
                if data is None:
                    break
                self._sha.update(data)
                sock.sendall(b"%x\r\n" % len(data))
                sock.sendall(data)
                sock.sendall(b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            resp = self._conn.getresponse()
            self._answer = Answer(resp.status, resp.read())
        except BaseException as exc:  # noqa: BLE001  # surfaced on the caller's thread
            self._error = exc
        finally:
            with self._cond:
                self._closed = True
                self._queue.clear()
                self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ConnectionError(f"node {self.node.url}: PUT blob {self.blob_id}: {self._error}")
        if self._answer is not None and self._answer.status != 200:
            raise self.node._failure(self._answer, f"PUT blob {self.blob_id}")

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        with self._cond:
            while self._queued >= QUEUE_BYTES and not self._closed:
                # a full queue: the node is slow, or gone; the heartbeat tells which, sooner
                # than the socket's timeout would
                if not self._cond.wait(0.25) and not self.node.healthy():
                    self._error = self._error or ConnectionError("the node stopped answering heartbeats")
                    self._shutdown()
                    break
            self._raise_if_failed()
            if self._closed:
                raise ConnectionError(f"node {self.node.url}: PUT blob {self.blob_id} is closed")
            self._queue.append(bytes(data))
            self._queued += len(data)
            self.size += len(data)
            self._cond.notify_all()

    def commit(self) -> BlobInfo:
        with self._cond:
            self._raise_if_failed()
            self._queue.append(None)
            self._cond.notify_all()
        self._thread.join()
        self._conn.close()
        self._raise_if_failed()
        assert self._answer is not None
        counted = self._answer.json()
        sha = self._sha.hexdigest()
        if counted.get("size") != self.size or counted.get("sha256") != sha:
            self.abort()
            raise OSError(errno.EIO, f"node {self.node.url} received {counted.get('size')} bytes "
                                     f"of blob {self.blob_id}, {self.size} were sent")
        self.node._call("POST", self.node._blob(self.blob_id, "/commit"), {"size": self.size, "sha256": sha},
                        timeout_s=max(self.node.timeout_s, 60.0))
        return BlobInfo(self.blob_id, self.size, b"", bytes.fromhex(sha))

    def _shutdown(self) -> None:
        """Cut the connection: a sender blocked in sendall returns at once."""
        if self._conn.sock is not None:
            try:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def abort(self) -> None:
        """Abandon the PUT (the node drops a body cut short) and drop what the node staged."""
        with self._cond:
            finished = self._answer is not None
            self._closed = True
            self._queue.clear()
            self._queue.append(None)
            self._cond.notify_all()
        if not finished:
            self._shutdown()
        self._thread.join(timeout=self.node.timeout_s)
        self._conn.close()
        try:
            self.node._call("POST", self.node._blob(self.blob_id, "/abort"), {}, ok=(200, 404))
        except OSError:
            pass  # the node is gone: its temp file is swept when it restarts


class Heartbeat:
    """Polls each node's /v1/health every `interval_s` (one thread per node, so a node that
    hangs delays nobody else's verdict)."""

    def __init__(self, nodes: list[RemoteNode], interval_s: float = 1.0, timeout_s: float = 2.0,
                 down_after_s: float = 3.0) -> None:
        self.nodes = nodes
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.down_after_s = down_after_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        for node in self.nodes:
            node.down_after_s = self.down_after_s
            thread = threading.Thread(target=self._run, args=(node,), name=f"heartbeat-{node.id}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, node: RemoteNode) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            node.poll(self.timeout_s)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)
        self._threads.clear()
