"""Image trees as tar files, and each node's cache of unpacked images.

An image (jobs/images.py) travels as one tar object; a node unpacks it once into its own
cache, `<node root>/images/<image id>/`, the first time a task needs it, and binds that
tree read-only at /opt/manta/image in every task of a phase naming it (jobs/sandbox.py):

    task names image --not in the cache--> fetch the tar (a local replica in place, else
        assembled from peers like any input) --> unpack into images/.tmp-<id>-<pid>
        --rename--> images/<id>   (under a lock: one unpack per node and image)

A tree in the cache is complete or absent (the rename is the commit), so no task ever
sees half an image. Each unpack adds a line to `images/unpacked.log` (the count a test
reads). Unpacking refuses anything that could land outside the tree or give a task more
than the task user has: absolute names, `..`, links out of the tree as parents of later
members, hard links out of it, devices and fifos (skipped); everything is owned by root,
readable by all, setuid/setgid bits dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable

from jobs.errors import ImageError

__all__ = ["NodeImages", "pack", "unpack"]

log = logging.getLogger("manta.jobs")

CACHE_DIR = "images"
UNPACK_LOG = "unpacked.log"


def pack(tree: str, out_path: str) -> None:
    """`tree` as an uncompressed tar at `out_path` (names relative, sorted; owner root)."""

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(tree)):
            tar.add(os.path.join(tree, entry), arcname=entry, filter=owned_by_root)


def check_member(info: tarfile.TarInfo) -> str | None:
    """Why `info` cannot be part of an image tree; None when it can."""
    name = info.name
    if name.startswith("/") or ".." in name.split("/"):
        return f"{name!r} points outside the tree"
    if info.islnk() and (info.linkname.startswith("/") or ".." in info.linkname.split("/")):
        return f"hard link {name!r} points outside the tree"
    return None


def unpack(tar_path: str, dest: str) -> None:
    """Unpack an image tar into the new directory `dest` (see the module docstring)."""
    os.mkdir(dest, 0o755)
    real_dest = os.path.realpath(dest)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for info in tar:
                problem = check_member(info)
                if problem is None:
                    parent = os.path.realpath(os.path.join(dest, os.path.dirname(info.name)))
                    if parent != real_dest and not parent.startswith(real_dest + os.sep):
                        problem = f"{info.name!r} would be written through a link out of the tree"
                if problem is not None:
                    raise ImageError(f"the image tar is unsafe: {problem}")
                if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                    continue  # devices and fifos: /dev is the sandbox's own
                info.uid = info.gid = 0
                info.mode = (info.mode & 0o1755) | (0o755 if info.isdir() else 0o444)
                tar.extract(info, dest, set_attrs=not info.issym(), numeric_owner=True)
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"the image tar cannot be unpacked: {exc}") from exc


class NodeImages:
    """One node's cache of unpacked images under `root` (the node's directory)."""

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, CACHE_DIR)
        self._lock = threading.Lock()

    def path(self, image_id: str, fetch: Callable[[], str]) -> str:
        """The unpacked tree of `image_id`, unpacked from the tar file `fetch()` gives
        when it is not here yet."""
        if not image_id.isalnum():
            raise ImageError(f"bad image id {image_id!r}")
        tree = os.path.join(self.dir, image_id)
        if os.path.isdir(tree):
            return tree
        with self._lock:
            os.makedirs(self.dir, exist_ok=True)
            os.chmod(self.dir, 0o711)
            with open(os.path.join(self.dir, f".{image_id}.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process on this node's directory
                if os.path.isdir(tree):
                    return tree
                started = time.monotonic()
                temp = os.path.join(self.dir, f".tmp-{image_id}-{os.getpid()}")
                shutil.rmtree(temp, ignore_errors=True)
                try:
                    unpack(fetch(), temp)
                    os.rename(temp, tree)
                except BaseException:
                    shutil.rmtree(temp, ignore_errors=True)
                    raise
                seconds = time.monotonic() - started
                with open(os.path.join(self.dir, UNPACK_LOG), "a") as out:
                    out.write(f"{image_id} {seconds:.2f}\n")
                log.info("image %s unpacked into %s in %.1fs", image_id[:12], tree, seconds)
        return tree

    def unpacked(self) -> list[str]:
        """The image ids unpacked here so far, one per unpack (the log)."""
        with contextlib.suppress(FileNotFoundError), open(os.path.join(self.dir, UNPACK_LOG)) as fh:
            return [line.split()[0] for line in fh if line.strip()]
        return []
