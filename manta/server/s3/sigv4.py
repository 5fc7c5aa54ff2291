"""AWS Signature Version 4 verification, server side.

Every request goes through the same four steps; only the first two need no
secret, so a request can be turned away before any account lookup:

    AuthRequest --parse()------> SigV4Auth, or None for an anonymous request
                --check_time()-> RequestTimeTooSkewed / AccessDenied (expired)
    (caller)    secret = account lookup by auth.access_key
                --verify()-----> signing key, or SignatureDoesNotMatch

The signing key returned by verify() seeds `chunked.AwsChunkedDecoder` when
the payload is streamed as signed aws-chunked (x-amz-content-sha256 starting
with STREAMING-AWS4-HMAC-SHA256-PAYLOAD); see `chunked.decoder_for()`.

What is canonicalised, and how (the rules S3 applies, not the generic SigV4
ones):

- the path is the raw path as sent, never normalised nor double-encoded;
  characters a client should have percent-encoded are encoded, existing
  %XX escapes are kept as they are;
- query parameters arrive decoded and are re-encoded with the AWS rule
  (only A-Za-z0-9-._~ unescaped), sorted by name then value;
  X-Amz-Signature is left out for presigned URLs;
- header values are trimmed and inner runs of whitespace collapsed, and hashed as the
  bytes that came on the wire (a non-ASCII value is UTF-8 from botocore);
- the payload hash is the x-amz-content-sha256 header for header auth,
  UNSIGNED-PAYLOAD for presigned URLs (unless the URL carries
  X-Amz-Content-Sha256). Comparing a hex payload hash with the body is the
  caller's job (XAmzContentSHA256Mismatch).

Derived signing keys are cached (keyed by secret, date, region, service):
they change once a day per account, and deriving one costs four HMACs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from manta.server.s3 import errors as s3e

__all__ = [
    "ALGORITHM",
    "EMPTY_SHA256",
    "MAX_EXPIRES_S",
    "STREAMING_PAYLOAD",
    "STREAMING_PAYLOAD_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "UNSIGNED_PAYLOAD",
    "AuthRequest",
    "SigV4Auth",
    "canonical_request",
    "canonical_uri",
    "check_time",
    "hmac_sha256",
    "parse",
    "signing_key",
    "string_to_sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
PAYLOAD_MARKERS = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER}
)
MAX_EXPIRES_S = 7 * 24 * 3600
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_CREDENTIAL_DATE = re.compile(r"\d{8}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ENCODED_PATH = re.compile(r"(?:[A-Za-z0-9\-._~/]|%[0-9A-Fa-f]{2})*")
_PERCENT_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")
_QUERY_AUTH_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_SIGV2_ONLY = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_BAD_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_MALFORMED = "The authorization header is malformed; "
_CREDENTIAL_FORM = '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request"'


@dataclass(frozen=True)
class AuthRequest:
    method: str
    raw_path: str  # as sent, percent-encoded, no query: "/bkt/a%20b/c"
    query: list[tuple[str, str]]  # decoded, in wire order
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ","


@dataclass(frozen=True)
class SigV4Auth:
    access_key: str
    amz_date: datetime  # timezone-aware UTC
    amz_date_raw: str  # "20260101T000000Z"
    scope: str  # "20260101/us-east-1/s3/aws4_request"
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    expires_s: int | None
    payload_hash: str


def parse(req: AuthRequest) -> SigV4Auth | None:
    """Read the credentials of a request; None if it carries none (anonymous)."""
    authorization = req.headers.get("authorization")
    if not req.query:  # the common case: header auth or anonymous, no query to look at
        return None if authorization is None else _parse_header(req, authorization)
    query_names = {name for name, _ in req.query}
    presigned = any(name in query_names for name in _QUERY_AUTH_PARAMS)
    if authorization is not None and (presigned or "Signature" in query_names):
        raise s3e.InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
            "Signature query string parameter or the Authorization header should be specified",
            ArgumentName="Authorization",
            ArgumentValue=authorization,
        )
    if authorization is not None:
        return _parse_header(req, authorization)
    if presigned:
        return _parse_query(req)
    if "AWSAccessKeyId" in query_names or "Signature" in query_names:
        raise s3e.InvalidRequest(_SIGV2_ONLY)
    return None


def _parse_header(req: AuthRequest, authorization: str) -> SigV4Auth:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS":
            raise s3e.InvalidRequest(_SIGV2_ONLY)
        raise s3e.InvalidArgument(
            "Unsupported Authorization Type",
            ArgumentName="Authorization",
            ArgumentValue=authorization,
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            raise s3e.AuthorizationHeaderMalformed(
                _MALFORMED + f"the authorization component {part.strip()!r} is malformed."
            )
        fields[name.strip()] = value.strip()
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not fields.get(n)]
    if missing:
        raise s3e.AuthorizationHeaderMalformed(
            _MALFORMED + f"missing {', '.join(missing)} in the Authorization header."
        )
    access_key, date, region, service = _parse_credential(
        fields["Credential"], s3e.AuthorizationHeaderMalformed, _MALFORMED
    )

    raw_date = req.headers.get("x-amz-date")
    if raw_date is not None:
        amz_date = _parse_amz_date(raw_date)
    else:
        amz_date = _parse_http_date(req.headers.get("date"))
    if amz_date is None:
        raise s3e.AccessDenied(_BAD_DATE)
    amz_date_raw = raw_date if raw_date is not None else amz_date.strftime(_AMZ_DATE_FORMAT)
    if amz_date_raw[:8] != date:
        raise s3e.AuthorizationHeaderMalformed(
            _MALFORMED + "Invalid credential date. Date is not the same as X-Amz-Date."
        )

    payload_hash = req.headers.get("x-amz-content-sha256")
    if payload_hash is None:
        raise s3e.InvalidRequest("Missing required header for this request: x-amz-content-sha256")
    if payload_hash not in PAYLOAD_MARKERS and not _SHA256_HEX.fullmatch(payload_hash):
        raise s3e.InvalidArgument(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
            "or a valid sha256 value.",
            ArgumentName="x-amz-content-sha256",
            ArgumentValue=payload_hash,
        )
    return SigV4Auth(
        access_key=access_key,
        amz_date=amz_date,
        amz_date_raw=amz_date_raw,
        scope=f"{date}/{region}/{service}/aws4_request",
        date=date,
        region=region,
        service=service,
        signed_headers=_parse_signed_headers(
            fields["SignedHeaders"], s3e.AuthorizationHeaderMalformed, _MALFORMED
        ),
        signature=fields["Signature"],
        presigned=False,
        expires_s=None,
        payload_hash=payload_hash,
    )


def _parse_query(req: AuthRequest) -> SigV4Auth:
    error = s3e.AuthorizationQueryParametersError
    params = dict(req.query)
    if params.get("X-Amz-Algorithm", ALGORITHM) != ALGORITHM:
        raise error('X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    if any(not params.get(name) for name in _QUERY_AUTH_PARAMS):
        raise error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters."
        )
    prefix = "Error parsing the X-Amz-Credential parameter; "
    access_key, date, region, service = _parse_credential(params["X-Amz-Credential"], error, prefix)
    amz_date = _parse_amz_date(params["X-Amz-Date"])
    if amz_date is None:
        raise error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    if params["X-Amz-Date"][:8] != date:
        raise error("Invalid credential date. Date is not the same as X-Amz-Date.")
    try:
        expires_s = int(params["X-Amz-Expires"])
    except ValueError:
        raise error("X-Amz-Expires should be a number") from None
    # out of range is refused as S3 does, 403 (0 is an expired URL: check_time)
    if expires_s < 0:
        raise s3e.AccessDenied("X-Amz-Expires must be non-negative")
    if expires_s > MAX_EXPIRES_S:
        raise s3e.AccessDenied(
            f"X-Amz-Expires must be less than a week (in seconds) that is; {MAX_EXPIRES_S}"
        )
    signed_headers = _parse_signed_headers(params["X-Amz-SignedHeaders"], error, "")
    payload_hash = params.get("X-Amz-Content-Sha256")
    if payload_hash is None and "x-amz-content-sha256" in signed_headers:
        payload_hash = req.headers.get("x-amz-content-sha256")
    return SigV4Auth(
        access_key=access_key,
        amz_date=amz_date,
        amz_date_raw=params["X-Amz-Date"],
        scope=f"{date}/{region}/{service}/aws4_request",
        date=date,
        region=region,
        service=service,
        signed_headers=signed_headers,
        signature=params["X-Amz-Signature"],
        presigned=True,
        expires_s=expires_s,
        payload_hash=payload_hash or UNSIGNED_PAYLOAD,
    )


def _parse_credential(
    credential: str, error: type[s3e.S3Error], prefix: str
) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise error(prefix + f"the Credential is mal-formed; expecting {_CREDENTIAL_FORM}.")
    access_key, date, region, service, terminal = parts
    if not _CREDENTIAL_DATE.fullmatch(date):
        raise error(
            prefix + f'incorrect date format "{date}". This date in the credential must be '
            'in the format "yyyyMMdd".'
        )
    if service != "s3":
        raise error(prefix + f'incorrect service "{service}". This endpoint belongs to "s3".')
    if terminal != "aws4_request":
        raise error(prefix + f'incorrect terminal "{terminal}". This endpoint uses "aws4_request".')
    return access_key, date, region, service


def _parse_signed_headers(value: str, error: type[s3e.S3Error], prefix: str) -> tuple[str, ...]:
    names = _signed_header_names(value)
    if not all(names):
        raise error(prefix + f"the SignedHeaders list {value!r} is malformed.")
    return names


@lru_cache(maxsize=1024)  # a client signs the same header list all day
def _signed_header_names(value: str) -> tuple[str, ...]:
    return tuple(name.strip().lower() for name in value.split(";"))


def _parse_amz_date(raw: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(raw):
        return None
    try:  # the fields by position: strptime costs ~40 us a request
        return datetime(int(raw[0:4]), int(raw[4:6]), int(raw[6:8]), int(raw[9:11]),
                        int(raw[11:13]), int(raw[13:15]), tzinfo=UTC)
    except ValueError:
        return None


def _parse_http_date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def check_time(auth: SigV4Auth, now: datetime, max_skew_s: int = 900) -> None:
    """Reject requests signed too far from `now`, and expired presigned URLs."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    age_s = (now - auth.amz_date).total_seconds()
    if not auth.presigned and abs(age_s) <= max_skew_s:
        return
    server_time = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if auth.presigned:
        assert auth.expires_s is not None
        if age_s > auth.expires_s or auth.expires_s == 0:
            expires = auth.amz_date + timedelta(seconds=auth.expires_s)
            raise s3e.AccessDenied(
                "Request has expired",
                **{
                    "X-Amz-Expires": str(auth.expires_s),
                    "Expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "ServerTime": server_time,
                },
            )
        if -age_s > max_skew_s:
            raise s3e.AccessDenied("Request is not valid yet", ServerTime=server_time)
    elif abs(age_s) > max_skew_s:
        raise s3e.RequestTimeTooSkewed(
            RequestTime=auth.amz_date_raw,
            ServerTime=server_time,
            MaxAllowedSkewMilliseconds=str(max_skew_s * 1000),
        )


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@lru_cache(maxsize=1024)
def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after HMAC's inner and outer padded keys (RFC 2104), for one key."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD))


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256, from the key's padded states kept (signing keys are few and reused):
    about a third of hmac.digest's time, which with OpenSSL 3 looks the algorithm up and
    sets up its context on every call (0.9 against 2.9 us here)."""
    inner, outer = _hmac_states(key)
    h = inner.copy()
    h.update(msg)
    out = outer.copy()
    out.update(h.digest())
    return out.digest()


@lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date, region, service, "aws4_request" (cached)."""
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def canonical_uri(raw_path: str) -> str:
    """The path as sent, with characters that should have been escaped escaped."""
    if not raw_path:
        return "/"
    if _ENCODED_PATH.fullmatch(raw_path):
        return raw_path
    pieces = _PERCENT_ESCAPE.split(raw_path)
    for i in range(0, len(pieces), 2):  # even pieces are outside %XX escapes
        pieces[i] = quote(pieces[i].encode("utf-8", "surrogateescape"), safe="/")
    return "".join(pieces)


