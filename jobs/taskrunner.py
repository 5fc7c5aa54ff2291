"""The runner inside a reused container: takes one task after another (see jobs/warm.py).

This file runs as `python3 -I -S -c <this source>` inside the container, from the host's
read-only /usr, as the container's pid 1 (bwrap --as-pid-1; no bwrap init). It imports
nothing of ours. fd 3 is a SOCK_SEQPACKET socket to the host. It says b"ready", then for
each message (runner_message in jobs/warm.py: the input flag, shell, argv and env, as
NUL-terminated fields) with fds [stdin, stdout, stderr, status(, input)]:

    spawn the task: fds 0,1,2,3 (+ INPUT_FD) from the message, no other fd; default
            signal dispositions; execve(shell, argv, env): the bash runner of a fresh
            container, after `ulimit -t` (RLIMIT_CPU, SIGKILL a second later) and `cd /tmp`
    wait for that child, then clean up: SIGKILL everything else in the pid namespace
            (kill(-1) spares only us) and reap it (as pid 1, orphans, double forks and
            setsid'd daemons come back to us), until /proc shows no process but us;
            empty /tmp (also what was made unreadable); reset /tmp, /manta/out, /dev/pts
            and /dev/pts/ptmx (RESET_DIRS: the task user's, they outlive a task; /manta/out
            only with in-task tools, its entries are moved out by the host) to what they
            were when we started: the same xattrs (any other removed), mode and owner, and atime and
            mtime the time of the reset (their ctime says that anyway); what cannot be
            reset makes the reply not clean; remove SysV IPC objects left behind
    reply {status (the child's wait status), clean}

We are not dumpable, so tasks (same uid) cannot read or write our memory or fds through
/proc, process_vm_readv or pidfd_getfd; ptrace is refused by seccomp. As the namespace's
init we get no signal from inside it that we do not handle (none: SIGKILL and SIGSTOP
included). Should we die anyway (an OOM kill), the host sees no reply and throws the
container away; a reply with clean false does the same.
"""

import ctypes
import fcntl
import json
import os
import signal
import socket
import stat

CONTROL_FD = 3
INPUT_FD = 63          # /manta/input is a symlink to /proc/self/fd/63
TARGETS = (0, 1, 2, 3, INPUT_FD)
MAX_MESSAGE = 1 << 20
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
IPC_RMID = 0
SYSV = (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl"))
KILL_ROUNDS = 100
RESET_DIRS = ("/tmp", "/manta/out", "/dev/pts", "/dev/pts/ptmx")  # what a task can change that outlives it


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # (pid 1 is anyway)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):  # python's own choices, not the task's
        signal.signal(sig, signal.SIG_DFL)
    sock = socket.socket(fileno=CONTROL_FD)
    os.set_inheritable(CONTROL_FD, False)
    tmp_mode = stat.S_IMODE(os.stat("/tmp").st_mode)
    fresh = [state for path in RESET_DIRS if (state := _remember(path)) is not None]
    sock.send(b"ready")
    while True:
        data, fds = _receive(sock)
        if not data:
            return
        task = _parse(data)
        try:
            pid = _spawn(task, fds)
        except OSError:
            pid = 0
        for fd in fds:
            os.close(fd)
        status = _wait(pid) if pid else 127 << 8
        clean = _kill_others() and _empty_tmp(tmp_mode) and all(_reset(state) for state in fresh) \
            and _clear_sysv(libc)
        sock.send(json.dumps({"status": status, "clean": clean}).encode())


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = []
    data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(8 * 4), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload) - 3, 4)]
    return data, fds


def _parse(data: bytes) -> dict:
    """A message of runner_message (jobs/warm.py): NUL-terminated fields "M1", the input
    flag, the shell, argc, argv, envc, env."""
    fields = [f.decode() for f in data.split(b"\0")[:-1]]
    if fields[:1] != ["M1"]:
        raise ValueError("not a task message")
    argc = int(fields[3])
    envc = int(fields[4 + argc])
    if len(fields) != 5 + argc + envc:
        raise ValueError("a task message of the wrong length")
    return {"input": fields[1] == "1", "shell": fields[2], "argv": fields[4:4 + argc],
            "env": dict(e.split("=", 1) for e in fields[5 + argc:])}


def _spawn(task: dict, fds: list[int]) -> int:
    """posix_spawn (vfork and exec: no copy of our page tables); the fds land on their
    numbers by dup2, every other fd of ours is close-on-exec. The argv's bash sets the
    task's RLIMIT_CPU and cwd itself before it runs anything of the task's."""
    wanted = fds[:5] if task["input"] else fds[:4]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, INPUT_FD + 1) for fd in wanted]
    try:
        actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(high, TARGETS, strict=False)]
        return os.posix_spawn(task["shell"], task["argv"], task["env"], file_actions=actions)
    finally:
        for fd in high:
            os.close(fd)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _kill_others() -> bool:
    me = os.getpid()
    for _ in range(KILL_ROUNDS):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        if not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
            return True
    return False


def _empty_tmp(mode: int) -> bool:
    os.chmod("/tmp", mode | stat.S_IRWXU)
    for _ in range(3):
        for name in os.listdir("/tmp"):
            _remove(os.path.join("/tmp", name))
        if not os.listdir("/tmp"):
            os.chmod("/tmp", mode)
            return True
    return False


class _Fresh:
    """A directory as the container started with it."""

    def __init__(self, path: str, mode: int, uid: int, gid: int, xattrs: dict[str, bytes]) -> None:
        self.path, self.mode, self.owner, self.xattrs = path, mode, (uid, gid), xattrs


def _remember(path: str) -> _Fresh | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return _Fresh(path, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, _xattrs(path))


def _xattrs(path: str) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in os.listxattr(path, follow_symlinks=False)}


def _reset(fresh: _Fresh) -> bool:
    """`fresh.path` as it was: its xattrs (any other removed), mode, owner; atime and mtime
    now. False if it could not be made so."""
    path = fresh.path
    try:
        for name in os.listxattr(path, follow_symlinks=False):
            if fresh.xattrs.get(name) != _xattr(path, name):
                os.removexattr(path, name, follow_symlinks=False)
        info = os.lstat(path)
        if (info.st_uid, info.st_gid) != fresh.owner:
            os.chown(path, *fresh.owner, follow_symlinks=False)
        os.chmod(path, fresh.mode)  # a directory: no symlink to follow
        os.utime(path, follow_symlinks=False)  # atime and mtime: now
        info = os.lstat(path)
        return (stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid), _xattrs(path)) == \
            (fresh.mode, fresh.owner, fresh.xattrs)
    except OSError:
        return False


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _remove(path: str) -> None:
    try:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(path)
            return
        os.chmod(path, 0o700)
        for name in os.listdir(path):
            _remove(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        pass


def _clear_sysv(libc: ctypes.CDLL) -> bool:
    left = 0
    for kind, call in SYSV:
        idents = _sysv_ids(kind)
        for ident in idents:
            args = (ident, 0, IPC_RMID) if kind == "sem" else (ident, IPC_RMID, None)
            getattr(libc, call)(*args)
        left += len(_sysv_ids(kind)) if idents else 0  # read again only after removing some
    return left == 0


def _sysv_ids(kind: str) -> list[int]:
    try:
        with open(f"/proc/sysvipc/{kind}") as fh:
            return [int(line.split()[1]) for line in fh.readlines()[1:] if line.strip()]
    except OSError:
        return []


if __name__ == "__main__":
    main()
