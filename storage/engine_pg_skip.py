"""`scan_skip` in PostgreSQL (the contract is storage.engine.ReadTxn.scan_skip): one
recursive statement seeks from each key to the next, jumping past a whole group of keys
that share a prefix up to the delimiter, so a ListObjects page of 1,000 common prefixes is
one or a few statements (each seek an index lookup) instead of a round trip per prefix."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from psycopg import sql

from storage.engine import prefix_end, skip_past

__all__ = ["scan_skip"]

FIRST_ROWS, MAX_ROWS = 64, 1024  # rows per statement: a page that stops early costs little

# where the scan goes on after s.k (storage.engine.skip_past): past its group, its bytes up
# to the end of the first delimiter at or after `cut` (0-based) and 0xFF, and past s.k
_NEXT = """GREATEST(CASE WHEN position(%b IN substring(s.k FROM %b::int)) > 0
             THEN substring(s.k FROM 1 FOR %b::int + position(%b IN substring(s.k FROM %b::int)) - 1
                            + %b::int) || '\\xff'::bytea
             ELSE s.k END, s.k || '\\x00'::bytea)"""


def _statement(table: str, bounded: bool) -> bytes:
    bound = " AND k < %b" if bounded else ""
    return sql.SQL(
        "WITH RECURSIVE s(k, v, n) AS ("
        " (SELECT k, v, 1 FROM {t} WHERE k >= %b" + bound + " ORDER BY k LIMIT 1)"
        " UNION ALL"
        " (SELECT x.k, x.v, s.n + 1 FROM s CROSS JOIN LATERAL"
        "   (SELECT k, v FROM {t} WHERE k >= " + _NEXT + bound + " ORDER BY k LIMIT 1) x"
        "  WHERE s.n < %b::int))"
        " SELECT k, v FROM s").format(t=sql.Identifier(table)).as_bytes(None)


_STATEMENTS: dict[tuple[str, bool], bytes] = {}


def scan_skip(run: Callable[[bytes, tuple[Any, ...]], Any], table: str, start: bytes, prefix: bytes,
              delimiter: bytes, cut: int) -> Iterator[tuple[bytes, bytes]]:
    """`run(statement, params)` executes on the transaction's connection and answers its
    rows (bytea as bytes); `table` is the SQL table name."""
    high = prefix_end(prefix) if prefix else None
    bounded = high is not None
    query = _STATEMENTS.get((table, bounded))
    if query is None:
        query = _STATEMENTS[table, bounded] = _statement(table, bounded)
    low, rows_wanted = max(start, prefix), FIRST_ROWS
    while high is None or low < high:
        head: tuple[Any, ...] = (low, high) if bounded else (low,)
        step: tuple[Any, ...] = (delimiter, cut + 1, cut, delimiter, cut + 1, len(delimiter))
        params = head + step + ((high,) if bounded else ()) + (rows_wanted,)
        rows = run(query, params)
        yield from rows
        if len(rows) < rows_wanted:
            return
        low, rows_wanted = skip_past(rows[-1][0], delimiter, cut), min(rows_wanted * 4, MAX_ROWS)
