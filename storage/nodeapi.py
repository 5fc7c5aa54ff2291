"""The node interface: everything the front door, the replicas layer, scrub, GC and the
scheduler need from one storage node, and nothing else (after MinIO's StorageAPI with its
local and REST sides). Two implementations: `storage.node.LocalNode` (a dataset in this
process) and `storage.remote.RemoteNode` (HTTP to `manta node` on its own host). No code
outside `storage/` opens a blob path; the one exception on purpose is a task agent running
on the node itself, which gets a local replica's path through `LocalNode.task_input`.

Errors: BlobMissing (no such blob on this node), BlobDamaged (a block failed its CRC32C or
the size is wrong: the replica is bad, the node is fine), NodeUnreachable (an OSError: the
node itself failed or cannot be reached), ResourceExhausted (this process is out of file
descriptors or memory: nobody's replica is at fault).
"""

from __future__ import annotations

import abc
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from awscrt.checksums import crc32c

from storage.blobs import BLOCK
from storage.errors import BlobDamaged

__all__ = ["BLOCK", "SPACE_MAX_AGE_S", "BlobWrite", "Node", "check_blocks"]

SPACE_MAX_AGE_S = 0.25  # placement asks on every write; a statvfs of a FUSE mount is not free


class BlobWrite(Protocol):
    """One in-flight blob on one node: bytes in, then durable (commit) or gone (abort)."""

    blob_id: str

    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> object:
        """Returns only when the copy is durable on the node (fsync'd and renamed)."""

    def abort(self) -> None: ...


def check_blocks(blob_id: str, data: bytes, offset: int, crcs: bytes | None) -> None:
    """Raise BlobDamaged unless `data`, read from block-aligned `offset`, matches the
    blob's per-block CRC32Cs (`crcs`: 4 bytes per 1 MiB block, big-endian)."""
    if not crcs:
        return
    first = offset // BLOCK
    for i in range(0, len(data), BLOCK):
        index = first + i // BLOCK
        if 4 * index + 4 > len(crcs):
            return
        if crc32c(data[i:i + BLOCK]) != struct.unpack_from(">I", crcs, 4 * index)[0]:
            raise BlobDamaged(blob_id, f"checksum mismatch in block {index}")


class Node(abc.ABC):
    """One storage node. `id` is stable (the node's marker); `address` says where it is
    (a spec such as `dir:/path` for a local node, a URL for a remote one)."""

    id: str
    remote: bool = False

    @property
    @abc.abstractmethod
    def address(self) -> str: ...

    # -- health and space ----------------------------------------------------------------

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Cached health, cheap enough for the request path."""

    @abc.abstractmethod
    def recheck(self, pool: bool = True) -> bool:
        """A fresh health check (blocking; `pool` also asks ZFS for the pool state)."""

    @abc.abstractmethod
    def mark_failed(self, reason: str) -> None:
        """An I/O error on this node: treat it as down until the next health check."""

    @abc.abstractmethod
    def space(self, max_age_s: float = 0.0) -> tuple[int, int]:
        """(used, free) bytes; a figure `max_age_s` old will do."""

    min_free_bytes: int = 16 * 1024 * 1024

    def writable(self) -> bool:
        if not self.healthy():
            return False
        try:
            return self.space(SPACE_MAX_AGE_S)[1] >= self.min_free_bytes
        except OSError:
            return False

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """id, address, health, space (for `manta admin nodes`)."""

    # -- blobs ---------------------------------------------------------------------------

    @abc.abstractmethod
    def open_write(self, blob_id: str) -> BlobWrite:
        """A streaming write of a new blob (or a replacement of a damaged replica)."""

    @abc.abstractmethod
    def put_unsynced(self, blob_id: str, data: bytes) -> None:
        """Place a small blob without fsync (the catalog journal holds its bytes)."""

    @abc.abstractmethod
    def sync(self, blob_ids: list[str]) -> None:
        """Make placed small blobs durable."""

    @abc.abstractmethod
    def read(self, blob_id: str, offset: int, length: int, crcs: bytes | None = None,
             handle: Any = None) -> bytes:
        """Bytes [offset, offset+length) of a blob (`handle`: from `pin`); with `crcs` the
        node checks every block it reads and raises BlobDamaged on a mismatch or a short read."""

    @abc.abstractmethod
    def read_upto(self, blob_id: str, offset: int, length: int) -> bytes:
        """Up to `length` raw bytes from `offset` (b"" at the end), unchecked: for copies
        whose receiver checks the whole."""

    def copy_by_reading(self, peer: Node, blob_id: str) -> None:
        """Write here, durably, what `peer`'s replica holds, read from it piece by piece (the
        receiver checks the whole: its caller compares size and hashes, scrub re-verifies)."""
        writer = self.open_write(blob_id)
        try:
            offset = 0
            while chunk := peer.read_upto(blob_id, offset, BLOCK):
                writer.write(chunk)
                offset += len(chunk)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def pin(self, blob_id: str) -> Any:
        """Keep the replica readable even if it is deleted meanwhile (a GET that started
        before an overwrite). Returns a handle for `read` and `unpin`, or None."""
        return None

    def unpin(self, handle: Any) -> None:
        return None

    @abc.abstractmethod
    def delete(self, blob_id: str) -> bool: ...

    @abc.abstractmethod
    def exists(self, blob_id: str) -> bool: ...

    @abc.abstractmethod
    def verify(self, blob_id: str, size: int, sha256: bytes, crcs: bytes,
               paced: Callable[[int], None] | None = None) -> str | None:
        """None when the replica is good (size, block CRC32Cs, SHA-256), else why not
        ("missing", "checksum mismatch", ...). `paced(n)` is told of each n bytes read."""

    @abc.abstractmethod
    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every committed blob id with its mtime (for GC)."""

    @abc.abstractmethod
    def sweep_temp(self) -> int:
        """Remove leftovers of interrupted writes; returns how many."""

    @abc.abstractmethod
    def copy_from(self, peer: Node, blob_id: str) -> None:
        """Make a durable copy of `peer`'s replica here, node to node (repair,
        re-replication, a task's outputs). OSError when either side fails."""

    def pool_key(self) -> str | None:
        """The name `scrub_pool` reports its pool under (None: no pool)."""
        return None

    def scrub_pool(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        """Run `zpool scrub` on the pool under this node and wait for it: (a name for the
        pool, its result), or None when the node has no pool. Nodes sharing a pool give the
        same name, so the pool is scrubbed once."""
        return None

    def collect_orphans(self, referenced: set[str], grace_s: float,
                        still_wanted: Callable[[str], bool] | None = None) -> int:
        """Delete blobs not in `referenced` and older than `grace_s` (unless `still_wanted`,
        asked last, says a newer writer claimed it); returns how many."""
        cutoff = time.time() - grace_s
        removed = 0
        for blob_id, mtime in list(self.list_blobs()):
            if blob_id in referenced or mtime >= cutoff:
                continue
            if still_wanted is not None and still_wanted(blob_id):
                continue
            removed += self.delete(blob_id)
        return removed

    def close(self) -> None:
        return None
