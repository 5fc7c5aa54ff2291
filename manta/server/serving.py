"""Running a uvicorn server in the foreground until SIGTERM or SIGINT (`manta serve`, `manta node`)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable

import uvicorn
import uvloop

__all__ = ["serve_until_stopped"]


def serve_until_stopped(server: uvicorn.Server, banner: Callable[[], str],
                        sockets: list[socket.socket] | None = None) -> None:
    """Serve (on `sockets` if given: a listening socket bound by another process); once
    listening, print `banner()` on stderr unless empty (tests and scripts wait for it).
    Returns when a signal has stopped the server; the caller's clean-up runs after."""

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        text = banner()
        if text:
            print(text, file=sys.stderr, flush=True)

    async def main() -> None:
        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=sockets)
        finally:
            task.cancel()

    # uvicorn re-raises the signal that stopped it once it has shut down; with the default
    # SIGTERM action that would kill the process before the caller's clean-up runs
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvloop.run(main())
