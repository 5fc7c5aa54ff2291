"""Storage nodes: one dataset (a directory or a ZFS dataset) holding blobs.

A node is named by a SPEC, `dir:PATH` or `zfs:POOL/DATASET`. Its identity is stable: a
marker file `.manta-node` at the dataset root holds the node id, and the catalog maps ids
to specs. A node whose marker is missing (directory moved away, dataset unmounted) or whose
pool is unhealthy is down: reads skip it, writes avoid it, scrub restores its replicas
elsewhere. Health is cached for `health_ttl_s` so the request path never runs `zpool`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from storage.blobs import BlobWriter, DirectoryBlobStore, verify_file
from storage.errors import BlobDamaged, ResourceExhausted
from storage.nodeapi import Node as NodeInterface
from storage.nodeapi import check_blocks
from storage.zfs import CommandDriver, ZfsError
from storage.zfs import driver as zfs_driver

__all__ = ["MARKER", "LocalNode", "NodeSpec", "parse_spec"]

MARKER = ".manta-node"
log = logging.getLogger("manta.storage")

HEALTHY_POOL_STATES = ("ONLINE", "DEGRADED")
CONFIRM_S = 0.2  # a pool that turns bad is asked again after this, before the node counts as down


@dataclass(frozen=True)
class NodeSpec:
    backend: str  # "dir" | "zfs"
    location: str  # a path, or POOL/DATASET

    def __str__(self) -> str:
        return f"{self.backend}:{self.location}"


def parse_spec(text: str) -> NodeSpec:
    backend, sep, location = text.partition(":")
    if not sep or backend not in ("dir", "zfs") or not location:
        raise ValueError(f"storage spec {text!r}: expected dir:PATH or zfs:POOL/DATASET")
    if backend == "zfs" and ("/" not in location.strip("/") or location.startswith("/")):
        raise ValueError(f"storage spec {text!r}: expected zfs:POOL/DATASET")
    if backend == "dir":
        location = os.path.abspath(location)
    return NodeSpec(backend, location)


class LocalNode(NodeInterface):
    """A dataset in this process: the embedded default, and what `manta node` serves."""

    def __init__(self, node_id: str, spec: NodeSpec, root: str,
                 zfs: CommandDriver | None = None, health_ttl_s: float = 1.0,
                 min_free_bytes: int = 16 * 1024 * 1024) -> None:
        self.id = node_id
        self.spec = spec
        self.root = root
        self.zfs = zfs
        self.health_ttl_s = health_ttl_s
        self.min_free_bytes = min_free_bytes
        self.blobs = DirectoryBlobStore(root)
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._healthy = True
        self._reason = ""
        self._pool_state = "ONLINE"
        self._pool_checked_at = 0.0
        self._pool_refreshing = False
        self._space: tuple[float, tuple[int, int]] | None = None
        if zfs is not None:
            self.recheck()

    @property
    def address(self) -> str:
        return str(self.spec)

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def pool(self) -> str | None:
        return self.spec.location.split("/", 1)[0] if self.spec.backend == "zfs" else None

    @classmethod
    def prepare(cls, spec: NodeSpec) -> tuple[str, CommandDriver | None]:
        """Create or mount the node's dataset; returns (root directory, zfs driver)."""
        if spec.backend == "zfs":
            zfs = zfs_driver()
            return zfs.ensure_dataset(spec.location), zfs
        os.makedirs(spec.location, exist_ok=True)
        return spec.location, None

    @staticmethod
    def read_marker(root: str) -> str | None:
        try:
            with open(os.path.join(root, MARKER)) as fh:
                return fh.read().strip() or None
        except OSError as exc:
            ResourceExhausted.raise_if(exc, "reading a node marker")
            return None

    @staticmethod
    def write_marker(root: str, node_id: str) -> None:
        path = os.path.join(root, MARKER)
        with open(path + ".tmp", "w") as fh:
            fh.write(node_id + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(path + ".tmp", path)

    # -- health -------------------------------------------------------------------

    def healthy(self) -> bool:
        """Cached health, cheap enough for the request path: the marker is re-read at most
        every `health_ttl_s`; the pool state comes from a background refresh (never a
        `zpool` run on the caller's thread)."""
        now = time.monotonic()
        if now - self._checked_at < self.health_ttl_s:
            return self._healthy
        with self._lock:
            if now - self._checked_at >= self.health_ttl_s:
                self._recheck_locked(pool_asked=False)
        return self._healthy

    def _recheck_locked(self, pool_asked: bool) -> None:
        """`pool_asked`: the caller has just asked ZFS (else a background ask is started
        when the last answer is older than `health_ttl_s`)."""
        try:
            self._set_health(*self._check(pool_asked))
        except ResourceExhausted:
            pass  # out of file descriptors here says nothing about the node: keep the last verdict
        self._checked_at = time.monotonic()

    def _set_health(self, healthy: bool, reason: str) -> None:
        """Record a verdict (under the lock); a change is logged, with why a node is down."""
        if healthy != self._healthy:
            if healthy:
                log.info("node %s is up again", self.id)
            else:
                log.warning("node %s is down: %s", self.id, reason)
        self._healthy, self._reason = healthy, reason

    def _check(self, pool_asked: bool) -> tuple[bool, str]:
        if self.read_marker(self.root) != self.id:
            return False, "dataset missing or not mounted"
        if not os.path.isdir(self.blobs.tmp_dir):
            return False, "tmp directory missing"
        if self.zfs is not None and self.pool is not None:
            if not pool_asked:
                self._refresh_pool_soon()
            if self._pool_state not in HEALTHY_POOL_STATES:
                return False, f"pool {self.pool} is {self._pool_state}"
        return True, ""

    def _refresh_pool(self) -> None:
        """Ask ZFS for the pool's state. A healthy pool that answers a bad state is asked
        again after CONFIRM_S before that counts: zfs-fuse under load can answer OFFLINE
        once for an ONLINE pool, and a node taken for down has its replicas copied elsewhere
        by the scrub. A pool that is really down answers the same twice."""
        state = self._ask_pool()
        if state not in HEALTHY_POOL_STATES and self._pool_state in HEALTHY_POOL_STATES:
            time.sleep(CONFIRM_S)
            again = self._ask_pool()
            if again != state:
                log.info("pool %s answered %s, then %s", self.pool, state, again)
            state = again
        self._pool_state = state
        self._pool_checked_at = time.monotonic()

    def _ask_pool(self) -> str:
        assert self.zfs is not None and self.pool is not None
        try:
            return self.zfs.pool_health(self.pool)
        except ZfsError as exc:
            return f"unknown ({exc})"

    def _refresh_pool_soon(self) -> None:
        if time.monotonic() - self._pool_checked_at < self.health_ttl_s or self._pool_refreshing:
            return
        self._pool_refreshing = True

        def refresh() -> None:
            try:
                self._refresh_pool()
            finally:
                self._pool_refreshing = False

        threading.Thread(target=refresh, name=f"pool-health-{self.id}", daemon=True).start()

    def mark_failed(self, reason: str) -> None:
        """An I/O error on this node: treat it as down until the next health check."""
        with self._lock:
            self._set_health(False, reason)
            self._checked_at = time.monotonic()

    def recheck(self, pool: bool = True) -> bool:
        """A synchronous health check; with `pool` it runs `zpool` first (not for the event
        loop), outside the lock: `healthy()` on the request path never waits for a `zpool`
        run or the pause before a confirming ask."""
        asked = pool and self.zfs is not None and self.pool is not None
        if asked:
            self._refresh_pool()
        with self._lock:
            self._recheck_locked(pool_asked=asked)
        return self._healthy

    # -- space --------------------------------------------------------------------

    def space(self, max_age_s: float = 0.0) -> tuple[int, int]:
        """(used, free) bytes of the dataset; with `max_age_s`, a figure that recent will do
        (placement asks on every write, and a statvfs of a FUSE mount is not free)."""
        cached = self._space
        if max_age_s and cached is not None and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        self._space = (time.monotonic(), (used, free))
        return used, free

    def info(self) -> dict[str, Any]:
        healthy = self.recheck()
        try:
            used, free = self.space()
        except OSError:
            used, free = 0, 0
        out: dict[str, Any] = {"id": self.id, "spec": str(self.spec), "address": self.address,
                               "backend": self.backend,
                               "root": self.root, "healthy": healthy,
                               "health": "ok" if healthy else self._reason,
                               "used_bytes": used, "free_bytes": free}
        if self.zfs is not None and self.pool is not None:
            try:
                out["pool_health"] = self.zfs.pool_health(self.pool)
            except ZfsError as exc:
                out["pool_health"] = f"unknown: {exc}"
        return out

    def pool_key(self) -> str | None:
        return self.pool

    def scrub_pool(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        if self.zfs is None or self.pool is None or not self.healthy():
            return None
        try:
            self.zfs.start_scrub(self.pool)
            deadline = time.monotonic() + timeout_s
            status = self.zfs.scrub_status(self.pool)
            while status.running and time.monotonic() < deadline:
                time.sleep(0.2)
                status = self.zfs.scrub_status(self.pool)
            return self.pool, {"health": self.zfs.pool_health(self.pool), "errors": status.errors,
                               "summary": status.summary}
        except ZfsError as exc:
            return self.pool, {"error": str(exc)}

    # -- blobs ----------------------------------------------------------------------

    def open_write(self, blob_id: str) -> BlobWriter:
        return self.blobs.writer(blob_id, hashing=False)

    def put_unsynced(self, blob_id: str, data: bytes) -> None:
        self.blobs.write_unsynced(blob_id, data)

    def sync(self, blob_ids: list[str]) -> None:
        self.blobs.sync(blob_ids)

    def read(self, blob_id: str, offset: int, length: int, crcs: bytes | None = None,
             handle: Any = None) -> bytes:
        if handle is not None:
            return self._pread(handle, blob_id, offset, length, crcs)
        fd = os.open(self.blobs.path(blob_id), os.O_RDONLY)  # FileNotFoundError: the caller's to judge
        try:
            return self._pread(fd, blob_id, offset, length, crcs)
        finally:
            os.close(fd)

    @staticmethod
    def _pread(fd: int, blob_id: str, offset: int, length: int, crcs: bytes | None) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise BlobDamaged(blob_id, "short read")
        check_blocks(blob_id, data, offset, crcs)
        return data

    def read_upto(self, blob_id: str, offset: int, length: int) -> bytes:
        with open(self.blobs.path(blob_id), "rb", buffering=0) as fh:
            fh.seek(offset)
            return fh.read(length)

    def pin(self, blob_id: str) -> int:
        """An open descriptor: the file's bytes stay readable after a delete."""
        return os.open(self.blobs.path(blob_id), os.O_RDONLY)

    def unpin(self, handle: int) -> None:
        os.close(handle)

    def delete(self, blob_id: str) -> bool:
        return self.blobs.delete(blob_id)

    def exists(self, blob_id: str) -> bool:
        return self.blobs.exists(blob_id)

    def verify(self, blob_id: str, size: int, sha256: bytes, crcs: bytes,
               paced: Callable[[int], None] | None = None) -> str | None:
        sha = hashlib.sha256()

        def seen(chunk: memoryview) -> None:
            if paced is not None:
                paced(len(chunk))
            sha.update(chunk)

        problem = verify_file(self.blobs.path(blob_id), {"size": size, "blocks": crcs}, seen)
        if problem is None and sha256 and sha.digest() != sha256:
            return "sha256 mismatch"
        return problem

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        return self.blobs.iter_blobs()

    def sweep_temp(self, older_than_s: float = 0.0) -> int:
        return self.blobs.sweep_temp(older_than_s)

    def copy_from(self, peer: NodeInterface, blob_id: str) -> None:
        """OSError for a node's failure, ResourceExhausted for this process's shortage."""
        try:
            self.copy_by_reading(peer, blob_id)
        except OSError as exc:
            ResourceExhausted.raise_if(exc, "copying a blob")
            raise

    # -- served over HTTP (manta node): deletes keep the bytes a while for reads in flight --

    def status(self) -> tuple[bool, str, str | None]:
        """(cached health, why not, pool state or None) without running anything."""
        healthy = self.healthy()
        return healthy, self._reason if not healthy else "", self._pool_state if self.pool else None

    def trash_dir(self) -> str:
        return os.path.join(self.root, "trash")

    def retire(self, blob_id: str) -> bool:
        """Delete, keeping the bytes under trash/ (`sweep_trash`) so that a remote read that
        started before the delete can finish (what `pin` does for a local reader)."""
        os.makedirs(self.trash_dir(), mode=0o700, exist_ok=True)
        try:
            os.rename(self.blobs.path(blob_id), os.path.join(self.trash_dir(), f"{blob_id}.{time.time_ns()}"))
            return True
        except FileNotFoundError:
            return False

    def open_blob(self, blob_id: str) -> int:
        """A descriptor of the blob, else of its newest retired copy; FileNotFoundError if neither."""
        try:
            return os.open(self.blobs.path(blob_id), os.O_RDONLY)
        except FileNotFoundError:
            try:
                retired = sorted(n for n in os.listdir(self.trash_dir()) if n.startswith(blob_id + "."))
            except FileNotFoundError:
                retired = []
            if not retired:
                raise
            return os.open(os.path.join(self.trash_dir(), retired[-1]), os.O_RDONLY)

    def sweep_trash(self, older_than_s: float) -> int:
        """Remove retired blobs older than `older_than_s`; returns how many."""
        cutoff = time.time_ns() - int(older_than_s * 1e9)
        removed = 0
        try:
            names = os.listdir(self.trash_dir())
        except FileNotFoundError:
            return 0
        for name in names:
            stamp = name.rpartition(".")[2]
            if not stamp.isdigit() or int(stamp) <= cutoff:
                try:
                    os.unlink(os.path.join(self.trash_dir(), name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def task_input(self, blob_id: str, size: int, crcs: bytes) -> tuple[str | None, str | None]:
        """(path, None) when this node's replica is good to be read raw by a task in place,
        else (None, why not). Only a task agent on this node uses blob paths."""
        path = self.blobs.path(blob_id)
        problem = verify_file(path, {"size": size, "blocks": crcs})
        return (path, None) if problem is None else (None, problem)

    def scratch_root(self) -> str:
        return os.path.join(self.root, "tasks")
