"""The per-request context handed to every S3 operation."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

from starlette.types import Receive

from manta.server.s3 import errors as s3e
from manta.server.s3.doorcache import TtlCache
from manta.server.s3.readcache import BlobCache
from manta.server.s3.sigv4 import SigV4Auth
from storage import Account, BucketRef, Store

MAX_KEY_BYTES = 1024


@dataclass
class S3Request:
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: Mapping[str, str]
    receive: Receive
    request_id: str
    resource: str
    store: Store
    account: Account | None = None  # the signing account; None for an unsigned request
    auth: SigV4Auth | None = None
    signing_key: bytes = b""
    settings: Any = None
    buckets: TtlCache[BucketRef] | None = None  # a door over a remote catalog: buckets PUTs checked
    blob_cache: BlobCache | None = None  # small blobs read before (s3/readcache.py); None: off
    bucket_conf: frozenset[str] | None = None  # the bucket's configuration kinds, once its record was read
    bucket_lock: Any = None  # its Object Lock configuration (storage.objectlock.LockConfig), once read; None: none
    client_ip: str = ""  # the peer's address (aws:SourceIp)
    secure: bool = False  # over TLS (aws:SecureTransport)
    access: Any = None  # storage.access.BucketAccess, once read for anyone but the owner of a plain bucket
    access_context: dict[str, str] | None = None  # the request's condition keys, once built (s3/access.py)

    @property
    def owner(self) -> str:
        return self.account.name if self.account is not None else ""

    @overload
    def header(self, name: str) -> str | None: ...
    @overload
    def header(self, name: str, default: str) -> str: ...
    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def validate_key(key: str) -> None:
    if "\0" in key:
        raise s3e.InvalidArgument("Object key must not contain NUL characters.", ArgumentName="key")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise s3e.KeyTooLongError(MaxSizeAllowed=str(MAX_KEY_BYTES))
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise s3e.InvalidArgument("Object key must be valid UTF-8.", ArgumentName="key") from None


def copy_source_path(quoted: str) -> str:
    """The percent-decoded "bucket/key" of x-amz-copy-source; escapes that are not UTF-8
    are a 400, not a lookup of a key that cannot exist (a 404)."""
    try:
        return urllib.parse.unquote(quoted, errors="strict")
    except UnicodeDecodeError:
        raise s3e.InvalidArgument("Invalid copy source encoding.",
                                  ArgumentName="x-amz-copy-source") from None


def copy_source_version(req: S3Request) -> str | None:
    """The version `x-amz-copy-source` names (`?versionId=`), None for the current one."""
    query = req.headers["x-amz-copy-source"].partition("?")[2]
    return urllib.parse.parse_qs(query, keep_blank_values=True).get("versionId", [None])[0]
