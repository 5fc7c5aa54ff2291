"""The admin HTTP API under /_manta/admin/ (a prefix no bucket name can take). Root only.

    GET  /_manta/admin/users            -> {"users": [{name, access_key, root, created}]}
    POST /_manta/admin/users  {"name", "quota"?}  -> {name, access_key, secret_key, quota_set}
    GET  /_manta/admin/users/NAME       -> {name, access_key, root, created, quota (effective
                                            limits), quota_set (the account's own), usage: {objects, bytes}}
    POST /_manta/admin/users/NAME {"quota": {field: int | null}} -> as GET (null drops that limit)
    GET  /_manta/admin/nodes            -> {"nodes": [{id, spec, backend, health, used_bytes, ...}]}
    POST /_manta/admin/scrub            -> the scrub report {checked, damaged, repaired, lost, ...}
    POST /_manta/admin/gc               -> {"removed": n}: blob files no record places on their node,
                                           older than the GC grace period (MANTA_GC_GRACE_S), deleted now
    POST /_manta/admin/lifecycle {"now": ISO 8601 | "days_ahead": N, "bucket"?, "dry_run"?}
                                        -> one lifecycle pass as of that time (default: now), over every
                                           bucket with rules or the one named: {at, buckets, expired,
                                           noncurrent, markers, aborted, failed, truncated}; with
                                           dry_run nothing changes, and `planned` lists the first
                                           1,000 changes the pass would make
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from manta.server.keys import new_access_key, new_secret_key
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small
from manta.server.s3.common import in_thread, read_catalog
from manta.server.s3.context import S3Request
from storage import Account, OrphanCollector, Scrubber
from storage import errors as se
from storage.lifecycle import LifecycleDaemon
from storage.quota import QUOTA_FIELDS

PREFIX = "_manta"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


async def handle(req: S3Request) -> Response:
    if req.account is None or not req.account.root:
        raise s3e.AccessDenied("Only the root account may use the admin API.")
    if req.key == "admin/users":
        if req.method == "GET":
            accounts = await read_catalog(req.store, req.store.catalog.accounts.all)
            users = [{"name": a.name, "access_key": a.access_key, "root": a.root,
                      "created": a.created} for a in accounts]
            return JSONResponse({"users": sorted(users, key=lambda u: u["name"])})
        if req.method == "POST":
            return await _add_user(req)
        raise s3e.MethodNotAllowed(Method=req.method, ResourceType="ADMIN")
    if req.key.startswith("admin/users/"):
        name = req.key[len("admin/users/"):]
        if req.method == "GET":
            return JSONResponse(await read_catalog(req.store, _user, req, name))
        if req.method == "POST":
            return await _set_user(req, name)
        raise s3e.MethodNotAllowed(Method=req.method, ResourceType="ADMIN")
    if req.key == "admin/nodes" and req.method == "GET":
        return JSONResponse({"nodes": await in_thread(req.store.node_infos)})
    if req.key == "admin/scrub" and req.method == "POST":
        report = await in_thread(lambda: Scrubber(req.store).run_once())
        return JSONResponse(report.as_dict())
    if req.key == "admin/gc" and req.method == "POST":
        return JSONResponse({"removed": await in_thread(lambda: OrphanCollector(req.store).run_once())})
    if req.key == "admin/lifecycle" and req.method == "POST":
        return await _lifecycle(req)
    raise s3e.NoSuchKey(Key=req.key)


async def _json_body(req: S3Request, shape: str) -> dict[str, Any]:
    try:
        payload = json.loads(await read_small(req, 64 * 1024) or b"{}")
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise s3e.InvalidRequest(f"The body must be a JSON object {shape}.")
    return payload


def _quota_overrides(value: Any) -> dict[str, int | None]:
    """A request's {"objects": 1000, "bytes": null, ...}: known fields, whole numbers >= 0 or null."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise s3e.InvalidArgument("quota must be a JSON object.", ArgumentName="quota")
    for key, limit in value.items():
        if key not in QUOTA_FIELDS:
            raise s3e.InvalidArgument(f"Unknown quota {key!r}; known: {', '.join(QUOTA_FIELDS)}.",
                                      ArgumentName="quota")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise s3e.InvalidArgument(f"The {key} quota must be a whole number >= 0 or null.",
                                      ArgumentName="quota")
    return dict(value)


