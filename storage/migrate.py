"""Moving a catalog between engines (`manta admin catalog migrate`), and an operator's look
at one (`manta admin catalog`).

Both engines store the same bytes per table (storage/engine.py), so moving a catalog is
copying each table's (key, value) pairs. `migrate_lmdb` moves the LMDB catalog of a data
dir into a PostgreSQL database, with the server stopped:

    refuse  - another process has the LMDB environment open (a server, a worker), or holds
              its "leader" hold; the target's "leader" hold is taken (a server runs on it);
              the target holds rows. A refusal writes nothing (the target's empty schema
              may be created: opening a PgEngine does that).
    copy    - from one LMDB snapshot, table by table, BATCH_ROWS pairs per engine write
              (through `submit`, never raw SQL), at most IN_FLIGHT writes queued: PostgreSQL
              holds one advisory lock per fresh key written until the commit, and its lock
              table is bounded (max_locks_per_transaction x max_connections: 6,400 by default).
    verify  - per table, rows and a running sha256 over the ordered pairs (`digest`): the
              target's must equal what was read, and a fresh snapshot of the source must too
              (a process that wrote to the LMDB catalog during the copy fails the migration).

The LMDB catalog is left as it was; the operator deletes it once satisfied. A copy that
fails leaves the target partly written: drop and create the database before trying again.

Who has an LMDB environment open: each process that opens one holds a shared fcntl lock on
the first byte of its lock.mdb as long as it keeps it open, so F_GETLK for a write lock
there names another such process. Closing any descriptor of lock.mdb drops every fcntl lock
this process holds on it, LMDB's own included: `LmdbUsers` opens its descriptor before the
engine opens the environment and closes it after the engine closed.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from storage.engine import Engine, Held, ReadTxn, WriteTxn
from storage.engines import open_engine
from storage.errors import StorageError

__all__ = ["BATCH_ROWS", "IN_FLIGHT", "CatalogInfo", "CatalogNotFound", "LmdbUsers",
           "MigrationFailed", "MigrationRefused", "MigrationReport", "TableCopy", "TableDigest",
           "copy_tables", "describe", "digest", "migrate_lmdb", "verify"]

BATCH_ROWS = 1000
IN_FLIGHT = 2
_FLOCK = "hhqqi"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid


class CatalogNotFound(StorageError):
    """No catalog at that location."""


class MigrationRefused(StorageError):
    """The migration did not start: nothing was copied."""


class MigrationFailed(StorageError):
    """The copy or its verification failed: the target holds a partial or different copy."""


@dataclass(frozen=True)
class TableDigest:
    """A table's rows and the sha256 of its ordered (key, value) pairs, each framed by
    their lengths."""

    rows: int
    sha256: str


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    sha256: str
    seconds: float


@dataclass
class MigrationReport:
    source: str   # engine name and location, e.g. "lmdb at /srv/manta/catalog"
    target: str   # the target's location has no password
    tables: list[TableCopy] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "rows": self.rows,
                "seconds": round(self.seconds, 3),
                "tables": {t.table: {"rows": t.rows, "sha256": t.sha256, "seconds": round(t.seconds, 3)}
                           for t in self.tables}}


@dataclass(frozen=True)
class CatalogInfo:
    engine: str
    location: str
    schema_version: int
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "location": self.location,
                "schema_version": self.schema_version, "rows": sum(self.counts.values()),
                "tables": self.counts}


# -- who has an LMDB catalog open -----------------------------------------------------

class LmdbUsers:
    """Other processes that have the LMDB environment at `path` open (see the module
    docstring): open this before opening the environment, close it after closing it."""

    def __init__(self, path: str) -> None:
        try:
            self._fd: int | None = os.open(os.path.join(path, "lock.mdb"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CatalogNotFound(f"no LMDB catalog at {path}") from None

    def other(self) -> int | None:
        """The pid of a process (not this one) that has the environment open, or None."""
        if self._fd is None:
            raise RuntimeError("LmdbUsers is closed")
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(self._fd, fcntl.F_GETLK, probe))
        return None if kind == fcntl.F_UNLCK else int(pid)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- looking, copying, verifying -----------------------------------------------------

def describe(location: str, tables: tuple[str, ...]) -> CatalogInfo:
    """Engine, location, schema version and rows per table of the catalog at `location`
    (an LMDB directory or a postgresql:// URL), opened read-only."""
    if not location.startswith(("postgresql://", "postgres://")) and \
            not os.path.exists(os.path.join(location, "data.mdb")):
        raise CatalogNotFound(f"no LMDB catalog at {location}")
    engine = open_engine(location, tables, readonly=True)
    try:
        try:
            version, counts = engine.schema_version(), engine.counts()
        except Exception as exc:
            if _schema_missing(exc):
                raise CatalogNotFound(f"no manta catalog in {engine.location}") from None
            raise
        return CatalogInfo(engine.name, engine.location, version,
                           {table: counts.get(table, 0) for table in tables})
    finally:
        engine.close()


def _schema_missing(exc: Exception) -> bool:
    """A PostgreSQL database without manta's tables (no psycopg import for LMDB users)."""
    if "psycopg" not in type(exc).__module__:
        return False
    from psycopg.errors import UndefinedTable
    return isinstance(exc, UndefinedTable)


def _frame(key: bytes, value: bytes) -> bytes:
    return struct.pack(">II", len(key), len(value)) + key + value


def digest(txn: ReadTxn, table: str) -> TableDigest:
    """The table's `TableDigest`, read in `txn`."""
    sha, rows = hashlib.sha256(), 0
    for key, value in txn.scan(table):
        sha.update(_frame(key, value))
        rows += 1
    return TableDigest(rows, sha.hexdigest())


def _put_rows(table: str, rows: list[tuple[bytes, bytes]]) -> Callable[[WriteTxn], None]:
    def write(txn: WriteTxn) -> None:
        for key, value in rows:
            txn.put(table, key, value)
    return write


def _batches(pairs: Iterator[tuple[bytes, bytes]], size: int) -> Iterator[list[tuple[bytes, bytes]]]:
    batch: list[tuple[bytes, bytes]] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def copy_tables(source: Engine, target: Engine, tables: tuple[str, ...],
                batch_rows: int = BATCH_ROWS,
                on_table: Callable[[TableCopy], None] | None = None) -> list[TableCopy]:
    """Copy every table from one snapshot of `source` into `target`, `batch_rows` pairs a
    write; what was read, per table (rows, sha256)."""
    copied = []
    with source.read() as txn:
        for table in tables:
            started = time.monotonic()
            sha, rows = hashlib.sha256(), 0
            pending: deque[concurrent.futures.Future[None]] = deque()
            try:
                for batch in _batches(txn.scan(table), batch_rows):
                    for key, value in batch:
                        sha.update(_frame(key, value))
                    rows += len(batch)
                    if len(pending) >= IN_FLIGHT:
                        pending.popleft().result()
                    pending.append(target.submit(_put_rows(table, batch)))
                while pending:
                    pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()
            done = TableCopy(table, rows, sha.hexdigest(), time.monotonic() - started)
            copied.append(done)
            if on_table is not None:
                on_table(done)
    return copied


def verify(source: Engine, target: Engine, copied: list[TableCopy]) -> None:
    """MigrationFailed unless every table of `target`, and of a fresh snapshot of `source`,
    has the rows and sha256 that `copy_tables` read."""
    counts = target.counts()
    with target.read() as txn:
        for table in copied:
            there = digest(txn, table.table)
            if (there.rows, there.sha256) != (table.rows, table.sha256) or counts.get(table.table) != table.rows:
                raise MigrationFailed(
                    f"verification failed for table {table.table}: copied {table.rows} rows "
                    f"(sha256 {table.sha256[:16]}...), the target has {there.rows} "
                    f"(sha256 {there.sha256[:16]}..., counted {counts.get(table.table)})")
    with source.read() as txn:
        changed = [t.table for t in copied if digest(txn, t.table) != TableDigest(t.rows, t.sha256)]
    if changed:
        raise MigrationFailed(f"the LMDB catalog changed during the copy (tables {', '.join(changed)}): "
                              "a process wrote to it; stop it and migrate into a fresh database")


# -- the whole move ------------------------------------------------------------------

def migrate_lmdb(path: str, target_url: str, tables: tuple[str, ...], batch_rows: int = BATCH_ROWS,
                 on_table: Callable[[TableCopy], None] | None = None) -> MigrationReport:
    """Copy the LMDB catalog at `path` into the empty PostgreSQL database `target_url`, then
    verify it (see the module docstring). MigrationRefused: nothing was copied;
    MigrationFailed: the target holds a partial or different copy."""
    if not target_url.startswith(("postgresql://", "postgres://")):
        raise MigrationRefused(f"the target must be a postgresql:// URL, not {target_url!r}")
    users = LmdbUsers(path)
    holds: list[Held] = []
    source: Engine | None = None
    target: Engine | None = None
    try:
        _refuse_if_used(users, path)
        source = open_engine(path, tables, readonly=True)
        held = source.try_hold("leader")
        if held is None:
            raise MigrationRefused(f"a manta server holds the catalog at {path} (its leader hold): stop it first")
        holds.append(held)
        _refuse_if_used(users, path)  # one that opened it meanwhile
        target = open_engine(target_url, tables)
        held = target.try_hold("leader")
        if held is None:
            raise MigrationRefused(f"a manta server runs on {target.location}: stop it, and migrate "
                                   "into a database of its own")
        holds.append(held)
        present = {table: rows for table, rows in target.counts().items() if rows}
        if present:
            listed = ", ".join(f"{table} {rows}" for table, rows in sorted(present.items()))
            raise MigrationRefused(f"{target.location} already holds a manta catalog ({listed} rows): "
                                   "migrate into an empty database")
        report = MigrationReport(f"{source.name} at {source.location}", f"{target.name} at {target.location}")
        started = time.monotonic()
        report.tables = copy_tables(source, target, tables, batch_rows, on_table)
        verify(source, target, report.tables)
        other = users.other()
        if other is not None:
            raise MigrationFailed(f"process {other} opened the LMDB catalog at {path} during the copy: "
                                  "stop it and migrate into a fresh database")
        report.seconds = time.monotonic() - started
        return report
    finally:
        for held in reversed(holds):
            held.release()
        if target is not None:
            target.close()
        if source is not None:
            source.close()
        users.close()


def _refuse_if_used(users: LmdbUsers, path: str) -> None:
    other = users.other()
    if other is not None:
        raise MigrationRefused(f"process {other} has the catalog at {path} open (a running manta "
                               "server?): stop it first")
