"""The PostgreSQL engine's transactions (storage/engine_pg.py has the design): a snapshot
read on a pooled connection (`ReadConns` keeps the connections that ended a read parked in
its transaction, so that its ROLLBACK travels with the next BEGIN), and the writes of one
group-committed batch on the writer's connection, with the batch's key cache and its
write-behind buffer. Statements go straight through libpq (`Wire`)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable, Iterator
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
_PREFETCH_COLUMNS = 256  # keys a prefetch statement reads (a row holds at most 1,664 columns)


def lost(conn: Conn) -> bool:
    return conn.broken or conn.closed


def literal(value: bytes) -> bytes:
    """`value` as a bytea literal in SQL text."""
    return b"decode('" + bytes(value).hex().encode() + b"', 'hex')"


def render(query: bytes, params: tuple[Any, ...]) -> bytes:
    """`query` with its `%b` placeholders replaced by literals (bytes as decode(hex), ints)."""
    parts = query.split(b"%b")
    out = [parts[0]]
    for value, part in zip(params, parts[1:], strict=True):
        out.append(b"%d" % value if isinstance(value, int) else literal(value))
        out.append(part)
    return b"".join(out)


Changes = dict[tuple[str, bytes], "bytes | None"]  # (table, key) -> its new value; None: deleted


def changes_sql(tables: dict[str, TableSql], changes: Changes, locks: list[int]) -> bytes:
    """The statements that make `changes`: the key locks not taken yet (one statement), then
    per table one multi-row upsert and one multi-row delete, in key order (locks in id
    order), so that two front doors take them in the same order."""
    out = bytearray()
    if locks:
        out += (b"SELECT pg_advisory_xact_lock(l) FROM (VALUES "
                + b", ".join(b"(%d::int8)" % lock for lock in sorted(locks)) + b") x(l); ")
    by_table: dict[str, list[tuple[bytes, bytes | None]]] = {}
    for (table, key), value in changes.items():
        by_table.setdefault(table, []).append((key, value))
    for table, rows in sorted(by_table.items()):
        rows.sort(key=lambda row: row[0])
        ident = tables[table].ident
        puts = [b"(" + literal(key) + b", " + literal(value) + b")" for key, value in rows if value is not None]
        gone = [literal(key) for key, value in rows if value is None]
        if puts:
            out += (b"INSERT INTO " + ident + b" (k, v) VALUES " + b", ".join(puts)
                    + b" ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v; ")
        if gone:
            out += b"DELETE FROM " + ident + b" WHERE k IN (" + b", ".join(gone) + b"); "
    return bytes(out)


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
    ROLLBACK of the connection's previous read; the snapshot is taken by that statement.
    A key read twice in one snapshot is read once (a GET's bucket: its check, then the
    object's)."""

    def __init__(self, conns: ReadConns, tables: dict[str, TableSql]) -> None:
        super().__init__(tables)
        self._conns = conns
        self._conn: Conn | None = None
        self._open = False
        self._seen: dict[tuple[str, bytes], bytes | None] = {}

    def __enter__(self) -> ReadTxn:
        self._open = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._open = False
        self._seen = {}
        conn, self._conn = self._conn, None
        if conn is not None:
            self._conns.park(conn)

    def get(self, table: str, key: bytes) -> bytes | None:
        if (table, key) in self._seen:
            return self._seen[table, key]
        found = self._seen[table, bytes(key)] = super().get(table, key)
        return found

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
    put), the SQL still to send (`unsent`: BEGIN, savepoint steps), which goes in one
    message with the next statement or with COMMIT, and the changes of its finished writes
    not sent yet (`pending`, with the locks of keys they put without reading them first).

    Two modes. Write-behind (the default): a write sends only reads while it runs (each
    key's lock and value) and keeps its puts and deletes; they join `pending` when it
    returns, and are dropped when it raises. Its reads changed nothing, so it needs no
    savepoint, and the locks a failed write took stay held until COMMIT (over-locking, no
    harm). `pending` is sent at COMMIT as one multi-row statement per table and kind (the
    last value of a key is all that is written: the usage row a whole batch of PUTs
    charges is one row), or earlier, before a scan (a scan sees the batch's changes and its
    own write's, which it sends inside a savepoint opened then). Any SQL error rolls the
    whole batch back to run again in the eager mode: every write in a savepoint, every put
    and delete sent at once, so that an error lands on the write that caused it, which
    alone rolls back."""

    BEGIN = b"BEGIN ISOLATION LEVEL READ COMMITTED; "
    OPEN = b"SAVEPOINT w; "
    CLOSE = b"RELEASE SAVEPOINT w; "
    UNDO = b"ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w; "

    def __init__(self, conn: Conn, wire: Wire, tables: dict[str, TableSql], write_behind: bool = True) -> None:
        self.conn = conn
        self.wire = wire
        self.tables = tables
        self.write_behind = write_behind
        self.locked: set[int] = set()
        self.cache: dict[tuple[str, bytes], bytes | None] = {}
        self.unsent = bytearray(self.BEGIN)
        self.pending: Changes = {}
        self.pending_locks: list[int] = []
        self.sent = False

    def flush(self) -> None:
        """Move the pending changes into `unsent`."""
        if self.pending or self.pending_locks:
            self.unsent += changes_sql(self.tables, self.pending, self.pending_locks)
            self.pending, self.pending_locks = {}, []

    def execute(self, head: bytes, query: bytes, params: tuple[Any, ...], text: bool = False) -> list[Row]:
        """Send `unsent`, then `head` (a write's own statements), then `query` (`text`: SQL
        with its values inline, never prepared); its rows."""
        self.sent = True
        if not self.unsent and not head and not text:
            return self.wire.run(self.conn, query, params)
        message = bytes(self.unsent) + head + (query if text else render(query, params))
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
        self.changes: Changes = {}         # its puts and deletes, not sent yet (write-behind)
        self.change_locks: list[int] = []  # the locks of keys it put unread, not taken yet
        self.saved = False                 # it opened savepoint w
        self.fatal: psycopg.Error | None = None  # the batch must roll back and run again
        self.eager = False                 # ... in the eager mode
        if not batch.write_behind:
            batch.unsent += batch.OPEN
            self.saved = True

    def run(self, query: bytes, params: tuple[Any, ...], own: bool = True, text: bool = False) -> list[Row]:
        """Send `query` (after what the batch has unsent and, with `own`, the batch's
        pending changes and this write's); its rows."""
        head = b""
        batch = self._batch
        if own:
            batch.flush()
            if self.changes or self.change_locks:
                head = (b"" if self.saved else batch.OPEN) + changes_sql(self._tables, self.changes,
                                                                       self.change_locks)
                self.saved = True
                self.changes, self.change_locks = {}, []
        try:
            return batch.execute(head, query, params, text)
        except psycopg.Error as exc:
            if exc.sqlstate in RETRY_SQLSTATES or lost(batch.conn):
                self.fatal = exc
            elif batch.write_behind:
                self.fatal, self.eager = exc, True
            raise

    def finish(self, ok: bool) -> None:
        """After the write function returned (`ok`) or raised: hand the batch what it keeps."""
        batch = self._batch
        if ok:
            batch.cache.update(self.cache)
            batch.pending.update(self.changes)
            batch.pending_locks += self.change_locks
            if self.saved:
                batch.unsent += batch.CLOSE
        else:
            if self.saved:
                batch.unsent += batch.UNDO
            batch.locked.difference_update(self.fresh)
        self.changes, self.change_locks = {}, []

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

    def prefetch(self, keys: Iterable[tuple[str, bytes]]) -> None:
        """Lock and read the keys this batch does not know, in one statement (a column
        each: their lock-and-get functions, run left to right)."""
        wanted = list(dict.fromkeys((t, bytes(k)) for t, k in keys if self._known(t, k) is _UNKNOWN))
        if len(wanted) < 2:
            return  # one key costs its own get the same round trip
        for at in range(0, len(wanted), _PREFETCH_COLUMNS):
            chunk = wanted[at:at + _PREFETCH_COLUMNS]
            columns = []
            for table, key in chunk:
                sql, lock = self._tables[table], self._new_lock(table, key)
                columns.append(b"(SELECT v FROM " + sql.ident + b" WHERE k = " + literal(key) + b")"
                               if lock is None else sql.get_fn + b"(%d, " % lock + literal(key) + b")")
            row = self.run(b"SELECT " + b", ".join(columns), (), own=False, text=True)[0]
            for (table, key), value in zip(chunk, row, strict=True):
                self.cache[table, key] = value

    def put(self, table: str, key: bytes, value: bytes) -> None:
        sql = self._tables[table]
        lock = self._new_lock(table, key)
        value = bytes(value)  # not a caller's buffer that may change
        if self._batch.write_behind:
            self.changes[table, key] = value
            if lock is not None:
                self.change_locks.append(lock)
        elif lock is None:
            self.run(sql.put, (key, value))
        else:
            self.run(sql.lock_put, (lock, key, value))
        self.cache[table, key] = value

    def delete(self, table: str, key: bytes) -> bool:
        sql = self._tables[table]
        if self._batch.write_behind:
            existed = self.get(table, key) is not None  # known, or read now (and locked)
            if existed:
                self.changes[table, key] = None
        else:
            lock = self._new_lock(table, key)
            if lock is None:
                existed = bool(self.run(sql.delete, (key,)))
            else:
                existed = bool(self.run(sql.lock_delete, (lock, key))[0][0])
        self.cache[table, key] = None
        return existed
