"""Blob store on a directory: the whole write and read protocol for immutable blobs.

Layout under the store root::

    blobs/<id[0:2]>/<id>              committed blobs (id: 32 hex chars, random 128 bits)
    tmp/<random>.tmp                   in-flight writes; removed at start-up

Write protocol (BlobWriter): stream into a temp file in ``tmp/`` while computing MD5
and SHA-256, then ``commit()``: fsync the file, rename it into ``blobs/``, fsync the
destination directory. Every WRITEBACK_BYTES written, writeback of what was written
is started (sync_file_range(2), not waited for), so the disk works while the body is
still arriving and the fsync at commit has little left to do. A crash before the rename leaves only a temp file (swept at
start-up); a crash after it leaves an unreferenced blob that garbage collection removes.
A blob is never visible in the catalog before it is durable here.

Reads return plain file objects; ``verify()`` re-hashes a whole blob (scrub).
Blob ids are generated here and validated before any path is built, so no caller
input ever reaches a file name.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from awscrt.checksums import crc32c

from storage.errors import BlobMissing, ResourceExhausted

__all__ = ["BLOB_ID", "BLOCK", "BlobInfo", "BlobWriter", "DirectoryBlobStore", "MemoryBlobWriter", "verify_file"]

BLOCK = 1 << 20

# Blob files are world-readable and their directories traversable but not listable
# (0711): a task sandbox (an unprivileged user) can bind-mount the one blob it is given by
# path, while names (random 128-bit ids) cannot be discovered. Temp files stay private.
BLOB_MODE = 0o644
DIR_MODE = 0o711
BLOB_ID = re.compile(r"[0-9a-f]{32}\Z")  # \Z, not $: "$" would accept a trailing newline


@dataclass(frozen=True)
class BlobInfo:
    blob_id: str
    size: int
    md5: bytes
    sha256: bytes


class BlobWriter:
    """One in-flight blob. Not thread-safe; write() may be called from any one thread."""

    def __init__(self, store: DirectoryBlobStore, blob_id: str | None = None, hashing: bool = True) -> None:
        self._store = store
        self.blob_id = blob_id or secrets.token_hex(16)
        self._tmp = os.path.join(store.tmp_dir, f"{self.blob_id}.tmp")
        self._fh: BinaryIO | None = open(self._tmp, "xb", buffering=0)  # noqa: SIM115
        os.fchmod(self._fh.fileno(), BLOB_MODE)
        self._md5 = hashlib.md5() if hashing else None
        self._sha = hashlib.sha256() if hashing else None
        self.size = 0
        self._flushed = 0  # bytes whose writeback was started

    def write(self, data: bytes | memoryview) -> None:
        assert self._fh is not None, "writer is closed"
        if self._md5 is not None and self._sha is not None:
            self._md5.update(data)
            self._sha.update(data)
        view = memoryview(data)
        while view:
            n = self._fh.write(view)
            view = view[n:] if n else view
        self.size += len(data)
        if self.size - self._flushed >= WRITEBACK_BYTES:
            _start_writeback(self._fh.fileno(), self._flushed, self.size - self._flushed)
            self._flushed = self.size

    def commit(self) -> BlobInfo:
        """Make the blob durable and visible under its id (blocking: fsyncs)."""
        assert self._fh is not None, "writer is closed"
        fh, self._fh = self._fh, None
        try:
            os.fsync(fh.fileno())
        finally:
            fh.close()
        final = self._store.path(self.blob_id)
        os.rename(self._tmp, final)
        _fsync_dir(os.path.dirname(final))
        return BlobInfo(self.blob_id, self.size, self.md5, self._sha.digest() if self._sha else b"")

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    @property
    def md5(self) -> bytes:
        return self._md5.digest() if self._md5 is not None else b""

    @property
    def sha256(self) -> bytes:
        return self._sha.digest() if self._sha is not None else b""


class MemoryBlobWriter:
    """A small blob gathered in memory, placed without fsync (`replicas.place_small`).

    Its durability comes from the catalog: the bytes go into the catalog's journal in the
    same transaction as the record that references them, and `sync()` later makes the
    file durable and drops the journal copy. One fsync'd catalog commit instead of three
    fsyncs per small PUT; recovery rewrites journalled blobs after a crash.
    """

    def __init__(self) -> None:
        self.blob_id = secrets.token_hex(16)
        self.buffer = bytearray()
        self._md5 = hashlib.md5()

    def write(self, data: bytes | memoryview) -> None:
        self._md5.update(data)
        self.buffer += data

    @property
    def size(self) -> int:
        return len(self.buffer)

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    def abort(self) -> None:
        self.buffer = bytearray()


class DirectoryBlobStore:
    """Immutable blobs in a directory tree (the `dir:` backend)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blob_dir = os.path.join(self.root, "blobs")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp_dir, mode=0o700, exist_ok=True)
        if not os.path.isdir(os.path.join(self.blob_dir, "ff")):
            # one level of 256 fan-out directories, made once, so no write creates a directory
            for i in range(256):
                os.makedirs(os.path.join(self.blob_dir, f"{i:02x}"), exist_ok=True)
                os.chmod(os.path.join(self.blob_dir, f"{i:02x}"), DIR_MODE)
            os.chmod(self.blob_dir, DIR_MODE)
            os.chmod(self.root, DIR_MODE)
            _fsync_dir(self.blob_dir)
            _fsync_dir(self.root)

    def sweep_temp(self, older_than_s: float = 0.0) -> int:
        """Remove leftover temp files from interrupted writes (with `older_than_s`, only
        those not written to for that long); returns how many."""
        removed = 0
        cutoff = time.time() - older_than_s
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            try:
                if older_than_s and os.stat(path).st_mtime > cutoff:
                    continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def path(self, blob_id: str) -> str:
        if not BLOB_ID.match(blob_id):
            raise ValueError(f"invalid blob id {blob_id!r}")
        return os.path.join(self.blob_dir, blob_id[:2], blob_id)

    def writer(self, blob_id: str | None = None, hashing: bool = True) -> BlobWriter:
        return BlobWriter(self, blob_id, hashing)

    def write_unsynced(self, blob_id: str, data: bytes) -> None:
        """A small blob written straight under its final name, without fsync: nothing
        references it until the catalog commits the record and its journal copy, and after
        a crash recovery rewrites every journalled blob (an unreferenced one is GC's)."""
        final = self.path(blob_id)
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, BLOB_MODE)
        try:
            os.fchmod(fd, BLOB_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            self.delete(blob_id)
            raise
        os.close(fd)

    def sync(self, blob_ids: list[str]) -> None:
        """Make placed blobs durable: one syncfs(2) of the node's filesystem when it is a
        local filesystem that implements it (ext4, xfs, btrfs), else an fsync of each file
        and of the directories holding them (FUSE, e.g. zfs-fuse, may ignore syncfs)."""
        if len(blob_ids) > 4 and self.whole_fs_sync:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        dirs: set[str] = set()
        for blob_id in blob_ids:
            path = self.path(blob_id)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # deleted since; nothing to make durable
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(os.path.dirname(path))
        for directory in sorted(dirs):
            _fsync_dir(directory)

    @functools.cached_property
    def whole_fs_sync(self) -> bool:
        return _fs_type(self.root) in SYNCFS_FILESYSTEMS

    def put(self, data: bytes) -> BlobInfo:
        w = self.writer()
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def open(self, blob_id: str) -> BinaryIO:
        try:
            return open(self.path(blob_id), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise BlobMissing(blob_id) from None

    def exists(self, blob_id: str) -> bool:
        return os.path.exists(self.path(blob_id))

    def size(self, blob_id: str) -> int:
        try:
            return os.stat(self.path(blob_id)).st_size
        except FileNotFoundError:
            raise BlobMissing(blob_id) from None

    def delete(self, blob_id: str) -> bool:
        try:
            os.unlink(self.path(blob_id))
            return True
        except FileNotFoundError:
            return False

    def iter_blobs(self) -> Iterator[tuple[str, float]]:
        """Every committed blob id with its mtime (for garbage collection)."""
        for dirpath, _dirs, files in os.walk(self.blob_dir):
            for name in files:
                if BLOB_ID.match(name):
                    try:
                        yield name, os.stat(os.path.join(dirpath, name)).st_mtime
                    except FileNotFoundError:
                        continue


VERIFY_PIECE = 128 << 10
_buffers = threading.local()


def _verify_buffer() -> bytearray:
    """This thread's read buffer for verify_file (one allocation per thread)."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(VERIFY_PIECE)
    return buf


def _block_ok(blocks: bytes, index: int, crc: int) -> bool:
    """Block `index`'s CRC32C matches its record (a block past the record's end is checked
    by the size alone)."""
    return 4 * index + 4 > len(blocks) or crc == struct.unpack_from(">I", blocks, 4 * index)[0]


def verify_file(path: str, meta: dict[str, Any],
                seen: Callable[[memoryview], None] | None = None) -> str | None:
    """None when the file holds the blob's bytes by its size and per-block CRC32Cs, else why
    not: the check a replica passes before it is used in place (bind-mounted into a task),
    where no verified read stands between the file and the reader, and the scrub's read-back
    (which hashes and paces the blocks it is shown through `seen`)."""
    blocks: bytes = meta.get("blocks") or b""
    view = memoryview(_verify_buffer())
    size = index = in_block = crc = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            # read in cache-sized pieces, never across a block's end, each block's CRC32C
            # carried from piece to piece (a 1 MiB buffer would be zeroed, then read back
            # from memory rather than from the cache)
            while n := fh.readinto(view[:min(VERIFY_PIECE, BLOCK - in_block)]):
                chunk = view[:n]
                crc = crc32c(chunk, crc)
                if seen is not None:
                    seen(chunk)
                size += n
                in_block += n
                if in_block == BLOCK:
                    if not _block_ok(blocks, index, crc):
                        return "checksum mismatch"
                    index, in_block, crc = index + 1, 0, 0
            if in_block and not _block_ok(blocks, index, crc):
                return "checksum mismatch"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        ResourceExhausted.raise_if(exc, "verifying a replica")
        return f"read error: {exc.strerror or exc}"
    if size != meta.get("size", size):
        return f"size {size}, expected {meta['size']}"
    return None


SYNCFS_FILESYSTEMS = ("ext4", "xfs", "btrfs")
_libc = ctypes.CDLL(None, use_errno=True)
WRITEBACK_BYTES = 8 << 20
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a range of a file to disk without waiting (a hint: errors are
    ignored, the fsync at commit is what makes the bytes durable)."""
    _sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(nbytes), SYNC_FILE_RANGE_WRITE)


_sync_file_range = getattr(_libc, "sync_file_range", lambda *args: 0)


def _syncfs(fd: int) -> int:
    return int(_libc.syncfs(fd))


def _fs_type(path: str) -> str:
    """The type of the filesystem mounted at the longest mount point above `path`."""
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = fields[1].replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        return ""
    return kind


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
