"""The PostgreSQL catalog engine: the engine contract (storage/engine.py) over psycopg 3, so
that any number of front doors share one catalog. The statements and the schema are in
storage/engine_pg_schema.py, the transactions in storage/engine_pg_txn.py.

Cost: on a small machine the catalog's price is CPU per statement, on both ends of the
socket, more than round trips; so statements go straight through libpq (`Wire`: psycopg's
cursors cost three times the client CPU of the call itself), prepared and binary, and the
engine sends as few as it can.

Reads: `read()` is a REPEATABLE READ READ ONLY transaction on a pooled connection (a
snapshot, like an LMDB read transaction; it never waits for a writer), begun together with
its first statement, whose snapshot it is. At its end the connection is parked with the
transaction open (`ReadConns`), and the next read on it sends ROLLBACK with its BEGIN: a
read of one key is one round trip. A connection parked for more than half a second is
rolled back by a reaper thread (a snapshot held open holds back vacuum), and so is one
that a read waiting on the pool needs. `scan` fetches keyset pages of PAGE_ROWS rows (`k >= start [AND k < end]
ORDER BY k LIMIT n`, then `k > last`), a prefix bounded above by `prefix_end`, so a scan
that stops early costs one page.

Writes: one writer thread per engine, with a connection of its own, drains the queue as
LmdbEngine does: one READ COMMITTED transaction per batch, one COMMIT for the batch, then
the futures resolve. Durable = committed (synchronous_commit). A write that raises rolls
back alone and its exception goes to its caller. How (`Batch`, in engine_pg_txn.py): a
write sends only reads while it runs (each key's lock and value) and keeps its puts and
deletes, which join the batch's pending changes when it returns and are dropped when it
raises; reads change nothing, so no savepoint is needed. The pending changes go with
COMMIT, one multi-row upsert and one multi-row delete per table, each key once with its
last value (or earlier, before a scan: a scan sees its batch's changes, and its own
write's, sent inside a savepoint). Any SQL error then rolls the batch back and runs it
again in the eager mode (a savepoint per write, changes sent at once), where the error
lands on the write that caused it. A write that knows what it will read says so
(`prefetch`): the keys the batch does not know yet are locked and read in one statement,
a column each (a PUT: its bucket, key, owner's usage and new blob, one round trip).

The batch's key cache: once the batch holds a key's lock no other writer can change the
key until COMMIT, so its value (read, or written by the batch) is kept for the rest of the
batch: the bucket record, the owner's usage and account that every PUT of a batch reads
are read once. A write's reads and writes go to a cache of its own, merged into the
batch's when it returns (dropped when it raises); a batch run again starts empty.

Per-key locking, across front doors: the first time a write's batch touches a key (get,
put or delete) it takes a transaction-scoped advisory lock on a 64-bit hash of (table,
key), then reads or writes the row in a separate statement (one round trip: the
`manta_<table>_lock_*` functions); under READ COMMITTED that statement's fresh snapshot sees
the newest committed value, and no other writer changes the key until this batch commits.
The batch remembers its locks (one lock per key per batch; a write that raises forgets its
new ones, though they may stay held until COMMIT; two keys whose hashes collide share a
lock, which only over-locks). Scans inside a write take no locks and each page is a fresh READ COMMITTED
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

Holds (`try_hold`): a session advisory lock on a connection of its own, which PostgreSQL
drops when the connection ends: its holder died, or the database restarted (`lost()`).

Unavailable: when PostgreSQL cannot be reached, reads and writes raise EngineUnavailable
within a few seconds (connect_timeout_s, pool_timeout_s) and work again once it is back:
the pool and the writer reconnect.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from storage.engine import EngineUnavailable, GroupWriter, durable
from storage.engine_pg_schema import (
    SCHEMA_VERSION,
    TableSql,
    create_schema,
    hold_id,
    public_location,
)
from storage.engine_pg_txn import (
    RETRY_SQLSTATES,
    Batch,
    Conn,
    ReadConns,
    ReadTxn,
    Wire,
    WriteTxn,
    lost,
)

__all__ = ["SCHEMA_VERSION", "PgEngine"]

T = TypeVar("T")
_MAX_BATCH = 256
_MAX_TRIES = 5


class _Retry(Exception):
    """The batch was rolled back for a reason not its own: run it again (`eager`: sending
    each put and delete at once, because a failure hit a message that carried buffered
    statements of several writes, and it must land on the write that caused it)."""

    def __init__(self, message: str, eager: bool = False) -> None:
        super().__init__(message)
        self.eager = eager


class _Unknown(Exception):
    """The connection broke during COMMIT: the batch may or may not have committed."""


class _SessionHold:
    """A session advisory lock on a connection of its own: PostgreSQL drops it when the
    connection ends, because its holder died or the database restarted (then `lost()`)."""

    def __init__(self, conn: Conn) -> None:
        self._conn: Conn | None = conn

    def lost(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(b"SELECT 1")  # a dead connection shows on use
        except psycopg.Error:
            return True
        return False

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


Writes = list[tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]]


class PgEngine:
    name = "postgresql"
    remote = True

    def __init__(self, url: str, tables: tuple[str, ...], pool_size: int = 8,
                 connect_timeout_s: float = 3.0, pool_timeout_s: float = 2.0,
                 readonly: bool = False) -> None:
        """`readonly`: only reads and holds (no schema changes; submit() fails)."""
        self.location = public_location(url)
        self._url = url
        self._tables = {name: TableSql.for_table(name) for name in tables}
        self._connect = {"autocommit": True, "connect_timeout": max(2, round(connect_timeout_s))}
        if not readonly:
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
        self._wire = Wire()
        self._reads = ReadConns(self._pool, self._wire, self.location)
        self._writer_conn: Conn | None = None
        self._writer = None if readonly else GroupWriter(self._apply, _MAX_BATCH, self._close_writer_conn)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reads.close()
        self._pool.close()

    def read(self) -> ReadTxn:
        return ReadTxn(self._reads, self._tables)

    def submit(self, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        if self._writer is None:
            raise RuntimeError(f"catalog {self.location} is open read-only")
        return self._writer.submit(fn)

    def write(self, fn: Callable[[Any], T]) -> T:
        return self.submit(fn).result()

    def try_hold(self, name: str) -> _SessionHold | None:
        """pg_try_advisory_lock on a connection of its own. TCP keepalives and a user
        timeout bound how long a dead network keeps `lost()` waiting; the server drops the
        session (and the lock) of a holder that died."""
        try:
            conn = psycopg.connect(
                self._url, **self._connect, application_name=f"manta-hold-{name}",  # type: ignore[arg-type]
                keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
                tcp_user_timeout=10_000)
        except psycopg.OperationalError as exc:
            raise EngineUnavailable(f"catalog database {self.location}: {exc}") from exc
        try:
            row = conn.execute(b"SELECT pg_try_advisory_lock(%s, %s)", hold_id(name)).fetchone()
        except psycopg.OperationalError as exc:
            conn.close()
            raise EngineUnavailable(f"catalog database {self.location}: {exc}") from exc
        if not (row and row[0]):
            conn.close()
            return None
        return _SessionHold(conn)

    def schema_version(self) -> int:
        with self.read() as txn:
            rows = txn.run(b"SELECT version FROM manta_schema", ())
        return int(rows[0][0]) if rows else 0

    def counts(self) -> dict[str, int]:
        with self.read() as txn:
            return {name: int(txn.run(sql.count, ())[0][0]) for name, sql in self._tables.items()}

    def _close_writer_conn(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _apply(self, batch: Writes) -> None:
        failure: BaseException
        eager = False
        for attempt in range(_MAX_TRIES):
            if attempt:
                time.sleep(0.01 * 2 ** attempt)
            try:
                conn = self._writer_connection()
            except psycopg.Error as exc:
                failure = EngineUnavailable(f"catalog database {self.location}: {exc}")
                break
            try:
                outcomes = self._run_batch(conn, batch, eager)
            except _Retry as exc:
                eager = eager or exc.eager
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
        if self._writer_conn is None or lost(self._writer_conn):
            self._writer_conn = psycopg.connect(
                self._url, **self._connect, application_name="manta-catalog-writer")  # type: ignore[arg-type]
        return self._writer_conn

    def _abandon(self, conn: Conn) -> None:
        """Roll the batch back, or drop a connection that broke."""
        if not lost(conn):
            try:
                conn.execute("ROLLBACK")
                return
            except psycopg.Error:
                pass
        conn.close()
        self._writer_conn = None

    def _run_batch(self, conn: Conn, writes: Writes, eager: bool = False) -> list[tuple[bool, Any]]:
        """Every write in its savepoint, then COMMIT: (ok, result or exception) per write."""
        batch = Batch(conn, self._wire, self._tables, write_behind=not eager)
        outcomes: list[tuple[bool, Any]] = []
        for fn, _ in writes:
            txn = WriteTxn(self._tables, batch)
            try:
                result = fn(txn)
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                if txn.fatal is not None:
                    raise _Retry(str(txn.fatal), eager=txn.eager) from txn.fatal
                txn.finish(ok=False)
                outcomes.append((False, exc))
                continue
            if txn.fatal is not None:  # the write caught the error and returned
                raise _Retry(str(txn.fatal), eager=txn.eager) from txn.fatal
            txn.finish(ok=True)
            outcomes.append((True, result))
        batch.flush()
        if not batch.sent and batch.unsent == batch.BEGIN:
            return outcomes  # no write sent or buffered a statement: nothing to commit
        changes = batch.write_behind
        commit = b"COMMIT" if durable(writes) else b"SET LOCAL synchronous_commit TO off; COMMIT"
        try:
            result = self._wire.text(conn, bytes(batch.unsent) + commit)
        except psycopg.Error as exc:
            if lost(conn):
                raise _Unknown(str(exc)) from exc
            if exc.sqlstate in RETRY_SQLSTATES or changes:
                raise _Retry(str(exc), eager=changes) from exc
            raise
        if result.command_status != b"COMMIT":  # the answer to COMMIT in a failed transaction
            raise RuntimeError(f"the catalog batch did not commit: {result.command_status!r}")
        return outcomes
