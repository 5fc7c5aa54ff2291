"""CORS: a bucket's cross-origin rules, the preflight OPTIONS they answer, and the
Access-Control-* headers they add to actual requests.

    PUT ?cors     CORSConfiguration XML -> validated rules -> JSON in the catalog's
                  bucket configurations (storage.records.bucketconf, kind "cors")
    GET ?cors     the rules -> CORSConfiguration XML (the members that were set)
    DELETE ?cors  204, with or without rules
    OPTIONS       (unsigned) bucket gone            -> 403 AccessForbidden
                  no rules                          -> 403 AccessForbidden
                  no Access-Control-Request-Method  -> 400 BadRequest
                  first rule matching Origin, the method and every requested header
                                                    -> 200 with Access-Control-*
                  none                              -> 403 AccessForbidden
    any other request with an Origin header, after its handler (errors included):
                  first rule matching Origin and the method (Access-Control-Request-Method
                  when the request carries one) -> Access-Control-* and Vary added

As S3 does, an actual request is never refused for CORS: without a matching rule it is
answered without CORS headers, and the browser withholds the response from the page.
Patterns (AllowedOrigin, AllowedHeader) hold at most one `*`, which matches any run of
characters, the empty one included; origins match as written, header names without
regard to case.

Cost: a request without Origin is not looked at. One with Origin reads the rules only
when its bucket lists a "cors" configuration; the bucket record tells (`S3Request.bucket_conf`,
noted by `common.owned_ref`, else read here once).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from manta.server.s3 import bucketdoc
from manta.server.s3 import errors as s3e
from manta.server.s3.common import read_catalog
from manta.server.s3.context import S3Request
from manta.server.s3.xmlio import children, document, el, local, parse
from storage import errors as se

__all__ = ["CorsRule", "add_headers", "decode", "delete_bucket_cors", "encode", "get_bucket_cors",
           "match", "parse_rules", "preflight", "put_bucket_cors"]

log = logging.getLogger("manta.server.s3.cors")

KIND = "cors"
METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100
MAX_ID_CHARS = 255
MAX_DOCUMENT_BYTES = 64 * 1024
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
NOT_ALLOWED = ("CORSResponse: This CORS request is not allowed. This is usually because the evalution "
               "of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers "
               "are not whitelisted by the resource's CORS spec.")
NOT_ENABLED = "CORSResponse: CORS is not enabled for this bucket."
_MEMBERS = {"ID", "AllowedHeader", "AllowedMethod", "AllowedOrigin", "ExposeHeader", "MaxAgeSeconds"}


@dataclass(frozen=True)
class CorsRule:
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age_s: int | None = None
    id: str | None = None

    def allows(self, origin: str, method: str, requested: list[str]) -> bool:
        return (method in self.methods
                and any(_fits(pattern, origin) for pattern in self.origins)
                and all(any(_fits(p.lower(), name) for p in self.headers) for name in requested))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"origins": list(self.origins), "methods": list(self.methods)}
        if self.headers:
            out["headers"] = list(self.headers)
        if self.expose:
            out["expose"] = list(self.expose)
        if self.max_age_s is not None:
            out["max_age_s"] = self.max_age_s
        if self.id is not None:
            out["id"] = self.id
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CorsRule:
        return cls(tuple(d["origins"]), tuple(d["methods"]), tuple(d.get("headers", ())),
                   tuple(d.get("expose", ())), d.get("max_age_s"), d.get("id"))


def encode(rules: list[CorsRule]) -> bytes:
    return json.dumps({"v": 1, "rules": [r.to_json() for r in rules]}, separators=(",", ":")).encode()


def decode(raw: bytes) -> list[CorsRule]:
    return [CorsRule.from_json(d) for d in json.loads(raw)["rules"]]


def _fits(pattern: str, value: str) -> bool:
    """Whether `value` matches `pattern`, whose one `*` (if any) matches any run of characters."""
    head, star, tail = pattern.partition("*")
    if not star:
        return value == pattern
    return len(value) >= len(head) + len(tail) and value.startswith(head) and value.endswith(tail)


def match(rules: list[CorsRule], origin: str, method: str, requested: list[str] | None = None) -> CorsRule | None:
    """The first rule that allows `origin` to use `method` with the `requested` header names
    (lowercase)."""
    return next((rule for rule in rules if rule.allows(origin, method, requested or [])), None)


# -- the configuration document -----------------------------------------------------------

def parse_rules(body: bytes) -> list[CorsRule]:
    """The rules of a CORSConfiguration document, validated as S3 does."""
    root = parse(body, "CORSConfiguration")
    if any(local(node.tag) != "CORSRule" for node in root):
        raise s3e.MalformedXML()
    nodes = children(root, "CORSRule")
    if not nodes or len(nodes) > MAX_RULES:
        raise s3e.MalformedXML()
    return [_rule(node) for node in nodes]


def _rule(node: Any) -> CorsRule:
    values: dict[str, list[str]] = {name: [] for name in _MEMBERS}
    for child in node:
        name = local(child.tag)
        if name not in _MEMBERS or len(child):
            raise s3e.MalformedXML()
        values[name].append((child.text or "").strip())
    origins, methods = values["AllowedOrigin"], values["AllowedMethod"]
    if not origins or not methods or len(values["ID"]) > 1 or len(values["MaxAgeSeconds"]) > 1:
        raise s3e.MalformedXML()
    for method in methods:
        if method not in METHODS:
            raise s3e.InvalidRequest(f"Found unsupported HTTP method in CORS config. Unsupported method is {method}")
    for kind in ("AllowedOrigin", "AllowedHeader"):
        for pattern in values[kind]:
            if pattern.count("*") > 1:
                raise s3e.InvalidRequest(f'{kind} "{pattern}" can not have more than one wildcard.')
    for header in values["ExposeHeader"]:
        if "*" in header:
            raise s3e.InvalidRequest(f'ExposeHeader "{header}" contains wildcard. We currently do not '
                                     "support wildcard for ExposeHeader.")
    rule_id = values["ID"][0] if values["ID"] else None
    if rule_id is not None and len(rule_id) > MAX_ID_CHARS:
        raise s3e.InvalidArgument(f"The ID of a CORS rule is longer than {MAX_ID_CHARS} characters.",
                                  ArgumentName="ID")
    max_age = None
    if values["MaxAgeSeconds"]:
        try:
            max_age = int(values["MaxAgeSeconds"][0])
        except ValueError:
            raise s3e.MalformedXML() from None
        if max_age < 0:
            raise s3e.MalformedXML()
    return CorsRule(tuple(origins), tuple(methods), tuple(values["AllowedHeader"]),
                    tuple(values["ExposeHeader"]), max_age, rule_id)


def rules_xml(rules: list[CorsRule]) -> bytes:
    body = []
    for rule in rules:
        parts = [el("ID", rule.id)] if rule.id is not None else []
        parts += [el("AllowedHeader", h) for h in rule.headers]
        parts += [el("AllowedMethod", m) for m in rule.methods]
        parts += [el("AllowedOrigin", o) for o in rule.origins]
        parts += [el("ExposeHeader", h) for h in rule.expose]
        if rule.max_age_s is not None:
            parts.append(el("MaxAgeSeconds", rule.max_age_s))
        body.append(f"<CORSRule>{''.join(parts)}</CORSRule>")
    return document("CORSConfiguration", body)


# -- PutBucketCors, GetBucketCors, DeleteBucketCors ----------------------------------------

put_bucket_cors, get_bucket_cors, delete_bucket_cors = bucketdoc.handlers(
    KIND, MAX_DOCUMENT_BYTES, lambda body: encode(parse_rules(body)), lambda kept: rules_xml(decode(kept)),
    s3e.NoSuchCORSConfiguration)


# -- preflight and actual requests ---------------------------------------------------------

def _rules_of(req: S3Request) -> list[CorsRule] | None:
    """The bucket's rules (None: it has none); NoSuchBucket if there is no bucket. A catalog
    read, skipped when the request already knows that its bucket has no rules."""
    if req.bucket_conf is not None and KIND not in req.bucket_conf:
        return None
    raw = req.store.catalog.bucketconf.get(req.bucket, KIND)
    return None if raw is None else decode(raw)


def _requested_headers(req: S3Request) -> list[str]:
    value = req.header("access-control-request-headers", "")
    return [name.strip().lower() for name in value.split(",") if name.strip()]


async def preflight(req: S3Request) -> Response:
    """An OPTIONS request (it carries Origin: app.py answers 400 to one without)."""
    origin = req.header("origin", "")
    method = req.header("access-control-request-method")
    if not req.bucket:
        raise s3e.AccessForbidden("CORSResponse: Bucket not found", Method=method or "OPTIONS",
                                  ResourceType="SERVICE")
    try:
        rules = await read_catalog(req.store, _rules_of, req)
    except se.NoSuchBucket:
        raise s3e.AccessForbidden("CORSResponse: Bucket not found", Method=method or "OPTIONS",
                                  ResourceType="BUCKET") from None
    if rules is None:
        raise s3e.AccessForbidden(NOT_ENABLED, Method=method or "OPTIONS", ResourceType="BUCKET")
    if method is None:
        raise s3e.BadRequest("Invalid Access-Control-Request-Method: null")
    requested = _requested_headers(req)
    rule = match(rules, origin, method, requested)
    if rule is None:
        raise s3e.AccessForbidden(NOT_ALLOWED, Method=method, ResourceType="OBJECT" if req.key else "BUCKET")
    headers = _allow_headers(rule, origin)
    if requested:
        headers["access-control-allow-headers"] = ", ".join(requested)
    return Response(b"", headers=headers)


def _allow_headers(rule: CorsRule, origin: str) -> dict[str, str]:
    anyone = "*" in rule.origins
    headers = {"access-control-allow-origin": "*" if anyone else origin,
               "access-control-allow-methods": ", ".join(rule.methods)}
    if not anyone:
        headers["access-control-allow-credentials"] = "true"
    if rule.expose:
        headers["access-control-expose-headers"] = ", ".join(rule.expose)
    if rule.max_age_s is not None:
        headers["access-control-max-age"] = str(rule.max_age_s)
    headers["vary"] = VARY
    return {name: value.encode("latin-1", "replace").decode("latin-1") for name, value in headers.items()}


async def add_headers(req: S3Request, response: Response) -> None:
    """The Access-Control-* headers of an actual request from `Origin`, added to its
    response when a rule of the bucket allows it. Never fails the request: a catalog that
    cannot be read here leaves the response as it is (logged)."""
    if not req.bucket:
        return
    try:
        rules = await read_catalog(req.store, _rules_of, req)
    except se.NoSuchBucket:
        return
    except Exception:
        log.warning("request %s: CORS rules of %s unreadable", req.request_id, req.bucket, exc_info=True)
        return
    if rules is None:
        return
    origin = req.header("origin", "")
    rule = match(rules, origin, req.header("access-control-request-method") or req.method)
    if rule is None:
        return
    raw = response.raw_headers
    for name, value in _allow_headers(rule, origin).items():
        raw.append((name.encode("latin-1"), value.encode("latin-1")))
