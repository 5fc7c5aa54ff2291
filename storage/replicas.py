"""Replicated blobs: K copies on distinct nodes, verified block by block on every read.

Write (ReplicatedWriter): the bytes stream to K nodes at once while MD5, SHA-256 and a
CRC32C per 1 MiB block are computed once. For a large write() the MD5 (the slowest, and
inherently serial) runs on a helper thread beside the SHA-256, CRC32C and file writes of
the calling thread: hashlib releases the GIL, so on two cores a PUT goes at MD5's speed,
not at the sum of the hashes' times. A node that fails mid-write is dropped; at
commit, the survivors are fsync'd and a copy is made from one of them onto a replacement
node, so the write is acknowledged only with K durable copies (or fails, leaving nothing).

Read (BlobReader): each block is read from one replica and checked against its CRC32C.
An I/O error (EIO from a ZFS checksum failure), a short read, a missing file or a CRC
mismatch moves the read to the next replica for that block and reports the bad replica
for repair. The caller sees correct bytes or an error, never wrong bytes.

A shortage of this process's (EMFILE, ENFILE, ENOMEM: storage.errors.RESOURCE_ERRNOS) is
no replica's fault: reads and writes raise ResourceExhausted for it instead of reporting
damage or marking a node down, and a write that hits it leaves no copy behind.

Blob metadata: the catalog's `BlobRecord` (storage.records.blobrefs): size, sha256, blocks, nodes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from awscrt.checksums import crc32c

from storage.blobs import BLOCK, BlobInfo, MemoryBlobWriter, verify_file
from storage.errors import (
    RESOURCE_ERRNOS,
    BlobDamaged,
    BlobMissing,
    BlobUnavailable,
    InsufficientNodes,
    ResourceExhausted,
)
from storage.nodeapi import SPACE_MAX_AGE_S, BlobWrite, Node
from storage.records.blobrefs import BlobRecord
from storage.threads import ProcessPool

__all__ = ["BLOCK", "BlobReader", "ReplicatedWriter", "block_sums", "choose_nodes", "copy_blob", "verify_file"]

log = logging.getLogger("manta.storage")

_RNG = random.Random()
Report = Callable[[str, str, str], None]  # (blob_id, node_id, reason)


def block_sums(data: bytes | memoryview) -> bytes:
    view = memoryview(data)
    return b"".join(struct.pack(">I", crc32c(view[i:i + BLOCK])) for i in range(0, len(view), BLOCK))


def choose_nodes(nodes: list[Node], k: int, exclude: set[str] | frozenset[str] = frozenset(),
                 rng: random.Random | None = None, first: Node | None = None) -> list[Node]:
    """Up to k distinct writable nodes, picked at random weighted by free space; `first`
    (a task's node), if writable and not excluded, comes first."""
    rng = rng or _RNG
    chosen: list[Node] = []
    if first is not None and k > 0 and first.id not in exclude and first.writable():
        chosen.append(first)
        exclude = {*exclude, first.id}
    pool: list[tuple[Node, float]] = []
    for node in nodes:
        if node.id in exclude or not node.writable():
            continue
        pool.append((node, max(float(node.space(SPACE_MAX_AGE_S)[1]), 1.0)))
    while pool and len(chosen) < k:
        total = sum(w for _, w in pool)
        pick = rng.uniform(0, total)
        for i, (node, weight) in enumerate(pool):
            pick -= weight
            if pick <= 0 or i == len(pool) - 1:
                chosen.append(node)
                pool.pop(i)
                break
    return chosen


PARALLEL_HASH_BYTES = 256 * 1024  # a write at least this big hashes its MD5 on a helper thread
_MD5_POOL = ProcessPool(4, "manta-md5")  # helper threads for the MD5s (and callers' hashes) of large writes


def _update_all(summer: Any, parts: Sequence[bytes | memoryview]) -> None:
    for part in parts:
        summer.update(part)


class _BlockSummer:
    def __init__(self) -> None:
        self.sums: list[int] = []
        self._crc = 0
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(BLOCK - self._filled, len(view))
            self._crc = crc32c(view[:take], self._crc)
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK:
                self.sums.append(self._crc)
                self._crc, self._filled = 0, 0

    def digest(self) -> bytes:
        tail = [self._crc] if self._filled else []
        return b"".join(struct.pack(">I", c) for c in self.sums + tail)


@dataclass
class BlobMeta:
    blob_id: str
    size: int
    md5: bytes
    sha256: bytes
    blocks: bytes
    nodes: list[str] = field(default_factory=list)

    def record(self) -> BlobRecord:
        """The blob's catalog record, before any reference (`BlobRefs.ref` counts them)."""
        return BlobRecord(0, self.size, self.sha256, self.blocks, self.nodes)

    def info(self) -> BlobInfo:
        return BlobInfo(self.blob_id, self.size, self.md5, self.sha256)


class ReplicatedWriter:
    """Streams one blob to `copies` nodes. write() from one thread; commit() blocks (fsync)."""

    def __init__(self, nodes: list[Node], copies: int, first: Node | None = None) -> None:
        self.all_nodes = nodes
        self.copies = copies
        self.blob_id = secrets.token_hex(16)
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha256()
        self._blocks = _BlockSummer()
        self.size = 0
        self._writers: dict[str, tuple[Node, BlobWrite]] = {}
        self._failed: set[str] = set()
        chosen = choose_nodes(nodes, copies, first=first)
        for node in chosen:
            self._open(node)
        if not self._writers:
            raise InsufficientNodes(copies, 0)
        # a copy on another host: write() may wait for the network (callers on an event loop
        # hand it to a thread); local copies are written at once
        self.blocking = any(node.remote for node in chosen)

    def _open(self, node: Node) -> None:
        try:
            self._writers[node.id] = (node, node.open_write(self.blob_id))
        except OSError as exc:
            self._fail(node, exc)

    def _short_of_resources(self, exc: OSError, operation: str) -> None:
        """A resource error fails the whole write (no node is at fault): abort and raise."""
        if exc.errno in RESOURCE_ERRNOS:
            self.abort()
            raise ResourceExhausted(operation, exc) from exc

    def _fail(self, node: Node, exc: OSError) -> None:
        self._short_of_resources(exc, "writing a blob")
        log.warning("node %s failed during a write: %s", node.id, exc)
        node.mark_failed(f"write failed: {exc}")
        self._failed.add(node.id)
        entry = self._writers.pop(node.id, None)
        if entry is not None:
            entry[1].abort()

    def write(self, data: bytes | memoryview) -> None:
        self.write_parts((data,))

    def write_parts(self, parts: Sequence[bytes | memoryview], also: Sequence[Any] = ()) -> None:
        """Write `parts` one after another (a large body as the socket delivered it, never
        joined into one buffer). `also`: the caller's own hashes (a request's payload
        SHA-256, its flexible checksum) to put the parts into, beside the MD5."""
        size = sum(len(part) for part in parts)
        summers = (self._md5, *also)
        if size >= PARALLEL_HASH_BYTES:
            pool = _MD5_POOL.get()
            hashing = [pool.submit(_update_all, summer, parts) for summer in summers]
        else:
            hashing = []
            for summer in summers:
                _update_all(summer, parts)
        try:
            for part in parts:
                self._sha.update(part)
                self._blocks.update(part)
            self.size += size
            for node, writer in list(self._writers.values()):
                try:
                    for part in parts:
                        writer.write(part)
                except OSError as exc:
                    self._fail(node, exc)
        finally:
            for future in hashing:
                future.result()  # the next update, the digest or an abort waits for these
        if not self._writers:
            raise InsufficientNodes(self.copies, 0)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    def commit(self) -> BlobMeta:
        entries = list(self._writers.values())

        short: list[OSError] = []

        def commit_one(entry: tuple[Node, BlobWrite]) -> Node | None:
            node, writer = entry
            try:
                writer.commit()
                return node
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    short.append(exc)
                    writer.abort()
                    node.delete(self.blob_id)
                else:
                    self._fail(node, exc)
                return None

        if len(entries) == 1:
            done = [commit_one(entries[0])]
        else:
            with ThreadPoolExecutor(len(entries)) as pool:
                done = list(pool.map(commit_one, entries))
        good = [n for n in done if n is not None]
        self._writers.clear()
        if short:
            _delete_from(good, self.blob_id)
            raise ResourceExhausted("committing a blob", short[0]) from short[0]
        while good and len(good) < self.copies:
            extra = choose_nodes(self.all_nodes, 1, exclude={n.id for n in good} | self._failed)
            if not extra:
                break
            try:
                copy_blob(good[0], extra[0], self.blob_id)
                good.append(extra[0])
            except ResourceExhausted:
                _delete_from(good, self.blob_id)
                raise
            except OSError as exc:
                self._failed.add(extra[0].id)
                extra[0].mark_failed(f"write failed: {exc}")
        if len(good) < self.copies:
            _delete_from(good, self.blob_id)
            raise InsufficientNodes(self.copies, len(good))
        return BlobMeta(self.blob_id, self.size, self.md5, self._sha.digest(), self._blocks.digest(),
                        [n.id for n in good])

    def abort(self) -> None:
        for _, writer in self._writers.values():
            writer.abort()
        self._writers.clear()


def place_small(nodes: list[Node], copies: int, small: MemoryBlobWriter, first: Node | None = None) -> BlobMeta:
    """Write a small blob to `copies` nodes without fsync (the catalog journal holds it);
    `first` (a task's node) gets the first copy if it can."""
    data = bytes(small.buffer)
    placed: list[str] = []
    tried: set[str] = set()
    while len(placed) < copies:
        candidates = choose_nodes(nodes, copies - len(placed), exclude=tried, first=first)
        if not candidates:
            break
        for node in candidates:
            tried.add(node.id)
            try:
                node.put_unsynced(small.blob_id, data)
                placed.append(node.id)
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    _delete_from([n for n in nodes if n.id in placed], small.blob_id)
                    raise ResourceExhausted("placing a small blob", exc) from exc
                node.mark_failed(f"write failed: {exc}")
    if len(placed) < copies:
        _delete_from([n for n in nodes if n.id in placed], small.blob_id)
        raise InsufficientNodes(copies, len(placed))
    return BlobMeta(small.blob_id, len(data), small.md5, hashlib.sha256(data).digest(),
                    block_sums(data), placed)


def copy_blob(src: Node, dst: Node, blob_id: str) -> None:
    """Copy a blob from one node to another, node to node and durably (writes and repair).
    OSError for a node's failure, ResourceExhausted for this process's shortage."""
    dst.copy_from(src, blob_id)


def _delete_from(nodes: list[Node], blob_id: str) -> None:
    for node in nodes:
        try:
            node.delete(blob_id)
        except OSError as exc:  # a node gone meanwhile: its copy is GC's
            ResourceExhausted.raise_if(exc, "deleting a blob")


class BlobReader:
    """Verified reads of one blob from whichever replica answers correctly."""

    def __init__(self, blob_id: str, meta: BlobRecord, nodes: dict[str, Node], report: Report) -> None:
        self.blob_id = blob_id
        self.size: int = meta.size
        self.blocks: bytes = meta.blocks or b""
        self.report = report
        listed = [nodes[n] for n in meta.nodes if n in nodes]
        healthy = [n for n in listed if n.healthy()]
        random.shuffle(healthy)
        self.candidates = healthy + [n for n in listed if n not in healthy]
        self._pins: dict[str, Any] = {}
        self._closed = False
        self.blocking = any(n.remote for n in listed)  # reads go over the network

    def prime(self) -> bool:
        """Pin the first readable replica now, so a concurrent delete cannot take the blob
        away before the first read (an open file keeps its bytes). False when no replica
        could be opened: the blob may have been freed since its record was read."""
        for node in list(self.candidates):
            try:
                self._pins[node.id] = node.pin(self.blob_id)
                return True
            except (OSError, BlobMissing) as exc:
                if isinstance(exc, OSError):
                    ResourceExhausted.raise_if(exc, "opening a blob")
                continue
        return False

    def read_block(self, index: int) -> bytes:
        if self._closed:  # a read after close would open (pin) a replica nobody closes
            raise ValueError(f"read of blob {self.blob_id} after its reader was closed")
        offset = index * BLOCK
        length = min(BLOCK, self.size - offset)
        for node in list(self.candidates):
            try:
                if node.id not in self._pins:
                    self._pins[node.id] = node.pin(self.blob_id)
                return node.read(self.blob_id, offset, length, self.blocks, self._pins[node.id])
            except (FileNotFoundError, BlobMissing):
                self._bad(node, "missing" if node.recheck(pool=False) else "node down")
            except BlobDamaged as exc:
                self._bad(node, exc.reason, keep=True)
            except ConnectionError as exc:  # a remote node gone: no replica's fault
                node.mark_failed(f"read failed: {exc}")
                self._bad(node, "node down")
            except OSError as exc:
                ResourceExhausted.raise_if(exc, "reading a blob")
                self._bad(node, f"read error: {exc.strerror or exc}", keep=True)
        raise BlobUnavailable(self.blob_id)

    def _bad(self, node: Node, reason: str, keep: bool = False) -> None:
        """Report a failed replica and drop it; with `keep` (only this block may be bad)
        it stays a candidate for the following blocks, tried last."""
        self.candidates.remove(node)
        if keep:
            self.candidates.append(node)
        elif node.id in self._pins:
            self._unpin(node, self._pins.pop(node.id))
        if reason != "node down":
            self.report(self.blob_id, node.id, reason)

    @staticmethod
    def _unpin(node: Node, handle: Any) -> None:
        if handle is not None:
            try:
                node.unpin(handle)
            except OSError:
                pass

    def read(self, start: int, length: int) -> Iterator[bytes]:
        """Verified bytes [start, start+length) in block-sized pieces."""
        end = start + length
        index = start // BLOCK
        while index * BLOCK < end:
            data = self.read_block(index)
            lo = max(start - index * BLOCK, 0)
            hi = min(end - index * BLOCK, len(data))
            yield data[lo:hi] if (lo, hi) != (0, len(data)) else data
            index += 1

    def close(self) -> None:
        """Unpin every replica, once; the caller makes sure no read is still running."""
        self._closed = True
        nodes = {n.id: n for n in self.candidates}
        for node_id, handle in self._pins.items():
            if node_id in nodes:
                self._unpin(nodes[node_id], handle)
        self._pins.clear()
