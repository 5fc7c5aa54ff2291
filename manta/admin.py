"""The admin HTTP API under /_manta/admin/ (a prefix no bucket name can take). Root only.

    GET  /_manta/admin/users            -> {"users": [{name, access_key, root, created}]}
    POST /_manta/admin/users  {"name"}  -> {name, access_key, secret_key}
    GET  /_manta/admin/nodes            -> {"nodes": [{id, spec, backend, health, used_bytes, ...}]}
    POST /_manta/admin/scrub            -> the scrub report {checked, damaged, repaired, lost, ...}
"""

from __future__ import annotations

import json
import re

from starlette.responses import JSONResponse, Response

from manta.credentials import new_access_key, new_secret_key
from manta.s3 import errors as s3e
from manta.s3.body import read_small
from manta.s3.common import in_thread
from manta.s3.context import S3Request
from storage import Scrubber
from storage import errors as se

PREFIX = "_manta"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


async def handle(req: S3Request) -> Response:
    if not req.account.get("root"):
        raise s3e.AccessDenied("Only the root account may use the admin API.")
    if req.key == "admin/users":
        if req.method == "GET":
            users = [{"name": a["name"], "access_key": a["access_key"], "root": a["root"],
                      "created": a["created"]} for a in req.store.catalog.accounts()]
            return JSONResponse({"users": sorted(users, key=lambda u: u["name"])})
        if req.method == "POST":
            return await _add_user(req)
        raise s3e.MethodNotAllowed(Method=req.method, ResourceType="ADMIN")
    if req.key == "admin/nodes" and req.method == "GET":
        return JSONResponse({"nodes": await in_thread(req.store.node_infos)})
    if req.key == "admin/scrub" and req.method == "POST":
        report = await in_thread(lambda: Scrubber(req.store).run_once())
        return JSONResponse(report.as_dict())
    raise s3e.NoSuchKey(Key=req.key)


async def _add_user(req: S3Request) -> Response:
    try:
        payload = json.loads(await read_small(req, 64 * 1024) or b"{}")
        name = payload["name"]
    except (ValueError, KeyError, TypeError):
        raise s3e.InvalidRequest('The body must be JSON {"name": NAME}.') from None
    if not isinstance(name, str) or not _NAME.match(name):
        raise s3e.InvalidArgument("User names are 1-64 letters, digits and . _ @ -, starting with a letter or digit.",
                                  ArgumentName="name")
    access_key, secret = new_access_key(), new_secret_key()
    try:
        await in_thread(req.store.catalog.add_account, name, access_key, secret)
    except se.AccountExists:
        raise s3e.UserAlreadyExists(f"The user {name!r} already exists.") from None
    return JSONResponse({"name": name, "access_key": access_key, "secret_key": secret})
