"""Run one map or reduce task in a fresh bubblewrap container, next to its data.
(jobs/warm.py keeps such a container for the next task of the same job phase.)

Start chain (one fork from the server; no preexec_fn, the server is multi-threaded)::

    server thread (root) -Popen, new session->
      bash --posix wrapper (root)  joins the task's cgroups, sets rlimits, status pipe -> fd 3
        exec setpriv               becomes the unprivileged host user `manta-task`
          exec bwrap               new user/pid/net/ipc/uts/cgroup/mount namespaces, uid 1000,
                                   then the seccomp filter of jobs/seccomp.py (from a memfd)
            bash runner            runs `init` (no fd 3, stdout -> stderr), writes "ok" on fd 3,
                                   then evals EXEC, the user's pipeline, with $0 `manta-task`
                                   and no positional parameters (one bash start fewer than
                                   `exec bash -c EXEC`); stdin/stdout/stderr are our pipes

A container sees only read-only system dirs (`ro_paths` globs; /bin, /lib... as on the
host), a generated /etc/passwd and /etc/group, its own /proc, a read-only minimal /dev, a
private tmpfs /tmp of `disk_mb` (the only writable place; HOME and working dir), the input
at /manta/input and assets at /manta/assets/<name>, read-only, and the phase's image (if
any) at /opt/manta/image, read-only, with /opt/manta/image/bin first on PATH. The in-task
tools (mpipe, mtee, mcat, msplit: jobs/tools, read-only at /opt/manta/tools, last on PATH)
write into /manta/out, the task's `output_dir` bound writable (jobs/tooloutputs.py reads it
after the task). No network: its net namespace has only its own loopback. System calls no data task needs (keyrings, bpf, mounts,
namespaces, ptrace, io_uring...) fail with EPERM; no filter, no tasks. Env: exactly
`TaskSpec.env` plus PATH, HOME, LANG. bwrap runs as the task user, so bind sources must be
traversable by it (data dirs 0711, blobs 0644); stdin files are fed by a thread of ours and
need no such access.

Limits, and what enforces them (`TaskResult.killed` names the one that ended a task):
    timeout, cancelled  wall clock and the `cancel` event, checked every 50 ms -> kill
    output     stdout beyond max_output_bytes (delivered up to the cap) -> kill
    memory     cgroup v2 memory.max (swap.max 0) or v1 memory.limit_in_bytes (+memsw); any
               OOM kill in it (`oom_kill` counter) -> kill. Fallback: `ulimit -v`.
    processes  pids cgroup pids.max; the first refused fork (pids.events `max`) -> kill.
               Fallback: `ulimit -u`, counted per host user, i.e. across running tasks.
    cpu        RLIMIT_CPU, per process: SIGXCPU at cpu_s, SIGKILL one second later.
    disk       /tmp's tmpfs size and RLIMIT_FSIZE: SIGXFSZ, or a failure whose stderr says
               ENOSPC (best effort). tmpfs pages count as memory too. /manta/out, on the
               node's disk, is walked every 0.5 s (jobs/outwatch.py) -> kill.
In the fallback, "memory" and "processes" are guessed from stderr. A task's cgroups are
<cgroup_root>/[<controller>/]manta/<server pid>-<random>, removed when its processes are
gone; those of dead servers are removed when a Sandbox starts (`jobs/cgroups.py`).

Init/exec split: "ok" reaches fd 3 only once `init` succeeded, and fd 3 is closed before
the user's command, so no exit status can pass for an init failure or the reverse. A bwrap
setup failure (missing bind source) writes no "ok" either. A task killed before init
finished reports `killed`, not `init_failed`. bwrap turns a death by signal n into status
128+n, so statuses 129..192 are reported as `signal` (bash's rule).

run(): cgroups -> Popen -> select on stdout, stderr and the status pipe, ticking every
50 ms for cancel, deadline and cgroup counters -> on a limit, SIGKILL the container's pid 1
(its pid namespace dies with it) and all in its cgroups, sparing the outer bwrap so that it
reaps them; a second later, the whole process group -> drain, wait, classify -> rmdir the
cgroups. run() keeps its thread until the container ends: --die-with-parent follows the
thread that forked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import math
import os
import pwd
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from jobs.cgroups import TaskCgroups, read_text, setup_cgroups
from jobs.outwatch import OutputWatch
from jobs.pipes import TRUNCATED, TaskPipes, TaskResult
from jobs.seccomp import SeccompError, compile_filter
from jobs.tooloutputs import OUTPUT_MOUNT, TOOLS_DIR, TOOLS_MOUNT

__all__ = ["Sandbox", "SandboxConfig", "SandboxError", "TaskLimits", "TaskResult", "TaskSpec"]

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
PIPE_BYTES = 1 << 20
TICK_S = 0.05
INNER_ID = "1000"
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TASK_PATH = f"/usr/local/bin:/usr/bin:/bin:{TOOLS_MOUNT}"
IMAGE_MOUNT = "/opt/manta/image"  # a phase's image (jobs/images.py), when it names one
# the task's one bash: init (if any), "ok" on the status pipe, then the user's command as
# the script's own last line (not eval'd: bash execs a script's last simple command
# instead of forking for it, one process start fewer per task). The first line is parsed
# and run before the user's text is read, so a syntax error there reads as the command's.
RUNNER = ('if [ -n "$1" ]; then {shell} -c "$1" manta-init </dev/null >&2 3>&- || exit; fi; '
          'echo ok >&3; exec 3>&-; set --\n')
PASSWD = (b"manta:x:1000:1000:manta task:/tmp:/bin/bash\n"
          b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = b"manta:x:1000:\nnogroup:x:65534:\n"


def runner_script(shell: str, command: str, prefix: str = "") -> str:
    """The `-c` script of a task's bash: `prefix`, RUNNER's first line, then `command`
    (arguments: $0 "manta-task", $1 the init command or "")."""
    return prefix + RUNNER.format(shell=shell) + command


class SandboxError(Exception):
    """Tasks cannot run here, or a task's input could not be read (not the task's fault)."""


@dataclass(frozen=True)
class SandboxConfig:
    user: str = "manta-task"
    bwrap: str = "/usr/bin/bwrap"
    cgroup_root: str = "/sys/fs/cgroup"
    stderr_cap_bytes: int = 64 * 1024
    seccomp: bool = True   # the filter of jobs/seccomp.py; off only to show what it changes
    reuse_idle_s: float = 2.0  # a job phase's tasks on a node share containers (jobs/warm.py); 0: never
    ro_paths: tuple[str, ...] = (
        "/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates",
        "/etc/localtime", "/etc/mime.types", "/etc/python3*")

    def __post_init__(self) -> None:
        if self.user in ("", "root"):
            raise ValueError("the sandbox user must be an unprivileged user")
        if self.reuse_idle_s < 0:
            raise ValueError("reuse_idle_s must not be negative")
        if self.stderr_cap_bytes < 2 * len(TRUNCATED):
            raise ValueError("stderr_cap_bytes is too small")
        for path in self.ro_paths:
            if not path.startswith("/") or path.rstrip("/") in ("", "/root", "/home", "/tmp"):
                raise ValueError(f"ro_paths entry not allowed: {path!r}")


@dataclass(frozen=True)
class TaskLimits:
    memory_mb: int = 1024
    disk_mb: int = 256
    timeout_s: float = 300.0
    cpu_s: int | None = None
    max_procs: int = 128
    max_output_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("memory_mb", "disk_mb", "timeout_s", "max_procs", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError("cpu_s must be positive")


@dataclass
class TaskSpec:
    exec: str
    env: dict[str, str]
    stdin_paths: list[str] = field(default_factory=list)
    input_file: str | None = None
    assets: list[tuple[str, str]] = field(default_factory=list)
    init: str | None = None
    limits: TaskLimits = TaskLimits()
    image: str | None = None  # a tree bound read-only at IMAGE_MOUNT, its bin first on PATH
    output_dir: str | None = None  # a host dir bound writable at OUTPUT_MOUNT, and the tools at TOOLS_MOUNT
    # makes `output_dir` when it is first needed: a fresh container binds it; a reused one
    # hands over only what a task left, so a task that used no tool never needs it
    make_output_dir: Callable[[], object] | None = None


@dataclass(frozen=True)
class _Host:
    """What this machine offers, learnt once per Sandbox."""
    priv: list[str]              # setpriv prefix; empty when we are not root
    ids: tuple[int, int] | None  # the task user's uid and gid; None when we are not root
    shell: str                   # /bin/bash, else /bin/sh
    wrapper: list[str]           # runs the root wrapper; its `ulimit -f` counts 512 B blocks
    min_fd: int                  # passed fds start here; dash parses single-digit fds only
    bwrap: list[str]             # bwrap and its fixed flags and system mounts
    cgroups: str | None          # "v2", "v1", or None for the rlimit fallback
    seccomp: bytes | None        # the compiled filter, None when SandboxConfig.seccomp is off


class Sandbox:
    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._host: _Host | None = None

    def check(self) -> str | None:
        """None when tasks can run here, else why not (found by running `true` for real)."""
        try:
            result = self.run(TaskSpec("true", {}, limits=TaskLimits(timeout_s=10)), lambda _: None)
        except (SandboxError, OSError) as err:
            return str(err)
        knobs = ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces")
        off = [k for k in knobs if read_text(k).strip() == "0"]
        hint = f" (user namespaces are off: {off[0]} is 0)" if off else ""
        stderr = result.stderr.decode(errors="replace").strip()
        return None if result.ok else f"a trial task failed: {stderr}{hint}"

    def task_ids(self) -> tuple[int, int] | None:
        """The uid and gid tasks run as on the host; None when not root (they run as us)."""
        return self._prepare().ids

    def run(self, spec: TaskSpec, stdout: Callable[[bytes], None],
            cancel: threading.Event | None = None) -> TaskResult:
        host = self._prepare()
        for _, name in spec.assets:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"bad asset name: {name!r}")
        env = _env_args(spec.env, spec.image is not None)
        inputs: list[BinaryIO] = []
        fds: list[int] = []
        feed_error: list[OSError] = []
        cgroups: TaskCgroups | None = None
        proc: subprocess.Popen[bytes] | None = None
        status_r = -1
        try:
            try:
                for path in spec.stdin_paths:
                    inputs.append(open(path, "rb"))  # noqa: SIM115 (closed by _feed)
                if host.cgroups:
                    cgroups = TaskCgroups(self.config.cgroup_root, host.cgroups, spec.limits.memory_mb,
                                          spec.limits.max_procs)
                if spec.output_dir is not None and spec.make_output_dir is not None:
                    spec.make_output_dir()
                status_r, status_w = os.pipe()
                seccomp = _pass_files(host, fds, status_w)
                argv = _bwrap(host, fds, spec.limits, cgroups,
                              [*_task_mounts(spec, fds[1], fds[2]), *seccomp, *env, "--", host.shell, "-c",
                               runner_script(host.shell, spec.exec), "manta-task", spec.init or ""])
                start = time.monotonic()
                proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE if inputs else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds,
                    start_new_session=True, env={"PATH": HOST_PATH, "LANG": "C.UTF-8"}, cwd="/")
            except OSError as err:
                raise SandboxError(f"cannot start the task: {err}") from err
            for fd in fds:  # the task's copies only, so that their ends show as EOF here
                os.close(fd)
            fds.clear()
            threading.Thread(target=_feed, args=(inputs, proc.stdin, feed_error), daemon=True).start()
            inputs = []
            return self._watch(proc, spec, stdout, cancel, cgroups, status_r, feed_error, start)
        finally:
            for fd in fds:
                os.close(fd)
            for fh in inputs:
                fh.close()
            if proc is not None:
                _end(proc, cgroups)
                for pipe in (proc.stdout, proc.stderr):
                    if pipe:
                        pipe.close()
            if cgroups:
                cgroups.remove()
            if status_r >= 0:
                os.close(status_r)

    def _watch(self, proc: subprocess.Popen[bytes], spec: TaskSpec, stdout: Callable[[bytes], None],
               cancel: threading.Event | None, cgroups: TaskCgroups | None, status_r: int,
               feed_error: list[OSError], start: float) -> TaskResult:
        assert proc.stdout is not None and proc.stderr is not None
        limits = spec.limits
        pipes = TaskPipes(proc.stdout.fileno(), proc.stderr.fileno(), status_r, stdout,
                          limits.max_output_bytes, self.config.stderr_cap_bytes)
        sel = selectors.PollSelector()  # no kernel object: no epoll_create/ctl/close per task
        for fd in (pipes.out_fd, pipes.err_fd, status_r):
            sel.register(fd, selectors.EVENT_READ)
        killed: str | None = None
        killed_at = exited_at = 0.0
        read_at = 0.0  # the cgroup counters: read once a tick, and at the end (pipes.result)
        out = OutputWatch(spec.output_dir, limits.disk_mb << 20)
        while sel.get_map():
            now = time.monotonic()
            if killed is None:
                killed, read_at = _limit_reached(cancel, now - start, limits, cgroups, read_at)
                killed = killed or out.breach(now - start)
            if (killed or feed_error) and not killed_at:
                killed_at = now
                _kill(proc, cgroups)
            if not exited_at and proc.poll() is not None:
                exited_at = now
            elif not exited_at and killed_at and now - killed_at > 1.0:
                _kill(proc, cgroups, force=True)
            if (exited_at and now - exited_at > 2.0) or (killed_at and now - killed_at > 10.0):
                log.warning("task pipes still open after the task ended; not waiting for them")
                break
            wait = TICK_S if killed else min(TICK_S, start + limits.timeout_s - now)
            for key, _ in sel.select(timeout=wait):
                data = os.read(key.fd, CHUNK)
                if not data:
                    sel.unregister(key.fd)
                elif pipes.take(key.fd, data, passing=killed is None):
                    killed, killed_at = "output", time.monotonic()
                    _kill(proc, cgroups)
        sel.close()
        rc = proc.wait()
        duration = time.monotonic() - start
        if feed_error:
            raise SandboxError(f"reading the task's input failed: {feed_error[0]}") from feed_error[0]
        return pipes.result(rc, killed, cgroups, duration)

    def _prepare(self) -> _Host:
        with self._lock:
            if self._host is None:
                self._host = self._discover()
            return self._host

    def _discover(self) -> _Host:
        cfg = self.config
        if not os.access(cfg.bwrap, os.X_OK):
            raise SandboxError(f"bubblewrap is not installed at {cfg.bwrap}")
        priv: list[str] = []
        ids = None
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv", path=HOST_PATH)
            if setpriv is None:
                raise SandboxError("setpriv (util-linux) is not installed")
            uid, gid = ids = _task_user(cfg.user)
            priv = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        else:
            log.warning("not root: tasks run as uid %d, not as %s", os.geteuid(), cfg.user)
        bwrap = [cfg.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                 "--uid", INNER_ID, "--gid", INNER_ID, "--hostname", "manta"]
        if "--disable-userns" in subprocess.run([cfg.bwrap, "--help"], capture_output=True,
                                                text=True).stdout:
            bwrap.append("--disable-userns")
        for link in ROOT_LINKS:
            if os.path.islink(link):
                bwrap += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                bwrap += ["--ro-bind", link, link]
        for pattern in cfg.ro_paths:
            for path in sorted(glob.glob(pattern)):
                bwrap += ["--ro-bind", path, path]
        if os.path.exists("/bin/bash"):
            shell, wrapper, min_fd = "/bin/bash", ["/bin/bash", "--posix", "-c"], 10
        else:
            shell, wrapper, min_fd = "/bin/sh", ["/bin/sh", "-c"], 4
        try:
            seccomp = compile_filter() if cfg.seccomp else None
        except SeccompError as err:  # never run tasks unfiltered by accident
            raise SandboxError(f"cannot build the tasks' seccomp filter: {err}") from err
        return _Host(priv, ids, shell, wrapper, min_fd, bwrap, setup_cgroups(cfg.cgroup_root), seccomp)


def _cpu_s(limits: TaskLimits) -> int:
    return limits.cpu_s or math.ceil(limits.timeout_s)


def _pass_files(host: _Host, fds: list[int], control: int) -> list[str]:
    """Hand a container its files, each moved to a high fd appended to `fds`: `control` (its
    status pipe or socket, fds[0]), the passwd and group files (fds[1], fds[2]) and the
    seccomp filter (fds[3]); returns bwrap's arguments for the filter."""
    fds.append(_moved(control, host.min_fd))
    for data in (PASSWD, GROUP, host.seccomp):
        if data is not None:
            fds.append(_moved(_memfd(data), host.min_fd))
    return ["--seccomp", str(fds[3])] if host.seccomp is not None else []