async def _add_user(req: S3Request) -> Response:
    payload = await _json_body(req, '{"name": NAME, "quota": {...}}')
    name = payload.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise s3e.InvalidArgument("User names are 1-64 letters, digits and . _ @ -, starting with a letter or digit.",
                                  ArgumentName="name")
    quota = _quota_overrides(payload.get("quota"))
    access_key, secret = new_access_key(), new_secret_key()
    try:
        account = await in_thread(req.store.catalog.accounts.add, name, access_key, secret, False, quota)
    except se.AccountExists:
        raise s3e.UserAlreadyExists(f"The user {name!r} already exists.") from None
    return JSONResponse({"name": name, "access_key": access_key, "secret_key": secret,
                         "quota_set": dict(account.quota)})


def _account(req: S3Request, name: str) -> Account:
    try:
        return req.store.catalog.accounts.named(name)
    except se.NoSuchAccount:
        raise s3e.NoSuchUser(f"The user {name!r} does not exist.", UserName=name) from None


def _user(req: S3Request, name: str) -> dict[str, Any]:
    """The user as GET answers it (catalog reads)."""
    account = _account(req, name)
    return {"name": account.name, "access_key": account.access_key, "root": account.root,
            "created": account.created, "quota": account.limits.to_dict(),
            "quota_set": dict(account.quota), "usage": req.store.catalog.usage.get(name).to_dict()}


async def _set_user(req: S3Request, name: str) -> Response:
    payload = await _json_body(req, '{"quota": {...}}')
    quota = _quota_overrides(payload.get("quota"))
    return JSONResponse(await in_thread(_set_quota, req, name, quota))


def _set_quota(req: S3Request, name: str, quota: dict[str, int | None]) -> dict[str, Any]:
    """Change the account's limits; returns the user as GET answers it."""
    try:
        req.store.catalog.accounts.set_quota(name, quota)
    except se.NoSuchAccount:
        raise s3e.NoSuchUser(f"The user {name!r} does not exist.", UserName=name) from None
    return _user(req, name)


def _lifecycle_time(payload: dict[str, Any]) -> float:
    """The moment a lifecycle pass runs as of: {"now": ISO 8601} or {"days_ahead": N} (or now)."""
    now, ahead = payload.get("now"), payload.get("days_ahead")
    if now is not None and ahead is not None:
        raise s3e.InvalidArgument("Give now or days_ahead, not both.", ArgumentName="now")
    if now is not None:
        try:
            when = dt.datetime.fromisoformat(now) if isinstance(now, str) else None
        except ValueError:
            when = None
        if when is None:
            raise s3e.InvalidArgument("now must be an ISO 8601 time, like 2030-01-01T00:00:00Z.",
                                      ArgumentName="now")
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if ahead is not None:
        if isinstance(ahead, bool) or not isinstance(ahead, int | float) or not math.isfinite(ahead):
            raise s3e.InvalidArgument("days_ahead must be a number.", ArgumentName="days_ahead")
        return time.time() + float(ahead) * 86400
    return time.time()


async def _lifecycle(req: S3Request) -> Response:
    payload = await _json_body(req, '{"now": ISO 8601 | "days_ahead": N, "bucket": NAME, "dry_run": BOOL}')
    at = _lifecycle_time(payload)
    bucket = payload.get("bucket")
    if bucket is not None and not isinstance(bucket, str):
        raise s3e.InvalidArgument("bucket must be a bucket name.", ArgumentName="bucket")
    dry_run = payload.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise s3e.InvalidArgument("dry_run must be true or false.", ArgumentName="dry_run")
    report = await in_thread(lambda: LifecycleDaemon(req.store).run(at, bucket, dry_run=dry_run))
    return JSONResponse(report.as_dict())
