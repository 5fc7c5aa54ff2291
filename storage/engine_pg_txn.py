"""The PostgreSQL engine's transactions (storage/engine_pg.py has the design): a snapshot
read on a pooled connection (`ReadConns` keeps the connections that ended a read parked in
its transaction, so that its ROLLBACK travels with the next BEGIN), and the writes of one
group-committed batch on the writer's connection, with the batch's key cache and its
write-behind buffer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool
from psycopg.types.numeric import Int8

from storage.engine import EngineUnavailable, prefix_end
from storage.engine_pg_schema import PAGE_ROWS, TableSql, lock_id
from storage.engine_pg_skip import scan_skip

__all__ = ["RETRY_SQLSTATES", "Batch", "Conn", "ReadConns", "ReadTxn", "WriteTxn", "lost"]

Conn = psycopg.Connection[Any]
RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
_UNKNOWN = object()  # a key whose value the batch does not know


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


class ReadConns:
    """The connections reads run on: the pool's, plus those parked in the transaction of the
    read that last used them. A read takes a parked one first (the newest) and sends its
    ROLLBACK with its own BEGIN and first statement, in one round trip; a connection parked
    longer than `park_s` is rolled back and returned to the pool by the reaper, so that no
    snapshot holds back vacuum (or a DDL lock) for longer than about 1.5 x `park_s`."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], location: str,
                 park_s: float = 0.5) -> None:
        self.pool = pool
        self.location = location
        self.park_s = park_s
        self._parked: list[tuple[float, Conn]] = []
        self._waiting = 0  # reads waiting on the pool
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="catalog-read-reaper", daemon=True)
        self._reaper.start()

    def take(self) -> tuple[Conn, bool]:
        """A connection, and whether it is still in its last read's transaction."""
        with self._lock:
            if self._parked:
                return self._parked.pop()[1], True
            self._waiting += 1
        try:
            return self.pool.getconn(), False
        except psycopg_pool.PoolTimeout as exc:
            raise EngineUnavailable(f"catalog database {self.location}: no connection") from exc
        finally:
            with self._lock:
                self._waiting -= 1

    def park(self, conn: Conn) -> None:
        """After a read: keep `conn` with its transaction open (to roll back later)."""
        with self._lock:
            if not (lost(conn) or self._stop.is_set() or self._waiting):
                self._parked.append((time.monotonic(), conn))
                return
        self.give_back(conn)  # to a read waiting on the pool, which parked ones never reach

    def give_back(self, conn: Conn) -> None:
        """Roll back and return to the pool (which drops a broken connection)."""
        if not lost(conn):
            try:
                conn.execute(b"ROLLBACK")
            except psycopg.Error:
                pass
        self.pool.putconn(conn)

    def reap(self, parked_before: float) -> None:
        with self._lock:
            old = [conn for at, conn in self._parked if at < parked_before]
            self._parked = [(at, conn) for at, conn in self._parked if at >= parked_before]
        for conn in old:
            self.give_back(conn)

    def close(self) -> None:
        self._stop.set()
        self._reaper.join()
        self.reap(float("inf"))

    def _reap_loop(self) -> None:
        while not self._stop.wait(self.park_s / 2):
            self.reap(time.monotonic() - self.park_s)


class ReadTxn(_Txn):
    """A snapshot on a pooled connection, for `with`. BEGIN goes with the first statement,
    in one round trip (client-side binding: several statements in one message), after the
    ROLLBACK of the connection's previous read; the snapshot is taken by that statement."""

    def __init__(self, conns: ReadConns, tables: dict[str, TableSql]) -> None:
        super().__init__(tables)
        self._conns = conns
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
            self._conns.park(conn)

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
        """The first statement, after BEGIN. A connection the server dropped (it restarted)
        fails here, before anything was read: then the pool checks the others and this
        tries once more."""
        conns = self._conns
        for attempt in range(2):
            conn, in_txn = conns.take()
            try:
                cursor = psycopg.ClientCursor(conn)
                cursor.execute((b"ROLLBACK; " if in_txn else b"") + _BEGIN_READ
                               + query.replace(b"%b", b"%s"), params)
                while cursor.nextset():
                    pass  # to the first statement's result
            except psycopg.OperationalError as exc:
                conns.give_back(conn)
                if attempt or not lost(conn):
                    raise EngineUnavailable(f"catalog database {conns.location}: {exc}") from exc
                conns.reap(float("inf"))  # the parked ones broke too
                conns.pool.check()
                continue
            except BaseException:
                self._conn = conn  # rolled back on its next use
                raise
            self._conn = conn
            return cursor
        raise AssertionError("unreachable")


