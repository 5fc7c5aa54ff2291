"""The `manta` command line (console script `manta = manta.cli:main`)."""

from manta.cli.main import main, parser

__all__ = ["main", "parser"]
