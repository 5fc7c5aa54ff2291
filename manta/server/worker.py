"""One worker process of `manta serve --workers N` (`python -m manta.server.worker`).

The supervisor (manta.server.workers) has bound the listening socket and done the store's
once-only start-up; it starts each worker with that socket's fd, a pipe to say "ready" on,
and the ServerConfig as JSON on stdin (it may carry the cluster secret: not in argv). A
worker opens its own Store (`recover=False`: LMDB env per process, never across a fork),
builds the app and a JobScheduler like the single-process server, and serves the shared
socket with uvicorn. It dies with the supervisor (PR_SET_PDEATHSIG).

Leadership: the job scheduler and the store's daemons run in one process per catalog, the
one holding the catalog engine's "leader" hold (storage.engine: a flock beside an LMDB
catalog, a session advisory lock in PostgreSQL, so one across every front door). Every
worker tries for it (non-blocking) every LEADER_RETRY_S from a thread; the hold ends when
its holder dies, so another worker takes over within about that long and its `scheduler.start()` requeues the
tasks the dead one left running. Followers serve everything else: their writes reach the
leader through the catalog (journal, repair queue, job records), which it polls.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

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
from manta.server.protocol import WorkerShares
from manta.server.serving import serve_until_stopped
from storage import Store
from storage.daemons import Daemon
from storage.engine import Engine, EngineUnavailable, Held

__all__ = ["LEADER_RETRY_S", "WORKER_HEADER", "Leadership", "config_from_json", "config_to_json", "main"]

LEADER_RETRY_S = 0.5
LOST_LEAD_EXIT = 75
DEMOTE_WAIT_S = 10.0
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
    """Tries for the catalog's "leader" hold until it has it, then calls `on_lead` (in its
    thread); while leading, checks the hold every `retry_s` and calls `on_lost` if it ended
    without a release (a database restart: another process may lead now)."""

    def __init__(self, engine: Engine, on_lead: Callable[[], None], on_lost: Callable[[], None],
                 retry_s: float = LEADER_RETRY_S) -> None:
        self.engine = engine
        self.on_lead = on_lead
        self.on_lost = on_lost
        self.retry_s = retry_s
        self.leading = False
        self._held: Held | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self.engine.try_hold("leader")
            except EngineUnavailable:
                held = None
            if held is None:
                self._stop.wait(self.retry_s)
                continue
            self._held = held
            self.leading = True
            self.on_lead()
            while not self._stop.wait(self.retry_s):
                if held.lost():
                    self.on_lost()
                    return
            return

    def stop(self) -> None:
        """Stop trying; a leader keeps the hold until `release` (after its clean-up)."""
        self._stop.set()
        self._thread.join()

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the supervisor dies (even of SIGKILL), as a crash would."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # it died before the prctl
        os._exit(1)


def run(config: ServerConfig, index: int, sock: socket.socket, ready_fd: int,
        shares: WorkerShares | None = None) -> None:
    app, store, scheduler = build_app(config, recover=False)
    limits = connection_limits(config, raise_fd_limit(), quiet=index != 0)
    daemons: list[Daemon] = []

    def lead() -> None:
        log.info("worker %d (pid %d) leads: it runs the job scheduler and the background daemons",
                 index, os.getpid())
        daemons.extend(start_daemons(store))
        scheduler.start()

    def lost() -> None:
        # Another process may lead now: stop this one's scheduler and daemons at once (bounded:
        # their commits fail while the database is away), keep answering (503 while it is
        # away), and once the database answers again leave, so that the supervisor starts a
        # fresh worker that competes for the hold as a follower.
        log.error("worker %d (pid %d) lost the leader hold (the catalog's database went away): "
                  "stopping its scheduler and daemons", index, os.getpid())
        def demote() -> None:
            scheduler.stop()
            stop_daemons(store, daemons)

        stopper = threading.Thread(target=demote, name="demote", daemon=True)
        stopper.start()
        stopper.join(DEMOTE_WAIT_S)
        while True:
            try:
                store.catalog.engine.schema_version()
                break
            except EngineUnavailable:
                time.sleep(LEADER_RETRY_S)
        log.error("worker %d (pid %d): the catalog answers again; exiting to start over as a follower",
                  index, os.getpid())
        os._exit(LOST_LEAD_EXIT)

    leadership = Leadership(store.catalog.engine, lead, lost)
    leadership.start()
    app.s3.answer_headers += ((WORKER_HEADER, str(os.getpid()).encode()),)  # who answered
    server = uvicorn.Server(uvicorn_config(app, config, limits, shares))

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
    parser.add_argument("--shares-fd", type=int, help="the supervisor's shared array of client counts (WorkerShares)")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s[w{args.index}]: %(message)s")
    config = config_from_json(sys.stdin.read())
    sock = socket.socket(fileno=args.listen_fd)
    shares = None if args.shares_fd is None else WorkerShares(args.shares_fd, args.index, config.workers)
    run(config, args.index, sock, args.ready_fd, shares)
    return 0


if __name__ == "__main__":
    sys.exit(main())
