"""The catalog: accounts, buckets, objects, multipart uploads and blob reference counts.

LMDB holds one named database per record kind; values are msgpack maps carrying a
schema version ``v``. Keys::

    accounts   access_key                      -> {v, name, secret, created, root}
    names      account name                    -> access_key
    buckets    bucket name                     -> {v, name, owner, created}
    objects    bucket \\0 key (UTF-8)           -> object record (see `ObjectRecord`)
    uploads    upload id                       -> {v, bucket, key, owner, initiated, ...}
    upkeys     bucket \\0 key \\0 upload id       -> 1  (ListMultipartUploads order)
    parts      upload id \\0 part number (u32be) -> {v, number, blob, size, etag, mtime, ...}
    blobrefs   blob id                         -> reference count
    journal    blob id                         -> raw bytes of a small blob not yet fsync'd

Object keys never contain NUL (the S3 layer rejects it), so byte order of the LMDB keys
is the UTF-8 binary order S3 lists in.

Writes: every write is one function applied inside an LMDB write transaction. A single
writer thread drains the queue of pending writes and applies a batch of them, each in a
nested transaction (so one failing write rolls back alone), then commits the batch once:
one fsync for many concurrent requests (group commit). `write()` returns only after the
commit is durable. Reads open short read transactions on the caller's thread.

Blob lifetimes: a record that starts referencing a blob increments its count; one that
stops decrements it. Writes return the blobs whose count reached zero; the caller deletes
those files after the commit. A crash in between leaves orphans that GC collects.
"""

from __future__ import annotations

import concurrent.futures
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import lmdb
import msgpack

from storage import errors

__all__ = ["Catalog", "Txn"]

T = TypeVar("T")
Txn = lmdb.Transaction
Record = dict[str, Any]

_DBS = ("accounts", "names", "buckets", "objects", "uploads", "upkeys", "parts", "blobrefs",
        "journal")
_MAX_BATCH = 256


def pack(record: Any) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False)


def object_key(bucket: str, key: str) -> bytes:
    return bucket.encode() + b"\0" + key.encode()


def part_key(upload_id: str, number: int) -> bytes:
    return upload_id.encode() + b"\0" + struct.pack(">I", number)