def _bwrap(host: _Host, fds: list[int], limits: TaskLimits, cgroups: TaskCgroups | None, args: list[str],
           cpu: bool = True) -> list[str]:
    """The command line of a container given `_pass_files`'s fds: the limits wrapper, then
    bwrap with `args` (mounts, options, "--" and the program)."""
    return [*host.wrapper, _wrapper_script(fds[0], limits, cgroups, cpu), "manta-sandbox", *host.priv,
            *host.bwrap, *args]


def _wrapper_script(status_fd: int, limits: TaskLimits, cgroups: TaskCgroups | None, cpu: bool = True) -> str:
    """`cpu` False: no RLIMIT_CPU here (in a reused container each task's bash sets its own)."""
    lines = ["set -e", *(f"echo $$ > {shlex.quote(p)}" for p in (cgroups.procs if cgroups else []))]
    lines += [f"ulimit -S -t {_cpu_s(limits)}", f"ulimit -H -t {_cpu_s(limits) + 1}"] if cpu else []
    lines += [f"ulimit -f {limits.disk_mb * 2048}", "ulimit -c 0"]
    if cgroups is None:
        lines += [f"ulimit -v {limits.memory_mb * 1024}", f"ulimit -u {limits.max_procs}"]
    return "\n".join([*lines, f'exec 3>&{status_fd} {status_fd}>&- "$@"'])


