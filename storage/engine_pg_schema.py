"""The PostgreSQL engine's schema and statements: a table `manta_<name>` (k bytea PRIMARY
KEY, v bytea NOT NULL) per engine table, `manta_schema` (version), and per table three
functions that take a key's advisory lock and then read, write or delete it; and the names
the engine uses: a key's lock id, the URL without its password.

bytea compares bytewise, shorter first on a tie: the engine contract's key order.

Why functions: inside a write, the first touch of a key takes its lock and then reads it,
and the read must be a statement of its own, run after the lock is granted (under READ
COMMITTED each statement takes a fresh snapshot, so it sees the value the previous holder
committed). A VOLATILE PL/pgSQL function runs its statements that way, each with a new
snapshot, in one round trip instead of two.

`create_schema` runs when an engine starts, in one transaction under an advisory lock, so
front doors starting together do not race on CREATE; it creates what is missing (tables a
newer version lists appear then) and migrates `manta_schema.version` up to SCHEMA_VERSION.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
import zlib
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.types.numeric import Int8

__all__ = ["PAGE_ROWS", "SCHEMA_VERSION", "TableSql", "create_schema", "hold_id", "lock_id",
           "public_location"]

SCHEMA_VERSION = 1
PAGE_ROWS = 256  # rows per scan page: a scan that stops early costs one page
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# advisory locks on two ints live in a key space apart from the one-bigint key locks
_SCHEMA_LOCK = (0x6D616E74, 0)  # "mant", 0
_HOLDS = 0x6D616E75  # "manu", crc32(name): try_hold's locks
# statements that take version N-1 to N (version 1 is what create_schema makes)
_MIGRATIONS: dict[int, tuple[str, ...]] = {}


def _q(template: str, **names: str) -> bytes:
    return sql.SQL(template).format(
        **{key: sql.Identifier(value) for key, value in names.items()}).as_bytes(None)


@dataclass(frozen=True)
class TableSql:
    """The statements of one engine table, composed once."""

    table: str
    get: bytes
    put: bytes
    delete: bytes
    lock_get: bytes
    lock_put: bytes
    lock_delete: bytes
    scans: dict[tuple[bool, bool], bytes]  # (first page, has an upper bound) -> keyset page
    count: bytes
    ident: bytes    # the quoted table name, for statements composed per batch
    get_fn: bytes   # the quoted name of its lock-and-get function
    ddl: tuple[bytes, ...]

    @classmethod
    def for_table(cls, name: str) -> TableSql:
        if not _NAME.fullmatch(name):
            raise ValueError(f"engine table names are lowercase identifiers: {name!r}")
        t = f"manta_{name}"
        names = {"t": t, "fget": f"{t}_lock_get", "fput": f"{t}_lock_put", "fdel": f"{t}_lock_delete"}
        page = f" ORDER BY k LIMIT {PAGE_ROWS}"
        scans = {
            (first, bounded): _q("SELECT k, v FROM {t} WHERE k " + (">=" if first else ">") + " %b"
                                 + (" AND k < %b" if bounded else "") + page, t=t)
            for first in (True, False) for bounded in (True, False)}
        ddl = (
            _q("CREATE TABLE IF NOT EXISTS {t} (k bytea PRIMARY KEY, v bytea NOT NULL)", t=t),
            _q("""CREATE OR REPLACE FUNCTION {fget}(_lock bigint, _k bytea) RETURNS bytea
                  LANGUAGE plpgsql VOLATILE AS $$
                  BEGIN
                      PERFORM pg_advisory_xact_lock(_lock);
                      RETURN (SELECT v FROM {t} WHERE k = _k);
                  END $$""", **names),
            _q("""CREATE OR REPLACE FUNCTION {fput}(_lock bigint, _k bytea, _v bytea) RETURNS void
                  LANGUAGE plpgsql VOLATILE AS $$
                  BEGIN
                      PERFORM pg_advisory_xact_lock(_lock);
                      INSERT INTO {t} (k, v) VALUES (_k, _v) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;
                  END $$""", **names),
            _q("""CREATE OR REPLACE FUNCTION {fdel}(_lock bigint, _k bytea) RETURNS boolean
                  LANGUAGE plpgsql VOLATILE AS $$
                  BEGIN
                      PERFORM pg_advisory_xact_lock(_lock);
                      DELETE FROM {t} WHERE k = _k;
                      RETURN FOUND;
                  END $$""", **names),
        )
        return cls(
            table=name,
            get=_q("SELECT v FROM {t} WHERE k = %b", t=t),
            put=_q("INSERT INTO {t} (k, v) VALUES (%b, %b) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v", t=t),
            delete=_q("DELETE FROM {t} WHERE k = %b RETURNING true", t=t),
            lock_get=_q("SELECT {fget}(%b, %b)", **names),
            lock_put=_q("SELECT {fput}(%b, %b, %b)", **names),
            lock_delete=_q("SELECT {fdel}(%b, %b)", **names),
            scans=scans,
            count=_q("SELECT count(*) FROM {t}", t=t),
            ident=_q("{t}", t=t),
            get_fn=_q("{f}", f=names["fget"]),
            ddl=ddl,
        )


def create_schema(conn: psycopg.Connection[tuple[object, ...]], tables: list[TableSql]) -> int:
    """Create what is missing and migrate, in one transaction; the schema version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _SCHEMA_LOCK)
        conn.execute("CREATE TABLE IF NOT EXISTS manta_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM manta_schema").fetchone()
        version = int(row[0]) if row else 0  # type: ignore[call-overload]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the catalog's schema is version {version}, newer than this "
                               f"manta's ({SCHEMA_VERSION}): upgrade manta")
        for table in tables:
            for statement in table.ddl:
                conn.execute(statement)
        for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            for migration in _MIGRATIONS[step]:
                conn.execute(migration.encode())
        if row is None:
            conn.execute("INSERT INTO manta_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            conn.execute("UPDATE manta_schema SET version = %s", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


def lock_id(table: str, key: bytes) -> Int8:
    """The advisory lock of a key: a 64-bit hash of (table, key) (the one-bigint key space)."""
    digest = hashlib.blake2b(table.encode() + b"\x00" + key, digest_size=8).digest()
    return Int8(int.from_bytes(digest, "big", signed=True))


def hold_id(name: str) -> tuple[int, int]:
    """The advisory lock of the hold `name` (the two-int key space, apart from key locks)."""
    return _HOLDS, int.from_bytes(zlib.crc32(name.encode()).to_bytes(4, "big"), "big", signed=True)


def public_location(url: str) -> str:
    """The database URL without its password (for logs and the admin API)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    query = urllib.parse.urlencode([(k, v) for k, v in urllib.parse.parse_qsl(parts.query)
                                    if k != "password"])
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
