"""Opening a catalog engine by its location (storage.engine has the contract)."""

from __future__ import annotations

from typing import Any

from storage.engine import Engine

__all__ = ["open_engine"]


def open_engine(location: str, tables: tuple[str, ...], **options: Any) -> Engine:
    """`postgresql://...` (or `postgres://`): a PgEngine; anything else: an LMDB directory."""
    if location.startswith(("postgresql://", "postgres://")):
        from storage.engine_pg import PgEngine
        return PgEngine(location, tables, **options)
    from storage.engine_lmdb import LmdbEngine
    return LmdbEngine(location, tables, **options)