def _task_mounts(spec: TaskSpec, passwd_fd: int, group_fd: int, input_link: str | None = None) -> list[str]:
    args = ["--ro-bind-data", str(passwd_fd), "/etc/passwd",
            "--ro-bind-data", str(group_fd), "/etc/group", "--proc", "/proc", "--dev", "/dev",
            "--size", str(spec.limits.disk_mb << 20), "--tmpfs", "/tmp", "--dir", "/manta"]
    if spec.input_file is not None:
        args += ["--ro-bind", spec.input_file, "/manta/input"]
    elif input_link is not None:  # a reused container: each task's own input fd
        args += ["--symlink", input_link, "/manta/input"]
    if spec.assets:
        args += ["--dir", "/manta/assets"]
        for path, name in spec.assets:
            args += ["--ro-bind", path, f"/manta/assets/{name}"]
    if spec.image is not None:
        args += ["--ro-bind", spec.image, IMAGE_MOUNT]
    if spec.output_dir is not None:
        args += ["--bind", spec.output_dir, OUTPUT_MOUNT, "--ro-bind", TOOLS_DIR, TOOLS_MOUNT]
    return [*args, "--remount-ro", "/", "--remount-ro", "/dev", "--chdir", "/tmp"]


def _env_args(env: dict[str, str], image: bool = False) -> list[str]:
    args = ["--clearenv"]
    path = f"{IMAGE_MOUNT}/bin:{TASK_PATH}" if image else TASK_PATH
    for name, value in {"PATH": path, "HOME": "/tmp", "LANG": "C.UTF-8", **env}.items():
        if not name or "=" in name or "\0" in name + value:
            raise ValueError(f"bad environment variable: {name!r}")
        args += ["--setenv", name, value]
    return args


