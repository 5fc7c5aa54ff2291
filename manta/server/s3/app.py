"""The S3 front door: one Starlette endpoint, authentication, dispatch, error rendering.

    request -> context (bucket/key from path or virtual host) -> size checks
            -> SigV4 (header or presigned; an unsigned request goes on without an account to
               bucket and object operations, where s3/access.py decides it like any other)
            -> dispatch on (method, level, sub-resource) -> operation module
               (the sub-resource is `access.subresource_of`'s, the one its authorization
               takes: two that select different operations are InvalidRequest)
            -> response + x-amz-request-id

The app is plain ASGI: `S3App.asgi` parses the scope itself and sends a plain Response
as two messages; only streaming responses (large GETs) go through Starlette's response
machinery, which watches for a client that goes away. `starlette()` wraps it in a
Starlette app only for lifespan events and for tests that want one.

Catalog reads (the account, a bucket, an object's record) go through
`common.read_catalog`: in place with the embedded engine, in a worker thread with a remote
one (PostgreSQL), so the event loop never waits on the catalog's network.

Errors: S3Error renders as S3 error XML; storage errors map through
`errors.from_domain`; anything else is logged with its traceback and answered as
InternalError with the request id. One dispatch table lists every supported operation;
known sub-resources that are not built answer NotImplemented explicitly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from manta.server.config import ServerConfig
from manta.server.s3 import (
    access,
    acl,
    attributes,
    bucket,
    cors,
    lifecycle,
    multipart,
    obj,
    objectlock,
    policy,
    service,
    sigv4,
    tagging,
)
from manta.server.s3 import errors as s3e
from manta.server.s3.body import ClientGone
from manta.server.s3.common import read_catalog
from manta.server.s3.context import S3Request, validate_key
from manta.server.s3.doorcache import TtlCache
from manta.server.s3.readcache import BlobCache
from storage import Account, BucketRef, Store
from storage import errors as se

log = logging.getLogger("manta.server.s3")

Handler = Callable[[S3Request], Awaitable[Response]]
ExtraRoute = Callable[[S3Request], Awaitable[Response]]
SocketRoute = Callable[[S3Request, WebSocket], Awaitable[None]]

# sub-resources S3 defines that this server does not implement (yet)
UNSUPPORTED = {
    "accelerate", "analytics", "encryption", "intelligent-tiering", "inventory",
    "logging", "metrics", "notification", "replication",
    "requestPayment", "restore", "select", "torrent", "website",
}

BUCKET_OPS: dict[tuple[str, str], Handler] = {
    ("PUT", ""): bucket.create_bucket,
    ("HEAD", ""): bucket.head_bucket,
    ("DELETE", ""): bucket.delete_bucket,
    ("GET", ""): bucket.list_objects,
    ("GET", "location"): bucket.get_location,
    ("GET", "versions"): bucket.list_object_versions,
    ("GET", "versioning"): bucket.get_versioning,
    ("PUT", "versioning"): bucket.put_versioning,
    ("GET", "acl"): acl.get_bucket_acl,
    ("PUT", "acl"): acl.put_bucket_acl,
    ("GET", "cors"): cors.get_bucket_cors,
    ("PUT", "cors"): cors.put_bucket_cors,
    ("DELETE", "cors"): cors.delete_bucket_cors,
    ("GET", "lifecycle"): lifecycle.get_bucket_lifecycle,
    ("PUT", "lifecycle"): lifecycle.put_bucket_lifecycle,
    ("DELETE", "lifecycle"): lifecycle.delete_bucket_lifecycle,
    ("GET", "uploads"): multipart.list_uploads,
    ("POST", "delete"): bucket.delete_objects,
    ("GET", "tagging"): tagging.get_bucket_tagging,
    ("PUT", "tagging"): tagging.put_bucket_tagging,
    ("DELETE", "tagging"): tagging.delete_bucket_tagging,
    ("GET", "policy"): policy.get_bucket_policy,
    ("PUT", "policy"): policy.put_bucket_policy,
    ("DELETE", "policy"): policy.delete_bucket_policy,
    ("GET", "policyStatus"): policy.get_policy_status,
    ("GET", "publicAccessBlock"): policy.get_public_access_block,
    ("PUT", "publicAccessBlock"): policy.put_public_access_block,
    ("DELETE", "publicAccessBlock"): policy.delete_public_access_block,
    ("GET", "ownershipControls"): policy.get_ownership_controls,
    ("PUT", "ownershipControls"): policy.put_ownership_controls,
    ("DELETE", "ownershipControls"): policy.delete_ownership_controls,
    ("GET", "object-lock"): objectlock.get_lock_configuration,
    ("PUT", "object-lock"): objectlock.put_lock_configuration,
}
OBJECT_OPS: dict[tuple[str, str], Handler] = {
    ("PUT", ""): obj.put_object,
    ("GET", ""): obj.get_object,
    ("HEAD", ""): obj.head_object,
    ("DELETE", ""): obj.delete_object,
    ("GET", "acl"): acl.get_object_acl,
    ("PUT", "acl"): acl.put_object_acl,
    ("GET", "attributes"): attributes.get_object_attributes,
    ("POST", "uploads"): multipart.create_upload,
    ("PUT", "uploadId"): multipart.upload_part,
    ("POST", "uploadId"): multipart.complete_upload,
    ("DELETE", "uploadId"): multipart.abort_upload,
    ("GET", "uploadId"): multipart.list_parts,
    ("GET", "tagging"): tagging.get_object_tagging,
    ("PUT", "tagging"): tagging.put_object_tagging,
    ("DELETE", "tagging"): tagging.delete_object_tagging,
    ("GET", "retention"): objectlock.get_retention,
    ("PUT", "retention"): objectlock.put_retention,
    ("GET", "legal-hold"): objectlock.get_legal_hold,
    ("PUT", "legal-hold"): objectlock.put_legal_hold,
}
# object sub-resources that act on the current version only: a versionId is NotImplemented
ONE_VERSION_ONLY = {"acl", "attributes"}


def _creates_bucket(req: S3Request) -> bool:
    return req.method == "PUT" and not req.key and not access.SUBRESOURCES.intersection(req.query)


def request_id() -> str:
    """16 hex digits. Unique enough to find a request in the logs, and not a secret: the
    process's Mersenne Twister (reseeded in a forked child), not a getrandom(2) call."""
    return f"{random.getrandbits(64):016X}"


