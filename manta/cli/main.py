"""The `manta` command: one subcommand group a module (serve and node, admin, objects,
find, job), every client command built on `manta.Client`.

Errors are reported here, once: a `CliError` (a bad argument the command found), a
`manta.client.MantaError` (what the client reports: no such bucket, bad credentials, server
unreachable, ...), a ValueError (a bad path or setting, e.g. a missing CA bundle) or an
OSError (a local file) is printed as `manta: <message>` with exit status 1; a reader that
went away (`| head`) ends the command quietly with status 1, ^C with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from manta.cli import admin, config, find, jobs, login, objects, serve
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
    login.register(sub)
    config.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _drop_stdout()
        return 1
    except (CliError, _client_error(), ValueError) as exc:  # (evaluated only when one is raised)
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        return 130


def _client_error() -> type[Exception]:
    """MantaError, if the client is loaded: only the client raises one, and `manta serve`
    or `manta --help` need not load it (fsspec and the rest, 50-90 ms)."""
    errors = sys.modules.get("manta.client.errors")
    return errors.MantaError if errors is not None else CliError  # type: ignore[no-any-return]


def _fail(message: str) -> int:
    print(f"manta: {message}", file=sys.stderr)
    return 1


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush finds no broken pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a file descriptor (stdout replaced in-process)
        pass