class Catalog:
    def __init__(self, path: str, map_size: int = 1 << 36) -> None:
        self.env = lmdb.open(path, map_size=map_size, max_dbs=len(_DBS), subdir=True)
        self.db = {name: self.env.open_db(name.encode()) for name in _DBS}
        self._queue: queue.SimpleQueue[tuple[Callable[[Txn], Any], concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="catalog-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self.env.close()

    # -- transactions -------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Txn]:
        with self.env.begin(write=False) as txn:
            yield txn

    def submit(self, fn: Callable[[Txn], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut

    def write(self, fn: Callable[[Txn], T]) -> T:
        return self.submit(fn).result()

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._apply(batch)

    def _apply(self, batch: list[tuple[Callable[[Txn], Any], concurrent.futures.Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.env.begin(write=True) as parent:
                for fn, _ in batch:
                    child = self.env.begin(write=True, parent=parent)
                    try:
                        result = fn(child)
                    except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                        child.abort()
                        outcomes.append((False, exc))
                    else:
                        child.commit()
                        outcomes.append((True, result))
        except BaseException as exc:  # noqa: BLE001 - the commit itself failed
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for (ok, value), (_, fut) in zip(outcomes, batch, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    # -- generic record access ----------------------------------------------------

    def get(self, txn: Txn, db: str, key: bytes) -> Any:
        raw = txn.get(key, db=self.db[db])
        return None if raw is None else unpack(raw)

    def put(self, txn: Txn, db: str, key: bytes, record: Any) -> None:
        txn.put(key, pack(record), db=self.db[db])

    def delete(self, txn: Txn, db: str, key: bytes) -> bool:
        return bool(txn.delete(key, db=self.db[db]))

    def scan(self, txn: Txn, db: str, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """Records with keys >= max(start, prefix) that begin with prefix, in key order."""
        cursor = txn.cursor(db=self.db[db])
        if not cursor.set_range(max(start, prefix)):
            return
        for key, raw in cursor:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key, unpack(raw)

    # -- blob reference counts ----------------------------------------------------

    def ref_blobs(self, txn: Txn, blob_ids: list[str]) -> None:
        for blob_id in blob_ids:
            key = blob_id.encode()
            count: int = self.get(txn, "blobrefs", key) or 0
            self.put(txn, "blobrefs", key, count + 1)

    def unref_blobs(self, txn: Txn, blob_ids: list[str]) -> list[str]:
        """Decrement counts; returns the blob ids that are no longer referenced."""
        freed = []
        for blob_id in blob_ids:
            key = blob_id.encode()
            count: int = (self.get(txn, "blobrefs", key) or 0) - 1
            if count > 0:
                self.put(txn, "blobrefs", key, count)
            else:
                self.delete(txn, "blobrefs", key)
                txn.delete(key, db=self.db["journal"])
                freed.append(blob_id)
        return freed

    # -- journal of small blobs (see storage.blobs.MemoryBlobWriter) ----------------

    def journal_put(self, txn: Txn, blob_id: str, data: bytes) -> None:
        txn.put(blob_id.encode(), data, db=self.db["journal"])

    def journal(self, limit: int = 10_000) -> list[tuple[str, bytes]]:
        with self.read() as txn:
            out = []
            for key, value in txn.cursor(db=self.db["journal"]):
                out.append((bytes(key).decode(), bytes(value)))
                if len(out) >= limit:
                    break
            return out

    def journal_drop(self, blob_ids: list[str]) -> None:
        def op(txn: Txn) -> None:
            for blob_id in blob_ids:
                txn.delete(blob_id.encode(), db=self.db["journal"])

        self.write(op)

    def referenced_blobs(self) -> set[str]:
        with self.read() as txn:
            return {k.decode() for k, _ in self.scan(txn, "blobrefs")}

    # -- accounts -----------------------------------------------------------------

    def add_account(self, name: str, access_key: str, secret: str, root: bool = False) -> Record:
        record = {"v": 1, "name": name, "access_key": access_key, "secret": secret,
                  "created": time.time(), "root": root}

        def op(txn: Txn) -> Record:
            if txn.get(name.encode(), db=self.db["names"]) is not None:
                raise errors.AccountExists(name)
            if txn.get(access_key.encode(), db=self.db["accounts"]) is not None:
                raise errors.AccountExists(name)
            self.put(txn, "accounts", access_key.encode(), record)
            txn.put(name.encode(), access_key.encode(), db=self.db["names"])
            return record

        return self.write(op)

    def account(self, access_key: str) -> Record:
        with self.read() as txn:
            record = self.get(txn, "accounts", access_key.encode())
        if record is None:
            raise errors.NoSuchAccount(access_key)
        return record

    def accounts(self) -> list[Record]:
        with self.read() as txn:
            return [r for _, r in self.scan(txn, "accounts")]

    # -- buckets ------------------------------------------------------------------

    def create_bucket(self, name: str, owner: str) -> Record:
        record = {"v": 1, "name": name, "owner": owner, "created": time.time()}

        def op(txn: Txn) -> Record:
            existing = self.get(txn, "buckets", name.encode())
            if existing is not None:
                raise errors.BucketAlreadyExists(name, owned_by_you=existing["owner"] == owner)
            self.put(txn, "buckets", name.encode(), record)
            return record

        return self.write(op)

    def bucket(self, name: str, txn: Txn | None = None) -> Record:
        if txn is None:
            with self.read() as t:
                return self.bucket(name, t)
        record = self.get(txn, "buckets", name.encode())
        if record is None:
            raise errors.NoSuchBucket(name)
        return record

    def buckets(self, owner: str) -> list[Record]:
        with self.read() as txn:
            return [r for _, r in self.scan(txn, "buckets") if r["owner"] == owner]

    def delete_bucket(self, name: str) -> None:
        def op(txn: Txn) -> None:
            self.bucket(name, txn)
            prefix = name.encode() + b"\0"
            for _ in self.scan(txn, "objects", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            for _ in self.scan(txn, "upkeys", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            self.delete(txn, "buckets", name.encode())

        self.write(op)
