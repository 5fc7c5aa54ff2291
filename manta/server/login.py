"""`manta login` over a websocket: the front door's endpoint, the relay to a remote node,
and the pump between a websocket and a session (jobs/login.py), used by both ends.

    client --ws GET /_manta/login/BUCKET/KEY?rows=&cols=&term=&idle_s=&command= (SigV4)-->
    front door: the object must be in a bucket of the signing account (as a job input);
    the node holding most of its bytes (healthy) runs the session:
        a node in this process  -> its TaskAgent, here (`serve_session`)
        a `manta node` host     -> ws GET /v1/login, signed with the cluster secret for
                                   that node's id; the first message is the LoginRequest, its
                                   SHA-256 signed as the body; then frames pass both ways
                                   unchanged (`relay`)

Frames, on both hops: binary client->node is keystrokes, node->client terminal output;
text client->node is JSON {"resize": [rows, cols]}; the last node->client frame is text,
JSON {"end": reason, "exit_code", "signal", "message"} (jobs.login.LoginEnd), or
{"error": code, "message"} when no session was started (an S3 error code: AccessDenied,
NoSuchKey, ...). The idle timeout is the server's MANTA_LOGIN_IDLE_S; a client may ask for
less (`idle_s`), never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

import anyio
import anyio.from_thread
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from jobs import JobScheduler
from jobs import errors as je
from jobs.login import LoginRequest, LoginSession
from jobs.runner import _entry, _Failure
from jobs.spec import parse_input
from manta.server.jobs_api import request_context
from manta.server.s3 import errors as s3e
from manta.server.s3.common import in_thread
from manta.server.s3.context import S3Request
from storage import Node, RemoteNode, Store
from storage import errors as se

__all__ = ["MAX_SESSIONS", "MAX_SESSIONS_PER_ACCOUNT", "NODE_PATH", "SessionSlots", "login_handler", "send_error",
           "serve_session", "session_slots"]

log = logging.getLogger("manta.login")

PREFIX = "login/"
NODE_PATH = "/v1/login"
MAX_SESSIONS = 64  # at once, per process (each holds a thread while its container lives)
MAX_SESSIONS_PER_ACCOUNT = 8  # of those, at once for one account: one cannot take every slot
CONNECT_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 120.0


async def send_error(ws: WebSocket, code: str, message: str) -> None:
    """Refuse a session: accept (if not yet), one error frame, close."""
    with contextlib.suppress(Exception):  # the client may be gone already
        if ws.application_state == WebSocketState.CONNECTING:
            await ws.accept()
        await ws.send_text(json.dumps({"error": code, "message": message}))
        await ws.close()


def login_handler(scheduler: JobScheduler, idle_s: float) -> Any:
    """The front door's handler of websockets under /_manta/ (after SigV4)."""
    slots = session_slots()

    async def handle(req: S3Request, ws: WebSocket) -> None:
        if not req.key.startswith(PREFIX):
            raise s3e.NoSuchKey(Key=req.key)
        request, node = await in_thread(_resolve, scheduler, req, req.key[len(PREFIX):], idle_s)
        if isinstance(node, RemoteNode):
            await relay(ws, node, request)
            return
        agent = scheduler.agents.get(node.id)
        if agent is None or agent.sandbox is None:
            raise s3e.ServiceUnavailable("Sessions cannot run here: no task sandbox on this server.")
        await serve_session(ws, request.owner, lambda output: LoginSession(agent, request, output), slots)

    return handle


def _resolve(scheduler: JobScheduler, req: S3Request, name: str, idle_s: float) -> tuple[LoginRequest, Node]:
    """The session's request and the node to run it on; S3 errors for the client."""
    store = scheduler.store
    try:
        bucket, key = parse_input(name)
        owner = store.catalog.buckets.get(bucket).owner
    except je.InvalidJobSpec:
        raise s3e.InvalidArgument(f"{name!r} is not bucket/key") from None
    except se.NoSuchBucket:
        raise s3e.NoSuchBucket(f"No bucket {name.partition('/')[0]!r}.", BucketName=name.partition("/")[0]) from None
    if owner != req.owner:
        raise s3e.AccessDenied(f"{name} is not yours: its bucket belongs to another account.")
    try:  # under the upgrade's condition keys, as a GET over this connection (jobs_api)
        entry = _entry(scheduler.ctx, req.owner, name, "NoSuchKey", [request_context(req)])
    except _Failure as failure:
        if failure.denied:  # a policy refuses it over this connection
            raise s3e.AccessDenied(f"{name}: access denied.") from None
        raise s3e.NoSuchKey(f"No object {name}.", Key=key) from None
    query = req.query
    try:
        rows, cols = int(query.get("rows", 24)), int(query.get("cols", 80))
        wanted = float(query.get("idle_s") or idle_s)
        defaults = scheduler.phase_defaults()
        request = LoginRequest(owner=req.owner, entry=entry, memory_mb=defaults["memory_mb"],
                               disk_mb=defaults["disk_mb"],
                               idle_s=min(wanted, idle_s), command=query.get("command"),
                               rows=rows, cols=cols, term=query.get("term") or "xterm")
    except ValueError as exc:
        raise s3e.InvalidArgument(str(exc)) from None
    node = _place(store, entry)
    if node is None:
        raise s3e.ServiceUnavailable("No storage node is up to run the session.")
    return request, node