def _task_user(name: str) -> tuple[int, int]:
    for attempt in range(2):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid == 0 or entry.pw_gid == 0:
                raise SandboxError(f"the sandbox user {name} is root")
            return entry.pw_uid, entry.pw_gid
        if attempt == 0:
            log.info("creating the sandbox user %s", name)
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", name], capture_output=True, env={"PATH": HOST_PATH})
    raise SandboxError(f"the sandbox user {name} is missing and useradd failed")


def _feed(files: list[BinaryIO], pipe: IO[bytes] | None, errors: list[OSError]) -> None:
    """Copy the stdin files onto the task's stdin; a task that stops reading is fine.
    splice(2) moves the file's pages into the pipe without copying them through us; where
    the file system cannot splice, plain reads and writes do."""
    if pipe is None:
        return
    out = pipe.fileno()
    with contextlib.suppress(OSError):  # a bigger pipe: fewer hand-offs between us and the task
        fcntl.fcntl(out, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    try:
        for fh in files:
            src = fh.fileno()
            try:
                while os.splice(src, out, CHUNK):
                    pass
            except OSError as err:
                if err.errno != errno.EINVAL:  # EINVAL: no splice here (before any byte moved)
                    raise
                while chunk := fh.read(CHUNK):
                    pipe.write(chunk)
    except BrokenPipeError:
        pass
    except OSError as err:  # recorded before the pipe closes, so the task sees no clean EOF
        errors.append(err)
    finally:
        for fh in files:
            fh.close()
        with contextlib.suppress(OSError):
            pipe.close()


def _end(proc: subprocess.Popen[bytes], cgroups: TaskCgroups | None, grace_s: float = 1.0) -> int:
    """Kill a container still running and give it `grace_s` to go; then whatever is left
    (its whole process group, anything in its cgroups); reap it. Its exit status."""
    if proc.poll() is None:
        _kill(proc, cgroups)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _kill(proc, cgroups, force=True)
    return proc.wait()


def _kill(proc: subprocess.Popen[bytes], cgroups: TaskCgroups | None, force: bool = False) -> None:
    """Kill the container: its pid 1 (the pid namespace dies with it) and everything in its
    cgroups, sparing the outer bwrap so that it reaps them and no zombie is left to init.
    `force`, or nothing to kill yet: the wrapper's whole process group."""
    if cgroups is not None:
        cgroups.kill(spare=proc.pid)
    if proc.returncode is not None:  # reaped: its pid may be someone else's now
        return
    children = read_text(f"/proc/{proc.pid}/task/{proc.pid}/children").split()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    if force or not children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _limit_reached(cancel: threading.Event | None, elapsed_s: float, limits: TaskLimits,
                   cgroups: TaskCgroups | None, read_at_s: float | None = None) -> tuple[str | None, float]:
    """What ends a running task now: a cancel, its timeout, a cgroup limit; and when (in
    `elapsed_s`'s time) the cgroup counters were last read. Checked on every wake-up, but
    with `read_at_s` the counters, which are files, are read only once TICK_S has passed
    since: a task's output comes in many small reads."""
    last = elapsed_s if read_at_s is None else read_at_s
    if cancel is not None and cancel.is_set():
        return "cancelled", last
    if elapsed_s >= limits.timeout_s:
        return "timeout", last
    if cgroups is None or (read_at_s is not None and elapsed_s - read_at_s < TICK_S):
        return None, last
    return cgroups.breach(), elapsed_s


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("manta-task")
    os.pwrite(fd, data, 0)
    return fd


def _moved(fd: int, lowest: int) -> int:
    """`fd` renumbered to >= `lowest` (so never 3, the status pipe's number in the task)."""
    try:
        dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    finally:
        os.close(fd)
    if lowest < 10 and dup > 9:
        os.close(dup)
        raise SandboxError("no free file descriptor below 10 for /bin/sh (install bash)")
    return dup
