"""What every `manta` command module shares: the user-facing error, the client every
command is built on, and the subcommand builder."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from manta.client import Client

__all__ = ["CliError", "client", "subcommand"]


class CliError(Exception):
    """A user-facing error: printed as `manta: message`, exit status 1."""


def client() -> Client:
    """The `manta.Client` of the server and keys the environment names (`Client()`)."""
    from manta.client import Client

    return Client()


def subcommand(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
               example: str | list[str], description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its examples in its epilog; its description is `help` unless given."""
    examples = [example] if isinstance(example, str) else example
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description or help,
        epilog="example:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p
