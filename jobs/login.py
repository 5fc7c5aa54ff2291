"""`manta login`, the node side: a shell (or one command) on a PTY in a fresh task container
next to an object, with the object at /manta/input.

The container is a task's (jobs/sandbox.py): the same wrapper, cgroups and rlimits, user,
namespaces (no network), mounts (read-only system dirs, private /tmp, the input bound
read-only), seccomp filter and env rules. What differs: the user's program has the slave
side of a fresh PTY as stdin, stdout and stderr, and runs under `setsid -w -c`, which makes
that PTY its controlling terminal (bwrap's --new-session leaves it none), so job control, ^C
and window-size changes work inside. The slave enters the container as a high fd that the
runner moves to 0, 1 and 2: the root wrapper (bash, a session leader) would take a terminal
on its own stdin as its controlling terminal, and then no process inside could. The input is found as a map task's
(`_Task.input_path`: the replica in place, else assembled in a scratch dir of the node).

    LoginRequest (front door) -> LoginSession.run (a thread of its own, as long as the
    container lives: --die-with-parent follows the thread that forked)
        PTY master --output()--> the client        feed() / resize() --> PTY master
        ends: the program exited | idle for idle_s (no byte either way) | hangup() (the
        client went away) | a limit (memory, processes, MAX_SESSION_S) -> kill, LoginEnd

Whatever ends it, the container's pid 1 and everything in its cgroups are killed (its pid
namespace dies with it), the cgroups removed and the scratch dir deleted before `run` returns.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import selectors
import shlex
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs import errors as je
from jobs.agent import TaskAgent, _Task
from jobs.cgroups import TaskCgroups
from jobs.sandbox import (
    HOST_PATH,
    TICK_S,
    SandboxError,
    TaskLimits,
    TaskSpec,
    _bwrap,
    _end,
    _env_args,
    _kill,
    _limit_reached,
    _moved,
    _pass_files,
    _task_mounts,
    runner_script,
)

__all__ = ["MAX_SESSION_S", "LoginEnd", "LoginRequest", "LoginSession"]

log = logging.getLogger("manta.jobs")

Record = dict[str, Any]
MAX_SESSION_S = 8 * 3600.0  # a session lasts at most this long, idle or not
MAX_BACKLOG_BYTES = 1 << 20  # keystrokes not yet written to the PTY
READ_BYTES = 64 * 1024
PROMPT = r"manta:\w\$ "
_TERM = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")


@dataclass(frozen=True)
class LoginRequest:
    """What the front door asks a node for: the object (`entry`, as a map task's input in
    jobs/runner.py), the container's limits, the idle timeout, the command (None: an
    interactive shell) and the terminal."""

    owner: str
    entry: Record
    memory_mb: int
    disk_mb: int
    idle_s: float
    command: str | None = None
    rows: int = 24
    cols: int = 80
    term: str = "xterm"

    def __post_init__(self) -> None:
        if not isinstance(self.entry, dict) or not isinstance(self.entry.get("segments"), list):
            raise ValueError("entry must be an object with segments")
        if self.memory_mb <= 0 or self.disk_mb <= 0 or not 0 < self.idle_s <= MAX_SESSION_S:
            raise ValueError("memory_mb, disk_mb and idle_s must be positive (idle_s at most MAX_SESSION_S)")
        if not (0 < self.rows < 10000 and 0 < self.cols < 10000):
            raise ValueError("rows and cols must be between 1 and 9999")
        if not _TERM.match(self.term):
            raise ValueError(f"bad TERM {self.term!r}")
        if self.command is not None and ("\0" in self.command or not self.command.strip()):
            raise ValueError("the command must be non-empty text without NUL")

    def to_json(self) -> Record:
        return {"owner": self.owner, "entry": self.entry, "memory_mb": self.memory_mb,
                "disk_mb": self.disk_mb, "idle_s": self.idle_s, "command": self.command,
                "rows": self.rows, "cols": self.cols, "term": self.term}

    @classmethod
    def from_json(cls, value: Any) -> LoginRequest:
        """Raises ValueError for anything that is not a request."""
        if not isinstance(value, dict):
            raise ValueError("a login request is a JSON object")
        try:
            return cls(owner=str(value["owner"]), entry=value["entry"], memory_mb=int(value["memory_mb"]),
                       disk_mb=int(value["disk_mb"]), idle_s=float(value["idle_s"]),
                       command=None if value.get("command") is None else str(value["command"]),
                       rows=int(value.get("rows", 24)), cols=int(value.get("cols", 80)),
                       term=str(value.get("term", "xterm")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad login request: {exc}") from None


@dataclass(frozen=True)
class LoginEnd:
    """How a session ended. `reason`: exit (the program ended: `exit_code` or `signal`),
    idle, hangup (the client went away), memory, processes, timeout (MAX_SESSION_S) or error
    (it could not start: `message` says why)."""

    reason: str
    exit_code: int | None = None
    signal: int | None = None
    message: str = ""

    def to_json(self) -> Record:
        return {"end": self.reason, "exit_code": self.exit_code, "signal": self.signal, "message": self.message}

    @classmethod
    def from_json(cls, value: Record) -> LoginEnd:
        return cls(str(value.get("end") or "error"), value.get("exit_code"), value.get("signal"),
                   str(value.get("message") or ""))


class LoginSession:
    """One session on `agent`'s node. `output(data)` is called from the session's thread
    with what the PTY wrote (it may block: that is the back pressure); an exception from it
    ends the session as a hangup. feed, resize and hangup may be called from any thread."""

    def __init__(self, agent: TaskAgent, request: LoginRequest, output: Callable[[bytes], None]) -> None:
        self.agent = agent
        self.request = request
        self.output = output
        self._lock = threading.Lock()
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_bytes = 0
        self._size: tuple[int, int] | None = None
        self._hangup = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- from any thread ---------------------------------------------------------------

    def feed(self, data: bytes) -> bool:
        """Queue keystrokes for the PTY; False when too many are waiting (try again later)."""
        with self._lock:
            if self._backlog_bytes + len(data) > MAX_BACKLOG_BYTES:
                return False
            self._backlog.append(data)
            self._backlog_bytes += len(data)
        self._wake()
        return True

    def resize(self, rows: int, cols: int) -> None:
        if 0 < rows < 10000 and 0 < cols < 10000:
            with self._lock:
                self._size = (rows, cols)
            self._wake()

    def hangup(self) -> None:
        with self._lock:
            self._hangup = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (it is woken already) or closed (it is over)
            os.write(self._wake_w, b"x")

    # -- the session's own thread --------------------------------------------------------

    def run(self) -> LoginEnd:
        """Start the container, pump the PTY until the session ends, clean up; never raises
        for the session's own failures (an `error` end says why)."""
        agent = self.agent
        task = _Task(agent, {"job": "login", "task": secrets.token_hex(6)})
        try:
            if agent.sandbox is None:
                return LoginEnd("error", message="no sandbox is available on this node")
            try:
                path = task.input_path(self.request.entry)
            except (je.NodeFailure, OSError) as exc:
                return LoginEnd("error", message=f"the object could not be read here: {exc}")
            for blob, node, why in task.damaged:
                log.warning("login: replica of blob %s on node %s is bad: %s", blob, node, why)
            return self._run(agent.roots().path(agent.node, path))
        except SandboxError as exc:
            return LoginEnd("error", message=f"sandbox: {exc}")
        finally:
            task.scratch.remove()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run(self, input_file: str) -> LoginEnd:
        req = self.request
        assert self.agent.sandbox is not None
        sandbox = self.agent.sandbox
        host = sandbox._prepare()
        limits = TaskLimits(memory_mb=req.memory_mb, disk_mb=req.disk_mb, timeout_s=MAX_SESSION_S)
        program = shlex.join([host.shell, "-c", req.command] if req.command is not None else [host.shell, "-i"])
        env = {"TERM": req.term, "MANTA_INPUT_FILE": "/manta/input",
               "MANTA_INPUT_OBJECT": str(req.entry.get("name", ""))}
        spec = TaskSpec(exec="", env=env, input_file=input_file, limits=limits)
        fds: list[int] = []
        cgroups: TaskCgroups | None = None
        proc: subprocess.Popen[bytes] | None = None
        master = slave = status_r = -1
        try:
            try:
                if host.cgroups:
                    cgroups = TaskCgroups(sandbox.config.cgroup_root, host.cgroups, limits.memory_mb,
                                          limits.max_procs)
                master, slave = os.openpty()
                _set_size(master, req.rows, req.cols)
                slave = _moved(slave, host.min_fd)
                # the PTY reaches the user's program as fd `slave` only: the root wrapper
                # (bash, a session leader) would take a terminal on its stdin as its own
                spec.exec = (f"exec 0<&{slave} 1>&{slave} 2>&{slave} {slave}>&-; export PS1={shlex.quote(PROMPT)}; "
                             f"exec setsid -w -c {program}")  # (a non-interactive bash drops PS1 from its env)
                status_r, status_w = os.pipe()
                seccomp = _pass_files(host, fds, status_w)
                argv = _bwrap(host, fds, limits, cgroups,
                              [*_task_mounts(spec, fds[1], fds[2]), *seccomp, *_env_args(spec.env), "--",
                               host.shell, "-c", runner_script(host.shell, spec.exec), "manta-task", ""])
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=slave, pass_fds=[*fds, slave],
                                        start_new_session=True, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
                                        cwd="/")
            except OSError as exc:
                raise SandboxError(f"cannot start the session: {exc}") from exc
            for fd in [*fds, slave]:  # the container's copies only: the master sees EIO once they close
                os.close(fd)
            fds.clear()
            slave = -1
            os.set_blocking(master, False)
            return self._pump(proc, master, cgroups, limits)
        finally:
            for fd in fds:
                os.close(fd)
            if proc is not None:
                _end(proc, cgroups)
            if cgroups is not None:
                cgroups.remove()
            for fd in (master, slave, status_r):
                if fd >= 0:
                    os.close(fd)

    def _pump(self, proc: subprocess.Popen[bytes], master: int, cgroups: TaskCgroups | None,
              limits: TaskLimits) -> LoginEnd:
        """Move bytes between the PTY and the client until the session ends."""
        idle_s = self.request.idle_s
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        sel.register(master, selectors.EVENT_READ)
        start = last = time.monotonic()
        pending = b""
        reading = True
        reason: str | None = None
        killed_at = 0.0
        try:
            while True:
                now = time.monotonic()
                with self._lock:
                    hangup, size, self._size = self._hangup, self._size, None
                    if not pending and self._backlog:
                        pending = b"".join(self._backlog)
                        self._backlog.clear()
                        self._backlog_bytes = 0
                if size is not None:
                    _set_size(master, *size)
                if reason is None:
                    reason = ("hangup" if hangup else "idle" if now - last >= idle_s
                              else _limit_reached(None, now - start, limits, cgroups)[0])
                    if reason is not None:
                        killed_at = now
                        _kill(proc, cgroups)
                elif now - killed_at > 1.0:
                    _kill(proc, cgroups, force=True)
                if not reading and proc.poll() is not None:
                    break
                if reading:
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
                    sel.modify(master, events)
                for key, mask in sel.select(timeout=TICK_S if reading else 0.05):
                    if key.fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    if mask & selectors.EVENT_READ:
                        data = _read(master)
                        if data is None:
                            continue
                        if not data:  # every holder of the slave side is gone
                            reading = False
                            sel.unregister(master)
                            continue
                        last = time.monotonic()
                        if reason is None:
                            try:
                                self.output(data)
                            except Exception as exc:  # the client cannot take it: it is gone
                                log.info("login: output failed, ending the session: %s", exc)
                                with self._lock:
                                    self._hangup = True
                    if mask & selectors.EVENT_WRITE and pending and reading:
                        with contextlib.suppress(BlockingIOError):
                            pending = pending[os.write(master, pending):]
                            last = time.monotonic()
        finally:
            sel.close()
        rc = proc.wait()
        if reason is not None:
            messages = {"idle": f"the session was idle for {idle_s:g} s and was closed",
                        "hangup": "the client went away", "memory": "the memory limit was reached",
                        "processes": "the process limit was reached",
                        "timeout": f"sessions last at most {MAX_SESSION_S:g} s"}
            return LoginEnd(reason, message=messages.get(reason, f"{reason} limit reached"))
        if 128 < rc <= 192:  # bwrap reports a death by signal n as 128+n
            return LoginEnd("exit", signal=rc - 128)
        return LoginEnd("exit", exit_code=rc)


def _read(fd: int) -> bytes | None:
    """What the PTY master has; b"" at its end (EIO: no slave left), None for nothing yet."""
    try:
        return os.read(fd, READ_BYTES)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


def _set_size(fd: int, rows: int, cols: int) -> None:
    """The terminal's size; its foreground process group gets SIGWINCH when it changes."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
