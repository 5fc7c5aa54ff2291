"""Task cgroups: one memory and pids cgroup per task, v2 or v1, under `<root>/[<controller>/]manta`.

`setup_cgroups` finds the usable version once (making the `manta` parents and removing the
cgroups of servers that are gone); `TaskCgroups` makes one task's cgroups with its limits,
reads their breach counters (an OOM kill, a refused fork), kills what runs in them and
removes them. Without usable cgroups the sandbox falls back to rlimits (FALLBACK).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import time

__all__ = ["FALLBACK", "TaskCgroups", "counter", "owner_gone", "read_text", "running", "setup_cgroups", "write_knob"]

log = logging.getLogger(__name__)

FALLBACK = "falling back to rlimits (ulimit -v for memory, ulimit -u for processes, per host user)"


class TaskCgroups:
    """One task's memory and pids cgroups: one v2 dir, or a dir in each v1 hierarchy."""

    def __init__(self, root: str, version: str, memory_mb: int, max_procs: int) -> None:
        name, memory = f"{os.getpid()}-{secrets.token_hex(6)}", str(memory_mb << 20)
        if version == "v2":
            mem = pids = os.path.join(root, "manta", name)
            self.dirs = [mem]
            self.oom = os.path.join(mem, "memory.events")
            knobs = [("memory.max", memory, False), ("memory.swap.max", "0", True)]
        else:
            mem, pids = (os.path.join(root, c, "manta", name) for c in ("memory", "pids"))
            self.dirs = [mem, pids]
            self.oom = os.path.join(mem, "memory.oom_control")
            knobs = [("memory.limit_in_bytes", memory, False),
                     ("memory.memsw.limit_in_bytes", memory, True)]
        self.pids = os.path.join(pids, "pids.events")
        self.procs = [os.path.join(d, "cgroup.procs") for d in self.dirs]
        try:
            for d in self.dirs:
                os.mkdir(d)
            for knob, value, optional in knobs:
                write_knob(os.path.join(mem, knob), value, optional)
            write_knob(os.path.join(pids, "pids.max"), str(max_procs))
        except BaseException:
            self.remove()
            raise

    def breach(self) -> str | None:
        if counter(self.oom, "oom_kill"):
            return "memory"
        return "processes" if counter(self.pids, "max") else None

    def kill(self, spare: int = 0) -> None:
        for pid in " ".join(read_text(procs) for procs in self.procs).split():
            if int(pid) != spare:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        deadline = time.monotonic() + 5.0
        for d in self.dirs:
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as err:  # EBUSY while the last processes exit
                    if time.monotonic() > deadline:
                        log.warning("cannot remove task cgroup %s: %s", d, err)
                        break
                    self.kill()
                    time.sleep(0.002)


def setup_cgroups(root: str) -> str | None:
    """The usable cgroup version, with its `manta` parents made; None (logged): rlimits."""
    try:
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            if not {"memory", "pids"} <= set(read_text(os.path.join(root, "cgroup.controllers")).split()):
                raise OSError("the memory or pids controller is not available")
            version, parents = "v2", [os.path.join(root, "manta")]
            os.makedirs(parents[0], exist_ok=True)
            for d in (root, parents[0]):
                write_knob(os.path.join(d, "cgroup.subtree_control"), "+memory +pids")
        elif os.path.exists(os.path.join(root, "memory", "memory.limit_in_bytes")) and \
                os.path.isdir(os.path.join(root, "pids")):
            version, parents = "v1", [os.path.join(root, c, "manta") for c in ("memory", "pids")]
        else:
            raise OSError("neither cgroup v2 nor v1 memory and pids hierarchies")
        for parent in parents:
            os.makedirs(parent, exist_ok=True)
            for name in os.listdir(parent):
                if owner_gone(name):
                    os.rmdir(os.path.join(parent, name))
    except OSError as err:
        log.warning("no usable cgroups at %s (%s): %s", root, err, FALLBACK)
        return None
    log.info("task limits use cgroup %s at %s", version, root)
    return version


def owner_gone(name: str) -> bool:
    """Whether `name`, "<server pid>-...", belongs to a server that is no longer running (a
    zombie is not running: a killed worker whose parent died waits there for init to reap
    it, which in a container may be never)."""
    owner = name.partition("-")[0]
    return owner.isdigit() and not running(int(owner))


def running(pid: int) -> bool:
    """Is `pid` a process that has not exited (a zombie has)?"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def write_knob(path: str, value: str, optional: bool = False) -> None:
    with contextlib.suppress(*((OSError,) if optional else ())), open(path, "w") as fh:
        fh.write(value)


def read_text(path: str) -> str:
    """A cgroup file's text, "" if it cannot be read. One os.read for a small one (the
    kernel hands a seq file's whole text to a large enough read): open() would add an
    fstat, an lseek, an ioctl and a read at EOF, and every task reads two of them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:  # a long cgroup.procs
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def counter(path: str, key: str) -> int:
    for line in read_text(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
