"""Containers reused within a job phase: a task of the same job, phase, limits, assets and
image that runs after another on this node takes over its container instead of starting one.

A reused container is the sandbox of jobs/sandbox.py (same wrapper, cgroups, user, bwrap
namespaces, mounts, seccomp filter) whose main process is the runner, as pid 1: the
compiled jobs/taskrunner.c (jobs/runnerbin.py; a read-only copy in the container's own
root, from a memfd), or jobs/taskrunner.py run by the host's python3 from the read-only
/usr where no compiler built it or it did not start C_START_TRIES times in a row
(`--as-pid-1`: bwrap's own init would be
a dumpable process of the task user that a task could write into through /proc/1/mem and
that no cleanup may kill; as pid 1 the runner also ignores every signal a task sends it). It gets one end of a SOCK_SEQPACKET socketpair as
fd 3 and answers b"ready". Each task is one message: the shell, the same bash runner argv
as a fresh container (init, then the pipeline) after `ulimit -t` (RLIMIT_CPU), the task's
env (exactly PATH, HOME, LANG and TaskSpec.env), and fds by SCM_RIGHTS: its stdin (a map
task's one input file itself, opened here; a reducer's inputs through a fresh pipe our thread
feeds, as in a fresh container), fresh stdout, stderr and init-status pipes, and the input
file opened here. /manta/input is a symlink to /proc/self/fd/63, where the input fd sits,
so `$MANTA_INPUT_FILE` (= /manta/input) and stdin are the task's own input and nothing
else: no earlier input is bound or open anywhere in the container.

    _take(key) or _start(key) --task msg + fds--> runner forks the task --> we watch its
    pipes, the clock, cancel and the cgroup counters --> runner: task exited, killed
    everything else, emptied /tmp, reset the task user's dirs (xattrs, mode, times), removed
    SysV IPC --> reply {status, clean}
        --> all normal: _put(key) (idle, closed after idle_s)    else: close (SIGKILL)

Anything abnormal throws the container away, exactly as a fresh one ends: a timeout,
cancel, output cap, cgroup breach (memory, processes: counters are zero when a container
is handed on, so any count is this task's), CPU or file-size signal, init failure, a runner
that died or replied "not clean", a failed input read. Keys hold the job id and phase,
so nothing is shared between jobs or phases. Only as root: tasks reopen their input
through /proc/self/fd, which checks the file's mode, and input files are never the task
user's own then. Containers are started from one long-lived thread of the pool, since
bwrap's --die-with-parent follows the thread that forked it and a container outlives the
task (and thread) it was started for. If a container cannot be started or handed a task,
the task runs in a fresh one (Sandbox.run). A task that has an `output_dir` (the in-task
tools' /manta/out) gets the container's own directory, next to the task's, bound there;
after each task what it left is moved into the task's directory (`hand_over`), so every
task starts with it empty and reads only its own outputs; one that cannot be emptied
throws the container away.
"""

from __future__ import annotations

import array
import concurrent.futures as cf
import dataclasses
import json
import logging
import os
import selectors
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import BinaryIO

from jobs.cgroups import TaskCgroups
from jobs.outwatch import OutputWatch
from jobs.pipes import TaskPipes, TaskResult
from jobs.reach import unreachable
from jobs.runnerbin import runner_binary
from jobs.sandbox import (
    CHUNK,
    HOST_PATH,
    TICK_S,
    Sandbox,
    SandboxError,
    TaskLimits,
    TaskSpec,
    _bwrap,
    _cpu_s,
    _end,
    _env_args,
    _feed,
    _kill,
    _limit_reached,
    _memfd,
    _moved,
    _pass_files,
    _task_mounts,
    runner_script,
)
from jobs.tooloutputs import hand_over
from jobs.trees import remove_tree

__all__ = ["WarmPool"]

log = logging.getLogger(__name__)

