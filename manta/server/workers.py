"""`manta serve --workers N`: a supervisor process and N worker processes on one port.

The supervisor (the pid users and tests see) does what must happen once: raise the fd
limit, open the store once for its start-up recovery (temp sweep, journal replay, usage
count, node markers) and the root account, then closes it. It binds the listening socket
once and starts N `python -m manta.server.worker` processes that inherit it (pass_fds): one
accept queue, so a worker that dies loses only its own connections, and the port stays
bound while it is replaced (SO_REUSEPORT would give each worker its own queue, whose
pending connections die with it). The workers also share a small memory array where each
says how many clients it holds (connections that have sent a request;
manta.server.protocol.WorkerShares): one that holds more than its share asks clients to
reconnect. When every worker has said "ready" on its pipe, the
supervisor prints the banner. A worker that exits is started again (after a pause if it
died young); SIGTERM/SIGINT stop all workers (each runs the single server's clean-up) and
then the supervisor. Workers get SIGKILL if the supervisor dies (PR_SET_PDEATHSIG).

    supervisor --(socket fd, ready pipe, config on stdin)--> worker 0..N-1
    worker holding the catalog's leader hold (DATA/catalog/leader.lock): job scheduler + daemons (manta.server.worker)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from manta.server.config import ServerConfig
from manta.server.frontdoor import (
    banner_lines,
    connection_limits,
    ensure_root,
    raise_fd_limit,
    store_config,
)
from manta.server.worker import config_to_json
from storage import Store

__all__ = ["supervise"]

log = logging.getLogger("manta")

BIND_RETRY_S = 3.0  # the workers of a server just killed may hold the port a moment longer
STOP_TIMEOUT_S = 30.0
YOUNG_S = 5.0  # a worker that dies younger than this is restarted after RESTART_PAUSE_S
RESTART_PAUSE_S = 1.0


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    ready_fd: int
    started: float
    ready: bool = False


def supervise(config: ServerConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    connection_limits(config, raise_fd_limit())  # logs the limits once
    store = Store(store_config(config))
    try:
        creds, written = ensure_root(store, config.data_dir)
        lines = banner_lines(config, store, creds, written)
    finally:
        store.close()
    sock = _bind(config)
    supervisor = Supervisor(config, sock)
    try:
        if supervisor.start_all():
            print("\n".join([*lines, f"manta: {config.workers} worker processes (pids "
                             f"{', '.join(str(w.proc.pid) for w in supervisor.workers)}) serve this port",
                             f"manta: ready in {time.monotonic() - started:.2f}s"]),
                  file=sys.stderr, flush=True)
            supervisor.watch()
    finally:
        supervisor.stop_all()
        sock.close()
        os.close(supervisor.shares_fd)
    if supervisor.failed:
        raise SystemExit(1)


def _bind(config: ServerConfig) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    deadline = time.monotonic() + BIND_RETRY_S
    while True:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(2048)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
                raise SystemExit(1) from None
            time.sleep(0.1)


class Supervisor:
    def __init__(self, config: ServerConfig, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        # each worker's count of clients (8 bytes each), kept for its successors
        self.shares_fd = os.memfd_create("manta-connections", os.MFD_CLOEXEC)
        os.ftruncate(self.shares_fd, 8 * config.workers)
        self.workers: list[Worker] = []
        self.stopping = False
        self.failed = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def spawn(self, index: int) -> Worker:
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "manta.server.worker", "--index", str(index),
             "--listen-fd", str(self.sock.fileno()), "--ready-fd", str(write_fd), "--parent", str(os.getpid()),
             "--shares-fd", str(self.shares_fd)],
            stdin=subprocess.PIPE, pass_fds=(self.sock.fileno(), write_fd, self.shares_fd), start_new_session=True)
        os.close(write_fd)
        assert proc.stdin is not None
        try:
            proc.stdin.write(config_to_json(self.config).encode())
            proc.stdin.close()
        except BrokenPipeError:  # killed before it read its config: watch() starts another
            with contextlib.suppress(OSError):
                proc.stdin.close()
            log.warning("worker %d (pid %d) died before reading its configuration", index, proc.pid)
        return Worker(index, proc, read_fd, time.monotonic())

    def start_all(self) -> bool:
        """Start the workers and wait until all listen; False if one failed or a signal came."""
        self.workers = [self.spawn(i) for i in range(self.config.workers)]
        while not self.stopping and not all(w.ready for w in self.workers):
            self._read_ready(0.2)
            for worker in self.workers:
                if not worker.ready and worker.proc.poll() is not None:
                    log.error("worker %d exited at start (%s)", worker.index, _how(worker.proc.returncode))
                    self.failed = True
                    return False
        return not self.stopping

    def watch(self) -> None:
        """Restart workers that exit, until a signal asks to stop."""
        while not self.stopping:
            self._read_ready(0.2)
            for i, worker in enumerate(self.workers):
                if worker.proc.poll() is None or self.stopping:
                    continue
                log.warning("worker %d (pid %d) exited (%s); starting another", worker.index,
                            worker.proc.pid, _how(worker.proc.returncode))
                os.close(worker.ready_fd)
                if time.monotonic() - worker.started < YOUNG_S:
                    time.sleep(RESTART_PAUSE_S)
                self.workers[i] = self.spawn(worker.index)

    def _read_ready(self, timeout_s: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers if not w.ready}
        if not waiting:
            time.sleep(timeout_s)
            return
        readable, _, _ = select.select(list(waiting), [], [], timeout_s)
        for fd in readable:
            if os.read(fd, 64).startswith(b"ready"):
                worker = waiting[fd]
                worker.ready = True
                log.debug("worker %d (pid %d) listens", worker.index, worker.proc.pid)

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop; killing it", worker.index, worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()
            os.close(worker.ready_fd)


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
