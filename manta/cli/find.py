"""`manta find BUCKET[/PREFIX]`: list objects as `bucket/key` lines (or JSON), the input
side of `manta find ... | manta job create ...`; `Client.scan` underneath, so the lines
come out page by page as the listing is read.

    manta find logs/2024/ --name '\\.gz$' --size +1M
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from manta.cli.common import CliError, client, subcommand

__all__ = ["register"]


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size_filter(text: str) -> Callable[[int], bool]:
    """`+N`: larger than N bytes; `-N`: smaller than N bytes (N may end in k, M, G, T)."""
    match = re.fullmatch(r"([+-])(\d+)([kKmMgGtT]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected +N or -N, e.g. +1M or -4096")
    sign, digits, unit = match.groups()
    limit = int(digits) * _SIZE_UNITS[unit.lower()]
    return (lambda size: size > limit) if sign == "+" else (lambda size: size < limit)


def _find(args: argparse.Namespace) -> int:
    bucket, _, prefix = args.path.lstrip("/").partition("/")
    if not bucket:
        raise CliError("find needs a BUCKET or BUCKET/PREFIX")
    try:
        re.compile(args.name or "")
    except re.error as exc:
        raise CliError(f"--name: bad regular expression: {exc}") from None
    for obj in client().scan(f"{bucket}/{prefix}", name=args.name):
        if args.size is not None and not args.size(obj["size"]):
            continue
        if args.json:
            print(json.dumps({"bucket": bucket, "key": obj["key"], "size": obj["size"], "etag": obj["etag"],
                              "last_modified": obj["last_modified"].isoformat()}))
        else:
            print(obj["name"])
    return 0


def register(sub: Any) -> None:
    """Add `find` to the `manta` command's subparsers."""
    f = subcommand(sub, "find", _find, "list the objects under BUCKET[/PREFIX] as bucket/key lines",
                 "manta find logs/2024/ --name '\\.gz$' | manta job create -m 'zcat | wc -l'")
    f.add_argument("path", metavar="BUCKET[/PREFIX]")
    f.add_argument("--name", metavar="REGEX", help="only objects whose name (after the last /) matches")
    f.add_argument("--size", metavar="+N|-N", type=_size_filter,
                   help="only objects larger (+N) or smaller (--size=-N) than N bytes; "
                        "suffixes k, M, G (powers of 1024), e.g. +1M")
    f.add_argument("--json", action="store_true",
                   help="one JSON object per line: bucket, key, size, etag, last_modified")
