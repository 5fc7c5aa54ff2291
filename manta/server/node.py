"""`manta node`: one LocalNode served over HTTP to the front door and to peer nodes, plus the
task agent (docs/cluster-protocol.md; client side: storage.remote.RemoteNode).

Every request is checked (storage.clusterauth.Verifier) before anything else happens: the
signing headers first (bound to this node's id: a request signed for another node is
refused as "wrong node"), then, once the body is read, its digest. Refusals answer 403
{"error": why} and log one WARNING line "refused METHOD PATH from ADDR: why".

Staged writes: PUT ?mode=staged streams the body into the node's BlobWriter (tmp/ID.tmp),
hashing as it goes, and keeps the writer open; POST commit compares size and SHA-256 and
commits (fsync, rename, fsync dir); POST abort or ten minutes without a commit drops it.
DELETE moves the blob into trash/ for TRASH_S; reads fall back to it, so a read that began
before an overwrite finishes (what `pin` means remotely). Disk work runs in worker threads;
tasks run in threads of their own limiter so that long tasks never starve blob I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from manta.server.serving import serve_until_stopped
from storage import LocalNode, parse_spec
from storage.blobs import BLOB_ID, BlobWriter
from storage.clusterauth import Refused, Verifier
from storage.errors import BlobDamaged
from storage.nodeapi import check_blocks
from storage.remote import RemoteNode

if TYPE_CHECKING:
    from manta.server.login import SessionSlots

log = logging.getLogger("manta.node")

PIECE = 1 << 20  # staged bodies are written in pieces this big
MAX_BODY = 64 << 20  # a body that is not a staged blob
MAX_READ = 256 << 20
STAGED_TTL_S = 600.0
TRASH_S = 60.0
SWEEP_EVERY_S = 10.0
LOGIN_REQUEST_TIMEOUT_S = 10.0

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Staged:
    writer: BlobWriter
    sha: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    receiving: bool = True
    aborted: bool = False
    opened: float = field(default_factory=time.monotonic)

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.writer.write(data)
        self.size += len(data)


def error(status: int, why: str) -> JSONResponse:
    return JSONResponse({"error": why}, status_code=status)


class NodeApp:
    """The routes of one node; `agent` (jobs.agent.TaskAgent or None) runs tasks."""

    def __init__(self, node: LocalNode, secret: str, agent: Any = None) -> None:
        self.node = node
        self.secret = secret
        self.agent = agent
        self.verifier = Verifier(secret, node.id)
        self.staged: dict[str, Staged] = {}
        self.peers: dict[tuple[str, str], RemoteNode] = {}  # by (url, id)
        self.task_limiter = anyio.CapacityLimiter(max(1, int(getattr(agent, "slots", 0) or 0)) + 4)
        self.login_slots: SessionSlots | None = None  # made with the first session

    # -- signing -------------------------------------------------------------------------

    def signed(self, handler: Handler, streaming: bool = False) -> Handler:
        async def checked(request: Request) -> Response:
            path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
            query = request.scope.get("query_string", b"").decode("latin-1")
            target = f"{path}?{query}" if query else path
            staged = streaming and request.query_params.get("mode") == "staged"
            try:
                self.verifier.check(request.method, target, request.headers, None, streaming_ok=staged)
                if not staged:
                    body = await self._body(request)
                    self.verifier.check_digest(request.headers, hashlib.sha256(body).hexdigest())
                    request.state.body = body
            except Refused as exc:
                return self.refuse(request, exc.why)
            except ClientDisconnect:
                return error(400, "body cut short")
            blob_id = request.path_params.get("blob_id")
            if blob_id is not None and not BLOB_ID.match(blob_id):
                return error(400, "bad blob id")
            return await handler(request)

        return checked

    def refuse(self, request: Request, why: str) -> JSONResponse:
        addr = f"{request.client.host}:{request.client.port}" if request.client else "?"
        log.warning("refused %s %s from %s: %s", request.method, request.url.path, addr, why)
        return error(403, why)

    @staticmethod
    async def _body(request: Request) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise Refused("body digest mismatch")  # no signed body is this big
        return bytes(body)

    @staticmethod
    def json_body(request: Request) -> dict[str, Any]:
        out = json.loads(request.state.body or b"{}")
        return out if isinstance(out, dict) else {}

    # -- health ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        def check() -> dict[str, Any]:
            healthy, reason, pool_state = self.node.status()
            try:
                used, free = self.node.space(0.25)
            except OSError as exc:
                used, free, healthy, reason = 0, 0, False, f"statvfs: {exc.strerror or exc}"
            return {"id": self.node.id, "healthy": healthy, "reason": reason, "used_bytes": used,
                    "free_bytes": free, "pool": self.node.pool, "pool_health": pool_state,
                    "slots": self.agent.slots if self.agent is not None else 0,
                    "busy": self.agent.busy() if self.agent is not None else 0, "time": time.time()}

        return JSONResponse(await anyio.to_thread.run_sync(check))

    # -- staged and small writes -------------------------------------------------------------

    async def put_blob(self, request: Request) -> Response:
        blob_id, mode = request.path_params["blob_id"], request.query_params.get("mode")
        if mode == "unsynced":
            await anyio.to_thread.run_sync(self.node.put_unsynced, blob_id, request.state.body)
            return JSONResponse({})
        if mode != "staged":
            return error(400, "mode must be staged or unsynced")
        if blob_id in self.staged:
            return error(409, "a write of this blob is in progress")
        try:
            writer = await anyio.to_thread.run_sync(self.node.open_write, blob_id)
        except FileExistsError:
            return error(409, "a write of this blob is in progress")
        entry = self.staged[blob_id] = Staged(writer)
        try:
            piece = bytearray()
            async for chunk in request.stream():
                piece += chunk
                if len(piece) >= PIECE:
                    data, piece = bytes(piece), bytearray()
                    await anyio.to_thread.run_sync(entry.write, data)
                if entry.aborted:
                    raise ClientDisconnect()
            if piece:
                await anyio.to_thread.run_sync(entry.write, bytes(piece))
        except (ClientDisconnect, OSError) as exc:
            self._drop(blob_id, entry)
            if isinstance(exc, ClientDisconnect):
                return error(400, "body cut short")
            log.warning("staged write of %s failed: %s", blob_id, exc)
            return error(507 if exc.errno == 28 else 500, f"write failed: {exc.strerror or exc}")
        sha = entry.sha.hexdigest()
        claimed = request.headers.get("x-manta-content-sha256")
        if claimed != "STREAMING" and claimed != sha:
            self._drop(blob_id, entry)
            return self.refuse(request, "body digest mismatch")
        entry.receiving = False
        return JSONResponse({"size": entry.size, "sha256": sha})

    def _drop(self, blob_id: str, entry: Staged) -> None:
        entry.aborted = True
        if self.staged.get(blob_id) is entry:
            del self.staged[blob_id]
        with contextlib.suppress(Exception):
            entry.writer.abort()

    async def commit(self, request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        entry = self.staged.get(blob_id)
        if entry is None or entry.receiving:
            return error(404 if entry is None else 409, "no staged write of this blob")
        del self.staged[blob_id]
        want = self.json_body(request)
        if want.get("size") != entry.size or want.get("sha256") != entry.sha.hexdigest():
            await anyio.to_thread.run_sync(entry.writer.abort)
            return error(409, f"staged {entry.size} bytes do not match the commit")
        await anyio.to_thread.run_sync(entry.writer.commit)
        return JSONResponse({})

    async def abort(self, request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        entry = self.staged.get(blob_id)
        if entry is None:
            return error(404, "no staged write of this blob")
        if entry.receiving:
            entry.aborted = True  # the PUT handler drops it at its next piece
            return JSONResponse({})
        await anyio.to_thread.run_sync(self._drop, blob_id, entry)
        return JSONResponse({})

    async def sync(self, request: Request) -> Response:
        ids = [i for i in self.json_body(request).get("ids", []) if isinstance(i, str) and BLOB_ID.match(i)]
        await anyio.to_thread.run_sync(self.node.sync, ids)
        return JSONResponse({})

    # -- reads ---------------------------------------------------------------------------

    @staticmethod
    def _range(request: Request) -> tuple[int, int]:
        offset = int(request.query_params.get("offset", "0"))
        length = int(request.query_params.get("length", "0"))
        if offset < 0 or not 0 <= length <= MAX_READ:
            raise ValueError("bad range")
        return offset, length

    def _pread(self, blob_id: str, offset: int, length: int) -> bytes:
        fd = self.node.open_blob(blob_id)
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    async def read(self, request: Request) -> Response:
        blob_id = request.path_params["blob_id"]
        try:
            offset, length = self._range(request)
            crcs = bytes.fromhex(request.headers.get("x-manta-crcs", ""))
            first = int(request.headers.get("x-manta-crcs-from", "0"))
        except ValueError:
            return error(400, "bad range or crcs")
        try:
            data = await anyio.to_thread.run_sync(self._pread, blob_id, offset, length)
            if len(data) != length:
                raise BlobDamaged(blob_id, "short read")
            if crcs:
                check_blocks(blob_id, data, offset, bytes(4 * first) + crcs)
        except FileNotFoundError:
            return error(404, "missing")
        except BlobDamaged as exc:
            return error(409, exc.reason)
        return Response(data, media_type="application/octet-stream")

    async def read_raw(self, request: Request) -> Response:
        try:
            offset, length = self._range(request)
        except ValueError:
            return error(400, "bad range")
        try:
            data = await anyio.to_thread.run_sync(self._pread, request.path_params["blob_id"], offset, length)
        except FileNotFoundError:
            return error(404, "missing")
        return Response(data, media_type="application/octet-stream")

    async def head(self, request: Request) -> Response:
        found = await anyio.to_thread.run_sync(self.node.exists, request.path_params["blob_id"])
        return Response(status_code=200 if found else 404)

    async def delete(self, request: Request) -> Response:
        deleted = await anyio.to_thread.run_sync(self.node.retire, request.path_params["blob_id"])
        return JSONResponse({"deleted": deleted})

    async def verify(self, request: Request) -> Response:
        want = self.json_body(request)
        seen = [0]

        def run() -> str | None:
            return self.node.verify(request.path_params["blob_id"], int(want["size"]),
                                    bytes.fromhex(want.get("sha256") or ""),
                                    bytes.fromhex(want.get("crcs") or ""),
                                    lambda n: seen.__setitem__(0, seen[0] + n))

        problem = await anyio.to_thread.run_sync(run)
        return JSONResponse({"problem": problem, "bytes": seen[0]})

    async def list_blobs(self, request: Request) -> Response:
        blobs = await anyio.to_thread.run_sync(lambda: [[b, m] for b, m in self.node.list_blobs()])
        return JSONResponse({"blobs": blobs})

    async def sweep_temp(self, request: Request) -> Response:
        return JSONResponse({"removed": await anyio.to_thread.run_sync(self.node.sweep_temp)})

    async def fetch(self, request: Request) -> Response:
        want = self.json_body(request)
        url, peer_id = want.get("from"), want.get("id")
        if not (isinstance(url, str) and isinstance(peer_id, str) and peer_id):
            return error(400, "fetch needs the peer's url (from) and id")
        try:
            peer = self.peers.get((url, peer_id)) or self.peers.setdefault(
                (url, peer_id), RemoteNode(url, self.secret, peer_id))
            await anyio.to_thread.run_sync(self.node.copy_from, peer, request.path_params["blob_id"])
        except (OSError, ValueError) as exc:
            return error(502, f"fetch from {url} failed: {exc}")
        return JSONResponse({})

    async def scrub_pool(self, request: Request) -> Response:
        timeout_s = float(self.json_body(request).get("timeout_s", 3600.0))
        out = await anyio.to_thread.run_sync(self.node.scrub_pool, timeout_s)
        return JSONResponse({"pool": out[0], "result": out[1]} if out else {"pool": None, "result": None})

    # -- tasks ---------------------------------------------------------------------------

    async def run_task(self, request: Request) -> Response:
        if self.agent is None:
            return error(503, "no task agent")
        task = self.json_body(request)
        problem = task_request_problem(task)
        if problem:
            return error(400, f"bad task request: {problem}")
        outcome = await anyio.to_thread.run_sync(self.agent.run, task, limiter=self.task_limiter)
        return JSONResponse(outcome)

    async def cancel_task(self, request: Request) -> Response:
        if self.agent is None:
            return error(503, "no task agent")
        await anyio.to_thread.run_sync(self.agent.cancel, request.path_params["job"],
                                       request.path_params["task"])
        return JSONResponse({})

    async def login(self, ws: WebSocket) -> None:
        """`manta login` on this node (manta/server/login.py): the upgrade is signed, and its
        first message, the session's request, is the signed body."""
        from jobs.login import LoginRequest, LoginSession
        from manta.server.login import send_error, serve_session, session_slots

        addr = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        try:
            self.verifier.check("GET", ws.url.path, ws.headers, None)
        except Refused as exc:
            log.warning("refused GET %s from %s: %s", ws.url.path, addr, exc.why)
            await ws.close(code=1008, reason=exc.why)
            return
        if self.agent is None:
            await send_error(ws, "ServiceUnavailable", "no task agent on this node")
            return
        await ws.accept()
        try:
            with anyio.fail_after(LOGIN_REQUEST_TIMEOUT_S):
                body = await ws.receive_text()
            self.verifier.check_digest(ws.headers, hashlib.sha256(body.encode()).hexdigest())
            request = LoginRequest.from_json(json.loads(body))
        except Refused as exc:
            log.warning("refused GET %s from %s: %s", ws.url.path, addr, exc.why)
            await send_error(ws, "AccessDenied", exc.why)
            return
        except (ValueError, TimeoutError, KeyError) as exc:
            await send_error(ws, "InvalidArgument", f"bad login request: {exc}")
            return
        agent = self.agent
        if self.login_slots is None:
            self.login_slots = session_slots()
        await serve_session(ws, request.owner, lambda output: LoginSession(agent, request, output), self.login_slots)

    # -- housekeeping ----------------------------------------------------------------------

    def sweep(self) -> None:
        """Drop staged writes left uncommitted for STAGED_TTL_S and trash older than TRASH_S."""
        now = time.monotonic()
        for blob_id, entry in list(self.staged.items()):
            if not entry.receiving and now - entry.opened > STAGED_TTL_S:
                log.warning("dropping the staged write of %s: no commit in %.0f s", blob_id, STAGED_TTL_S)
                self._drop(blob_id, entry)
        self.node.sweep_trash(TRASH_S)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(SWEEP_EVERY_S)
                try:
                    await anyio.to_thread.run_sync(self.sweep)
                except OSError as exc:
                    log.warning("sweeping: %s", exc)

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            for blob_id, entry in list(self.staged.items()):
                self._drop(blob_id, entry)
            for peer in self.peers.values():
                peer.close()

    def routes(self) -> list[BaseRoute]:
        s = self.signed
        blob = "/v1/blobs/{blob_id}"
        return [
            Route("/v1/health", s(self.health), methods=["GET"]),
            Route("/v1/blobs", s(self.list_blobs), methods=["GET"]),
            Route("/v1/sync", s(self.sync), methods=["POST"]),
            Route("/v1/sweep-temp", s(self.sweep_temp), methods=["POST"]),
            Route("/v1/scrub-pool", s(self.scrub_pool), methods=["POST"]),
            Route(blob, s(self.put_blob, streaming=True), methods=["PUT"]),
            Route(blob, s(self.head), methods=["HEAD"]),  # before GET, whose route takes HEAD too
            Route(blob, s(self.read), methods=["GET"]),
            Route(blob, s(self.delete), methods=["DELETE"]),
            Route(blob + "/raw", s(self.read_raw), methods=["GET"]),
            Route(blob + "/commit", s(self.commit), methods=["POST"]),
            Route(blob + "/abort", s(self.abort), methods=["POST"]),
            Route(blob + "/verify", s(self.verify), methods=["POST"]),
            Route(blob + "/fetch", s(self.fetch), methods=["POST"]),
            Route("/v1/tasks", s(self.run_task), methods=["POST"]),
            Route("/v1/tasks/{job}/{task}/cancel", s(self.cancel_task), methods=["POST"]),
            WebSocketRoute("/v1/login", self.login),
        ]


