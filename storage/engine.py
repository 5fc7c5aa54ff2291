"""Catalog engines: ordered tables of byte keys and byte values, read in snapshots and
written in group-committed transactions. The catalog's repositories (storage.catalog,
storage.objects, storage.uploads, jobs.records) encode their records on top of this; the
engine knows nothing of what the bytes mean.

Two engines implement it:

- `storage.engine_lmdb.LmdbEngine`: one LMDB environment in the data dir (the embedded
  default; one machine, any number of processes on it);
- `storage.engine_pg.PgEngine`: PostgreSQL through psycopg 3 (any number of front doors).

The contract, which tests/storage/test_engine.py checks against both:

- **Tables** are named when the engine opens (`tables`); keys are compared as unsigned bytes
  (memcmp order, shorter first on a tie), the order S3 lists keys in.
- **Reads**: `read()` is a snapshot (for `with`): every get and scan in it sees the same
  committed state. A read never waits for a writer.
- **Writes**: `submit(fn)` queues `fn(txn)`; the engine applies many queued writes in one
  commit (group commit), each in its own nested transaction, so a write that raises rolls
  back alone and its exception goes to its caller. The future completes only once the
  commit is durable, unless `fn` is `Relaxed`: then once it is committed (seen by every
  reader, kept if a process dies), while a crash of the machine itself may still undo
  it, with whatever commits after it, until the next durable commit (LMDB: the commit
  without its meta page's sync, at most the last commit; PostgreSQL: synchronous_commit
  off, a batch of relaxed writes only). A write that must survive a power cut once it
  answers is durable (the default): every S3 write. Inside a write, a read of a key sees
  the newest committed value and no other writer (in this or another process or front
  door) changes that key until this write commits: read-modify-write of one key never
  loses an update.
- **Retries**: an engine may run `fn` again when its transaction had to be rolled back for
  a reason not its own (a deadlock between front doors, a lost connection before commit).
  So a write function's only effects are on `txn` and on values it returns; it must not
  append to lists it did not make, send messages, or count calls.
- **Holds**: `try_hold(name)` takes a named lock that every process using the same catalog
  (every worker, every front door) competes for, without waiting; it is held until
  `release()` or until the holder dies (a SIGKILL included). The leader that runs the job
  scheduler and the background daemons is the holder of "leader". `lost()` says the hold
  ended without a release (the database restarted): its holder must stop acting as one.
- `remote`: True when a read may wait on the network. Code on an event loop then reads in
  a thread; with an embedded engine it reads in place (a few microseconds).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from storage.errors import StorageError

__all__ = ["Engine", "EngineUnavailable", "Held", "ReadTxn", "GroupWriter", "WriteTxn", "prefix_end", "skip_past"]

T = TypeVar("T")


class EngineUnavailable(StorageError):
    """The catalog's database cannot be reached (the S3 layer answers 503 ServiceUnavailable)."""


class ReadTxn(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None:
        """The value of `key`, or None."""

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"",
             end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for keys >= max(start, prefix) that begin with `prefix` and are
        < `end` (if given), in key order. Fetches lazily: a caller that stops early does
        not pay for the rest."""


    def scan_skip(self, table: str, start: bytes, prefix: bytes, delimiter: bytes,
                  cut: int) -> Iterator[tuple[bytes, bytes]]:
        """Like `scan(table, start, prefix)`, but after a key that holds `delimiter` at or
        after offset `cut`, goes on from the first key past every key that shares that
        key's bytes up to the end of the delimiter (plus 0xFF: the next "group"). So a
        listing with a delimiter costs one seek per group, not a walk over its keys (one
        statement for many groups in PostgreSQL)."""


def skip_past(key: bytes, delimiter: bytes, cut: int) -> bytes:
    """Where `scan_skip` goes on after `key`: past its group, and past the key itself
    (an overflow entry's slot, a group's first bytes and 0xFF, is its own group's end)."""
    at = key.find(delimiter, cut)
    return key + b"\0" if at < 0 else max(key[:at + len(delimiter)] + b"\xff", key + b"\0")


class WriteTxn(ReadTxn, Protocol):
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> bool:
        """Remove `key`; True if it was there."""

    def prefetch(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """A hint: the write is about to read these (table, key)s. A remote engine reads
        (and locks) them all in one round trip; an embedded one does nothing."""


class Held(Protocol):
    def lost(self) -> bool: ...

    def release(self) -> None: ...


class Engine(Protocol):
    name: str       # "lmdb" or "postgresql"
    location: str   # a path or a URL without its password
    remote: bool    # reads may wait on the network: do not read on an event loop

    def read(self) -> Any:
        """A snapshot read transaction, a context manager giving a `ReadTxn`."""

    def submit(self, fn: Callable[[WriteTxn], T]) -> concurrent.futures.Future[T]: ...

    def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """`submit(fn).result()`."""

    def try_hold(self, name: str) -> Held | None:
        """The lock `name`, or None while another process holds it."""

    def counts(self) -> dict[str, int]:
        """Rows per table (an operator's view; may be slow on big tables)."""

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


Write = tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]


class Relaxed:
    """A write function whose commit need not be durable before its future completes (see
    the contract above): jobs' task records, which a task run again after a machine crash
    writes again."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, txn: Any) -> Any:
        return self.fn(txn)


def durable(batch: list[Write]) -> bool:
    """Must this batch's commit be durable before its futures complete?"""
    return any(not isinstance(fn, Relaxed) for fn, _ in batch)


class GroupWriter:
    """An engine's writer thread: writes queue up, and `apply(batch)` gets the next group
    commit each time (the writes queued meanwhile, at most `limit`, less those cancelled
    before they ran: one that runs can no longer be cancelled, so `apply` must deliver every
    outcome). `on_exit` runs in the thread when it ends (after `close`)."""

    def __init__(self, apply: Callable[[list[Write]], None], limit: int = 256,
                 on_exit: Callable[[], None] | None = None) -> None:
        self.apply = apply
        self._limit = limit
        self._on_exit = on_exit
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="catalog-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (batch := self._next()) is not None:
                if batch:
                    self.apply(batch)
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def _next(self) -> list[Write] | None:
        """The next batch (waiting for its first write); None once closed."""
        item = self._queue.get()
        if item is None:
            return None
        return self._take([item], self._limit - 1)

    def more(self, have: int) -> list[Write]:
        """The writes queued since the batch of `have` was taken (up to the limit), to join
        it: for an `apply` that has just got what it waited for (LMDB's write lock, which
        another process's commit may have held for milliseconds), so that those writes go
        in this commit instead of waiting for the next. Only from `apply`."""
        return self._take([], self._limit - have)

    def _take(self, batch: list[Write], room: int) -> list[Write]:
        while room > 0:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # the next batch stops
                break
            batch.append(nxt)
            room -= 1
        return [(fn, fut) for fn, fut in batch if fut.set_running_or_notify_cancel()]


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that begins with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
