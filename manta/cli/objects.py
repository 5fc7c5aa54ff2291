"""Object commands: `manta mb | rb | put | get | ls | rm | info | cp`, each one call on
`manta.Client` (its errors are reported by `manta.cli.main`).

Paths are `bucket/key`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from manta.cli.common import CliError, client, subcommand

__all__ = ["register"]

def _when(value: Any) -> str:
    if not isinstance(value, dt.datetime):
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in entry.items()}


def _dest_key(src: str, dest: str) -> str:
    """`bucket` or `bucket/dir/` as a destination means: keep the source's file name."""
    bucket, _, key = dest.lstrip("/").partition("/")
    if not key or key.endswith("/"):
        if src == "-":
            raise CliError(f"{dest!r} names no object: give bucket/key when reading stdin")
        return f"{bucket}/{key}{os.path.basename(src.rstrip('/'))}"
    return dest.lstrip("/")


# -- commands --------------------------------------------------------------------------------

def _mb(args: argparse.Namespace) -> int:
    mc = client()
    for bucket in args.buckets:
        mc.mb(bucket.strip("/"), exist_ok=args.exist_ok)
    return 0


def _rb(args: argparse.Namespace) -> int:
    mc = client()
    for bucket in args.buckets:
        mc.rb(bucket.strip("/"), force=args.force)
    return 0


def _put(args: argparse.Namespace) -> int:
    mc = client()
    dest = _dest_key(args.src, args.dest)
    progress = False if args.quiet else None
    if args.src == "-":
        result = mc.put(dest, sys.stdin.buffer, content_type=args.content_type, progress=progress)
    else:
        if os.path.isdir(args.src):
            raise CliError(f"{args.src} is a directory: put uploads one file")
        with open(args.src, "rb") as fh:
            result = mc.put(dest, fh, content_type=args.content_type, progress=progress)
    if args.verbose:
        print(f"{result['name']}  {result['size']} bytes  etag {result['etag']}", file=sys.stderr)
    return 0


def _get(args: argparse.Namespace) -> int:
    mc = client()
    progress = False if args.quiet else None
    if args.dest == "-":
        mc.get(args.src, sys.stdout.buffer, progress=False)
        sys.stdout.buffer.flush()
        return 0
    dest = args.dest or "."
    if os.path.isdir(dest):
        dest = os.path.join(dest, os.path.basename(args.src.rstrip("/")))
    mc.get(args.src, dest, progress=progress)
    return 0


def _ls(args: argparse.Namespace) -> int:
    entries = client().ls(args.path or "", detail=True)
    if args.json:
        print(json.dumps([_jsonable(e) for e in entries]))
        return 0
    for e in entries:
        if args.long:
            when = _when(e.get("last_modified") or e.get("created"))
            size = "-" if e["type"] != "file" else str(e["size"])
            print(f"{e['type'][0]} {size:>12}  {when:<19}  {e['name']}")
        else:
            print(e["name"])
    return 0


def _rm(args: argparse.Namespace) -> int:
    deleted = client().rm(args.paths, recursive=args.recursive)
    if args.verbose:
        for name in deleted:
            print(f"deleted {name}", file=sys.stderr)
    return 0


def _info(args: argparse.Namespace) -> int:
    info = client().info(args.path)
    if args.json:
        print(json.dumps(_jsonable(info)))
        return 0
    labels = {"name": "name", "type": "type", "size": "size", "etag": "etag", "content_type": "content-type",
              "last_modified": "modified", "created": "created"}
    for field, label in labels.items():
        if info.get(field) is not None:
            value = _when(info[field]) if isinstance(info[field], dt.datetime) else info[field]
            print(f"{label + ':':<14}{value}")
    for name, value in (info.get("metadata") or {}).items():
        print(f"{'meta-' + name + ':':<14}{value}")
    return 0


def _cp(args: argparse.Namespace) -> int:
    client().cp(args.src, _dest_key(args.src, args.dest))
    return 0


# -- argparse ----------------------------------------------------------------------------------

