"""What a SigV4 signature covers, checked against the whole server: one change at a time.

Correctly signed requests (Authorization header, presigned URL, signed aws-chunked stream)
are built with botocore's signers (the chunk and trailer signatures here, by hand), then
ONE thing is changed on the wire and the request is sent to the in-process app. A change
to anything the signature covers must be refused with a 4xx auth error and must leave the
store as it was; a change to something it does not cover (the order of query parameters,
an unsigned X-Foo header, the body of an UNSIGNED-PAYLOAD PUT...) must still be accepted
and do what the unchanged request would have done.

The cases are data: BASES (the signed requests) x MUTATIONS (named changes), each
mutation saying to which bases it applies and what must come of it, so a failure names
both (`hdr-put-object:body.byte-changed`). Mutations marked OBSERVE are changes where
the right answer is not settled (what AWS does is not documented); for those only safety
is asserted (refused: nothing changed; accepted: the same effect as the request signed).

Requests go straight to the ASGI app (not through httpx, whose URL parser removes "/./"
and "/../" segments): the raw path, query string and headers are exactly what is given.
One server for the module, a fresh bucket for each case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlsplit

import anyio
import pytest
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import ROOT_AK, ROOT_SK
from tests.inprocess import InProcessS3, texts, xml

HOST = "127.0.0.1:9000"  # tests.inprocess.BASE_URL's: what every request is signed for
BASE_URL = f"http://{HOST}"
OTHER_AK, OTHER_SK = "MANTAOTHERTESTKEY001", "manta-other-test-secret-key-000000000001"
UNKNOWN_AK = "MANTANOSUCHKEY000001"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"

KEY = "dir/Key-1=a.txt"  # a "/" (for "//", "/./"), a "-", a letter case, an escape (%3D)
QKEY = "dir/Key-1%3Da.txt"
ORIGINAL = b"the original content of the object, which no refused request may change"
NEW = b"new content, as signed by the client"
CHUNKS = (b"A" * 100, b"B" * 100, b"C" * 50)

# ACCEPT: answered and done as the request signed; REFUSE: a 4xx auth error, the store as it
# was; UNCHANGED: not done (any error, or a DeleteObjects 200 whose every key is refused),
# the store as it was; OBSERVE: not settled, only safety asserted (see the module's text)
ACCEPT, REFUSE, UNCHANGED, OBSERVE = "accept", "refuse", "unchanged", "observe"
HEADER, PRESIGNED, STREAM = "header", "presigned", "streaming"

SIG = frozenset({"SignatureDoesNotMatch"})
DENIED = frozenset({"AccessDenied"})
HDR_MALFORMED = frozenset({"AuthorizationHeaderMalformed"})
QUERY_MALFORMED = frozenset({"AuthorizationQueryParametersError"})
AUTH_CODES = frozenset({
    "SignatureDoesNotMatch", "AccessDenied", "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError", "InvalidAccessKeyId", "RequestTimeTooSkewed",
    "InvalidArgument", "InvalidRequest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})


# -- the wire ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """A signed aws-chunked body: the chunks with their signatures (the last one the
    0-size final chunk), trailers, trailer signature, and whatever follows the end."""

    chunks: tuple[tuple[bytes, str | None], ...]
    trailers: tuple[tuple[str, str], ...] = ()
    trailer_signature: str | None = None
    closing: bytes = b"\r\n"
    after: bytes = b""

    def frame(self) -> bytes:
        out = []
        for data, signature in self.chunks:
            extension = f";chunk-signature={signature}" if signature is not None else ""
            out.append(f"{len(data):x}{extension}\r\n".encode() + data + (b"\r\n" if data else b""))
        out += [f"{name}:{value}\r\n".encode() for name, value in self.trailers]
        if self.trailer_signature is not None:
            out.append(f"x-amz-trailer-signature:{self.trailer_signature}\r\n".encode())
        return b"".join(out) + self.closing + self.after


@dataclass(frozen=True)
class Wire:
    """One HTTP request as it reaches the app: raw path and query, headers in order
    (names as sent; repeated names allowed), body, and what an accepted PUT stores."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    payload: bytes = b""
    stream: Stream | None = None
    piece: int = 0  # deliver the body in pieces of this many bytes (0: in one)

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def without(self, name: str) -> Wire:
        return replace(self, headers=tuple((n, v) for n, v in self.headers if n.lower() != name.lower()))

    def set(self, name: str, value: str) -> Wire:
        """`name` set to `value` where it is (or added at the end)."""
        if not self.has(name):
            return self.add(name, value)
        return replace(self, headers=tuple((n, value if n.lower() == name.lower() else v)
                                           for n, v in self.headers))

    def add(self, name: str, value: str) -> Wire:
        return replace(self, headers=(*self.headers, (name, value)))

    def params(self) -> list[tuple[str, str | None]]:
        """The query as sent: (name, value) pairs still encoded, value None if bare."""
        if not self.query:
            return []
        out: list[tuple[str, str | None]] = []
        for pair in self.query.split("&"):
            name, equals, value = pair.partition("=")
            out.append((name, value if equals else None))
        return out

    def with_params(self, pairs: list[tuple[str, str | None]]) -> Wire:
        return replace(self, query="&".join(n if v is None else f"{n}={v}" for n, v in pairs))

    def restream(self, **changes: Any) -> Wire:
        assert self.stream is not None
        stream = replace(self.stream, **changes)
        return replace(self, stream=stream, body=stream.frame())


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>(.*?)</Code>", self.body)
        return found.group(1).decode() if found else None

    @property
    def message(self) -> str | None:
        found = re.search(rb"<Message>(.*?)</Message>", self.body)
        return found.group(1).decode() if found else None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def send(s3: InProcessS3, wire: Wire) -> Reply:
    """`wire` to the app as an ASGI server would hand it over: header names lower-cased,
    Content-Length added when not given, the body in one message or in `piece`-byte ones."""
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in wire.headers]
    if not wire.has("content-length") and (wire.body or wire.method in ("PUT", "POST")):
        headers.append((b"content-length", str(len(wire.body)).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": wire.method, "path": unquote(wire.path), "raw_path": wire.path.encode("latin-1"),
        "query_string": wire.query.encode("latin-1"), "headers": headers, "root_path": "",
        "server": ("127.0.0.1", 9000), "client": ("127.0.0.1", 50000),
    }
    size = wire.piece or max(len(wire.body), 1)
    pieces = [wire.body[i : i + size] for i in range(0, len(wire.body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                for i, p in enumerate(pieces)]

    async def run() -> Reply:
        done = anyio.Event()
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await done.wait()
            return {"type": "http.disconnect"}

        async def respond(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await s3.app(scope, receive, respond)  # type: ignore[arg-type]
        done.set()
        answer = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers", [])}
        return Reply(start["status"], answer, b"".join(parts))

    return s3._portal.call(run)


# -- signing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signing:
    at: datetime | None = None  # None: now
    region: str = "us-east-1"
    access_key: str = ROOT_AK
    secret_key: str = ROOT_SK
    expires: int = 600


@contextlib.contextmanager
def clock(at: datetime | None) -> Iterator[None]:
    if at is None:
        yield
        return
    naive = at.astimezone(UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive):
        yield


class HeaderSigner(S3SigV4Auth):
    """botocore's S3 header signer, with the x-amz-content-sha256 chosen here."""

    def __init__(self, signing: Signing, payload_hash: str | None) -> None:
        super().__init__(Credentials(signing.access_key, signing.secret_key), "s3", signing.region)
        self.payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash or str(super().payload(request))


class QuerySigner(S3SigV4QueryAuth):
    """botocore's presigner; with `payload_hash`, a URL that signs X-Amz-Content-Sha256."""

    def __init__(self, signing: Signing, payload_hash: str | None) -> None:
        super().__init__(Credentials(signing.access_key, signing.secret_key), "s3",
                         signing.region, expires=signing.expires)
        self.payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash or UNSIGNED_PAYLOAD


def header_signed(signing: Signing, method: str, path: str, query: str = "",
                  headers: dict[str, str] | None = None, body: bytes = b"",
                  payload_hash: str | None = None) -> Wire:
    url = BASE_URL + path + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    with clock(signing.at):
        HeaderSigner(signing, payload_hash).add_auth(request)
    return Wire(method, path, query, (("Host", HOST), *request.headers.items()), body, payload=body)


def presigned(signing: Signing, method: str, path: str, query: str = "", body: bytes = b"",
              payload_hash: str | None = None) -> Wire:
    if payload_hash is not None:
        query = "&".join(filter(None, (query, f"X-Amz-Content-Sha256={payload_hash}")))
    request = AWSRequest(method=method, url=BASE_URL + path + (f"?{query}" if query else ""))
    with clock(signing.at):
        QuerySigner(signing, payload_hash).add_auth(request)
    parts = urlsplit(str(request.url))
    assert parts.path == path
    return Wire(method, path, parts.query, (("Host", HOST),), body, payload=body)


def hmac256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def streamed(signing: Signing, path: str, trailer: bool) -> Wire:
    """A signed aws-chunked PUT of CHUNKS (with a signed CRC32 trailer if `trailer`)."""
    payload = b"".join(CHUNKS)
    headers = {"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(payload))}
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    wire = header_signed(signing, "PUT", path, headers=headers,
                         payload_hash=STREAMING_TRAILER if trailer else STREAMING)
    authorization = wire.get("Authorization")
    amz_date = wire.get("X-Amz-Date")
    assert authorization is not None and amz_date is not None
    seed = authorization.rpartition("Signature=")[2]
    scope = f"{amz_date[:8]}/{signing.region}/s3/aws4_request"
    key = ("AWS4" + signing.secret_key).encode()
    for part in (amz_date[:8], signing.region, "s3", "aws4_request"):
        key = hmac256(key, part)
    chunks: list[tuple[bytes, str | None]] = []
    previous = seed
    for data in (*CHUNKS, b""):
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256,
                             hashlib.sha256(data).hexdigest()])
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        chunks.append((data, previous))
    stream = Stream(tuple(chunks))
    if trailer:
        crc = crc32_b64(payload)
        trailers = (("x-amz-checksum-crc32", crc),)
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        stream = replace(stream, trailers=trailers,
                         trailer_signature=hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest())
    return replace(wire, body=stream.frame(), payload=payload, stream=stream)


# -- the signed requests ----------------------------------------------------------------


def delete_document(key: str) -> bytes:
    return f"<Delete><Quiet>true</Quiet><Object><Key>{key}</Key></Object></Delete>".encode()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


Builder = Callable[[str, Signing], Wire]
BUILDERS: dict[str, Builder] = {
    "hdr-get-object": lambda b, s: header_signed(s, "GET", f"/{b}/{QKEY}", headers={"Range": "bytes=0-3"}),
    "hdr-put-object": lambda b, s: header_signed(
        s, "PUT", f"/{b}/{QKEY}", body=NEW,
        headers={"Content-Type": "text/plain", "x-amz-meta-foo": "bar baz"}),
    "hdr-put-unsigned-payload": lambda b, s: header_signed(
        s, "PUT", f"/{b}/{QKEY}", body=NEW, headers={"x-amz-meta-foo": "bar baz"},
        payload_hash=UNSIGNED_PAYLOAD),
    "hdr-get-tagging": lambda b, s: header_signed(s, "GET", f"/{b}/{QKEY}", "tagging"),
    "hdr-get-version": lambda b, s: header_signed(s, "GET", f"/{b}/{QKEY}", "versionId=null"),
    "hdr-list": lambda b, s: header_signed(s, "GET", f"/{b}", "list-type=2&max-keys=5&prefix=dir%2F"),
    "hdr-delete": lambda b, s: header_signed(s, "DELETE", f"/{b}/{QKEY}"),
    "hdr-delete-objects": lambda b, s: header_signed(
        s, "POST", f"/{b}", "delete", body=delete_document(KEY),
        headers={"Content-MD5": md5_b64(delete_document(KEY))}),
    "pre-get-object": lambda b, s: presigned(s, "GET", f"/{b}/{QKEY}"),
    "pre-put-object": lambda b, s: presigned(s, "PUT", f"/{b}/{QKEY}", body=NEW),
    "pre-put-signed-hash": lambda b, s: presigned(
        s, "PUT", f"/{b}/{QKEY}", body=NEW, payload_hash=hashlib.sha256(NEW).hexdigest()),
    "pre-list": lambda b, s: presigned(s, "GET", f"/{b}", "list-type=2&prefix=dir%2F"),
    "pre-delete": lambda b, s: presigned(s, "DELETE", f"/{b}/{QKEY}"),
    "chunked-put": lambda b, s: streamed(s, f"/{b}/{QKEY}", trailer=False),
    "chunked-put-trailer": lambda b, s: streamed(s, f"/{b}/{QKEY}", trailer=True),
}


@dataclass(frozen=True)
class Base:
    name: str
    kind: str  # HEADER, PRESIGNED or STREAM
    op: str  # get, put, tagging, version, list, delete, delete-objects
    payload: str  # "hash" (signed SHA-256), "unsigned", "stream"
    signed_extra: str | None = None  # a signed header besides host/x-amz-*: mutated by header.*
    meta_signed: bool = False  # x-amz-meta-foo: bar baz is signed

    @property
    def writes(self) -> bool:
        return self.op in ("put", "delete", "delete-objects")

    @property
    def has_body(self) -> bool:
        return self.op in ("put", "delete-objects")

    @property
    def on_object(self) -> bool:
        return self.op not in ("list", "delete-objects")

    @property
    def method(self) -> str:
        return {"put": "PUT", "delete": "DELETE", "delete-objects": "POST"}.get(self.op, "GET")

    def build(self, bucket: str, signing: Signing | None = None) -> Wire:
        return BUILDERS[self.name](bucket, signing or Signing())


BASES = [
    Base("hdr-get-object", HEADER, "get", "hash", signed_extra="Range"),
    Base("hdr-put-object", HEADER, "put", "hash", signed_extra="Content-Type", meta_signed=True),
    Base("hdr-put-unsigned-payload", HEADER, "put", "unsigned", meta_signed=True),
    Base("hdr-get-tagging", HEADER, "tagging", "hash"),
    Base("hdr-get-version", HEADER, "version", "hash"),
    Base("hdr-list", HEADER, "list", "hash"),
    Base("hdr-delete", HEADER, "delete", "hash"),
    Base("hdr-delete-objects", HEADER, "delete-objects", "hash", signed_extra="Content-MD5"),
    Base("pre-get-object", PRESIGNED, "get", "unsigned"),
    Base("pre-put-object", PRESIGNED, "put", "unsigned"),
    Base("pre-put-signed-hash", PRESIGNED, "put", "hash"),
    Base("pre-list", PRESIGNED, "list", "unsigned"),
    Base("pre-delete", PRESIGNED, "delete", "unsigned"),
    Base("chunked-put", STREAM, "put", "stream", signed_extra="x-amz-decoded-content-length"),
    Base("chunked-put-trailer", STREAM, "put", "stream", signed_extra="x-amz-trailer"),
]


# -- mutations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    base: Base
    bucket: str

    def resign(self, **changes: Any) -> Wire:
        """The same request, correctly signed with other Signing parameters."""
        return self.base.build(self.bucket, Signing(**changes))


Apply = Callable[[Wire, Case], Wire]


@dataclass(frozen=True)
class Mutation:
    name: str
    applies: Callable[[Base], bool]
    apply: Apply
    expect: str = REFUSE
    codes: frozenset[str] = frozenset()  # REFUSE: the allowed error codes (empty: AUTH_CODES)
    message: str | None = None  # REFUSE: a part of the error message


def kinds(*wanted: str, where: Callable[[Base], bool] = lambda b: True) -> Callable[[Base], bool]:
    return lambda b: b.kind in wanted and where(b)


EVERY = kinds(HEADER, PRESIGNED, STREAM)
HDR = kinds(HEADER, STREAM)  # signed with an Authorization header
PRE = kinds(PRESIGNED)
STREAMS = kinds(STREAM)
TRAILER = kinds(STREAM, where=lambda b: b.name == "chunked-put-trailer")


def with_ops(b: Base) -> bool:
    """Has query parameters of its own (not X-Amz-*)."""
    return b.op in ("tagging", "version", "list", "delete-objects")


def flip_hex(text: str, at: int = 10) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def path(w: Wire, new: str) -> Wire:
    return replace(w, path=new)


def key_start(w: Wire) -> int:
    """Where the object key starts in the path (after "/bucket/"), or the bucket (1)."""
    return w.path.index("/", 1) + 1 if w.path.count("/") > 1 else 1


def bucket_end(w: Wire) -> int:
    return w.path.find("/", 1) if w.path.count("/") > 1 else len(w.path)


def with_sha(w: Wire, value: str) -> Wire:
    return w.set("X-Amz-Content-SHA256", value)


def amz_date(w: Wire) -> datetime:
    raw = w.get("X-Amz-Date")
    assert raw is not None
    return datetime.strptime(raw, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def shifted(raw: str, **delta: float) -> str:
    return (datetime.strptime(raw, "%Y%m%dT%H%M%SZ") + timedelta(**delta)).strftime("%Y%m%dT%H%M%SZ")


def http_date(w: Wire, **delta: float) -> str:
    return format_datetime(amz_date(w) + timedelta(**delta), usegmt=True)


def changed_value(name: str, value: str) -> str:
    if name.lower() == "x-amz-decoded-content-length":
        return str(int(value) - 1)
    return {"range": "bytes=0-40", "content-type": "text/html", "content-md5": md5_b64(b"other"),
            "x-amz-trailer": "x-amz-checksum-sha256"}.get(name.lower(), value + "x")


def extra(c: Case) -> str:
    assert c.base.signed_extra is not None
    return c.base.signed_extra


# Authorization: AWS4-HMAC-SHA256 Credential=AK/date/region/s3/aws4_request, SignedHeaders=a;b, Signature=hex


def authorization_parts(w: Wire) -> tuple[str, dict[str, str]]:
    value = w.get("Authorization")
    assert value is not None
    algorithm, _, rest = value.partition(" ")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, text = part.strip().partition("=")
        fields[name] = text
    return algorithm, fields


def authorization(w: Wire, algorithm: str | None = None, sep: str = ", ",
                  order: tuple[str, ...] = ("Credential", "SignedHeaders", "Signature"), **changes: str) -> Wire:
    old_algorithm, fields = authorization_parts(w)
    fields.update(changes)
    text = sep.join(f"{name}={fields[name]}" for name in order)
    return w.set("Authorization", f"{algorithm or old_algorithm} {text}")


def credential(w: Wire, position: int, value: str) -> Wire:
    parts = authorization_parts(w)[1]["Credential"].split("/")
    parts[position] = value
    return authorization(w, Credential="/".join(parts))


def signed_headers(w: Wire) -> list[str]:
    return authorization_parts(w)[1]["SignedHeaders"].split(";")


def without_signed(w: Wire, name: str) -> Wire:
    return authorization(w, SignedHeaders=";".join(h for h in signed_headers(w) if h != name.lower()))


def signature(w: Wire) -> str:
    return authorization_parts(w)[1]["Signature"]


# the query string (values as sent, still encoded)


def op_params(w: Wire) -> list[tuple[str, str | None]]:
    return [(n, v) for n, v in w.params() if not n.startswith("X-Amz-")]


def param(w: Wire, name: str, change: Callable[[str], str]) -> Wire:
    return w.with_params([(n, change(v or "") if n == name else v) for n, v in w.params()])


def add_param(w: Wire, name: str, value: str | None) -> Wire:
    return w.with_params([*w.params(), (name, value)])


def drop_param(w: Wire, name: str) -> Wire:
    return w.with_params([(n, v) for n, v in w.params() if n != name])


def rename_param(w: Wire, name: str, new: str) -> Wire:
    return w.with_params([(new if n == name else n, v) for n, v in w.params()])


def query_credential(w: Wire, position: int, value: str) -> Wire:
    def change(old: str) -> str:
        parts = unquote(old).split("/")
        parts[position] = value
        return "%2F".join(parts)
    return param(w, "X-Amz-Credential", change)


# aws-chunked bodies


def chunks(w: Wire) -> list[tuple[bytes, str | None]]:
    assert w.stream is not None
    return list(w.stream.chunks)


def swapped(w: Wire) -> Wire:
    c = chunks(w)
    c[0], c[1] = c[1], c[0]
    return w.restream(chunks=tuple(c))


def resplit(w: Wire) -> Wire:
    """Chunks 0 and 1 split at another place, each keeping its signature."""
    c = chunks(w)
    data = c[0][0] + c[1][0]
    c[0], c[1] = (data[:150], c[0][1]), (data[150:], c[1][1])
    return w.restream(chunks=tuple(c))


def chunk(w: Wire, i: int, data: bytes | None = None, sig: str | None = "") -> Wire:
    """Chunk `i` with other data and/or signature ("": kept, None: none)."""
    c = chunks(w)
    c[i] = (c[i][0] if data is None else data, c[i][1] if sig == "" else sig)
    return w.restream(chunks=tuple(c))


def trailer_signature(w: Wire) -> str:
    assert w.stream is not None and w.stream.trailer_signature is not None
    return w.stream.trailer_signature


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def now() -> datetime:
    return datetime.now(UTC)


EXPIRED, TOO_LONG = "Request has expired", "less than a week"
NOT_SIGNED = "There were headers present in the request which were not signed"
ANOTHER_HASH = hashlib.sha256(b"something else").hexdigest()
OTHER_METHODS = {"GET": ("HEAD", "DELETE", "PUT"), "PUT": ("POST", "DELETE", "GET"),
                 "DELETE": ("GET", "PUT"), "POST": ("PUT", "GET")}
NO_SHA256 = frozenset({"XAmzContentSHA256Mismatch"})
BAD_STREAM = frozenset({"IncompleteBody", "InvalidRequest"})
BAD_ALGORITHM = frozenset({"InvalidArgument"})
NO_SUCH_KEY_ID = frozenset({"InvalidAccessKeyId"})
TOO_SKEWED = frozenset({"RequestTimeTooSkewed"})

M = Mutation


def method_to(to: str) -> Mutation:
    return M(f"method.to-{to}", lambda b: to in OTHER_METHODS[b.method], lambda w, c: replace(w, method=to), codes=SIG)


MUTATIONS: list[Mutation] = [
    M("unchanged", EVERY, lambda w, c: w, ACCEPT),
    # the method
    *(method_to(to) for to in ("HEAD", "GET", "PUT", "POST", "DELETE")),
    # signed as "GET" (the canonical method is upper-cased), then no handler: 405/501
    M("method.lower-cased", EVERY, lambda w, c: replace(w, method=w.method.lower()), UNCHANGED),
    # the path
    M("path.char-changed", EVERY, lambda w, c: path(w, w.path[:-1] + chr(ord(w.path[-1]) + 1)), codes=SIG),
    M("path.unreserved-char-escaped", EVERY,  # ".txt" -> ".tx%74": the same key
      lambda w, c: path(w, w.path[:-1] + f"%{ord(w.path[-1]):02X}"), codes=SIG),
    M("path.escape-lower-cased", lambda b: b.on_object, lambda w, c: path(w, w.path.replace("%3D", "%3d")), codes=SIG),
    M("path.escape-removed", lambda b: b.on_object, lambda w, c: path(w, w.path.replace("%3D", "=")), OBSERVE),
    M("path.slash-escaped", lambda b: b.on_object,  # dir%2FKey: the same key
      lambda w, c: path(w, w.path[: key_start(w)] + w.path[key_start(w) :].replace("/", "%2F")), codes=SIG),
    M("path.trailing-slash", EVERY, lambda w, c: path(w, w.path + "/"), codes=SIG),
    M("path.double-slash", EVERY,  # "/bkt/dir//Key-1%3Da.txt", "//bkt"
      lambda w, c: path(w, w.path[: w.path.rindex("/")] + "/" + w.path[w.path.rindex("/") :]), codes=SIG),
    M("path.dot-segment", EVERY,
      lambda w, c: path(w, w.path[: bucket_end(w)] + "/." + w.path[bucket_end(w) :]), codes=SIG),
    M("path.dot-dot-segment", EVERY,
      lambda w, c: path(w, w.path[: bucket_end(w)] + "/x/.." + w.path[bucket_end(w) :]), codes=SIG),
    M("path.case-changed", EVERY,
      lambda w, c: path(w, w.path[: key_start(w)] + w.path[key_start(w)].upper() + w.path[key_start(w) + 1 :]),
      codes=SIG),
    # the query
    M("query.param-added", EVERY, lambda w, c: add_param(w, "x-id", "Smuggled"), codes=SIG),
    M("query.response-content-type-added", lambda b: b.op == "get",
      lambda w, c: add_param(w, "response-content-type", "text%2Fhtml"), codes=SIG),
    M("query.versionId-added", lambda b: b.on_object and b.op != "version",
      lambda w, c: add_param(w, "versionId", "null"), codes=SIG),
    M("query.param-removed", with_ops, lambda w, c: drop_param(w, op_params(w)[-1][0]), codes=SIG),
    M("query.value-changed", with_ops,  # prefix=dir%2x, ?tagging=x, ?delete=x, versionId=nulx
      lambda w, c: param(w, op_params(w)[-1][0], lambda v: v[:-1] + "x" if v else "x"), codes=SIG),
    M("query.param-duplicated", with_ops, lambda w, c: add_param(w, *op_params(w)[-1]), codes=SIG),
    M("query.name-case-changed", with_ops,
      lambda w, c: rename_param(w, op_params(w)[-1][0], op_params(w)[-1][0].capitalize()), codes=SIG),
    M("query.order-reversed", lambda b: b.kind == PRESIGNED or b.op == "list",
      lambda w, c: w.with_params(w.params()[::-1]), ACCEPT),
    M("query.bare-param-with-equals", lambda b: b.op in ("tagging", "delete-objects"),  # ?tagging=
      lambda w, c: w.with_params([(n, v or "") for n, v in w.params()]), ACCEPT),
    M("query.value-slash-unescaped", lambda b: b.op == "list",  # prefix=dir/: the same value
      lambda w, c: param(w, "prefix", lambda v: v.replace("%2F", "/")), OBSERVE),
    # Host, dates, the payload hash
    M("host.port-changed", EVERY, lambda w, c: w.set("Host", "127.0.0.1:9001"), codes=SIG),
    M("host.name-changed", EVERY, lambda w, c: w.set("Host", "localhost:9000"), codes=SIG),
    M("host.removed", EVERY, lambda w, c: w.without("Host"), codes=SIG),
    M("x-amz-date.one-second-later", HDR,
      lambda w, c: w.set("X-Amz-Date", shifted(w.get("X-Amz-Date") or "", seconds=1)), codes=SIG),
    M("x-amz-date.removed", HDR, lambda w, c: w.without("X-Amz-Date"), codes=DENIED | SIG, message="Date"),
    M("x-amz-date.moved-to-date-header", HDR,
      lambda w, c: w.without("X-Amz-Date").add("Date", http_date(w)), codes=SIG),
    M("content-sha256.other-hash", kinds(HEADER), lambda w, c: with_sha(w, ANOTHER_HASH), codes=SIG),
    M("content-sha256.unsigned-payload", kinds(HEADER, STREAM, where=lambda b: b.payload != "unsigned"),
      lambda w, c: with_sha(w, UNSIGNED_PAYLOAD), codes=SIG),
    M("content-sha256.body-hash-for-unsigned", kinds(HEADER, where=lambda b: b.payload == "unsigned"),
      lambda w, c: with_sha(w, hashlib.sha256(w.body).hexdigest()), codes=SIG),
    M("content-sha256.upper-cased", kinds(HEADER, where=lambda b: b.payload == "hash"),
      lambda w, c: with_sha(w, (w.get("X-Amz-Content-SHA256") or "").upper()), codes=SIG),
    M("content-sha256.unsigned-trailer-mode", STREAMS,  # a downgrade to an unsigned stream
      lambda w, c: with_sha(w, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"), codes=SIG),
    M("content-sha256.removed", HDR, lambda w, c: w.without("X-Amz-Content-SHA256"),
      codes=SIG | {"InvalidRequest"}),
    # other signed headers: Range, Content-Type, Content-MD5, x-amz-decoded-content-length,
    # x-amz-trailer, x-amz-meta-foo
    M("header.signed-value-changed", lambda b: b.signed_extra is not None,
      lambda w, c: w.set(extra(c), changed_value(extra(c), w.get(extra(c)) or "")), codes=SIG),
    M("header.signed-removed", lambda b: b.signed_extra is not None, lambda w, c: w.without(extra(c)), codes=SIG),
    M("header.signed-meta-value-changed", lambda b: b.meta_signed,
      lambda w, c: w.set("x-amz-meta-foo", "bar bat"), codes=SIG),
    M("header.signed-meta-repeated", lambda b: b.meta_signed,  # a second line: "bar baz,evil"
      lambda w, c: w.add("X-Amz-Meta-Foo", "evil"), codes=SIG),
    M("header.signed-meta-spaces-widened", lambda b: b.meta_signed,  # SigV4 trims and collapses spaces
      lambda w, c: w.set("x-amz-meta-foo", "  bar    baz "), ACCEPT),
    M("header.signed-meta-space-to-tab", lambda b: b.meta_signed,
      lambda w, c: w.set("x-amz-meta-foo", "bar\tbaz"), OBSERVE),
    M("header.signed-meta-space-to-nbsp", lambda b: b.meta_signed,  # the byte 0xA0 (obs-text)
      lambda w, c: w.set("x-amz-meta-foo", "bar\xa0baz"), OBSERVE),
    # unsigned headers: x-amz-* ones must be signed (S3), others need not
    M("unsigned.x-foo-added", EVERY, lambda w, c: w.add("X-Foo", "bar"), ACCEPT),
    M("unsigned.x-amz-meta-added", EVERY,
      lambda w, c: w.add("X-Amz-Meta-Extra" if c.base.meta_signed else "X-Amz-Meta-Foo", "smuggled"),
      codes=DENIED, message=NOT_SIGNED),
    M("unsigned.x-amz-acl-added", lambda b: b.writes, lambda w, c: w.add("x-amz-acl", "public-read"),
      codes=DENIED, message=NOT_SIGNED),
    M("unsigned.x-amz-date-added", PRE,
      lambda w, c: w.add("X-Amz-Date", now().strftime("%Y%m%dT%H%M%SZ")), codes=DENIED, message=NOT_SIGNED),
    M("unsigned.date-added", HDR, lambda w, c: w.add("Date", http_date(w, days=-1)), ACCEPT),  # x-amz-date wins
    M("unsigned.content-type-added", lambda b: b.signed_extra != "Content-Type",
      lambda w, c: w.add("Content-Type", "text/html"), OBSERVE),
    # the Authorization header
    M("auth.signed-headers-x-amz-date-dropped", HDR, lambda w, c: without_signed(w, "x-amz-date"),
      codes=DENIED | SIG),
    M("auth.signed-headers-host-dropped", HDR, lambda w, c: without_signed(w, "host"), codes=DENIED | SIG),
    M("auth.signed-headers-other-dropped",
      lambda b: b.kind != PRESIGNED and (b.signed_extra is not None or b.meta_signed),
      lambda w, c: without_signed(w, c.base.signed_extra or "x-amz-meta-foo"), codes=DENIED | SIG),
    M("auth.signed-headers-added", HDR,
      lambda w, c: authorization(w, SignedHeaders=";".join(sorted([*signed_headers(w), "x-foo"]))), codes=SIG),
    M("auth.signed-headers-reordered", HDR,
      lambda w, c: authorization(w, SignedHeaders=";".join(signed_headers(w)[::-1])), codes=SIG | HDR_MALFORMED),
    M("auth.signed-headers-upper-cased", HDR,
      lambda w, c: authorization(w, SignedHeaders=";".join(signed_headers(w)).upper()), OBSERVE),
    M("auth.credential-date-changed", HDR,
      lambda w, c: credential(w, 1, (amz_date(w) - timedelta(days=1)).strftime("%Y%m%d")),
      codes=HDR_MALFORMED | SIG),
    M("auth.credential-region-changed", HDR, lambda w, c: credential(w, 2, "us-west-2"), codes=HDR_MALFORMED | SIG),
    M("auth.credential-service-changed", HDR, lambda w, c: credential(w, 3, "s3-object-lambda"),
      codes=HDR_MALFORMED | SIG),
    M("auth.credential-other-account", HDR, lambda w, c: credential(w, 0, OTHER_AK), codes=SIG),
    M("auth.credential-unknown-key", HDR, lambda w, c: credential(w, 0, UNKNOWN_AK), codes=NO_SUCH_KEY_ID),
    M("auth.credential-key-lower-cased", HDR, lambda w, c: credential(w, 0, ROOT_AK.lower()), codes=NO_SUCH_KEY_ID),
    M("auth.signature-digit-flipped", HDR, lambda w, c: authorization(w, Signature=flip_hex(signature(w))),
      codes=SIG),
    M("auth.signature-last-digit-flipped", HDR,
      lambda w, c: authorization(w, Signature=flip_hex(signature(w), 63)), codes=SIG),
    M("auth.signature-upper-cased", HDR, lambda w, c: authorization(w, Signature=signature(w).upper()), codes=SIG),
    M("auth.signature-truncated", HDR, lambda w, c: authorization(w, Signature=signature(w)[:-1]), codes=SIG),
    M("auth.signature-extended", HDR, lambda w, c: authorization(w, Signature=signature(w) + "0"), codes=SIG),
    M("auth.signature-emptied", HDR, lambda w, c: authorization(w, Signature=""), codes=HDR_MALFORMED | SIG),
    M("auth.algorithm-sha512", HDR, lambda w, c: authorization(w, "AWS4-HMAC-SHA512"), codes=BAD_ALGORITHM),
    M("auth.algorithm-sigv4a", HDR, lambda w, c: authorization(w, "AWS4-ECDSA-P256-SHA256"), codes=BAD_ALGORITHM),
    M("auth.algorithm-lower-cased", HDR, lambda w, c: authorization(w, "aws4-hmac-sha256"), codes=BAD_ALGORITHM),
    M("auth.header-removed", kinds(HEADER, STREAM, where=lambda b: b.op != "delete-objects"),
      lambda w, c: w.without("Authorization"), codes=DENIED),  # anonymous, to a private bucket
    # anonymous DeleteObjects is answered 200, each key refused in the DeleteResult (as in S3)
    M("auth.header-removed", lambda b: b.op == "delete-objects", lambda w, c: w.without("Authorization"), UNCHANGED),
    M("auth.header-repeated", HDR, lambda w, c: w.add("Authorization", w.get("Authorization") or ""), OBSERVE),
    M("auth.spaces-after-commas-removed", HDR, lambda w, c: authorization(w, sep=","), ACCEPT),
    M("auth.components-reordered", HDR,
      lambda w, c: authorization(w, order=("Signature", "SignedHeaders", "Credential")), OBSERVE),
    # the body: its SHA-256 signed, or not
    M("body.byte-changed", lambda b: b.has_body and b.payload == "hash",
      lambda w, c: replace(w, body=flip_byte(w.body, len(w.body) // 2)), codes=NO_SHA256),
    M("body.byte-appended", lambda b: b.has_body and b.payload == "hash",
      lambda w, c: replace(w, body=w.body + b"!"), codes=NO_SHA256),
    M("body.truncated", lambda b: b.has_body and b.payload == "hash",
      lambda w, c: replace(w, body=w.body[:-1]), codes=NO_SHA256),
    M("body.byte-changed", lambda b: b.has_body and b.payload == "unsigned",
      lambda w, c: replace(w, body=flip_byte(w.body, 5), payload=flip_byte(w.body, 5)), ACCEPT),
    M("body.replaced", lambda b: b.has_body and b.payload == "unsigned",
      lambda w, c: replace(w, body=b"x", payload=b"x"), ACCEPT),
    # re-signed: a correct signature, over other parameters
    M("resigned.wrong-secret", EVERY, lambda w, c: c.resign(secret_key=ROOT_SK[:-1] + "2"), codes=SIG),
    # a signature for another region is still one made with the account's secret: manta
    # takes any region (as MinIO does with no region set), so a client configured for
    # another region works; S3 would answer AuthorizationHeaderMalformed ("the region
    # 'eu-west-3' is wrong; expecting 'us-east-1'"), see docs/ARCHITECTURE.md
    M("resigned.other-region", EVERY, lambda w, c: c.resign(region="eu-west-3"), ACCEPT),
    M("resigned.16-minutes-ago", HDR, lambda w, c: c.resign(at=now() - timedelta(minutes=16)), codes=TOO_SKEWED),
    M("resigned.16-minutes-ahead", HDR, lambda w, c: c.resign(at=now() + timedelta(minutes=16)), codes=TOO_SKEWED),
    M("resigned.14-minutes-ago", HDR, lambda w, c: c.resign(at=now() - timedelta(minutes=14)), ACCEPT),
    M("resigned.expired", PRE, lambda w, c: c.resign(expires=1, at=now() - timedelta(seconds=10)),
      codes=DENIED, message=EXPIRED),
    M("resigned.expires-over-a-week", PRE, lambda w, c: c.resign(expires=604801), codes=DENIED, message=TOO_LONG),
    M("resigned.six-days-old-week-expiry", PRE,
      lambda w, c: c.resign(expires=604800, at=now() - timedelta(days=6)), ACCEPT),
    M("resigned.signed-an-hour-ahead", PRE, lambda w, c: c.resign(at=now() + timedelta(hours=1)),
      codes=DENIED, message="not valid yet"),
    # presigned URLs: the X-Amz-* query parameters
    M("pre.expires-raised", PRE, lambda w, c: param(w, "X-Amz-Expires", lambda v: str(int(v) * 10)), codes=SIG),
    M("pre.expires-lowered", PRE, lambda w, c: param(w, "X-Amz-Expires", lambda v: str(int(v) - 1)), codes=SIG),
    M("pre.expires-duplicated-larger", PRE, lambda w, c: add_param(w, "X-Amz-Expires", "604800"), codes=SIG),
    M("pre.date-one-second-later", PRE,
      lambda w, c: param(w, "X-Amz-Date", lambda v: shifted(v, seconds=1)), codes=SIG),
    M("pre.date-a-day-earlier", PRE, lambda w, c: param(w, "X-Amz-Date", lambda v: shifted(v, days=-1)),
      codes=QUERY_MALFORMED | SIG),
    M("pre.date-duplicated-later", PRE,
      lambda w, c: add_param(w, "X-Amz-Date", shifted(dict(w.params())["X-Amz-Date"] or "", seconds=1)),
      codes=SIG),
    M("pre.signed-headers-added", PRE, lambda w, c: param(w, "X-Amz-SignedHeaders", lambda v: v + "%3Bx-foo"),
      codes=SIG),
    M("pre.signed-headers-host-replaced", PRE,
      lambda w, c: param(w, "X-Amz-SignedHeaders", lambda v: "x-foo").add("X-Foo", "bar"), codes=DENIED | SIG),
    M("pre.signed-headers-emptied", PRE, lambda w, c: param(w, "X-Amz-SignedHeaders", lambda v: ""),
      codes=QUERY_MALFORMED | SIG),
    M("pre.credential-other-account", PRE, lambda w, c: query_credential(w, 0, OTHER_AK), codes=SIG),
    M("pre.credential-unknown-key", PRE, lambda w, c: query_credential(w, 0, UNKNOWN_AK), codes=NO_SUCH_KEY_ID),
    M("pre.credential-date-changed", PRE, lambda w, c: query_credential(w, 1, "20200101"),
      codes=QUERY_MALFORMED | SIG),
    M("pre.credential-region-changed", PRE, lambda w, c: query_credential(w, 2, "us-west-2"),
      codes=QUERY_MALFORMED | SIG),
    M("pre.credential-service-changed", PRE, lambda w, c: query_credential(w, 3, "s3-object-lambda"),
      codes=QUERY_MALFORMED | SIG),
    M("pre.signature-digit-flipped", PRE, lambda w, c: param(w, "X-Amz-Signature", flip_hex), codes=SIG),
    M("pre.signature-upper-cased", PRE, lambda w, c: param(w, "X-Amz-Signature", str.upper), codes=SIG),
    M("pre.signature-truncated", PRE, lambda w, c: param(w, "X-Amz-Signature", lambda v: v[:-1]), codes=SIG),
    M("pre.signature-removed", PRE, lambda w, c: drop_param(w, "X-Amz-Signature"), codes=QUERY_MALFORMED),
    M("pre.signature-repeated-wrong-last", PRE, lambda w, c: add_param(w, "X-Amz-Signature", "0" * 64), codes=SIG),
    M("pre.signature-repeated-wrong-first", PRE,
      lambda w, c: w.with_params([("X-Amz-Signature", "0" * 64), *w.params()]), OBSERVE),
    M("pre.algorithm-changed", PRE, lambda w, c: param(w, "X-Amz-Algorithm", lambda v: "AWS4-HMAC-SHA512"),
      codes=QUERY_MALFORMED),
    M("pre.algorithm-removed", PRE, lambda w, c: drop_param(w, "X-Amz-Algorithm"), codes=QUERY_MALFORMED),
    M("pre.expires-removed", PRE, lambda w, c: drop_param(w, "X-Amz-Expires"), codes=QUERY_MALFORMED),
    M("pre.security-token-added", PRE, lambda w, c: add_param(w, "X-Amz-Security-Token", "token"),
      codes=SIG | {"InvalidToken"}),
    M("pre.content-sha256-param-added", kinds(PRESIGNED, where=lambda b: b.payload == "unsigned"),
      lambda w, c: add_param(w, "X-Amz-Content-Sha256", hashlib.sha256(w.body).hexdigest()), codes=SIG),
    M("pre.content-sha256-param-changed", kinds(PRESIGNED, where=lambda b: b.payload == "hash"),
      lambda w, c: param(w, "X-Amz-Content-Sha256", lambda v: ANOTHER_HASH), codes=SIG),
    M("pre.content-sha256-param-removed", kinds(PRESIGNED, where=lambda b: b.payload == "hash"),
      lambda w, c: drop_param(w, "X-Amz-Content-Sha256"), codes=SIG),
    M("pre.authorization-header-added", PRE,
      lambda w, c: w.add("Authorization", f"AWS4-HMAC-SHA256 Credential={ROOT_AK}/20200101/us-east-1/s3/"
                         "aws4_request, SignedHeaders=host, Signature=" + "0" * 64),
      codes=BAD_ALGORITHM, message="Only one auth mechanism"),
    M("pre.body-changed-with-signed-hash", kinds(PRESIGNED, where=lambda b: b.payload == "hash"),
      lambda w, c: replace(w, body=flip_byte(w.body, 3)), codes=NO_SHA256),
    # aws-chunked: chunks, their signatures, the final chunk, trailers
    M("chunk.data-byte-changed", STREAMS, lambda w, c: chunk(w, 1, data=flip_byte(chunks(w)[1][0], 50)),
      codes=SIG),
    M("chunk.signature-flipped", STREAMS, lambda w, c: chunk(w, 1, sig=flip_hex(chunks(w)[1][1] or "")),
      codes=SIG),
    M("chunk.signature-removed", STREAMS, lambda w, c: chunk(w, 0, sig=None), codes=SIG),
    M("chunk.signature-of-previous-chunk", STREAMS, lambda w, c: chunk(w, 1, sig=chunks(w)[0][1]), codes=SIG),
    M("chunks.reordered", STREAMS, lambda w, c: swapped(w), codes=SIG | BAD_STREAM),
    M("chunks.middle-chunk-dropped", STREAMS,
      lambda w, c: w.restream(chunks=tuple(x for i, x in enumerate(chunks(w)) if i != 1)), codes=SIG | BAD_STREAM),
    M("chunks.resplit-same-data", STREAMS, lambda w, c: resplit(w), codes=SIG),
    M("chunks.final-chunk-removed", STREAMS,  # the stream ends after the last data chunk
      lambda w, c: w.restream(chunks=tuple(chunks(w)[:-1]), trailers=(), trailer_signature=None, closing=b""),
      codes=BAD_STREAM),
    M("chunks.final-chunk-signature-flipped", STREAMS,
      lambda w, c: chunk(w, -1, sig=flip_hex(chunks(w)[-1][1] or "")), codes=SIG),
    M("chunks.data-after-the-end", STREAMS,
      lambda w, c: w.restream(after=b"5;chunk-signature=" + b"0" * 64 + b"\r\nextra\r\n"), codes=SIG | BAD_STREAM),
    M("chunks.content-encoding-changed", STREAMS, lambda w, c: w.set("Content-Encoding", "aws-chunked, gzip"),
      codes=SIG),
    M("chunks.body-in-7-byte-pieces", STREAMS, lambda w, c: replace(w, piece=7), ACCEPT),
    M("trailer.value-changed", TRAILER,
      lambda w, c: w.restream(trailers=(("x-amz-checksum-crc32", crc32_b64(b"other")),)), codes=SIG),
    M("trailer.signature-flipped", TRAILER, lambda w, c: w.restream(trailer_signature=flip_hex(trailer_signature(w))),
      codes=SIG),
    M("trailer.signature-removed", TRAILER, lambda w, c: w.restream(trailer_signature=None), codes=SIG),
    M("trailer.removed", TRAILER, lambda w, c: w.restream(trailers=(), trailer_signature=None),
      codes=SIG | {"InvalidRequest"}),
    M("trailer.undeclared-added", TRAILER,
      lambda w, c: w.restream(trailers=(*(w.stream.trailers if w.stream else ()), ("x-amz-meta-foo", "evil"))),
      codes=SIG | {"InvalidRequest"}),
]


# -- the cases --------------------------------------------------------------------------

CASES = [pytest.param(base, m, id=f"{base.name}:{m.name}") for base in BASES for m in MUTATIONS if m.applies(base)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessS3]:
    with InProcessS3(Path(tmp_path_factory.mktemp("sigv4-mutations"))) as s3:
        s3.add_account("other", OTHER_AK, OTHER_SK)
        yield s3


_numbers = itertools.count()


@pytest.fixture
def seeded(server: InProcessS3) -> str:
    """A bucket of its own for each case: KEY (ORIGINAL), and one more object."""
    bucket = f"mut-{next(_numbers):04d}"
    server.create_bucket(bucket)
    server.put(bucket, KEY, ORIGINAL, **{"Content-Type": "text/plain", "x-amz-meta-foo": "original"})
    server.put(bucket, "top.txt", b"top")
    return bucket


def snapshot(s3: InProcessS3, bucket: str) -> tuple[list[str], list[str], dict[str, str]]:
    """The objects of `bucket` (keys, ETags, sizes, times) and KEY's headers (type, metadata)."""
    listing = s3.request("GET", f"/{bucket}", query={"list-type": "2"})
    assert listing.status_code == 200, listing.text
    objects = [texts(xml(listing), f"Contents/{name}") for name in ("Key", "ETag", "Size", "LastModified")]
    head = s3.request("HEAD", f"/{bucket}/{KEY}")
    kept = {k: v for k, v in head.headers.items()
            if k in ("etag", "content-type", "last-modified") or k.startswith("x-amz-meta-")}
    return objects[0], [",".join(o) for o in zip(*objects, strict=True)], kept


def check_effect(s3: InProcessS3, case: Case, wire: Wire, reply: Reply) -> None:
    """`reply` is what the request as signed would have got, and did what it would have."""
    op, bucket = case.base.op, case.bucket
    assert 200 <= reply.status < 300, f"refused: {reply}"
    current = s3.request("GET", f"/{bucket}/{KEY}")
    if op == "get":
        ranged = case.base.kind == HEADER
        assert (reply.status, reply.body) == ((206, ORIGINAL[:4]) if ranged else (200, ORIGINAL))
    elif op == "version":
        assert reply.body == ORIGINAL
    elif op == "tagging":
        assert b"<Tagging" in reply.body
    elif op == "list":
        assert f"<Key>{KEY}</Key>".encode() in reply.body
    elif op == "put":
        assert reply.status == 200 and current.content == wire.payload
    elif op in ("delete", "delete-objects"):
        assert current.status_code == 404, current.text
    if op not in ("put", "delete", "delete-objects"):
        assert current.content == ORIGINAL


@pytest.mark.parametrize(("base", "mut"), CASES)
def test_signed_request_mutation(server: InProcessS3, seeded: str, base: Base, mut: Mutation) -> None:
    case = Case(base, seeded)
    wire = mut.apply(base.build(seeded), case)
    before = snapshot(server, seeded)
    reply = send(server, wire)
    if mut.expect == OBSERVE:
        print(f"OBSERVED {base.name}:{mut.name}: {reply}")
    if mut.expect == ACCEPT or (mut.expect == OBSERVE and 200 <= reply.status < 300):
        check_effect(server, case, wire, reply)
        return
    if mut.expect == UNCHANGED and 200 <= reply.status < 300:
        assert base.op == "delete-objects" and b"<Code>AccessDenied</Code>" in reply.body, str(reply)
    elif mut.expect == UNCHANGED:
        assert reply.status >= 400, str(reply)
    else:
        assert 400 <= reply.status < 500, f"{mut.name} was not refused: {reply}"
    if mut.expect == REFUSE and wire.method != "HEAD":  # a HEAD answer has no body to read
        assert reply.code in (mut.codes or AUTH_CODES), f"refused, but with {reply}"
        if mut.message is not None:
            assert mut.message in (reply.message or ""), str(reply)
    assert snapshot(server, seeded) == before, f"the store changed on a refused request ({reply})"
    if mut.expect == UNCHANGED:
        print(f"UNCHANGED {base.name}:{mut.name}: {reply}")


def test_every_base_and_mutation_is_used() -> None:
    used = {m.name for m in MUTATIONS if any(m.applies(b) for b in BASES)}
    assert used == {m.name for m in MUTATIONS}
    assert len(CASES) > 400