def error_response(err: s3e.S3Error, resource: str, rid: str, method: str) -> Response:
    body = b"" if method == "HEAD" else err.to_xml(resource, rid)
    return Response(body, status_code=err.status, headers=err.headers or None, media_type="application/xml")


class _BodyTracker:
    """Wraps `receive` to know whether the whole request body was read."""

    def __init__(self, receive: Receive, headers: dict[str, str]) -> None:
        self._receive = receive
        self.finished = headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.finished = True
        return message


def _headers_of(scope: Scope) -> tuple[dict[str, str], int]:
    """Lower-case names to values (repeats joined with ","), and the head's size."""
    headers: dict[str, str] = {}
    total = 0
    for name, value in scope["headers"]:
        total += len(name) + len(value) + 4
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        headers[k] = f"{headers[k]},{v}" if k in headers else v
    return headers, total


def _parse_query(query_string: bytes) -> list[tuple[str, str]]:
    if not query_string:
        return []
    return urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)


class S3Starlette(Starlette):
    """The S3 app as a Starlette app: HTTP requests go straight to `S3App.asgi`, the rest
    (lifespan) to Starlette."""

    def __init__(self, s3: S3App) -> None:
        super().__init__(routes=[])
        self.s3 = s3

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.s3.asgi(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.s3.websocket(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class S3App:
    def __init__(self, store: Store, config: ServerConfig,
                 extra: dict[str, ExtraRoute] | None = None,
                 sockets: dict[str, SocketRoute] | None = None) -> None:
        self.store = store
        self.config = config
        self.extra = extra or {}
        self.sockets = sockets or {}  # websockets (`manta login`) under these first path parts
        self.domain_suffix = "." + config.domain.lower() if config.domain else None
        remote = store.catalog.engine.remote
        self.accounts: TtlCache[Account] | None = TtlCache() if remote else None
        self.buckets: TtlCache[BucketRef] | None = TtlCache() if remote else None
        # on every answer (a worker of `manta serve --workers N` adds its pid: worker.run)
        self.answer_headers: tuple[tuple[bytes, bytes], ...] = ((b"server", b"manta"),)
        cache_bytes = int(config.read_cache_mb * 1024 * 1024)
        self.blob_cache: BlobCache | None = BlobCache(cache_bytes) if cache_bytes > 0 else None

    def starlette(self) -> S3Starlette:
        return S3Starlette(self)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(scope, receive)
        if type(response).__call__ is Response.__call__ and response.background is None:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})
        else:  # streamed: Starlette's machinery stops the stream when the client goes away
            await response(scope, receive, send)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket upgrade (a GET, SigV4 signed as any request) to a route of `sockets`.
        Errors are one text frame {"error": code, "message"} and a close, after an accept:
        a refused upgrade would tell the client no more than its status."""
        rid = request_id()
        ws = WebSocket(scope, receive, send)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        headers, head_bytes = _headers_of(scope)
        try:
            query = _parse_query(scope.get("query_string", b""))
            req = self._context({**scope, "method": "GET"}, headers, head_bytes, query, raw_path, rid, receive)
            route = self.sockets.get(req.bucket)
            if route is None:
                raise s3e.MethodNotAllowed(Method="GET", ResourceType="WEBSOCKET")
            await self._authenticate(req, raw_path.decode("latin-1"), query, anonymous=False)
            await route(req, ws)
            return
        except s3e.S3Error as err:
            if err.status >= 500 and type(err) is s3e.S3Error:
                log.error("request %s failed: %s", rid, err)
            code, message = err.code, err.text
        except se.StorageError as exc:
            mapped = s3e.from_domain(exc)
            code, message = mapped.code, mapped.text
        except Exception:
            log.exception("request %s failed", rid)
            code, message = "InternalError", f"We encountered an internal error (request {rid})."
        with contextlib.suppress(Exception):  # the client may be gone
            if ws.application_state == WebSocketState.CONNECTING:
                await ws.accept()
            await ws.send_json({"error": code, "message": message, "request_id": rid})
            await ws.close()

    async def handle(self, scope: Scope, receive: Receive) -> Response:
        rid = request_id()
        raw_path = scope.get("raw_path") or scope["path"].encode()
        resource = raw_path.decode("latin-1")
        method = scope["method"]
        headers, head_bytes = _headers_of(scope)
        body = _BodyTracker(receive, headers)
        req: S3Request | None = None
        try:
            query = _parse_query(scope.get("query_string", b""))
            req = self._context(scope, headers, head_bytes, query, raw_path, rid, body.receive)
            resource = req.resource
            if method == "OPTIONS" and "origin" not in req.headers:  # not a CORS preflight
                raise s3e.BadRequest("Insufficient information. Origin request header needed.")
            if method == "OPTIONS" and req.bucket not in self.extra:  # a CORS preflight: unsigned
                response = await cors.preflight(req)
            else:
                await self._authenticate(req, raw_path.decode("latin-1"), query)
                response = await self._dispatch(req)(req)
        except s3e.S3Error as err:
            if err.status >= 500 and type(err) is s3e.S3Error:
                log.error("request %s failed: %s", rid, err)
            response = error_response(err, resource, rid, method)
        except se.StorageError as exc:
            response = error_response(s3e.from_domain(exc), resource, rid, method)
        except ClientGone:
            response = Response(b"", status_code=400)
        except OSError as exc:
            if exc.errno in se.RESOURCE_ERRNOS:  # out of file descriptors or memory outside storage
                log.warning("request %s: %s", rid, exc)
                response = error_response(s3e.SlowDown(), resource, rid, method)
            else:
                log.exception("request %s failed", rid)
                response = error_response(s3e.InternalError(), resource, rid, method)
        except Exception:
            log.exception("request %s failed", rid)
            response = error_response(s3e.InternalError(), resource, rid, method)
        if req is not None and "origin" in headers and method != "OPTIONS" and req.bucket not in self.extra:
            await cors.add_headers(req, response)  # a cross-origin request, answered or refused
        raw = response.raw_headers
        if not body.finished:
            # a body left unread on the connection would be parsed as the next request
            raw[:] = [h for h in raw if h[0] != b"connection"]
            raw.append((b"connection", b"close"))
        rid_bytes = rid.encode()
        raw += ((b"x-amz-request-id", rid_bytes), (b"x-amz-id-2", rid_bytes))
        raw += self.answer_headers
        return response

    def _context(self, scope: Scope, headers: dict[str, str], head_bytes: int,
                 pairs: list[tuple[str, str]], raw_path: bytes, rid: str, receive: Receive) -> S3Request:
        if head_bytes > self.config.max_header_bytes:
            raise s3e.RequestHeaderSectionTooLarge(MaxSizeAllowed=str(self.config.max_header_bytes))
        try:
            path = urllib.parse.unquote(raw_path.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise s3e.InvalidURI("Couldn't parse the specified URI.") from None
        if not path.startswith("/"):
            raise s3e.InvalidURI("Couldn't parse the specified URI.")
        query: dict[str, str] = {}
        for k, v in pairs:
            query.setdefault(k, v)
        bucket_name, key = "", ""
        host = headers.get("host", "").split(":")[0].lower()
        if self.domain_suffix and host.endswith(self.domain_suffix):
            bucket_name = host[: -len(self.domain_suffix)]
            key = path[1:]
        else:
            bucket_name, _, key = path[1:].partition("/")
        if key:
            validate_key(key)
        client = scope.get("client")
        return S3Request(
            method=scope["method"], bucket=bucket_name, key=key, query=query, headers=headers,
            receive=receive, request_id=rid, resource=path, store=self.store,
            settings=self.config, buckets=self.buckets, blob_cache=self.blob_cache,
            client_ip=client[0] if client else "",
            secure=scope.get("scheme") in ("https", "wss"),
        )

    async def _authenticate(self, req: S3Request, raw_path: str, query: list[tuple[str, str]],
                            anonymous: bool = True) -> None:
        """The signing account, verified; an unsigned request goes on without one (`anonymous`)
        to a bucket or object operation, whose authorization decides it."""
        areq = sigv4.AuthRequest(method=req.method, raw_path=raw_path, query=query, headers=req.headers)
        auth = sigv4.parse(areq)
        if auth is None:
            if not anonymous or req.bucket in self.extra or not req.bucket or _creates_bucket(req):
                raise s3e.AccessDenied()
            return  # unsigned: each operation's bucket read decides (s3/access.py)
        account = self.accounts.get(auth.access_key) if self.accounts is not None else None
        if account is None:
            try:
                account = await read_catalog(self.store, self.store.catalog.accounts.get, auth.access_key)
            except se.NoSuchAccount:
                raise s3e.InvalidAccessKeyId(AWSAccessKeyId=auth.access_key) from None
            if self.accounts is not None:
                self.accounts.put(auth.access_key, account)
        req.signing_key = sigv4.verify(auth, areq, account.secret)
        sigv4.check_time(auth, dt.datetime.now(dt.UTC), self.config.max_skew_s)
        req.auth = auth
        req.account = account

    def _dispatch(self, req: S3Request) -> Handler:
        if req.bucket in self.extra:
            return self.extra[req.bucket]
        if not req.bucket:
            if req.method == "GET":
                return service.list_buckets
            raise s3e.MethodNotAllowed(Method=req.method, ResourceType="SERVICE")
        unsupported = UNSUPPORTED.intersection(req.query)
        if unsupported:
            name = sorted(unsupported)[0]
            raise s3e.NotImplemented_(f"The {name} sub-resource is not implemented.")
        sub = access.subresource_of(req)  # the one choice, which authorization takes too
        table = OBJECT_OPS if req.key else BUCKET_OPS
        handler = table.get((req.method, sub))
        if handler is None:
            if sub:
                raise s3e.NotImplemented_(f"{req.method} ?{sub} is not implemented.")
            raise s3e.MethodNotAllowed(Method=req.method,
                                       ResourceType="OBJECT" if req.key else "BUCKET")
        if sub in ONE_VERSION_ONLY and req.key and "versionId" in req.query:
            raise s3e.NotImplemented_(f"?{sub} of a version other than the current one is not implemented.")
        return handler
