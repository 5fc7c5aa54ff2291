"""The floor: the HTTP stack manta must use (Starlette on uvicorn, httptools, uvloop), doing
what nginx does in objects.py and nothing more: PUT writes the body to a file, GET reads it
back. No authentication, catalog, checksums, replicas or fsync. What it reaches is a ceiling
for any server built on these parts on this machine (objects.py `--servers asgi-floor`).

    python benchmarks/floor_server.py ROOT PORT WORKERS
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

ROOT = Path(os.environ.get("FLOOR_ROOT", "."))
CHUNK = 1024 * 1024


def _file(request: Request) -> Path:
    return ROOT / request.path_params["bucket"] / request.path_params["key"]


async def put(request: Request) -> Response:
    path = _file(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as out:
        async for chunk in request.stream():
            out.write(chunk)
    os.replace(tmp, path)
    return Response(status_code=200)


async def get(request: Request) -> Response:
    path = _file(request)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Response(status_code=404)
    if size <= CHUNK:
        return Response(path.read_bytes(), media_type="application/octet-stream")

    async def chunks():
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"content-length": str(size)})


async def delete(request: Request) -> Response:
    _file(request).unlink(missing_ok=True)
    return Response(status_code=204)


async def root(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(routes=[
    Route("/{bucket}/{key:path}", put, methods=["PUT"]),
    Route("/{bucket}/{key:path}", get, methods=["GET"]),
    Route("/{bucket}/{key:path}", delete, methods=["DELETE"]),
    Route("/{path:path}", root, methods=["GET", "PUT"]),
])


def main() -> None:
    root_dir, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ["FLOOR_ROOT"] = root_dir
    sys.path.insert(0, str(Path(__file__).parent))
    uvicorn.run("floor_server:app", host="127.0.0.1", port=port, workers=workers, loop="uvloop",
                http="httptools", log_level="warning", access_log=False, server_header=False)


if __name__ == "__main__":
    main()
