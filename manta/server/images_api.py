"""The task images admin API under /_manta/admin/images (root only; jobs/images.py).

    GET    /_manta/admin/images                          -> {"images": [{name, id, kind, object, size, ...}]}
    POST   /_manta/admin/images/NAME/build {"requirements": TEXT | null}
                                                         -> the image (null: python-data's own list);
                                                            waits for pip (ImageBuildFailed: pip's message)
    PUT    /_manta/admin/images/NAME   body: a tar of the tree  -> the image (its bytes are the object)
    DELETE /_manta/admin/images/NAME                     -> {"removed": NAME}
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from jobs import errors as je
from jobs.images import Images
from jobs.spec import IMAGE_NAME
from manta.server.s3 import errors as s3e
from manta.server.s3.body import read_small, receive_into
from manta.server.s3.common import in_thread
from manta.server.s3.context import S3Request

PREFIX = "admin/images"
MAX_REQUIREMENTS = 256 * 1024


def routes(images: Images) -> Any:
    async def handle(req: S3Request) -> Response:
        if req.account is None or not req.account.root:
            raise s3e.AccessDenied("Only the root account may use the admin API.")
        try:
            return await _handle(images, req)
        except je.NoSuchImage as exc:
            raise s3e.NoSuchImage(str(exc)) from None
        except je.ImageError as exc:
            raise s3e.ImageBuildFailed(exc.message) from None

    return handle


async def _handle(images: Images, req: S3Request) -> Response:
    rest = req.key[len(PREFIX):].strip("/")
    if not rest:
        if req.method != "GET":
            raise s3e.MethodNotAllowed(Method=req.method, ResourceType="IMAGES")
        records = await in_thread(images.list)
        return JSONResponse({"images": [r.to_dict() for r in sorted(records, key=lambda r: r.name)]})
    name, _, action = rest.partition("/")
    if not IMAGE_NAME.match(name):
        raise s3e.InvalidArgument("Image names are 1-64 lowercase letters, digits and . _ -, "
                                  "starting with a letter or digit.", ArgumentName="name")
    if action == "build" and req.method == "POST":
        payload = await _json(req)
        requirements = payload.get("requirements")
        if requirements is not None and not isinstance(requirements, str):
            raise s3e.InvalidArgument("requirements must be the text of a requirements file")
        return JSONResponse((await in_thread(images.build, name, requirements)).to_dict())
    if action == "" and req.method == "PUT":
        writer = req.store.writer()
        try:
            await receive_into(req, writer)
            blob = await in_thread(writer.commit)
        except BaseException:
            writer.abort()
            raise
        return JSONResponse((await in_thread(images.import_blob, name, blob)).to_dict())
    if action == "" and req.method == "DELETE":
        await in_thread(images.remove, name)
        return JSONResponse({"removed": name})
    raise s3e.MethodNotAllowed(Method=req.method, ResourceType="IMAGE")


async def _json(req: S3Request) -> dict[str, Any]:
    try:
        payload = json.loads(await read_small(req, MAX_REQUIREMENTS) or b"{}")
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise s3e.InvalidRequest('The body must be a JSON object {"requirements": TEXT}.')
    return payload