def _canonical_query(query: list[tuple[str, str]], presigned: bool) -> str:
    if not query:
        return ""
    pairs = sorted(
        (quote(name, safe=""), quote(value, safe=""))
        for name, value in query
        if not (presigned and name == "X-Amz-Signature")
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_request(auth: SigV4Auth, req: AuthRequest) -> str:
    headers = req.headers
    canonical_headers = "".join(
        f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in auth.signed_headers
    )
    return "\n".join(
        (
            req.method.upper(),
            canonical_uri(req.raw_path),
            _canonical_query(req.query, auth.presigned),
            canonical_headers,
            ";".join(auth.signed_headers),
            auth.payload_hash,
        )
    )


def _wire_bytes(canonical: str) -> bytes:
    """The canonical request as bytes: header values arrive as their wire bytes decoded as
    latin-1 (ASGI), so encoding back gives the bytes the client signed (botocore sends and
    signs a non-ASCII x-amz-meta-* value as UTF-8). Text that never was latin-1-decoded
    wire bytes is hashed as UTF-8."""
    try:
        return canonical.encode("latin-1")
    except UnicodeEncodeError:
        return canonical.encode("utf-8", "surrogateescape")


def string_to_sign(auth: SigV4Auth, canonical: str) -> str:
    digest = hashlib.sha256(_wire_bytes(canonical)).hexdigest()
    return f"{ALGORITHM}\n{auth.amz_date_raw}\n{auth.scope}\n{digest}"


def verify(auth: SigV4Auth, req: AuthRequest, secret_key: str) -> bytes:
    """Check the request signature; return the signing key (for chunk signatures)."""
    if "host" not in auth.signed_headers:
        raise s3e.AccessDenied("The host header must be signed.")
    # S3's rule for both kinds: a presigned URL's holder may not add x-amz-* headers (a copy
    # source, an ACL, grants, metadata) to what was signed. x-amz-content-sha256 alone may
    # come unsigned with a presigned URL: _parse_query then ignores it.
    unsigned = sorted(
        name
        for name in req.headers
        if name.startswith("x-amz-") and name not in auth.signed_headers
        and not (auth.presigned and name == "x-amz-content-sha256")
    )
    if unsigned:
        raise s3e.AccessDenied(
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )
    canonical = canonical_request(auth, req)
    to_sign = string_to_sign(auth, canonical)
    key = signing_key(secret_key, auth.date, auth.region, auth.service)
    expected = hmac_sha256(key, to_sign.encode()).hex()
    if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
        raise s3e.SignatureDoesNotMatch(
            AWSAccessKeyId=auth.access_key,
            StringToSign=to_sign,
            SignatureProvided=auth.signature,
            CanonicalRequest=canonical,
        )
    return key
