"""The embedded catalog engine: one LMDB environment, a named database per table.

Reads open short read transactions on the caller's thread (LMDB readers never block and
never wait on a writer). Writes: a single writer thread drains the queue of pending writes
and applies a batch of them, each in a nested transaction (so one failing write rolls back
alone), then commits the batch once: one fsync for many concurrent requests (group
commit). LMDB allows one write transaction at a time across processes, so writers in
other processes sharing the directory queue behind it: a read of a key inside a write
always sees the newest value and nobody else changes it before the commit.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import lmdb

from storage.engine import GroupWriter, durable, skip_past

__all__ = ["LmdbEngine"]

T = TypeVar("T")
SCHEMA_VERSION = 1
_MAX_BATCH = 256
_META = "_meta"  # the engine's own table: b"schema" -> version (ASCII)


class _Txn:
    """An LMDB transaction addressed by table name (both a ReadTxn and a WriteTxn)."""

    __slots__ = ("_txn", "_dbs")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def __enter__(self) -> _Txn:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._txn.__exit__(kind, exc, tb)

    def get(self, table: str, key: bytes) -> bytes | None:
        if table not in self._dbs:  # read-only, and the table was never made
            return None
        value = self._txn.get(key, db=self._dbs[table])
        return None if value is None else bytes(value)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[table])

    def delete(self, table: str, key: bytes) -> bool:
        return bool(self._txn.delete(key, db=self._dbs[table]))

    def prefetch(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """Nothing to do: a read here takes microseconds."""

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"",
             end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if table not in self._dbs:
            return
        cursor = self._txn.cursor(db=self._dbs[table])
        if not cursor.set_range(max(start, prefix)):
            return
        for key, value in cursor:
            key = bytes(key)
            if not key.startswith(prefix) or (end is not None and key >= end):
                return
            yield key, bytes(value)

    def scan_skip(self, table: str, start: bytes, prefix: bytes, delimiter: bytes,
                  cut: int) -> Iterator[tuple[bytes, bytes]]:
        if table not in self._dbs:
            return
        cursor = self._txn.cursor(db=self._dbs[table])
        found = cursor.set_range(max(start, prefix))
        while found:
            key = bytes(cursor.key())
            if not key.startswith(prefix):
                return
            yield key, bytes(cursor.value())
            at = key.find(delimiter, cut)
            found = cursor.next() if at < 0 else cursor.set_range(skip_past(key, delimiter, cut))


class _FileHold:
    """An exclusive flock on a file beside the catalog; the kernel drops it when its holder dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def lost(self) -> bool:
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LmdbEngine:
    name = "lmdb"
    remote = False

    def __init__(self, path: str, tables: tuple[str, ...], map_size: int = 1 << 36,
                 readonly: bool = False) -> None:
        """`readonly`: only reads (a look at another process's catalog, which it may be
        writing meanwhile); submit() then fails."""
        self.location = path
        # metasync off: a commit syncs its data pages, and its meta page (which makes it the
        # current state) goes to disk with the next sync; _apply syncs it at once unless
        # every write of the batch is Relaxed (storage.engine). LMDB keeps its integrity so.
        self.env = lmdb.open(path, map_size=map_size, max_dbs=len(tables) + 1, subdir=True,
                             readonly=readonly, lock=True, metasync=False)
        names = (*tables, _META)
        if readonly:
            with self.env.begin() as txn:
                present = [name for name in names if txn.get(name.encode()) is not None]
            self._dbs = {name: self.env.open_db(name.encode(), create=False) for name in present}
        else:
            self._dbs = {name: self.env.open_db(name.encode()) for name in names}
            if self.schema_version() == 0:
                with self.env.begin(write=True) as txn:
                    txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._dbs[_META])
        # _apply delivers every outcome: the writer thread never dies of one
        self._writer = None if readonly else GroupWriter(self._apply, _MAX_BATCH)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.env.close()

    def read(self) -> _Txn:
        """A read transaction, for `with` (a plain object, not a generator-based context
        manager: every request opens several of these)."""
        return _Txn(self.env.begin(write=False), self._dbs)

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        if self._writer is None:
            raise RuntimeError(f"catalog {self.location} is open read-only")
        return self._writer.submit(fn)

    def write(self, fn: Callable[[Any], T]) -> T:
        return self.submit(fn).result()

    def try_hold(self, name: str) -> _FileHold | None:
        fd = os.open(os.path.join(self.location, f"{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return _FileHold(fd)

    def schema_version(self) -> int:
        with self.env.begin() as txn:
            return int(_META in self._dbs and txn.get(b"schema", db=self._dbs[_META]) or b"0")

    def counts(self) -> dict[str, int]:
        with self.env.begin() as txn:
            return {name: txn.stat(db)["entries"] for name, db in self._dbs.items() if name != _META}

    def _apply(self, batch: list[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.env.begin(write=True) as parent:
                # the lock may have been another process's for a whole commit: what was
                # queued meanwhile joins this one (a worker process of `manta serve`)
                assert self._writer is not None
                batch.extend(self._writer.more(len(batch)))
                for fn, _ in batch:
                    child = self.env.begin(write=True, parent=parent)
                    try:
                        result = fn(_Txn(child, self._dbs))
                    except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                        child.abort()
                        outcomes.append((False, exc))
                    else:
                        child.commit()
                        outcomes.append((True, result))
            if durable(batch):
                self.env.sync(True)  # the meta page too: durable before anyone hears of it
        except BaseException as exc:  # noqa: BLE001 - the commit itself failed
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for (ok, value), (_, fut) in zip(outcomes, batch, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