def build_node_app(node: LocalNode, secret: str, agent: Any = None) -> Starlette:
    app = NodeApp(node, secret, agent)
    return Starlette(routes=app.routes(), lifespan=app.lifespan)


TASK_FIELDS = {"job": str, "task": str, "owner": str, "type": str, "exec": str, "env": dict,
               "limits": dict, "inputs": list}
LIMIT_FIELDS = ("memory_mb", "disk_mb", "timeout_s")


def task_request_problem(task: Any) -> str | None:
    """Why a task request cannot be run (a field missing or of the wrong type), or None."""
    if not isinstance(task, dict):
        return "not a JSON object"
    for name, kind in TASK_FIELDS.items():
        if not isinstance(task.get(name), kind):
            return f"{name} must be a {kind.__name__}"
    if task["type"] not in ("map", "reduce") or (task["type"] == "map" and len(task["inputs"]) != 1):
        return "type must be map (one input) or reduce"
    if not all(isinstance(task["limits"].get(k), (int, float)) for k in LIMIT_FIELDS):
        return f"limits must have {', '.join(LIMIT_FIELDS)}"
    return None


def make_agent(node: LocalNode, secret: str, slots: int | None) -> Any:
    """The task agent, when jobs.agent exists and the sandbox works; else None (tasks: 503)."""
    try:
        from jobs import Sandbox, SandboxConfig
        from jobs.admission import default_slots
        from jobs.agent import TaskAgent
    except ImportError:
        log.warning("no task agent in this build: the node serves blobs only")
        return None
    sandbox = Sandbox(SandboxConfig())
    problem = sandbox.check()
    if problem:
        log.warning("tasks are disabled on this node: %s", problem)
        return None
    return TaskAgent(node, sandbox, secret, slots or default_slots())


