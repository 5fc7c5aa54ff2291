"""The PostgreSQL engine's transactions (storage/engine_pg.py has the design): a snapshot
read on a pooled connection (`ReadConns` keeps the connections that ended a read parked in
its transaction, so that its ROLLBACK travels with the next BEGIN), and the writes of one
group-committed batch on the writer's connection, with the batch's key cache and its
write-behind buffer. Statements go straight through libpq (`Wire`)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.types.numeric import Int8

from storage.engine import EngineUnavailable, prefix_end
from storage.engine_pg_schema import PAGE_ROWS, TableSql, lock_id
from storage.engine_pg_skip import scan_skip

__all__ = ["RETRY_SQLSTATES", "Batch", "Conn", "ReadConns", "ReadTxn", "Wire", "WriteTxn", "lost"]

Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]
RETRY_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_BEGIN_READ = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
_UNKNOWN = object()  # a key whose value the batch does not know
_OK = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY})
_BYTEA, _BOOL, _INTS = 17, 16, frozenset({20, 21, 23})  # type oids


def lost(conn: Conn) -> bool:
    return conn.broken or conn.closed


def render(query: bytes, params: tuple[Any, ...]) -> bytes:
    """`query` with its `%b` placeholders replaced by literals (bytes as decode(hex), ints)."""
    parts = query.split(b"%b")
    out = [parts[0]]
    for value, part in zip(params, parts[1:], strict=True):
        if isinstance(value, int):
            out.append(b"%d" % value)
        else:
            out += (b"decode('", bytes(value).hex().encode(), b"', 'hex')")
        out.append(part)
    return b"".join(out)


def _value(res: pq.abc.PGresult, row: int, col: int) -> Any:
    raw = res.get_value(row, col)
    if raw is None:
        return None
    oid = res.ftype(col)
    if res.fformat(col):  # binary
        if oid == _BYTEA:
            return raw
        if oid == _BOOL:
            return raw == b"\x01"
        if oid in _INTS:
            return int.from_bytes(raw, "big", signed=True)
    else:
        if oid == _BYTEA:
            return bytes.fromhex(raw[2:].decode())  # \x...
        if oid == _BOOL:
            return raw == b"t"
        if oid in _INTS:
            return int(raw)
    return raw.decode()


class Wire:
    """Statements straight through libpq (psycopg's `pgconn`): psycopg's cursors cost
    three times the client CPU of the libpq call itself, and the engine needs none of what
    they add. `run` sends one statement with binary parameters and results, prepared once
    per connection (the `%b` placeholders become $1, $2...); `text` sends several
    statements in one message (simple protocol, values inline: `render`) and answers the
    last one's result. Results are lists of tuples (bytea as bytes, bool, int)."""

    def __init__(self) -> None:
        self._names: dict[bytes, tuple[bytes, bytes]] = {}
        self._prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def run(self, conn: Conn, query: bytes, params: tuple[Any, ...]) -> list[Row]:
        pgconn = conn.pgconn
        with self._lock:
            named = self._names.get(query)
            if named is None:
                parts = query.split(b"%b")
                numbered = b"".join(part + (b"$%d" % n if n < len(parts) else b"")
                                    for n, part in enumerate(parts, 1))
                named = self._names[query] = (b"manta_%d" % len(self._names), numbered)
            done = self._prepared.setdefault(pgconn, set())
        name = named[0]
        if name not in done:
            self._check(conn, pgconn.prepare(name, named[1]))
            done.add(name)
        # bytes in binary, ints in text (a text int fits a parameter of any integer type)
        values = [b"%d" % v if isinstance(v, int) else bytes(v) for v in params]
        formats = [0 if isinstance(v, int) else 1 for v in params]
        return self._rows(self._check(conn, pgconn.exec_prepared(name, values, formats, 1)))

    def text(self, conn: Conn, sql: bytes) -> pq.abc.PGresult:
        return self._check(conn, conn.pgconn.exec_(sql))

    def rows(self, conn: Conn, sql: bytes) -> list[Row]:
        return self._rows(self.text(conn, sql))

    @staticmethod
    def _rows(res: pq.abc.PGresult) -> list[Row]:
        fields = range(res.nfields)
        return [tuple(_value(res, row, col) for col in fields) for row in range(res.ntuples)]

    @staticmethod
    def _check(conn: Conn, res: pq.abc.PGresult) -> pq.abc.PGresult:
        if res.status in _OK:
            return res
        if lost(conn):
            raise psycopg.OperationalError((res.error_message or b"connection lost").decode(errors="replace"))
        raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


class _Txn:
    """The reads both transactions share; `run` is where statements go."""

    def __init__(self, tables: dict[str, TableSql]) -> None:
        self._tables = tables

    def run(self, query: bytes, params: tuple[Any, ...]) -> list[Row]:
        raise NotImplementedError

    def get(self, table: str, key: bytes) -> bytes | None:
        rows = self.run(self._tables[table].get, (key,))
        return rows[0][0] if rows else None

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
            rows = self.run(scans[first, high is not None], params)
            yield from rows  # type: ignore[misc]
            if len(rows) < PAGE_ROWS:
                return
            low, first = rows[-1][0], False

    def scan_skip(self, table: str, start: bytes, prefix: bytes, delimiter: bytes,
                  cut: int) -> Iterator[tuple[bytes, bytes]]:
        return scan_skip(self.run, f"manta_{self._tables[table].table}", start, prefix, delimiter, cut)


class ReadConns:
    """The connections reads run on: the pool's, plus those parked in the transaction of the
    read that last used them. A read takes a parked one first (the newest) and sends its
    ROLLBACK with its own BEGIN and first statement, in one round trip; a connection parked
    longer than `park_s` is rolled back and returned to the pool by the reaper, so that no
    snapshot holds back vacuum (or a DDL lock) for longer than about 1.5 x `park_s`."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], wire: Wire, location: str,
                 park_s: float = 0.5) -> None:
        self.pool = pool
        self.wire = wire
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
                self.wire.text(conn, b"ROLLBACK")
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

    def run(self, query: bytes, params: tuple[Any, ...]) -> list[Row]:
        if not self._open:
            raise RuntimeError("the read transaction is not open (use `with engine.read() as txn`)")
        if self._conn is None:
            return self._begin(query, params)
        try:
            return self._conns.wire.run(self._conn, query, params)
        except psycopg.OperationalError as exc:
            raise EngineUnavailable(f"catalog database: {exc}") from exc

    def _begin(self, query: bytes, params: tuple[Any, ...]) -> list[Row]:
        """The first statement, after BEGIN. A connection the server dropped (it restarted)
        fails here, before anything was read: then the pool checks the others and this
        tries once more."""
        conns = self._conns
        for attempt in range(2):
            conn, in_txn = conns.take()
            try:
                rows = conns.wire.rows(conn, (b"ROLLBACK; " if in_txn else b"") + _BEGIN_READ
                                       + render(query, params))
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
            return rows
        raise AssertionError("unreachable")


class Batch:
    """What a batch's writes share: the writer's connection, the advisory locks the batch
    holds, the values of the keys it knows (`cache`: each key it holds the lock of, or has
    put), and the SQL still to send (`unsent`: BEGIN, finished writes' puts and deletes,
    savepoint steps), which goes in one message with the next statement, or with COMMIT.

    Two modes. Write-behind (the default): a write sends only reads (each key's lock and
    value) while it runs and buffers its puts and deletes; they join `unsent` when it
    returns, and are dropped when it raises. Its reads changed nothing, so it needs no
    savepoint, and the locks a failed write took stay held until COMMIT (over-locking, no
    harm). Only a scan sends the write's buffered changes early (a scan sees its own
    write's changes), inside a savepoint opened then. Any SQL error rolls the whole batch
    back to run again in the eager mode: every write in a savepoint, every put and delete
    sent at once, so that an error lands on the write that caused it, which alone rolls
    back."""

    BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED; "
    OPEN = b"SAVEPOINT w; "
    CLOSE = b"RELEASE SAVEPOINT w; "
    UNDO = b"ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w; "

    def __init__(self, conn: Conn, wire: Wire, write_behind: bool = True) -> None:
        self.conn = conn
        self.wire = wire
        self.write_behind = write_behind
        self.locked: set[int] = set()
        self.cache: dict[tuple[str, bytes], bytes | None] = {}
        self.unsent = bytearray(self.BEGIN)
        self.sent = False

    def execute(self, head: bytes, query: bytes, params: tuple[Any, ...]) -> list[Row]:
        """Send `unsent`, then `head` (a write's own statements), then `query`; its rows."""
        self.sent = True
        if not self.unsent and not head:
            return self.wire.run(self.conn, query, params)
        message = bytes(self.unsent) + head + render(query, params)
        self.unsent.clear()  # sent: it runs before `query` (or broke it all)
        return self.wire.rows(self.conn, message)


class WriteTxn(_Txn):
    """One write of a batch (see `Batch` for the two modes). What it reads and writes goes
    to its own `cache`, merged into the batch's when it succeeds."""

    def __init__(self, tables: dict[str, TableSql], batch: Batch) -> None:
        super().__init__(tables)
        self._batch = batch
        self.fresh: list[int] = []         # the locks this write took (or will, when sent)
        self.cache: dict[tuple[str, bytes], bytes | None] = {}
        self.buffered = bytearray()        # its puts and deletes, not sent yet
        self.saved = False                 # it opened savepoint w
        self.fatal: psycopg.Error | None = None  # the batch must roll back and run again
        self.eager = False                 # ... in the eager mode
        if not batch.write_behind:
            batch.unsent += batch.OPEN
            self.saved = True

    def run(self, query: bytes, params: tuple[Any, ...], own: bool = True) -> list[Row]:
        """Send `query` (after what the batch has unsent and, with `own`, this write's
        buffered changes); its rows."""
        head = b""
        if own and self.buffered:
            head = (b"" if self.saved else self._batch.OPEN) + bytes(self.buffered)
            self.saved = True
            self.buffered.clear()
        try:
            return self._batch.execute(head, query, params)
        except psycopg.Error as exc:
            if exc.sqlstate in RETRY_SQLSTATES or lost(self._batch.conn):
                self.fatal = exc
            elif self._batch.write_behind:
                self.fatal, self.eager = exc, True
            raise

    def finish(self, ok: bool) -> None:
        """After the write function returned (`ok`) or raised: hand the batch what it keeps."""
        batch = self._batch
        if ok:
            batch.cache.update(self.cache)
            batch.unsent += self.buffered
            if self.saved:
                batch.unsent += batch.CLOSE
        else:
            if self.saved:
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

    def _change(self, query: bytes, params: tuple[Any, ...]) -> None:
        if self._batch.write_behind:
            self.buffered += render(query, params) + b"; "
        else:
            self.run(query, params)

    def get(self, table: str, key: bytes) -> bytes | None:
        found = self._known(table, key)
        if found is not _UNKNOWN:
            return found  # type: ignore[no-any-return]
        sql = self._tables[table]
        lock = self._new_lock(table, key)
        rows = (self.run(sql.get, (key,), own=False) if lock is None
                else self.run(sql.lock_get, (lock, key), own=False))
        value = rows[0][0] if rows else None
        self.cache[table, key] = value
        return value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        sql = self._tables[table]
        lock = self._new_lock(table, key)
        self._change(sql.put, (key, value)) if lock is None else self._change(sql.lock_put, (lock, key, value))
        self.cache[table, key] = bytes(value)  # not a caller's buffer that may change

    def delete(self, table: str, key: bytes) -> bool:
        sql = self._tables[table]
        if self._batch.write_behind:
            existed = self.get(table, key) is not None  # known, or read now (and locked)
            if existed:
                self._change(sql.delete, (key,))
        else:
            lock = self._new_lock(table, key)
            if lock is None:
                existed = bool(self.run(sql.delete, (key,)))
            else:
                existed = bool(self.run(sql.lock_delete, (lock, key))[0][0])
        self.cache[table, key] = None
        return existed
