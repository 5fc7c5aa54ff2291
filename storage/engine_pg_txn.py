"""The PostgreSQL engine's transactions (storage/engine_pg.py has the design): a snapshot
read on a pooled connection, and the writes of one group-committed batch on the writer's
connection."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool
from psycopg.types.numeric import Int8

from storage.engine import EngineUnavailable, prefix_end
from storage.engine_pg_schema import PAGE_ROWS, TableSql, lock_id
from storage.engine_pg_skip import scan_skip

__all__ = ["RETRY_SQLSTATES", "Batch", "Conn", "ReadTxn", "WriteTxn", "lost"]

Conn = psycopg.Connection[Any]
RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "


def lost(conn: Conn) -> bool:
    return conn.broken or conn.closed


class _Txn:
    """The reads both transactions share; `run` is where statements go."""

    def __init__(self, tables: dict[str, TableSql]) -> None:
        self._tables = tables

    def run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        raise NotImplementedError

    def get(self, table: str, key: bytes) -> bytes | None:
        row = self.run(self._tables[table].get, (key,)).fetchone()
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
            rows = self.run(scans[first, high is not None], params).fetchall()
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < PAGE_ROWS:
                return
            low, first = bytes(rows[-1][0]), False


    def scan_skip(self, table: str, start: bytes, prefix: bytes, delimiter: bytes,
                  cut: int) -> Iterator[tuple[bytes, bytes]]:
        return scan_skip(self.run, f"manta_{self._tables[table].table}", start, prefix, delimiter, cut)


class ReadTxn(_Txn):
    """A snapshot on a pooled connection, for `with`. BEGIN goes with the first statement,
    in one round trip (client-side binding: several statements in one message); the
    snapshot is taken by that statement."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], tables: dict[str, TableSql],
                 location: str) -> None:
        super().__init__(tables)
        self._pool = pool
        self._location = location
        self._conn: Conn | None = None
        self._open = False

    def __enter__(self) -> ReadTxn:
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
                self._pool.putconn(conn)

    def run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
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
        pool = self._pool
        for attempt in range(2):
            try:
                conn = pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise EngineUnavailable(f"catalog database {self._location}: no connection") from exc
            try:
                cursor = psycopg.ClientCursor(conn)
                cursor.execute(_BEGIN_READ + query.replace(b"%b", b"%s"), params)
                cursor.nextset()
            except psycopg.OperationalError as exc:
                pool.putconn(conn)
                if attempt or not lost(conn):
                    raise EngineUnavailable(f"catalog database {self._location}: {exc}") from exc
                pool.check()
                continue
            except BaseException:
                self._conn = conn  # rolled back and returned on exit
                raise
            self._conn = conn
            return cursor
        raise AssertionError("unreachable")


class Batch:
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


class WriteTxn(_Txn):
    """One write of a batch, on the writer's connection inside its savepoint."""

    def __init__(self, tables: dict[str, TableSql], batch: Batch) -> None:
        super().__init__(tables)
        self._batch = batch
        self.fresh: list[int] = []         # those this write took
        self.statements = 0
        self.fatal: psycopg.Error | None = None  # the batch must roll back and run again

    def run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        self.statements += 1
        try:
            return self._batch.execute(query, params)
        except psycopg.Error as exc:
            if exc.sqlstate in RETRY_SQLSTATES or lost(self._batch.conn):
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
        row = self.run(self._tables[table].lock_get, (lock, key)).fetchone()
        self._took(lock)
        return None if row is None or row[0] is None else bytes(row[0])

    def put(self, table: str, key: bytes, value: bytes) -> None:
        lock = self._new_lock(table, key)
        if lock is None:
            self.run(self._tables[table].put, (key, value))
        else:
            self.run(self._tables[table].lock_put, (lock, key, value))
            self._took(lock)

    def delete(self, table: str, key: bytes) -> bool:
        lock = self._new_lock(table, key)
        if lock is None:
            return self.run(self._tables[table].delete, (key,)).rowcount > 0
        row = self.run(self._tables[table].lock_delete, (lock, key)).fetchone()
        self._took(lock)
        return bool(row and row[0])
