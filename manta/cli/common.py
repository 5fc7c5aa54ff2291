"""What every `manta` command module shares: the user-facing error, the subcommand
builder and a stdout that may be closed early by its reader."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CliError", "stdout_pipe", "subcommand"]


class CliError(Exception):
    """A user-facing error: printed as `manta: message`, exit status 1."""


def subcommand(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
               example: str) -> argparse.ArgumentParser:
    """A subcommand whose help is its description, with one example in its epilog."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p



@contextmanager
def stdout_pipe() -> Iterator[None]:
    """A reader that went away (`| head`) ends the command quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