def register(sub: Any) -> None:
    """Add the object commands to the `manta` command's subparsers."""
    p = subcommand(sub, "mb", _mb, "make a bucket",
                   ["manta mb logs"],
                   description="Make one or more buckets (3-63 lowercase letters, digits, '-' and '.').")
    p.add_argument("buckets", nargs="+", metavar="BUCKET")
    p.add_argument("-p", "--exist-ok", action="store_true", help="no error if you already own the bucket")

    p = subcommand(sub, "rb", _rb, "remove a bucket",
                   ["manta rb logs", "manta rb --force scratch    # deletes every object in it first"],
                   description="Remove buckets. A bucket must be empty unless --force is given.")
    p.add_argument("buckets", nargs="+", metavar="BUCKET")
    p.add_argument("-f", "--force", action="store_true", help="delete the bucket's objects first")

    p = subcommand(sub, "put", _put, "upload a file (or stdin) as an object",
                   ["manta put access.log logs/2024/06/access.log",
                    "gzip -c big.csv | manta put - data/big.csv.gz"],
                   description="Upload SRC (a file, or - for stdin) to DEST (bucket/key; bucket or bucket/dir/ keeps "
                               "the file's name).\nFiles larger than 8 MiB go up in parallel parts, with a progress bar "
                               "on stderr; an\ninterrupted upload leaves no object.")
    p.add_argument("src", metavar="SRC", help="local file, or - for stdin")
    p.add_argument("dest", metavar="DEST", help="bucket/key, or bucket[/dir/] to keep the file's name")
    p.add_argument("--content-type", help="Content-Type to store with the object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="print the object's size and ETag on stderr")

    p = subcommand(sub, "get", _get, "download an object to a file (or stdout)",
                   ["manta get logs/2024/06/access.log /tmp/", "manta get data/big.csv.gz - | zcat | head"],
                   description="Download SRC (bucket/key) to DEST (a file or directory, - for stdout; default: the\n"
                               "object's name in the current directory). The file appears only when complete.")
    p.add_argument("src", metavar="SRC", help="bucket/key")
    p.add_argument("dest", metavar="DEST", nargs="?", help="local file or directory, or - for stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = subcommand(sub, "ls", _ls, "list buckets, or the objects and directories under a prefix",
                   ["manta ls", "manta ls -l logs/2024/", "manta ls --json logs | jq '.[].size'"],
                   description="Without PATH, list your buckets. With BUCKET[/PREFIX], list what is directly under\n"
                               "it: objects, and \"directories\" (key prefixes up to the next /, shown ending in /).\n"
                               "Names are bucket/key. For every object under a prefix, use manta find.")
    p.add_argument("path", nargs="?", metavar="BUCKET[/PREFIX]")
    p.add_argument("-l", "--long", action="store_true", help="type (f/d/b), size, modification time, name")
    p.add_argument("--json", action="store_true", help="print a JSON array of {name, type, size, ...}")

    p = subcommand(sub, "rm", _rm, "delete objects",
                   ["manta rm logs/2024/06/access.log", "manta rm -r logs/2023/"],
                   description="Delete objects. With -r, delete every object under each BUCKET[/PREFIX] (the bucket\n"
                               "itself stays: see manta rb). A PATH that names nothing is an error.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-r", "--recursive", action="store_true", help="everything under each path")
    p.add_argument("-v", "--verbose", action="store_true", help="print each deleted object on stderr")

    p = subcommand(sub, "info", _info, "show an object's (or bucket's) size, ETag, type, dates",
                   ["manta info logs/2024/06/access.log", "manta info --json logs"],
                   description="Describe an object (size, ETag, content type, modification time, user metadata),\n"
                               "a bucket, or a directory (a prefix that has objects under it).")
    p.add_argument("path", metavar="PATH", help="bucket, bucket/key or bucket/dir/")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = subcommand(sub, "cp", _cp, "copy an object on the server (no bytes move)",
                   ["manta cp logs/2024/06/access.log archive/2024-06-access.log"],
                   description="Copy SRC to DEST on the server: the copy shares the source's stored bytes, so it is\n"
                               "instant whatever the size. DEST may be bucket or bucket/dir/ to keep the name.")
    p.add_argument("src", metavar="SRC", help="bucket/key")
    p.add_argument("dest", metavar="DEST", help="bucket/key, or bucket[/dir/] to keep the name")
