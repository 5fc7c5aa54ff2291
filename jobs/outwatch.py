"""The disk a running task's /manta/out holds on the node.

/manta/out is a directory on the node's own file system (its files become output objects
without a copy), so neither /tmp's tmpfs nor the memory cgroup bounds it, and RLIMIT_FSIZE
bounds each file, not their sum: a task writing many files could fill the node's disk,
refusing every account's writes there, until it ended and `read_calls` found it over its
limit. `OutputWatch` walks the directory every OUT_SCAN_S while the task runs (both
runners' loops, jobs/sandbox.py and jobs/warm.py) and reports the task's "disk" limit
reached once its files and directories hold more than the task's disk limit in blocks, or
number more than MAX_OUT_ENTRIES (each costs an inode whatever its size). A walk stops as
soon as it has seen too much, so a bad task costs at most MAX_OUT_ENTRIES stats a scan.
"""

from __future__ import annotations

import os
import stat

__all__ = ["MAX_OUT_ENTRIES", "OUT_SCAN_S", "OutputWatch", "over"]

OUT_SCAN_S = 0.5  # how often a running task's /manta/out is measured
MAX_OUT_ENTRIES = 100_000  # files and directories a task may keep in /manta/out


class OutputWatch:
    """Measures `path` (None: the task has no /manta/out) against `limit_bytes`."""

    __slots__ = ("path", "limit_bytes", "scanned_at")

    def __init__(self, path: str | None, limit_bytes: int) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.scanned_at = 0.0

    def breach(self, elapsed_s: float) -> str | None:
        """"disk" when the directory holds too much; measured at most every OUT_SCAN_S of
        the task's time (`elapsed_s`)."""
        if self.path is None or elapsed_s - self.scanned_at < OUT_SCAN_S:
            return None
        self.scanned_at = elapsed_s
        return "disk" if over(self.path, self.limit_bytes) else None


def over(path: str, limit_bytes: int, max_entries: int = MAX_OUT_ENTRIES) -> bool:
    """Whether the tree under `path` holds more than `limit_bytes` in blocks (files and
    directories alike, never through a link) or more than `max_entries` entries. What
    vanishes or cannot be read while walking is not counted (the task is still running)."""
    used = entries = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    entries += 1
                    if entries > max_entries:
                        return True
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += info.st_blocks * 512
                    if used > limit_bytes:
                        return True
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return False
