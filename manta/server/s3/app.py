"""The S3 front door: one Starlette endpoint, authentication, dispatch, error rendering.

    request -> context (bucket/key from path or virtual host) -> size checks
            -> SigV4 (header or presigned; anonymous is AccessDenied but for a GET/HEAD
               of an object whose object or bucket ACL is public-read: manta.server.s3.acl)
            -> dispatch on (method, level, sub-resource) -> operation module
            -> response + x-amz-request-id

Errors: S3Error renders as S3 error XML; storage errors map through
`errors.from_domain`; anything else is logged with its traceback and answered as
InternalError with the request id. One dispatch table lists every supported operation;
known sub-resources that are not built answer NotImplemented explicitly.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.types import Message, Receive, Scope, Send

from manta.server.config import ServerConfig
from manta.server.s3 import acl, attributes, bucket, multipart, obj, service, sigv4
from manta.server.s3 import errors as s3e
from manta.server.s3.body import ClientGone
from manta.server.s3.context import S3Request, validate_key
from storage import Store
from storage import errors as se

log = logging.getLogger("manta.server.s3")

Handler = Callable[[S3Request], Awaitable[Response]]
ExtraRoute = Callable[[S3Request], Awaitable[Response]]

# sub-resources S3 defines that this server does not implement (yet)
UNSUPPORTED = {
    "accelerate", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
    "legal-hold", "lifecycle", "logging", "metrics", "notification", "object-lock",
    "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "replication",
    "requestPayment", "restore", "retention", "select", "tagging", "torrent", "website",
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
    ("GET", "uploads"): multipart.list_uploads,
    ("POST", "delete"): bucket.delete_objects,
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
}
SUBRESOURCES = {"location", "versions", "versioning", "acl", "uploads", "delete", "uploadId", "attributes"}


def request_id() -> str:
    return secrets.token_hex(8).upper()


def error_response(err: s3e.S3Error, resource: str, rid: str, method: str) -> Response:
    body = b"" if method == "HEAD" else err.to_xml(resource, rid)
    return Response(body, status_code=err.status, media_type="application/xml")


class _BodyTracker:
    """Wraps `receive` to know whether the whole request body was read."""

    def __init__(self, request: Request) -> None:
        self._receive = request.receive
        headers = request.headers
        self.finished = headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.finished = True
        return message


class EveryRequest(BaseRoute):
    """Routes every HTTP request to one endpoint, whatever its path and method. A key may
    hold a newline, which Starlette's `{path:path}` does not match, and Starlette answers
    a path or method no route takes in plain text, without a request id."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = request_response(endpoint)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.FULL, {}) if scope["type"] == "http" else (Match.NONE, {})

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class S3App:
    def __init__(self, store: Store, config: ServerConfig,
                 extra: dict[str, ExtraRoute] | None = None) -> None:
        self.store = store
        self.config = config
        self.extra = extra or {}
        self.domain_suffix = "." + config.domain.lower() if config.domain else None

    def starlette(self) -> Starlette:
        return Starlette(routes=[EveryRequest(self.handle)])

    async def handle(self, request: Request) -> Response:
        rid = request_id()
        scope = request.scope
        raw_path = scope.get("raw_path") or scope["path"].encode()
        resource = raw_path.decode("latin-1")
        method = scope["method"]
        body = _BodyTracker(request)
        try:
            req = self._context(request, raw_path, rid, body.receive)
            resource = req.resource
            if method == "OPTIONS" and "origin" not in req.headers:  # not a CORS preflight
                raise s3e.BadRequest("Insufficient information. Origin request header needed.")
            await self._authenticate(req, raw_path.decode("latin-1"), scope)
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
        if not body.finished:
            # a body left unread on the connection would be parsed as the next request
            response.headers["connection"] = "close"
        response.headers["x-amz-request-id"] = rid
        response.headers["x-amz-id-2"] = rid
        response.headers["server"] = "manta"
        return response

    def _context(self, request: Request, raw_path: bytes, rid: str, receive: Receive) -> S3Request:
        scope = request.scope
        headers: dict[str, str] = {}
        total = 0
        for name, value in scope["headers"]:
            total += len(name) + len(value) + 4
            k = name.decode("latin-1").lower()
            v = value.decode("latin-1")
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        if total > self.config.max_header_bytes:
            raise s3e.RequestHeaderSectionTooLarge(MaxSizeAllowed=str(self.config.max_header_bytes))
        try:
            path = urllib.parse.unquote(raw_path.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise s3e.InvalidURI("Couldn't parse the specified URI.") from None
        if not path.startswith("/"):
            raise s3e.InvalidURI("Couldn't parse the specified URI.")
        query_string = scope.get("query_string", b"").decode("latin-1")
        query: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(query_string, keep_blank_values=True):
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
        return S3Request(
            method=scope["method"], bucket=bucket_name, key=key, query=query, headers=headers,
            receive=receive, request_id=rid, resource=path, store=self.store,
            settings=self.config,
        )

    async def _authenticate(self, req: S3Request, raw_path: str, scope: Scope) -> None:
        areq = sigv4.AuthRequest(
            method=req.method,
            raw_path=raw_path,
            query=urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                         keep_blank_values=True),
            headers=req.headers,
        )
        auth = sigv4.parse(areq)
        if auth is None:
            reader = None if req.bucket in self.extra else acl.anonymous_reader(self.store, req)
            if reader is None:
                raise s3e.AccessDenied()
            req.account = {"name": reader}  # a public-read GET/HEAD reads as the bucket's owner
            return
        try:
            account = self.store.catalog.account(auth.access_key)
        except se.NoSuchAccount:
            raise s3e.InvalidAccessKeyId(AWSAccessKeyId=auth.access_key) from None
        req.signing_key = sigv4.verify(auth, areq, account["secret"])
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
        sub = next((s for s in SUBRESOURCES if s in req.query), "")
        table = OBJECT_OPS if req.key else BUCKET_OPS
        handler = table.get((req.method, sub))
        if handler is None:
            if sub:
                raise s3e.NotImplemented_(f"{req.method} ?{sub} is not implemented.")
            raise s3e.MethodNotAllowed(Method=req.method,
                                       ResourceType="OBJECT" if req.key else "BUCKET")
        return handler
