"""One worker process of `manta serve --workers N` (`python -m manta.server.worker`).

The supervisor (manta.server.workers) has bound the listening socket and done the store's
once-only start-up; it starts each worker with that socket's fd, a pipe to say "ready" on,
and the ServerConfig as JSON on stdin (it may carry the cluster secret: not in argv). A
worker opens its own Store (`recover=False`: LMDB env per process, never across a fork),
builds the app and a JobScheduler like the single-process server, and serves the shared
socket with uvicorn. It dies with the supervisor (PR_SET_PDEATHSIG).

Leadership: the job scheduler and the store's daemons run in one process per store, the
one holding an exclusive flock on DATA/leader.lock. Every worker tries for it (non-blocking)
every LEADER_RETRY_S from a thread; the kernel drops the lock when its holder dies, so
another worker takes over within about that long and its `scheduler.start()` requeues the
tasks the dead one left running. Followers serve everything else: their writes reach the
leader through the catalog (journal, repair queue, job records), which it polls.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import JobScheduler
from manta.server.config import ServerConfig
from manta.server.frontdoor import (
    build_app,
    connection_limits,
    raise_fd_limit,
    start_daemons,
    stop_daemons,
    uvicorn_config,
)
from manta.server.serving import serve_until_stopped
from storage import Store
from storage.daemons import Daemon

__all__ = ["LEADER_RETRY_S", "WORKER_HEADER", "Leadership", "config_from_json", "config_to_json", "main"]

LEADER_RETRY_S = 0.5
LOCK_FILE = "leader.lock"
WORKER_HEADER = b"x-manta-worker"  # the pid of the worker that answered
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("manta")


def config_to_json(config: ServerConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_json(text: str) -> ServerConfig:
    values: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in json.loads(text).items()}
    return ServerConfig(**values)


class Leadership:
    """Tries for the store's leader lock until it has it, then calls `on_lead` (in its thread)."""

    def __init__(self, data_dir: str, on_lead: Callable[[], None], retry_s: float = LEADER_RETRY_S) -> None:
        self.path = os.path.join(data_dir, LOCK_FILE)
        self.on_lead = on_lead
        self.retry_s = retry_s
        self.leading = False
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        while not self._stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._stop.wait(self.retry_s)
                continue
            self._fd = fd
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.leading = True
            self.on_lead()
            return
        os.close(fd)

    def stop(self) -> None:
        """Stop trying; a leader keeps the lock until `release` (after its clean-up)."""
        self._stop.set()
        self._thread.join()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


def tagged(app: ASGIApp, value: bytes) -> ASGIApp:
    """`app` with a response header naming this worker."""

    async def tagged_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (WORKER_HEADER, value)]
            await send(message)

        await app(scope, receive, send_tagged)

    return tagged_app


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor dies (even of SIGKILL), as a crash would."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # it died before the prctl
        os._exit(1)


def run(config: ServerConfig, index: int, sock: socket.socket, ready_fd: int) -> None:
    app, store, scheduler = build_app(config, recover=False)
    limits = connection_limits(config, raise_fd_limit(), quiet=index != 0)
    daemons: list[Daemon] = []

    def lead() -> None:
        log.info("worker %d (pid %d) leads: it runs the job scheduler and the background daemons",
                 index, os.getpid())
        daemons.extend(start_daemons(store))
        scheduler.start()

    leadership = Leadership(config.data_dir, lead)
    leadership.start()
    server = uvicorn.Server(uvicorn_config(tagged(app, str(os.getpid()).encode()), config, limits))

    def ready() -> str:
        os.write(ready_fd, b"ready\n")
        return ""

    try:
        serve_until_stopped(server, ready, sockets=[sock])
    finally:
        leadership.stop()
        _shut_down(store, scheduler, daemons, leadership)


def _shut_down(store: Store, scheduler: JobScheduler, daemons: list[Daemon], leadership: Leadership) -> None:
    scheduler.stop()
    stop_daemons(store, daemons)
    store.close()
    leadership.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manta.server.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s[w{args.index}]: %(message)s")
    config = config_from_json(sys.stdin.read())
    sock = socket.socket(fileno=args.listen_fd)
    run(config, args.index, sock, args.ready_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