PYTHON = "/usr/bin/python3"
RUNNER_PATH = "/.manta-runner"  # the compiled runner's copy in a container
INPUT_LINK = "/proc/self/fd/63"  # taskrunner.INPUT_FD
START_TIMEOUT_S = 10.0
C_START_TRIES = 3  # consecutive containers whose C runner did not start before the Python one takes over
REPLY_GRACE_S = 2.0
FEEDERS = 256  # threads made only as concurrent tasks need them (an agent's slots)
Key = tuple[Hashable, TaskLimits, tuple[tuple[str, str], ...], bool, str | None, bool]


class _Broken(Exception):
    """The container cannot take the task; nothing of the task started."""


@dataclasses.dataclass
class _Container:
    key: Key
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    cgroups: TaskCgroups | None
    out_dir: str | None = None  # bound at /manta/out; emptied into each task's own
    idle_since: float = 0.0
    tasks: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        _end(self.proc, self.cgroups)
        self.sock.close()
        if self.cgroups is not None:
            self.cgroups.remove()
        if self.out_dir is not None:
            remove_tree(self.out_dir)


class WarmPool:
    """Idle containers by key, handed to the next task of the same key on this node."""

    def __init__(self, sandbox: Sandbox, idle_s: float = 2.0, max_idle: int = 64,
                 runner: str | None = None) -> None:
        """`runner`: "c" (jobs/taskrunner.c, compiled here) or "python" (jobs/taskrunner.py);
        default: $MANTA_TASK_RUNNER, else "c" (the Python one where it cannot be built)."""
        runner = runner or os.environ.get("MANTA_TASK_RUNNER") or "c"
        if runner not in ("c", "python"):
            raise ValueError(f"unknown task runner {runner!r} (c or python)")
        self.sandbox = sandbox
        self.idle_s = idle_s
        self.max_idle = max_idle
        self.started = 0  # containers started, for tests and the benchmark
        self._lock = threading.Lock()
        self._idle: dict[Key, list[_Container]] = {}
        self._closed = threading.Event()
        self._spawner = cf.ThreadPoolExecutor(1, thread_name_prefix="manta-warm")
        self._feeders = cf.ThreadPoolExecutor(FEEDERS, thread_name_prefix="manta-feed")  # no thread start per task
        self._reaper: threading.Thread | None = None
        self._source: str | None = None
        self._compiled = runner == "c"  # False: the Python runner (no compiler, or it failed)
        self._c_failures = 0  # containers in a row whose C runner did not start

    def usable(self) -> bool:
        try:
            host = self.sandbox._prepare()
        except SandboxError:
            return False
        return host.ids is not None and host.shell == "/bin/bash" and os.access(PYTHON, os.X_OK) \
            and "/usr" in self.sandbox.config.ro_paths and not self._closed.is_set()

    def run(self, phase: Hashable, spec: TaskSpec, stdout: Callable[[bytes], None],
            cancel: threading.Event | None = None) -> TaskResult:
        """Run `spec` like Sandbox.run, in a container kept for tasks of the same `phase`
        (e.g. (job id, phase number)) with the same limits and assets."""
        if not self.usable() or (spec.input_file is not None and self._unreachable(spec.input_file)):
            return self.sandbox.run(spec, stdout, cancel)
        key: Key = (phase, spec.limits, tuple(spec.assets), spec.input_file is not None, spec.image,
                    spec.output_dir is not None)
        container = self._take(key)
        if container is None:
            container = self._start(key, spec)
            if container is None:
                return self.sandbox.run(spec, stdout, cancel)
        try:
            result, reusable = self._run_in(container, spec, stdout, cancel)
            if container.out_dir is not None and not hand_over(container.out_dir, spec.output_dir,
                                                               spec.make_output_dir):
                reusable = False
        except _Broken as exc:
            log.info("a reused container could not take a task (%s); a fresh one does", exc)
            container.close()
            return self.sandbox.run(spec, stdout, cancel)
        except BaseException:
            container.close()
            raise
        if reusable:
            self._put(container)
        else:
            container.close()
        return result

    def _binary(self) -> bytes | None:
        """The compiled runner's bytes, or None for the Python runner."""
        if self._compiled and (binary := runner_binary()) is not None:
            return binary
        self._compiled = False
        return None

    def _unreachable(self, path: str) -> bool:
        """An input the task user could not bind goes to a fresh container, which fails as
        it always has (bwrap says why): the fd we open as root must not reach further."""
        ids = self.sandbox._prepare().ids
        return ids is not None and unreachable(path, *ids) is not None

    def idle(self) -> int:
        with self._lock:
            return self._count_idle()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            idle, self._idle = [c for v in self._idle.values() for c in v], {}
        for container in idle:
            container.close()
        self._spawner.shutdown(wait=True)
        self._feeders.shutdown(wait=False)

    # -- the pool -------------------------------------------------------------------------

    def _take(self, key: Key) -> _Container | None:
        with self._lock:
            found = self._idle.get(key) or []
            while found:
                container = found.pop()
                if container.alive():
                    return container
                container.close()
        return None

    def _put(self, container: _Container) -> None:
        """Keep `container` idle. With `max_idle` kept already, the one idle longest goes
        instead: the phase that just ran a task is likely to run another, while a finished
        job's containers would otherwise keep the next job from reusing any until they age
        out."""
        container.idle_since = time.monotonic()
        evicted: _Container | None = container
        with self._lock:
            if not self._closed.is_set() and self.max_idle > 0:
                evicted = self._oldest_idle() if self._count_idle() >= self.max_idle else None
                self._idle.setdefault(container.key, []).append(container)
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap_forever, daemon=True,
                                                    name="manta-warm-reaper")
                    self._reaper.start()
        if evicted is not None:
            evicted.close()

    def _oldest_idle(self) -> _Container | None:
        """Take the container idle longest out of the pool (under the lock)."""
        key = min((k for k, v in self._idle.items() if v), key=lambda k: self._idle[k][0].idle_since,
                  default=None)
        if key is None:
            return None
        oldest = self._idle[key].pop(0)
        if not self._idle[key]:
            del self._idle[key]
        return oldest

    def _count_idle(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _reap_forever(self) -> None:
        while not self._closed.wait(max(0.05, self.idle_s / 4)):
            now, old = time.monotonic(), []
            with self._lock:
                for key, containers in list(self._idle.items()):
                    keep = [c for c in containers if now - c.idle_since < self.idle_s and c.alive()]
                    old += [c for c in containers if c not in keep]
                    if keep:
                        self._idle[key] = keep
                    else:
                        del self._idle[key]
            for container in old:
                container.close()

    # -- one container ----------------------------------------------------------------------

    def _start(self, key: Key, spec: TaskSpec) -> _Container | None:
        host = self.sandbox._prepare()
        if self._source is None:
            self._source = Path(__file__).with_name("taskrunner.py").read_text()
        binary: bytes | None = None
        limits = spec.limits
        fds: list[int] = []
        cgroups: TaskCgroups | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        out_dir = None
        try:
            if spec.output_dir is not None:
                out_dir = _container_dir(spec.output_dir, host.ids)
            if host.cgroups:
                cgroups = TaskCgroups(self.sandbox.config.cgroup_root, host.cgroups, limits.memory_mb,
                                      limits.max_procs)
            seccomp = _pass_files(host, fds, theirs.detach())
            mounts = _task_mounts(dataclasses.replace(spec, input_file=None, output_dir=out_dir), fds[1], fds[2],
                                  INPUT_LINK if key[3] else None)
            if (binary := self._binary()) is not None:  # a read-only copy in the container's own root
                fds.append(_moved(_memfd(binary), host.min_fd))
                mounts = ["--perms", "0555", "--ro-bind-data", str(fds[-1]), RUNNER_PATH, *mounts]
                program = [RUNNER_PATH]
            else:
                program = [PYTHON, "-I", "-S", "-c", self._source]
            argv = _bwrap(host, fds, limits, cgroups,
                          ["--as-pid-1", *mounts, *seccomp, *_env_args({}), "--", *program], cpu=False)
            proc = self._spawner.submit(
                subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=fds, start_new_session=True,
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8"}, cwd="/").result()
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("cannot start a reusable container: %s", exc)
            ours.close()
            if cgroups is not None:
                cgroups.remove()
            if out_dir is not None:
                remove_tree(out_dir)
            return None
        finally:
            theirs.close()
            for fd in fds:
                os.close(fd)
        container = _Container(key, proc, ours, cgroups, out_dir)
        ours.settimeout(START_TIMEOUT_S)
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        ours.settimeout(None)
        if ready != b"ready":
            if binary is None:
                log.warning("a reusable container did not start; tasks run in fresh ones")
            else:  # once may be the machine (out of memory, a start past the timeout)
                with self._lock:
                    self._c_failures += 1
                    failures = self._c_failures
                    gave_up = failures >= C_START_TRIES
                    if gave_up:
                        self._compiled = False
                if gave_up:
                    log.warning("the C task runner did not start in %d containers in a row; reused "
                                "containers run the Python one", failures)
                else:
                    log.warning("the C task runner did not start (%d of %d tries); its task runs in "
                                "a fresh container", failures, C_START_TRIES)
            container.close()
            return None
        with self._lock:
            self.started += 1
            if binary is not None:
                self._c_failures = 0
        return container

    def _run_in(self, container: _Container, spec: TaskSpec, stdout: Callable[[bytes], None],
                cancel: threading.Event | None) -> tuple[TaskResult, bool]:
        host = self.sandbox._prepare()
        for _, name in spec.assets:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"bad asset name: {name!r}")
        env_args = _env_args(spec.env, spec.image is not None)
        message = runner_message(
            host.shell, [host.shell, "-c", runner_script(host.shell, spec.exec, _limited(spec.limits)), "manta-task",
                         spec.init or ""],
            [f"{name}={value}" for name, value in zip(env_args[2::3], env_args[3::3], strict=True)],
            spec.input_file is not None)
        theirs: list[int] = []
        ours: list[int] = []
        inputs: list[BinaryIO] = []
        # one stdin file (a map task's input): the file itself is stdin, read in place (no
        # pipe, no copy by our thread); several (a reducer's): a pipe our thread feeds
        direct = len(spec.stdin_paths) == 1
        stdin_fd = input_fd = -1
        try:
            try:
                if direct:
                    stdin_fd = os.open(spec.stdin_paths[0], os.O_RDONLY | os.O_CLOEXEC)
                else:
                    for path in spec.stdin_paths:
                        inputs.append(open(path, "rb"))  # noqa: SIM115 (closed by _feed)
                input_fd = os.open(spec.input_file, os.O_RDONLY | os.O_CLOEXEC) if spec.input_file else -1
            except OSError as exc:
                if stdin_fd >= 0:
                    os.close(stdin_fd)
                raise SandboxError(f"cannot open the task's input: {exc}") from exc
            if direct:
                pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]  # stdout, stderr, status
                theirs = [stdin_fd, pipes[0][1], pipes[1][1], pipes[2][1]]
                ours = [pipes[0][0], pipes[1][0], pipes[2][0]]
            else:
                pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]  # stdin, stdout, stderr, status
                theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
                ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
            if input_fd >= 0:
                theirs.append(input_fd)
            try:
                container.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", theirs))])
            except OSError as exc:
                raise _Broken(str(exc)) from exc
            start = time.monotonic()
            for fd in theirs:
                os.close(fd)
            theirs = []
            feed_error: list[OSError] = []
            if not direct:
                stdin_w = os.fdopen(ours.pop(0), "wb")
                self._feeders.submit(_feed, inputs, stdin_w, feed_error)
                inputs = []
            container.tasks += 1
            return self._watch(container, spec, stdout, cancel, ours, feed_error, start)
        finally:
            for fd in theirs + ours:
                os.close(fd)
            for fh in inputs:
                fh.close()

    def _watch(self, container: _Container, spec: TaskSpec, stdout: Callable[[bytes], None],
               cancel: threading.Event | None, fds: list[int], feed_error: list[OSError],
               start: float) -> tuple[TaskResult, bool]:
        limits, cgroups = spec.limits, container.cgroups
        out_fd, err_fd, status_r = fds
        pipes = TaskPipes(out_fd, err_fd, status_r, stdout, limits.max_output_bytes,
                          self.sandbox.config.stderr_cap_bytes)
        sock_fd = container.sock.fileno()
        sel = selectors.PollSelector()  # no kernel object: no epoll_create/ctl/close per task
        for fd in (*fds, sock_fd):
            sel.register(fd, selectors.EVENT_READ)
        killed: str | None = None
        killed_at = replied_at = 0.0
        reply: dict | None = None
        read_at = 0.0  # the cgroup counters: read once a tick, and at the end (pipes.result)
        out = OutputWatch(container.out_dir, limits.disk_mb << 20)
        while sel.get_map():
            now = time.monotonic()
            if killed is None and reply is None:
                killed, read_at = _limit_reached(cancel, now - start, limits, cgroups, read_at)
                killed = killed or out.breach(now - start)
            if (killed or feed_error) and not killed_at:
                killed_at = now
                _kill(container.proc, cgroups)
            elif killed_at and now - killed_at > 1.0:
                _kill(container.proc, cgroups, force=True)
            if (replied_at and now - replied_at > REPLY_GRACE_S) or (killed_at and now - killed_at > 10.0):
                log.warning("task pipes still open after the task ended; not waiting for them")
                killed_at = killed_at or now
                break
            wait = TICK_S if killed else min(TICK_S, start + limits.timeout_s - now)
            for key, _ in sel.select(timeout=max(0.0, wait)):
                if key.fd == sock_fd:
                    try:
                        data = container.sock.recv(4096)
                    except OSError:  # ECONNRESET: the runner died with our message unread
                        data = b""
                    sel.unregister(sock_fd)
                    if data:
                        reply, replied_at = json.loads(data), time.monotonic()
                    continue
                data = os.read(key.fd, CHUNK)
                if not data:
                    sel.unregister(key.fd)
                elif pipes.take(key.fd, data, passing=killed is None):
                    killed, killed_at = "output", time.monotonic()
                    _kill(container.proc, cgroups)
        sel.close()
        duration = time.monotonic() - start
        if feed_error:
            raise SandboxError(f"reading the task's input failed: {feed_error[0]}") from feed_error[0]
        if reply is not None and not killed_at:
            raw = int(reply["status"])
            rc = os.waitstatus_to_exitcode(raw)
        else:  # killed, or the runner died: the container's own status, as a fresh one reports it
            rc = _end(container.proc, cgroups, grace_s=2.0)
        result = pipes.result(rc, killed, cgroups, duration)
        reusable = (reply is not None and bool(reply.get("clean")) and not killed_at and result.killed is None
                    and not result.init_failed and container.alive())
        return result, reusable


