"""The PostgreSQL catalog engine: the engine contract (storage/engine.py) over psycopg 3, so
that any number of front doors share one catalog. The statements and the schema are in
storage/engine_pg_schema.py.

Reads: `read()` is a REPEATABLE READ READ ONLY transaction on a pooled connection (a
snapshot, like an LMDB read transaction; it never waits for a writer), begun together with
its first statement, whose snapshot it is: a read of one key costs two round trips, that
and ROLLBACK. `scan` fetches keyset pages of PAGE_ROWS rows (`k >= start [AND k < end]
ORDER BY k LIMIT n`, then `k > last`), a prefix bounded above by `prefix_end`, so a scan
that stops early costs one page.

Writes: one writer thread per engine, with a connection of its own, drains the queue as
LmdbEngine does: one READ COMMITTED transaction per batch, each write inside a SAVEPOINT
(a write that raises rolls back to it alone and its exception goes to its caller), one
COMMIT for the batch, then the futures resolve. Durable = committed (synchronous_commit).
BEGIN and the savepoint steps between writes travel with the next statement (`_Batch`).

Per-key locking, across front doors: the first time a write's batch touches a key (get,
put or delete) it takes a transaction-scoped advisory lock on a 64-bit hash of (table,
key), then reads or writes the row in a separate statement (one round trip: the
`manta_<table>_lock_*` functions); under READ COMMITTED that statement's fresh snapshot sees
the newest committed value, and no other writer changes the key until this batch commits.
The batch remembers its locks (one lock per key per batch; a write that rolls back to its
savepoint gives its new ones up; two keys whose hashes collide share a lock, which only
over-locks). Scans inside a write take no locks and each page is a fresh READ COMMITTED
snapshot: a repository guards a range by a parent key that every writer of the range also
locks (the bucket record).

Why not SERIALIZABLE: the hot rows (usage counters, bucket records) are touched by most
writes, so a batch of 256 group-committed writes would be aborted whole on every conflict.
Why advisory locks rather than SELECT ... FOR UPDATE: a key that does not exist yet has no
row to lock, and "create if absent" is the common case.

Retries: on a deadlock (40P01, two front doors locking keys in opposite orders; one is
chosen to fail), a serialization failure (40001) or a connection lost before COMMIT was
sent, the batch is rolled back and run again (up to _MAX_TRIES times, short backoff), so
write functions must be pure (storage/engine.py). A connection lost during COMMIT leaves the
outcome unknown: the batch fails with EngineUnavailable and is not retried (it might apply
twice). The writer reconnects for the next batch.

Unavailable: when PostgreSQL cannot be reached, reads and writes raise EngineUnavailable
within a few seconds (connect_timeout_s, pool_timeout_s) and work again once it is back:
the pool and the writer reconnect.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.types.numeric import Int8

from storage.engine import EngineUnavailable, prefix_end
from storage.engine_pg_schema import (
    PAGE_ROWS,
    SCHEMA_VERSION,
    TableSql,
    create_schema,
    lock_id,
    public_location,
)

__all__ = ["SCHEMA_VERSION", "PgEngine"]

T = TypeVar("T")
Conn = psycopg.Connection[Any]
_MAX_BATCH = 256
_MAX_TRIES = 5
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "


def _lost(conn: Conn) -> bool:
    return conn.broken or conn.closed


class _Txn:
    """The reads both transactions share; `_run` is where statements go."""

    def __init__(self, tables: dict[str, TableSql]) -> None:
        self._tables = tables

    def _run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        raise NotImplementedError

    def get(self, table: str, key: bytes) -> bytes | None:
        row = self._run(self._tables[table].get, (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def scan(self, table: str, start: bytes = b"", prefix: bytes = b"",
             end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        scans = self._tables[table].scans
        low = max(start, prefix)
        high = prefix_end(prefix) if prefix else None
        if end is not None and (high is None or end < high):
            high = end
        first = True
        while high is None or low < high:
            params = (low,) if high is None else (low, high)
            rows = self._run(scans[first, high is not None], params).fetchall()
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < PAGE_ROWS:
                return
            low, first = bytes(rows[-1][0]), False


class _ReadTxn(_Txn):
    """A snapshot on a pooled connection, for `with`. BEGIN goes with the first statement,
    in one round trip (client-side binding: several statements in one message); the
    snapshot is taken by that statement."""

    def __init__(self, engine: PgEngine) -> None:
        super().__init__(engine._tables)
        self._engine = engine
        self._conn: Conn | None = None
        self._open = False

    def __enter__(self) -> _ReadTxn:
        self._open = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._open = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute(b"ROLLBACK")
            except psycopg.Error:
                pass  # a broken connection: the pool drops it
            finally:
                self._engine._pool.putconn(conn)

    def _run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        if not self._open:
            raise RuntimeError("the read transaction is not open (use `with engine.read() as txn`)")
        if self._conn is None:
            return self._begin(query, params)
        try:
            return self._conn.execute(query, params, binary=True)
        except psycopg.OperationalError as exc:
            raise EngineUnavailable(f"catalog database: {exc}") from exc

    def _begin(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        """The first statement, after BEGIN. A pooled connection the server dropped (it
        restarted) fails here, before anything was read: then the pool checks the others
        and this tries once more."""
        pool = self._engine._pool
        for attempt in range(2):
            try:
                conn = pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise EngineUnavailable(f"catalog database {self._engine.location}: no connection") from exc
            try:
                cursor = psycopg.ClientCursor(conn)
                cursor.execute(_BEGIN_READ + query.replace(b"%b", b"%s"), params)
                cursor.nextset()
            except psycopg.OperationalError as exc:
                pool.putconn(conn)
                if attempt or not _lost(conn):
                    raise EngineUnavailable(f"catalog database {self._engine.location}: {exc}") from exc
                pool.check()
                continue
            except BaseException:
                self._conn = conn  # rolled back and returned on exit
                raise
            self._conn = conn
            return cursor
        raise AssertionError("unreachable")


class _Batch:
    """What a batch's writes share: the writer's connection, the advisory locks the batch
    holds, and the transaction control still to send. BEGIN, and the RELEASE SAVEPOINT /
    SAVEPOINT between two writes, go in one message with the next write's first statement
    (client-side binding: several statements in one message): a lone put is two round trips
    (that, and COMMIT)."""

    BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED; SAVEPOINT w; "
    NEXT = b"RELEASE SAVEPOINT w; SAVEPOINT w; "
    UNDO = b"ROLLBACK TO SAVEPOINT w; "  # leaves savepoint w in place for the next write

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.locked: set[int] = set()
        self.pending = self.BEGIN

    def execute(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        if not self.pending:
            return self.conn.execute(query, params, binary=True)
        cursor = psycopg.ClientCursor(self.conn)
        try:
            cursor.execute(self.pending + query.replace(b"%b", b"%s"), params)
        finally:
            self.pending = b""  # sent: the control statements run before `query` (or broke it all)
        while cursor.nextset():
            pass  # to the last statement's result
        return cursor


class _WriteTxn(_Txn):
    """One write of a batch, on the writer's connection inside its savepoint."""

    def __init__(self, tables: dict[str, TableSql], batch: _Batch) -> None:
        super().__init__(tables)
        self._batch = batch
        self.fresh: list[int] = []         # those this write took
        self.statements = 0
        self.fatal: psycopg.Error | None = None  # the batch must roll back and run again

    def _run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        self.statements += 1
        try:
            return self._batch.execute(query, params)
        except psycopg.Error as exc:
            if exc.sqlstate in _RETRY_SQLSTATES or _lost(self._batch.conn):
                self.fatal = exc
            raise

    def _new_lock(self, table: str, key: bytes) -> Int8 | None:
        """The key's lock id if this batch does not hold it yet."""
        self._tables[table]  # an unknown table raises KeyError before anything is locked
        lock = lock_id(table, key)
        return None if lock in self._batch.locked else lock

    def _took(self, lock: Int8) -> None:
        self._batch.locked.add(lock)
        self.fresh.append(lock)

    def get(self, table: str, key: bytes) -> bytes | None:
        lock = self._new_lock(table, key)
        if lock is None:
            return super().get(table, key)
        row = self._run(self._tables[table].lock_get, (lock, key)).fetchone()
        self._took(lock)
        return None if row is None or row[0] is None else bytes(row[0])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        lock = self._new_lock(table, key)
        if lock is None:
            self._run(self._tables[table].put, (key, value))
        else:
            self._run(self._tables[table].lock_put, (lock, key, value))
            self._took(lock)

    def delete(self, table: str, key: bytes) -> bool:
        lock = self._new_lock(table, key)
        if lock is None:
            return self._run(self._tables[table].delete, (key,)).rowcount > 0
        row = self._run(self._tables[table].lock_delete, (lock, key)).fetchone()
        self._took(lock)
        return bool(row and row[0])


