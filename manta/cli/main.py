"""The `manta` command: one subcommand group a module (serve and node, admin, objects,
find, job), all client commands built on `manta.Client`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from manta.cli import admin, find, jobs, objects, serve
from manta.cli.common import CliError

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="manta",
        description="An S3-compatible object store that runs map/reduce jobs next to the data.",
        epilog="example: manta serve --data ./manta-data --listen 127.0.0.1:9000",
    )
    sub = p.add_subparsers(dest="command", required=True)
    serve.register(sub)
    admin.register(sub)
    objects.register(sub)
    jobs.register(sub)
    find.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"manta: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
