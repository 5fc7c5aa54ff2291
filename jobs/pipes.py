"""A task's result from what its pipes delivered and how its container ended: the stdout
handed on up to the output cap, the head of stderr, the init status, and which limit (if
any) ended it. Shared by a fresh container (jobs/sandbox.py) and a reused one (jobs/warm.py)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

from jobs.cgroups import TaskCgroups

__all__ = ["TRUNCATED", "TaskPipes", "TaskResult"]

TRUNCATED = b"\n... truncated\n"


@dataclass
class TaskResult:
    exit_code: int | None
    signal: int | None
    killed: str | None
    init_failed: bool
    stdout_bytes: int            # bytes handed to the stdout callback (<= max_output_bytes)
    stderr: bytes
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed is None and not self.init_failed


class TaskPipes:
    """What a task's pipes delivered: stdout handed on up to the output cap, the head of
    stderr, the init status. One per task, in `Sandbox.run` and in a reused container."""

    def __init__(self, out_fd: int, err_fd: int, status_fd: int, stdout: Callable[[bytes], None],
                 max_output_bytes: int, stderr_cap: int) -> None:
        self.out_fd, self.err_fd, self.status_fd = out_fd, err_fd, status_fd
        self.stdout = stdout
        self.max_output_bytes = max_output_bytes
        self.stderr_cap = stderr_cap
        self.sent = 0
        self.status = bytearray()
        self._err_total = 0
        self._err_head = bytearray()

    def take(self, fd: int, data: bytes, passing: bool) -> bool:
        """Take what `fd` delivered (stdout only while `passing`: not once the task is being
        killed); True when stdout just went over the cap."""
        if fd == self.out_fd:
            if not passing:
                return False
            room = self.max_output_bytes - self.sent
            if room > 0:
                self.stdout(data[:room])
                self.sent += min(room, len(data))
            return len(data) > room
        if fd == self.err_fd:
            self._err_total += len(data)
            self._err_head += data[: max(0, self.stderr_cap - len(self._err_head))]
        elif fd == self.status_fd:
            self.status += data
        return False

    def stderr(self) -> bytes:
        stderr = bytes(self._err_head)
        if self._err_total > len(self._err_head):
            stderr = stderr[: self.stderr_cap - len(TRUNCATED)] + TRUNCATED
        return stderr

    def result(self, rc: int, killed: str | None, cgroups: TaskCgroups | None, duration_s: float) -> TaskResult:
        """The task's result from the container's exit status `rc` (bwrap: 128+n for signal n)."""
        stderr = self.stderr()
        exit_code, sig = (None, -rc) if rc < 0 else (None, rc - 128) if 128 < rc <= 192 else (rc, None)
        killed = killed or _classify(exit_code, sig, cgroups, stderr)
        return TaskResult(exit_code=exit_code, signal=sig, killed=killed,
                          init_failed=killed is None and self.status != b"ok\n", stdout_bytes=self.sent,
                          stderr=stderr, duration_s=duration_s)


def _classify(exit_code: int | None, sig: int | None, cgroups: TaskCgroups | None,
              stderr: bytes) -> str | None:
    """Which limit ended a task that run() did not kill, if one did."""
    if cgroups is not None and (reason := cgroups.breach()):
        return reason
    if sig in (signal.SIGXCPU, signal.SIGXFSZ):
        return "cpu" if sig == signal.SIGXCPU else "disk"
    guess = cgroups is None  # the rlimit fallback: only stderr tells
    if guess and b"fork: " in stderr and b"temporarily unavailable" in stderr:
        return "processes"
    if exit_code != 0 and b"No space left on device" in stderr:
        return "disk"
    if guess and exit_code != 0 and (b"MemoryError" in stderr or b"memory" in stderr):
        return "memory"
    return None