class _Retry(Exception):
    """The batch was rolled back for a reason not its own: run it again."""


class _Unknown(Exception):
    """The connection broke during COMMIT: the batch may or may not have committed."""


Batch = list[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]]


class PgEngine:
    name = "postgresql"
    remote = True

    def __init__(self, url: str, tables: tuple[str, ...], pool_size: int = 8,
                 connect_timeout_s: float = 3.0, pool_timeout_s: float = 2.0) -> None:
        self.location = public_location(url)
        self._url = url
        self._tables = {name: TableSql.for_table(name) for name in tables}
        self._connect = {"autocommit": True, "connect_timeout": max(2, round(connect_timeout_s))}
        try:
            with psycopg.connect(url, **self._connect) as conn:  # type: ignore[arg-type]
                create_schema(conn, list(self._tables.values()))
        except psycopg.OperationalError as exc:
            raise EngineUnavailable(f"catalog database {self.location}: {exc}") from exc
        self._pool = psycopg_pool.ConnectionPool(
            url, kwargs={**self._connect, "application_name": "manta-catalog"},
            min_size=1, max_size=pool_size, timeout=pool_timeout_s, open=True, name="manta-catalog",
            # the pool retries a failed connect after 1s, 2s, 4s...: give such an attempt up
            # soon, so that the first read once the database is back starts a fresh one
            reconnect_timeout=1.0)
        self._writer_conn: Conn | None = None
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="catalog-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self._pool.close()

    def read(self) -> _ReadTxn:
        return _ReadTxn(self)

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut

    def write(self, fn: Callable[[Any], T]) -> T:
        return self.submit(fn).result()

    def schema_version(self) -> int:
        with self.read() as txn:
            row = txn._run(b"SELECT version FROM manta_schema", ()).fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        with self.read() as txn:
            return {name: int(txn._run(sql.count, ()).fetchone()[0])  # type: ignore[index]
                    for name, sql in self._tables.items()}

    def _write_loop(self) -> None:
        try:
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
                # as in LmdbEngine: a write cancelled before it ran is not applied
                batch = [(fn, fut) for fn, fut in batch if fut.set_running_or_notify_cancel()]
                if batch:
                    self._apply(batch)
        finally:
            if self._writer_conn is not None:
                self._writer_conn.close()

    def _apply(self, batch: Batch) -> None:
        failure: BaseException
        for attempt in range(_MAX_TRIES):
            if attempt:
                time.sleep(0.01 * 2 ** attempt)
            try:
                conn = self._writer_connection()
            except psycopg.OperationalError as exc:
                failure = EngineUnavailable(f"catalog database {self.location}: {exc}")
                break
            try:
                outcomes = self._run_batch(conn, batch)
            except _Retry as exc:
                failure = EngineUnavailable(f"catalog write gave up after {_MAX_TRIES} tries: {exc}")
                self._abandon(conn)
                continue
            except _Unknown as exc:
                failure = EngineUnavailable(f"catalog commit outcome unknown: {exc}")
                self._abandon(conn)
                break
            except BaseException as exc:  # noqa: BLE001 - delivered to every caller
                failure = exc
                self._abandon(conn)
                break
            for (ok, value), (_, fut) in zip(outcomes, batch, strict=True):
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return
        for _, fut in batch:
            fut.set_exception(failure)

    def _writer_connection(self) -> Conn:
        if self._writer_conn is None or _lost(self._writer_conn):
            self._writer_conn = psycopg.connect(
                self._url, **self._connect, application_name="manta-catalog-writer")  # type: ignore[arg-type]
        return self._writer_conn

    def _abandon(self, conn: Conn) -> None:
        """Roll the batch back, or drop a connection that broke."""
        if not _lost(conn):
            try:
                conn.execute("ROLLBACK")
                return
            except psycopg.Error:
                pass
        conn.close()
        self._writer_conn = None

    def _run_batch(self, conn: Conn, writes: Batch) -> list[tuple[bool, Any]]:
        """Every write in its savepoint, then COMMIT: (ok, result or exception) per write."""
        batch = _Batch(conn)
        outcomes: list[tuple[bool, Any]] = []
        for fn, _ in writes:
            txn = _WriteTxn(self._tables, batch)
            try:
                result = fn(txn)
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                if txn.fatal is not None:
                    raise _Retry(str(txn.fatal)) from txn.fatal
                if txn.statements:
                    batch.pending = batch.UNDO
                    batch.locked.difference_update(txn.fresh)
                outcomes.append((False, exc))
                continue
            if txn.fatal is not None:  # the write caught the error and returned
                raise _Retry(str(txn.fatal)) from txn.fatal
            if txn.statements:
                batch.pending = batch.NEXT
            outcomes.append((True, result))
        if batch.pending == batch.BEGIN:
            return outcomes  # no write sent a statement: nothing to commit
        commit = (batch.UNDO if batch.pending == batch.UNDO else b"") + b"COMMIT"
        try:
            cursor = conn.execute(commit)
            while cursor.nextset():
                pass
        except psycopg.Error as exc:
            if _lost(conn):
                raise _Unknown(str(exc)) from exc
            if exc.sqlstate in _RETRY_SQLSTATES:
                raise _Retry(str(exc)) from exc
            raise
        if cursor.statusmessage != "COMMIT":  # the answer to COMMIT in a failed transaction
            raise RuntimeError(f"the catalog batch did not commit: {cursor.statusmessage}")
        return outcomes