def runner_message(shell: str, argv: list[str], env: list[str], has_input: bool) -> bytes:
    """A task for a container's runner (jobs/taskrunner.c and .py read it): NUL-terminated
    fields "M1", the input flag "1" or "0", the shell, len(argv), argv, len(env), env
    ("NAME=value"). No field may hold a NUL (the job spec and _env_args refuse them)."""
    fields = ["M1", "1" if has_input else "0", shell, str(len(argv)), *argv, str(len(env)), *env]
    if any("\0" in field for field in fields):
        raise ValueError("a task's argv or env holds a NUL")
    return b"".join(field.encode() + b"\0" for field in fields)


def _container_dir(task_dir: str, ids: tuple[int, int] | None) -> str:
    """A container's own /manta/out: a new directory beside the tasks' scratch dirs (the
    parent of `task_dir`'s), the task user's."""
    path = tempfile.mkdtemp(prefix=".warm-out-", dir=os.path.dirname(os.path.dirname(task_dir)))
    if ids is not None:
        os.chown(path, *ids)
    return path


def _limited(limits: TaskLimits) -> str:
    """The task's RLIMIT_CPU, set by its bash before anything of the task's runs (the
    runner's own CPU time must not count: it lives across tasks)."""
    cpu = _cpu_s(limits)
    return f"ulimit -S -t {cpu} && ulimit -H -t {cpu + 1} || exit 126; "