class Batch:
    """What a batch's writes share: the writer's connection, the advisory locks the batch
    holds, the values of the keys it knows (`cache`: each key it holds the lock of, or has
    put), and the SQL still to send (`unsent`): BEGIN, the finished writes' buffered puts
    and deletes, and the RELEASE SAVEPOINT / SAVEPOINT between two writes, which go in one
    message with the next statement (client-side binding: several statements in one
    message), or with COMMIT. `write_behind` False sends every put and delete at once (a
    batch run again after a failure in a message that carried other writes' statements)."""

    BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED; SAVEPOINT w; "
    NEXT = b"RELEASE SAVEPOINT w; SAVEPOINT w; "
    UNDO = b"ROLLBACK TO SAVEPOINT w; "  # leaves savepoint w in place for the next write

    def __init__(self, conn: Conn, write_behind: bool = True) -> None:
        self.conn = conn
        self.write_behind = write_behind
        self.locked: set[int] = set()
        self.cache: dict[tuple[str, bytes], bytes | None] = {}
        self.unsent = bytearray(self.BEGIN)
        self.carries = False  # `unsent` holds finished writes' puts or deletes
        self.sent = False
        self._render = psycopg.ClientCursor(conn)

    def render(self, query: bytes, params: tuple[Any, ...]) -> bytes:
        """One statement as SQL text with its values inline, to send later."""
        return self._render.mogrify(query.replace(b"%b", b"%s"), params).encode() + b"; "

    def execute(self, query: bytes, params: tuple[Any, ...], buffered: bytearray) -> psycopg.Cursor[Any]:
        """Send `unsent`, then a write's `buffered` statements, then `query`; its result."""
        self.sent = True
        if not self.unsent and not buffered:
            return self.conn.execute(query, params, binary=True)
        head = bytes(self.unsent + buffered).replace(b"%", b"%%")
        cursor = psycopg.ClientCursor(self.conn)
        try:
            cursor.execute(head + query.replace(b"%b", b"%s"), params)
        finally:
            self.unsent.clear()  # sent: it runs before `query` (or broke it all)
            self.carries = False
            buffered.clear()
        while cursor.nextset():
            pass  # to the last statement's result
        return cursor


class WriteTxn(_Txn):
    """One write of a batch, on the writer's connection inside its savepoint. What it reads
    and writes goes to its own `cache` (merged into the batch's when it succeeds); its puts
    and deletes wait in `buffered` for its next statement (a scan's page included, so a scan
sees them), or for the batch's next message."""

    def __init__(self, tables: dict[str, TableSql], batch: Batch) -> None:
        super().__init__(tables)
        self._batch = batch
        self.fresh: list[int] = []         # the locks this write took (or will, when sent)
        self.cache: dict[tuple[str, bytes], bytes | None] = {}
        self.buffered = bytearray()
        self.statements = 0                # messages sent
        self.carried = False               # a message it sent carried other writes' statements
        self.fatal: psycopg.Error | None = None  # the batch must roll back and run again

    def run(self, query: bytes, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        self.statements += 1
        carried = self._batch.carries
        try:
            return self._batch.execute(query, params, self.buffered)
        except psycopg.Error as exc:
            if exc.sqlstate in RETRY_SQLSTATES or lost(self._batch.conn) or carried:
                self.fatal = exc
                self.carried = carried
            raise

    def finish(self, ok: bool) -> None:
        """After the write function returned (`ok`) or raised: hand the batch what it keeps."""
        batch = self._batch
        if ok:
            batch.cache.update(self.cache)
            if self.buffered:
                batch.unsent += self.buffered
                batch.carries = True
            if self.statements or self.buffered:
                batch.unsent += batch.NEXT
        else:
            if self.statements:
                batch.unsent += batch.UNDO
            batch.locked.difference_update(self.fresh)
        self.buffered = bytearray()

    def _known(self, table: str, key: bytes) -> Any:
        """The key's value if this batch knows it, else _UNKNOWN."""
        self._tables[table]  # an unknown table raises KeyError before anything is locked
        found = self.cache.get((table, key), _UNKNOWN)
        if found is _UNKNOWN:
            found = self._batch.cache.get((table, key), _UNKNOWN)
        return found

    def _new_lock(self, table: str, key: bytes) -> Int8 | None:
        """The key's lock id if this batch does not hold it yet (and now takes it)."""
        lock = lock_id(table, key)
        if lock in self._batch.locked:
            return None
        self._batch.locked.add(lock)
        self.fresh.append(lock)
        return lock

    def _send_or_buffer(self, query: bytes, params: tuple[Any, ...]) -> None:
        if self._batch.write_behind:
            self.buffered += self._batch.render(query, params)
        else:
            self.run(query, params)

    def get(self, table: str, key: bytes) -> bytes | None:
        found = self._known(table, key)
        if found is not _UNKNOWN:
            return found  # type: ignore[no-any-return]
        lock = self._new_lock(table, key)
        if lock is None:
            value = super().get(table, key)
        else:
            row = self.run(self._tables[table].lock_get, (lock, key)).fetchone()
            value = None if row is None or row[0] is None else bytes(row[0])
        self.cache[table, key] = value
        return value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self._tables[table]
        lock = self._new_lock(table, key)
        if lock is None:
            self._send_or_buffer(self._tables[table].put, (key, value))
        else:
            self._send_or_buffer(self._tables[table].lock_put, (lock, key, value))
        self.cache[table, key] = bytes(value)

    def delete(self, table: str, key: bytes) -> bool:
        found = self._known(table, key)
        lock = self._new_lock(table, key)
        if found is not _UNKNOWN and self._batch.write_behind:
            if lock is None:
                self._send_or_buffer(self._tables[table].delete, (key,))
            else:
                self._send_or_buffer(self._tables[table].lock_delete, (lock, key))
            existed = found is not None
        elif lock is None:
            existed = self.run(self._tables[table].delete, (key,)).rowcount > 0
        else:
            row = self.run(self._tables[table].lock_delete, (lock, key)).fetchone()
            existed = bool(row and row[0])
        self.cache[table, key] = None
        return existed
