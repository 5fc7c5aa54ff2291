"""Request signing between the parts of a cluster (front door -> node, node -> node).

Every request carries five headers::

    x-manta-node            the id of the node the request is meant for (`node-<8 hex>`), or
                            empty (unbound: only GET /v1/health, before the client knows the id)
    x-manta-date            unix time, decimal seconds
    x-manta-nonce           32 random hex chars
    x-manta-content-sha256  hex SHA-256 of the body, or "STREAMING" (staged blob PUTs only)
    authorization           MANTA-HMAC-SHA256 <hex HMAC-SHA256(secret, string to sign)>

with the string to sign "METHOD\\nPATH?QUERY\\nNODE\\nDATE\\nNONCE\\nCONTENT_SHA256". A node refuses
a request (`Refused.why`) that is "unsigned" (a header missing or malformed), "forged" (the
HMAC does not match), "wrong node" (bound to another node's id, or unbound where a binding is
required), "expired" (the date is more than `max_skew_s` away), "replayed" (its nonce was
seen within `nonce_ttl_s`, or it is dated before this process started) or whose body does
not match the signed digest ("body digest mismatch", also a STREAMING claim where a digest
is required), in that order.

A node process remembers the nonces it was sent in memory, so it also refuses as "replayed"
any request dated before it started: one its predecessor may have taken, captured and
replayed after a restart, within the skew, when no process remembers its nonce.

Each node remembers only the nonces it was sent, so the binding is what stops a request
captured on its way to one node from being replayed to another within the skew (a DELETE
meant for one copy removing another, a staged PUT whose body is not hashed). Nonces are
remembered for `nonce_ttl_s` only (longer than twice the skew, so a replay can never be both
fresh and forgotten).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Mapping

__all__ = ["DATE", "DIGEST", "EMPTY_SHA256", "NODE", "NONCE", "STREAMING", "UNBOUND", "UNBOUND_OK",
           "Refused", "SecretError", "Verifier", "load_secret", "sign"]

SCHEME = "MANTA-HMAC-SHA256"
DATE_ROUNDING_S = 0.001  # x-manta-date has milliseconds, rounded
NODE, DATE, NONCE, DIGEST, AUTHORIZATION = ("x-manta-node", "x-manta-date", "x-manta-nonce",
                                            "x-manta-content-sha256", "authorization")
UNBOUND = ""  # the binding of a request sent before the client knows the node's id
UNBOUND_OK = frozenset({("GET", "/v1/health")})  # read-only: harmless to replay anywhere
STREAMING = "STREAMING"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIN_SECRET_BYTES = 16
SECRET_ENV = "MANTA_CLUSTER_SECRET"


class Refused(Exception):
    """A request a node must not serve; `why` is what the 403 answer says."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class SecretError(ValueError):
    """No usable cluster secret."""


def load_secret(file: str | None = None) -> str:
    """The cluster secret: the stripped content of `file` when given, else MANTA_CLUSTER_SECRET."""
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                secret, source = fh.read().strip(), f"the cluster secret file {file}"
        except OSError as exc:
            raise SecretError(f"cannot read the cluster secret file {file}: {exc.strerror or exc}") from None
    else:
        secret, source = os.environ.get(SECRET_ENV, "").strip(), SECRET_ENV
    if not secret:
        raise SecretError(f"no cluster secret: set {SECRET_ENV} or pass --cluster-secret-file")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SecretError(f"{source} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def _mac(secret: str, method: str, path_with_query: str, node: str, date: str, nonce: str,
         digest: str) -> str:
    text = f"{method}\n{path_with_query}\n{node}\n{date}\n{nonce}\n{digest}"
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path_with_query: str, content_sha256: str, *, node: str,
         now: float | None = None) -> dict[str, str]:
    """The signing headers of one request to the node whose id is `node` (UNBOUND: only for
    UNBOUND_OK requests); `content_sha256`: hex digest of the body, or STREAMING."""
    date = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(16)
    mac = _mac(secret, method, path_with_query, node, date, nonce, content_sha256)
    return {NODE: node, DATE: date, NONCE: nonce, DIGEST: content_sha256, AUTHORIZATION: f"{SCHEME} {mac}"}


class Verifier:
    """Checks signed requests to the node `node_id`; thread-safe. One per node process (it
    remembers nonces)."""

    def __init__(self, secret: str, node_id: str, max_skew_s: float = 300.0,
                 nonce_ttl_s: float = 600.0) -> None:
        if not node_id:
            raise ValueError("a verifier needs the id of its node")
        self._secret = secret
        self.node_id = node_id
        self.max_skew_s = max_skew_s
        self.nonce_ttl_s = max(nonce_ttl_s, 2 * max_skew_s)
        self.started = time.time()  # a request dated earlier may have been taken before a restart
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._order: collections.deque[tuple[float, str]] = collections.deque()

    def check(self, method: str, path_with_query: str, headers: Mapping[str, str],
              body_sha256: str | None, streaming_ok: bool = False) -> None:
        """Raise Refused unless the request is signed, meant for this node, fresh and new.
        `body_sha256` None: the body is not hashed yet (call `check_digest` once it is);
        `streaming_ok`: a STREAMING claim is allowed (staged blob PUTs)."""
        date, nonce, digest = headers.get(DATE), headers.get(NONCE), headers.get(DIGEST)
        node = headers.get(NODE)
        auth = headers.get(AUTHORIZATION, "")
        scheme, _, mac = auth.partition(" ")
        if not (date and nonce and digest and node is not None and scheme == SCHEME and mac):
            raise Refused("unsigned")
        expected = _mac(self._secret, method, path_with_query, node, date, nonce, digest)
        if not hmac.compare_digest(expected.encode(), mac.strip().encode()):
            raise Refused("forged")
        if node != self.node_id and not (node == UNBOUND and (method, path_with_query) in UNBOUND_OK):
            raise Refused("wrong node")
        try:
            signed_at = float(date)
        except ValueError:
            raise Refused("unsigned") from None
        if not abs(time.time() - signed_at) <= self.max_skew_s:  # also NaN
            raise Refused("expired")
        if signed_at < self.started - DATE_ROUNDING_S:
            raise Refused("replayed")
        self._remember(nonce)
        if digest == STREAMING and not streaming_ok:
            raise Refused("body digest mismatch")
        if body_sha256 is not None:
            self.check_digest(headers, body_sha256)

    @staticmethod
    def check_digest(headers: Mapping[str, str], body_sha256: str) -> None:
        claimed = headers.get(DIGEST, "")
        if claimed == STREAMING or not hmac.compare_digest(claimed.encode(), body_sha256.encode()):
            raise Refused("body digest mismatch")

    def _remember(self, nonce: str) -> None:
        now = time.monotonic()
        with self._lock:
            while self._order and now - self._order[0][0] > self.nonce_ttl_s:
                _, old = self._order.popleft()
                self._seen.pop(old, None)
            if nonce in self._seen:
                raise Refused("replayed")
            self._seen[nonce] = now
            self._order.append((now, nonce))