def open_node(storage_spec: str, health_ttl_s: float = 1.0) -> LocalNode:
    """The LocalNode of `storage_spec`, its marker read or written with a new random id."""
    spec = parse_spec(storage_spec)
    root, zfs = LocalNode.prepare(spec)
    node_id = LocalNode.read_marker(root)
    if node_id is None:
        node_id = f"node-{secrets.token_hex(4)}"
        LocalNode.write_marker(root, node_id)
    node = LocalNode(node_id, spec, root, zfs, health_ttl_s=health_ttl_s)
    swept = node.sweep_temp() + node.sweep_trash(0.0)
    if swept:
        log.info("removed %d leftovers of interrupted writes and deletes", swept)
    return node


def run_node(storage_spec: str, listen: str, data_dir: str | None, secret: str,
             advertise: str | None = None, slots: int | None = None, health_ttl_s: float = 1.0) -> None:
    """Serve one node until SIGTERM or SIGINT. `data_dir`: where the node keeps its own
    state (task scratch lives in the dataset; nothing else needs it yet). `health_ttl_s`:
    how long a health check is reused (MANTA_HEALTH_TTL_S, as for `manta serve`)."""
    from manta.server.config import parse_listen

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_listen(listen)
    if data_dir is not None:
        os.makedirs(data_dir, exist_ok=True)
    node = open_node(storage_spec, health_ttl_s)
    agent = make_agent(node, secret, slots)
    app = build_node_app(node, secret, agent)
    url = advertise or f"http://{listen}"
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, loop="uvloop", log_level="warning",
                                           access_log=False, server_header=False, timeout_keep_alive=75,
                                           proxy_headers=False))  # logs name the real peer

    def banner() -> str:
        return f"manta node: {node.id} serving {node.spec} at {url}"

    try:
        serve_until_stopped(server, banner)
    finally:
        stop = getattr(agent, "stop", None)
        if callable(stop):
            stop()
        node.close()
