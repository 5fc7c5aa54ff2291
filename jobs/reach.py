"""Node paths as the task sandbox can bind them.

bwrap runs as the unprivileged task user, so every bind source (a task's input file, its
assets) must be reachable by that user: each directory above it searchable (x) for it. A
data dir under /root (0700 on Debian) is not. For such a `dir:` node the server, as root,
bind-mounts the node's root once at `/run/manta/<server pid>-<node id>` (0711 parents;
MANTA_ALIAS_DIR names another directory than /run/manta) and
tasks bind their files through that alias; the aliases are unmounted when the scheduler
stops, and those of servers that are gone are swept at start. A `zfs:` node's root is its
dataset's mountpoint, which is mounted and unmounted as the node comes and goes, so it gets
no alias: the log says which directory to open up. Without root (a laptop run), paths are
used as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import threading

from jobs.cgroups import owner_gone
from storage import LocalNode

__all__ = ["ALIAS_BASE", "TaskRoots", "unreachable"]

log = logging.getLogger("manta.jobs")

# where the aliases go (MANTA_ALIAS_DIR): its parents must be searchable by the task user
ALIAS_BASE = os.environ.get("MANTA_ALIAS_DIR") or "/run/manta"
_MS_BIND, _MNT_DETACH = 4096, 2


def unreachable(path: str, uid: int, gid: int) -> str | None:
    """The first directory on the way to `path` (itself included) that uid:gid cannot
    search, or None when every one can be. Root is never asked: it reaches everything."""
    parts = os.path.abspath(path).split("/")[1:]
    for i in range(len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        try:
            st = os.stat(d)
        except OSError:
            return d
        if not stat.S_ISDIR(st.st_mode):
            return None  # a file at the end: reading it is the file's own mode
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return d
    return None


class TaskRoots:
    """Maps a node's paths to ones the task user can bind."""

    def __init__(self, ids: tuple[int, int] | None, base: str = ALIAS_BASE) -> None:
        self.ids = ids
        self.base = base
        self._roots: dict[str, str] = {}  # node id -> the root tasks see it by
        self._lock = threading.Lock()
        self._aliases: list[str] = []

    def sweep(self) -> None:
        """Unmount and remove the aliases of servers that are gone."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.base):
                if owner_gone(name):
                    self._remove(os.path.join(self.base, name))

    def open(self, nodes: list[LocalNode]) -> None:
        """Sweep, then find (or make) each node's root for tasks, before any task runs. A
        node whose root is missing (a disk not mounted) is decided when it is first used."""
        self.sweep()
        for node in nodes:
            self._decide(node)

    def path(self, node: LocalNode, path: str) -> str:
        """`path`, a file under `node.root`, as the task user can reach it."""
        root = self._roots.get(node.id) or self._decide(node) or node.root
        if root == node.root:
            return path
        return root + path[len(node.root.rstrip("/")):]

    def close(self) -> None:
        for alias in self._aliases:
            self._remove(alias)
        self._aliases.clear()
        self._roots.clear()

    def _decide(self, node: LocalNode) -> str | None:
        with self._lock:
            if node.id not in self._roots and os.path.isdir(node.root):
                self._roots[node.id] = self._root(node)
            return self._roots.get(node.id)

    def _root(self, node: LocalNode) -> str:
        if self.ids is None or (blocker := unreachable(node.root, *self.ids)) is None:
            return node.root
        mode = stat.filemode(os.stat(blocker).st_mode)  # it exists: node.root does
        if node.spec.backend != "dir":
            log.warning("node %s: the task user cannot reach %s (%s is %s): its tasks cannot bind "
                        "their inputs; make the directories above the mountpoint searchable "
                        "(chmod o+x)", node.id, node.root, blocker, mode)
            return node.root
        alias = os.path.join(self.base, f"{os.getpid()}-{node.id}")
        try:
            os.makedirs(alias, exist_ok=True)
            os.chmod(self.base, 0o711)
            _mount_bind(node.root, alias)
        except OSError as err:
            log.warning("node %s: the task user cannot reach %s (%s is %s) and binding it at %s "
                        "failed: %s", node.id, node.root, blocker, mode, alias, err)
            return node.root
        self._aliases.append(alias)
        log.info("node %s: tasks reach %s through %s (%s is %s)", node.id, node.root, alias, blocker, mode)
        return alias

    @staticmethod
    def _remove(alias: str) -> None:
        try:
            _umount_detach(alias)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
                log.warning("cannot unmount %s: %s", alias, err)
        with contextlib.suppress(OSError):
            os.rmdir(alias)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount_bind(source: str, target: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), None, _MS_BIND, None), target)


def _umount_detach(target: str) -> None:
    _check(_libc.umount2(target.encode(), _MNT_DETACH), target)


def _check(rc: int, target: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)
