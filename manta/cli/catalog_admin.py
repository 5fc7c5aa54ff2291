"""`manta admin catalog` (engine, location, schema and rows per table) and `manta admin
catalog migrate --to postgresql://...` (move the LMDB catalog of a data dir into
PostgreSQL). Operator tools: they open the catalog itself, not a server's API, and the
migration runs with the server stopped (storage/migrate.py has the steps)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Any

from manta.cli.common import CliError

__all__ = ["register"]


def _data_dir(args: argparse.Namespace) -> str:
    from manta.server.config import DEFAULT_DATA_DIR

    return str(args.data or os.environ.get("MANTA_DATA") or DEFAULT_DATA_DIR)


def _tables() -> tuple[str, ...]:
    """Every table of the catalog: storage's and the jobs package's."""
    from jobs.records import TABLES as JOB_TABLES
    from storage.catalog import TABLES

    return TABLES + JOB_TABLES


def _catalog(args: argparse.Namespace) -> int:
    from storage.errors import StorageError
    from storage.migrate import describe

    location = args.catalog or os.environ.get("MANTA_CATALOG") or os.path.join(_data_dir(args), "catalog")
    try:
        info = describe(location, _tables())
    except StorageError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(info.to_dict()))
        return 0
    print(f"catalog: {info.engine} at {info.location} (schema {info.schema_version})")
    print(f"rows:    {sum(info.counts.values())}")
    width = max(len(table) for table in info.counts)
    for table, rows in info.counts.items():
        print(f"  {table:<{width}}  {rows:>12}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from storage.engine_pg_schema import public_location
    from storage.errors import StorageError
    from storage.migrate import TableCopy, migrate_lmdb

    data = _data_dir(args)
    path = os.path.join(data, "catalog")

    def progress(table: TableCopy) -> None:
        if not args.json:
            print(f"  {table.table:<12} {table.rows:>12} rows  {table.seconds:8.2f}s", flush=True)

    if not args.json:
        print(f"copying the LMDB catalog {path} into {public_location(args.to)}", flush=True)
    try:
        report = migrate_lmdb(path, args.to, _tables(), on_table=progress)
    except StorageError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    rate = report.rows / report.seconds if report.seconds else 0.0
    print(f"copied {report.rows} rows in {report.seconds:.2f}s ({rate:,.0f} rows/s); verified: every "
          f"table has the same rows and sha256 in both")
    print(f"the LMDB catalog {path} is left as it was: delete it once the server runs on the new one")
    shown = public_location(args.to)
    print("start the server on it (the data dir still holds the nodes' blobs):")
    print(f"  manta serve --data {shlex.quote(data)} --catalog {shlex.quote(shown)}")
    if shown != args.to:
        print("  (with the password in the URL, or MANTA_CATALOG set to the full URL)")
    return 0


def register(admin_sub: Any) -> None:
    """Add `catalog` (and `catalog migrate`) to `manta admin`'s subparsers."""
    catalog = admin_sub.add_parser(
        "catalog", help="the catalog's engine, location, schema and rows per table; migrate it",
        description="Show the catalog (engine, location without password, schema version, rows per "
                    "table), opened read-only; or move the LMDB catalog into PostgreSQL (migrate).",
        epilog="examples:\n  manta admin catalog --data /srv/manta\n"
               "  manta admin catalog --catalog postgresql://manta@db/manta --json\n"
               "  manta admin catalog migrate --data /srv/manta --to postgresql://manta@db/manta",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    catalog.add_argument("--data", default=None, metavar="DIR",
                         help="data directory (default: MANTA_DATA, else ./manta-data)")
    catalog.add_argument("--catalog", default=None, metavar="URL",
                         help="a postgresql:// catalog (default: MANTA_CATALOG, else LMDB in the data dir)")
    catalog.add_argument("--json", action="store_true",
                         help="print one JSON object (engine, location, schema_version, rows, tables)")
    catalog.set_defaults(func=_catalog)
    catalog_sub = catalog.add_subparsers(dest="catalog_command")
    migrate = catalog_sub.add_parser(
        "migrate", help="copy the data dir's LMDB catalog into an empty PostgreSQL database",
        description="Copy the LMDB catalog of the data dir into an empty PostgreSQL database and "
                    "verify the copy (rows and sha256 per table). Run it with the server stopped; "
                    "the LMDB catalog is left as it was.",
        epilog="example:\n  manta admin catalog migrate --data /srv/manta --to postgresql://manta@db/manta",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="the target database, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB")
    # SUPPRESS: not given here, the value given before `migrate` stands
    migrate.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                         help="data directory (default: MANTA_DATA, else ./manta-data)")
    migrate.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print one JSON object (source, target, rows, seconds, tables)")
    migrate.set_defaults(func=_migrate)
