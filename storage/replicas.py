"""Replicated blobs: K copies on distinct nodes, verified block by block on every read.

Write (ReplicatedWriter): the bytes stream to K nodes at once while MD5, SHA-256 and a
CRC32C per 1 MiB block are computed once. A node that fails mid-write is dropped; at
commit, the survivors are fsync'd and a copy is made from one of them onto a replacement
node, so the write is acknowledged only with K durable copies (or fails, leaving nothing).

Read (BlobReader): each block is read from one replica and checked against its CRC32C.
An I/O error (EIO from a ZFS checksum failure), a short read, a missing file or a CRC
mismatch moves the read to the next replica for that block and reports the bad replica
for repair. The caller sees correct bytes or an error, never wrong bytes.

A shortage of this process's (EMFILE, ENFILE, ENOMEM: storage.errors.RESOURCE_ERRNOS) is
no replica's fault: reads and writes raise ResourceExhausted for it instead of reporting
damage or marking a node down, and a write that hits it leaves no copy behind.

Blob metadata (the catalog's `blobs` record): {size, sha256, blocks, nodes}.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from awscrt.checksums import crc32c

from storage.blobs import BlobInfo, BlobWriter, MemoryBlobWriter
from storage.errors import RESOURCE_ERRNOS, BlobUnavailable, InsufficientNodes, ResourceExhausted
from storage.node import SPACE_MAX_AGE_S, Node

__all__ = ["BLOCK", "BlobReader", "ReplicatedWriter", "block_sums", "choose_nodes", "copy_blob", "verify_file"]

log = logging.getLogger("manta.storage")

BLOCK = 1 << 20
_RNG = random.Random()
Report = Callable[[str, str, str], None]  # (blob_id, node_id, reason)


def block_sums(data: bytes | memoryview) -> bytes:
    view = memoryview(data)
    return b"".join(struct.pack(">I", crc32c(view[i:i + BLOCK])) for i in range(0, len(view), BLOCK))


def verify_file(path: str, meta: dict[str, Any],
                seen: Callable[[memoryview], None] | None = None) -> str | None:
    """None when the file holds the blob's bytes by its size and per-block CRC32Cs, else why
    not: the check a replica passes before it is used in place (bind-mounted into a task),
    where no verified read stands between the file and the reader, and the scrub's read-back
    (which hashes and paces the blocks it is shown through `seen`)."""
    blocks: bytes = meta.get("blocks") or b""
    buf = bytearray(BLOCK)
    size = index = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                chunk = memoryview(buf)[:n]
                if 4 * index + 4 <= len(blocks) and crc32c(chunk) != struct.unpack_from(">I", blocks, 4 * index)[0]:
                    return "checksum mismatch"
                if seen is not None:
                    seen(chunk)
                size += n
                index += 1
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        ResourceExhausted.raise_if(exc, "verifying a replica")
        return f"read error: {exc.strerror or exc}"
    if size != meta.get("size", size):
        return f"size {size}, expected {meta['size']}"
    return None


def choose_nodes(nodes: list[Node], k: int, exclude: set[str] | frozenset[str] = frozenset(),
                 rng: random.Random | None = None) -> list[Node]:
    """Up to k distinct writable nodes, picked at random weighted by free space."""
    rng = rng or _RNG
    pool: list[tuple[Node, float]] = []
    for node in nodes:
        if node.id in exclude or not node.writable():
            continue
        pool.append((node, max(float(node.space(SPACE_MAX_AGE_S)[1]), 1.0)))
    chosen: list[Node] = []
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

    def record(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "blocks": self.blocks, "nodes": self.nodes}

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
        self._writers: dict[str, tuple[Node, BlobWriter]] = {}
        self._failed: set[str] = set()
        chosen = []
        if first is not None and first.writable():
            chosen.append(first)
        chosen += choose_nodes(nodes, copies - len(chosen), exclude={n.id for n in chosen})
        for node in chosen:
            self._open(node)
        if not self._writers:
            raise InsufficientNodes(copies, 0)

    def _open(self, node: Node) -> None:
        try:
            self._writers[node.id] = (node, node.blobs.writer(self.blob_id, hashing=False))
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
        self._md5.update(data)
        self._sha.update(data)
        self._blocks.update(data)
        self.size += len(data)
        for node, writer in list(self._writers.values()):
            try:
                writer.write(data)
            except OSError as exc:
                self._fail(node, exc)
        if not self._writers:
            raise InsufficientNodes(self.copies, 0)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    def commit(self) -> BlobMeta:
        entries = list(self._writers.values())

        short: list[OSError] = []

        def commit_one(entry: tuple[Node, BlobWriter]) -> Node | None:
            node, writer = entry
            try:
                writer.commit()
                return node
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    short.append(exc)
                    writer.abort()
                    node.blobs.delete(self.blob_id)
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


def place_small(nodes: list[Node], copies: int, small: MemoryBlobWriter) -> BlobMeta:
    """Write a small blob to `copies` nodes without fsync (the catalog journal holds it)."""
    data = bytes(small.buffer)
    placed: list[str] = []
    tried: set[str] = set()
    while len(placed) < copies:
        candidates = choose_nodes(nodes, copies - len(placed), exclude=tried)
        if not candidates:
            break
        for node in candidates:
            tried.add(node.id)
            try:
                node.blobs.write_unsynced(small.blob_id, data)
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
    """Copy a blob's file from one node to another, durably (used by writes and repair).
    OSError for a node's failure, ResourceExhausted for this process's shortage."""
    try:
        writer = dst.blobs.writer(blob_id, hashing=False)
    except OSError as exc:
        ResourceExhausted.raise_if(exc, "copying a blob")
        raise
    try:
        with src.blobs.open(blob_id) as fh:
            while chunk := fh.read(BLOCK):
                writer.write(chunk)
        writer.commit()
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, OSError):
            ResourceExhausted.raise_if(exc, "copying a blob")
        raise


def _delete_from(nodes: list[Node], blob_id: str) -> None:
    for node in nodes:
        node.blobs.delete(blob_id)


class BlobReader:
    """Verified reads of one blob from whichever replica answers correctly."""

    def __init__(self, blob_id: str, meta: dict[str, Any], nodes: dict[str, Node], report: Report) -> None:
        self.blob_id = blob_id
        self.size: int = meta["size"]
        self.blocks: bytes = meta.get("blocks") or b""
        self.report = report
        listed = [nodes[n] for n in meta["nodes"] if n in nodes]
        healthy = [n for n in listed if n.healthy()]
        random.shuffle(healthy)
        self.candidates = healthy + [n for n in listed if n not in healthy]
        self._fds: dict[str, int] = {}

    def prefer(self, node_id: str) -> None:
        """Read from this node's replica first when it has one (a task's own node)."""
        self.candidates.sort(key=lambda n: n.id != node_id)

    def prime(self) -> None:
        """Open the first readable replica now, so a concurrent delete cannot take the file
        away before the first read (an open file keeps its bytes)."""
        for node in list(self.candidates):
            try:
                self._fds[node.id] = os.open(node.blobs.path(self.blob_id), os.O_RDONLY)
                return
            except OSError as exc:
                ResourceExhausted.raise_if(exc, "opening a blob")
                continue

    def _expected(self, index: int) -> int | None:
        if 4 * index + 4 > len(self.blocks):
            return None
        return int(struct.unpack_from(">I", self.blocks, 4 * index)[0])

    def read_block(self, index: int) -> bytes:
        offset = index * BLOCK
        length = min(BLOCK, self.size - offset)
        expected = self._expected(index)
        for node in list(self.candidates):
            try:
                fd = self._fds.get(node.id)
                if fd is None:
                    fd = os.open(node.blobs.path(self.blob_id), os.O_RDONLY)
                    self._fds[node.id] = fd
                data = os.pread(fd, length, offset)
            except FileNotFoundError:
                self._bad(node, "missing" if node.recheck(pool=False) else "node down")
                continue
            except OSError as exc:
                ResourceExhausted.raise_if(exc, "reading a blob")
                self._bad(node, f"read error: {exc.strerror or exc}", keep=True)
                continue
            if len(data) != length:
                self._bad(node, "short read", keep=True)
                continue
            if expected is not None and crc32c(data) != expected:
                self._bad(node, "checksum mismatch", keep=True)
                continue
            return data
        raise BlobUnavailable(self.blob_id)

    def _bad(self, node: Node, reason: str, keep: bool = False) -> None:
        """Report a failed replica and drop it; with `keep` (only this block may be bad)
        it stays a candidate for the following blocks, tried last."""
        self.candidates.remove(node)
        if keep:
            self.candidates.append(node)
        else:
            fd = self._fds.pop(node.id, None)
            if fd is not None:
                os.close(fd)
        if reason != "node down":
            self.report(self.blob_id, node.id, reason)

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
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