def _place(store: Store, entry: dict[str, Any]) -> Node | None:
    """The healthy node holding most of the object's bytes; else any healthy node."""
    held: dict[str, int] = {}
    for seg in entry["segments"]:
        for holder in seg["nodes"]:
            held[holder["id"]] = held.get(holder["id"], 0) + seg["size"]
    up = [n for n in store.node_list() if n.healthy()]
    up.sort(key=lambda n: -held.get(n.id, -1))
    return up[0] if up else None


class SessionSlots:
    """The threads sessions run on, one per session (one set per server process), and how
    many each account holds: at most MAX_SESSIONS_PER_ACCOUNT, so that one account's
    sessions cannot keep every other account out."""

    def __init__(self, total: int = MAX_SESSIONS, per_account: int = MAX_SESSIONS_PER_ACCOUNT) -> None:
        self.threads = anyio.CapacityLimiter(total)
        self.per_account = per_account
        self.held: dict[str, int] = {}

    def refusal(self, owner: str) -> str | None:
        """Why a new session of `owner` cannot start now, or None."""
        if self.threads.available_tokens < 1:
            return f"Too many sessions ({int(self.threads.total_tokens)}) on this server; try later."
        if self.held.get(owner, 0) >= self.per_account:
            return f"Too many sessions ({self.per_account}) of this account on this server; try later."
        return None

    @contextlib.contextmanager
    def held_by(self, owner: str) -> Any:
        self.held[owner] = self.held.get(owner, 0) + 1
        try:
            yield
        finally:
            self.held[owner] -= 1
            if not self.held[owner]:
                del self.held[owner]


def session_slots() -> SessionSlots:
    """The slots of one server process's sessions."""
    return SessionSlots()


async def serve_session(ws: WebSocket, owner: str, start: Any, slots: SessionSlots) -> None:
    """Run the session `start(output)` makes for `owner` on a thread of its own (one of
    `slots`) and pump `ws` into it; the last frame says how it ended. A client that goes
    away hangs the session up."""
    if (why := slots.refusal(owner)) is not None:
        await send_error(ws, "SlowDown", why)
        return
    with slots.held_by(owner):
        await _serve(ws, start, slots)


async def _serve(ws: WebSocket, start: Any, slots: SessionSlots) -> None:
    if ws.application_state == WebSocketState.CONNECTING:
        await ws.accept()

    async def send(data: bytes) -> None:
        with anyio.fail_after(SEND_TIMEOUT_S):  # a client that reads nothing is gone
            await ws.send_bytes(data)

    def output(data: bytes) -> None:  # on the session's thread: blocks until sent
        anyio.from_thread.run(send, data)

    session: LoginSession = start(output)
    pump = asyncio.create_task(_take_input(ws, session))
    try:
        end = await anyio.to_thread.run_sync(session.run, limiter=slots.threads)
    finally:
        session.hangup()  # no-op when it is over; else (a cancel) the container goes
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(end.to_json()))
        await ws.close()


async def _take_input(ws: WebSocket, session: LoginSession) -> None:
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes"):
                while not session.feed(message["bytes"]):
                    await asyncio.sleep(0.05)
            elif message.get("text"):
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    rows, cols = json.loads(message["text"])["resize"]
                    session.resize(int(rows), int(cols))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        session.hangup()


async def relay(ws: WebSocket, node: RemoteNode, request: LoginRequest) -> None:
    """Run the session on a `manta node` host: frames pass unchanged both ways."""
    import websockets.asyncio.client as wsclient
    from websockets.exceptions import WebSocketException

    body = json.dumps(request.to_json())
    url = node.address.replace("http://", "ws://", 1).rstrip("/") + NODE_PATH
    try:
        headers = await in_thread(node.signed_headers, "GET", NODE_PATH,
                                  hashlib.sha256(body.encode()).hexdigest())  # may ask the node its id
        upstream = await wsclient.connect(url, additional_headers=headers, proxy=None, compression=None,
                                          open_timeout=CONNECT_TIMEOUT_S, max_size=None)
    except (OSError, WebSocketException, TimeoutError) as exc:
        log.warning("login: node %s at %s: %s", node.id, url, exc)
        raise s3e.ServiceUnavailable(f"The node {node.id} holding the object cannot be reached.") from None
    await ws.accept()

    async def down() -> None:  # node -> client
        async for frame in upstream:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_text(frame)

    async def up() -> None:  # client -> node
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    try:
        await upstream.send(body)
        tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ended_by_node = tasks[0] in done
    finally:
        await upstream.close()
    if ended_by_node:
        with contextlib.suppress(Exception):
            await ws.close()
