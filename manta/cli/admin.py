"""`manta admin ...`: accounts and their limits, storage nodes, scrub and GC, lifecycle passes, task
images (root keys), through `Client.api` (manta's signed JSON API under `/_manta/admin`); `manta admin catalog`
works on the catalog itself (manta.cli.catalog_admin)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from manta.cli import catalog_admin
from manta.cli.common import CliError, client

__all__ = ["register"]


def _quota_arg(text: str | None) -> dict[str, int | None]:
    from storage.quota import parse_quota

    try:
        return parse_quota(text) if text is not None else {}
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _admin_user_add(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"name": args.name}
    if args.quota is not None:
        payload["quota"] = _quota_arg(args.quota)
    user = client().api("POST", "/_manta/admin/users", payload)
    if args.json:
        print(json.dumps(user))
    else:
        print(f"user:       {user['name']}\naccess key: {user['access_key']}\nsecret key: {user['secret_key']}")
        for name, limit in (user.get("quota_set") or {}).items():
            print(f"{name + ' limit:':<12}{limit}")
    return 0


def _admin_user_set(args: argparse.Namespace) -> int:
    payload = {"quota": _quota_arg(args.quota)}
    user = client().api("POST", _user_path(args.name), payload)
    _print_user(user, args.json)
    return 0


def _admin_user_get(args: argparse.Namespace) -> int:
    _print_user(client().api("GET", _user_path(args.name)), args.json)
    return 0


def _user_path(name: str) -> str:
    import urllib.parse

    return "/_manta/admin/users/" + urllib.parse.quote(name, safe="")


def _print_user(user: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(user))
        return
    print(f"user:       {user['name']}\naccess key: {user['access_key']}\nroot:       "
          f"{'yes' if user['root'] else 'no'}")
    usage = user.get("usage", {})
    for name, limit in user["quota"].items():
        shown = "unlimited" if limit is None else str(limit)
        own = "" if name in user.get("quota_set", {}) else "  (default)"
        if name in usage:
            print(f"{name + ':':<12}{usage[name]} used of {shown}{own}")
        else:
            print(f"{name + ':':<12}limit {shown}{own}")


def _admin_user_list(args: argparse.Namespace) -> int:
    users = client().api("GET", "/_manta/admin/users")["users"]
    if args.json:
        print(json.dumps(users))
    else:
        for u in users:
            print(f"{u['name']:<24} {u['access_key']:<22} {'root' if u['root'] else ''}")
    return 0


def _admin_scrub(args: argparse.Namespace) -> int:
    report = client().api("POST", "/_manta/admin/scrub", {}, timeout_s=24 * 3600)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"checked {report['checked']} replicas of {report['blobs']} blobs in {report['seconds']}s: "
              f"{report['damaged']} damaged, {report['repaired']} repaired, {report['lost']} lost, "
              f"{report['unavailable']} on nodes that are down")
        for pool, status in report.get("pools", {}).items():
            print(f"zpool {pool}: {status.get('health', '?')}, {status.get('summary') or status.get('error')}")
    return 1 if report["lost"] else 0


def _admin_gc(args: argparse.Namespace) -> int:
    report = client().api("POST", "/_manta/admin/gc", {}, timeout_s=3600)
    print(json.dumps(report) if args.json else f"removed {report['removed']} blob copies no object needs")
    return 0


def _admin_lifecycle_run(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {}
    if args.now is not None:
        payload["now"] = args.now
    if args.days_ahead is not None:
        payload["days_ahead"] = args.days_ahead
    if args.bucket is not None:
        payload["bucket"] = args.bucket
    if args.dry_run:
        payload["dry_run"] = True
    report = client().api("POST", "/_manta/admin/lifecycle", payload, timeout_s=24 * 3600)
    if args.json:
        print(json.dumps(report))
        return 1 if report["failed"] else 0
    at = dt.datetime.fromtimestamp(report["at"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    would = "would be " if args.dry_run else ""
    planned = report.get("planned")
    for change in planned or []:
        where = change.get("version_id") or change.get("upload_id") or ""
        print(f"would {PLANNED_VERBS[change['action']]}\t{change['bucket']}/{change['key']}"
              + (f"\t{where}" if where else ""))
    if planned is not None and len(planned) < sum(report[k] for k in ("expired", "noncurrent", "markers", "aborted")):
        print(f"(only the first {len(planned)} changes are listed)")
    print(f"lifecycle {'dry run' if args.dry_run else 'pass'} as of {at} over {report['buckets']} buckets: "
          f"{report['expired']} objects {would}expired, {report['noncurrent']} noncurrent versions {would}removed, "
          f"{report['markers']} delete markers {would}removed, {report['aborted']} uploads {would}aborted, "
          f"{report['failed']} {'locked' if args.dry_run else 'failed'}"
          + (" (stopped at the per-pass limit; run again)" if report["truncated"] else ""))
    return 1 if report["failed"] else 0


PLANNED_VERBS = {"expired": "expire", "noncurrent": "remove noncurrent version", "markers": "remove delete marker",
                 "aborted": "abort upload"}


def _register_lifecycle(admin_sub: Any) -> None:
    lifecycle = admin_sub.add_parser("lifecycle", help="enforce buckets' lifecycle rules",
                                     description="Lifecycle rules (PutBucketLifecycleConfiguration) are "
                                                 "enforced every MANTA_LIFECYCLE_INTERVAL_S; run a pass now, "
                                                 "or as of another time.",
                                     epilog="example: manta admin lifecycle run --days-ahead 30")
    lifecycle_sub = lifecycle.add_subparsers(dest="lifecycle_command", required=True)
    run = lifecycle_sub.add_parser("run", help="run one pass now (or as of --now / --days-ahead)",
                                   epilog="example: manta admin lifecycle run --days-ahead 30 --dry-run")
    when = run.add_mutually_exclusive_group()
    when.add_argument("--now", metavar="ISO8601", help="run as of this time (UTC unless it says)")
    when.add_argument("--days-ahead", type=float, metavar="N", help="run as of N days from now")
    run.add_argument("--bucket", help="only this bucket")
    run.add_argument("--dry-run", action="store_true",
                     help="change nothing: list what the pass would expire, remove and abort")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object (at, buckets, expired, noncurrent, markers, aborted, ...)")
    run.set_defaults(func=_admin_lifecycle_run)


def _admin_nodes(args: argparse.Namespace) -> int:
    nodes = client().api("GET", "/_manta/admin/nodes")["nodes"]
    if args.json:
        print(json.dumps(nodes))
    else:
        print(f"{'ID':<14} {'HEALTH':<24} {'HEARTBEAT':>9} {'LATENCY':>8} {'FREE':>14} {'SLOTS':>7} "
              f"{'OBJECTS':>8}  ADDRESS")
        for n in nodes:
            beat = f"{n['heartbeat_age_s']:.1f}s ago" if n.get("heartbeat_age_s") is not None else "-"
            latency = f"{n['latency_ms']:.1f}ms" if n.get("latency_ms") is not None else "-"
            slots = f"{n['busy']}/{n['slots']}" if n.get("slots") is not None else "-"
            print(f"{n['id']:<14} {n['health'][:24]:<24} {beat:>9} {latency:>8} {n['free_bytes']:>14} "
                  f"{slots:>7} {n['object_count']:>8}  {n.get('address') or n['spec']}")
    return 0


def _image_path(name: str) -> str:
    import urllib.parse

    return "/_manta/admin/images/" + urllib.parse.quote(name, safe="")


def _print_image(image: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(image))
    else:
        print(f"{image['name']:<24} {image['kind']:<7} {image['id'][:16]}  {image['size']:>12}  {image['object']}")


def _admin_image_build(args: argparse.Namespace) -> int:
    requirements = None
    if args.requirements is not None:
        try:
            with open(args.requirements, encoding="utf-8") as fh:
                requirements = fh.read()
        except OSError as exc:
            raise CliError(f"cannot read {args.requirements}: {exc.strerror or exc}") from None
    image = client().api("POST", _image_path(args.name) + "/build", {"requirements": requirements},
                         timeout_s=3 * 3600)
    _print_image(image, args.json)
    return 0


def _admin_image_import(args: argparse.Namespace) -> int:
    try:
        fh = open(args.tarball, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CliError(f"cannot read {args.tarball}: {exc.strerror or exc}") from None
    with fh:
        image = client().api("PUT", _image_path(args.name), timeout_s=3600, upload=fh)
    _print_image(image, args.json)
    return 0


def _admin_image_ls(args: argparse.Namespace) -> int:
    images = client().api("GET", "/_manta/admin/images")["images"]
    if args.json:
        print(json.dumps(images))
    else:
        for image in images:
            _print_image(image, False)
    return 0


def _admin_image_rm(args: argparse.Namespace) -> int:
    client().api("DELETE", _image_path(args.name))
    return 0


def _register_images(admin_sub: Any) -> None:
    image = admin_sub.add_parser("image", help="manage task images (trees bound at /opt/manta/image)",
                                 description="Task images: read-only trees a job phase names (--image NAME), "
                                             "bound at /opt/manta/image with its bin first on PATH.",
                                 epilog="example: manta admin image build mytools --requirements requirements.txt")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build a Python image (a venv over the host's python3)",
                                 epilog="example: manta admin image build python-data")
    build.add_argument("name")
    build.add_argument("--requirements", metavar="FILE",
                       help="pip requirements file (python-data needs none: it has its own pinned list)")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.set_defaults(func=_admin_image_build)
    imp = image_sub.add_parser("import", help="store a tar of any tree as an image",
                               epilog="example: manta admin image import tools tools.tar")
    imp.add_argument("name")
    imp.add_argument("tarball", help="a tar (optionally compressed) of the tree's contents")
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.set_defaults(func=_admin_image_import)
    ls = image_sub.add_parser("ls", help="list images", epilog="example: manta admin image ls --json")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    ls.set_defaults(func=_admin_image_ls)
    rm = image_sub.add_parser("rm", help="remove an image's name (and its object when no other name has it)",
                              epilog="example: manta admin image rm tools")
    rm.add_argument("name")
    rm.set_defaults(func=_admin_image_rm)


def register(sub: Any) -> None:
    """Add `admin` to the `manta` command's subparsers."""
    admin = sub.add_parser("admin", help="administration (root credentials)",
                           description="Administration: accounts, storage nodes, scrub (root credentials).",
                           epilog="example: manta admin user add alice")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    user = admin_sub.add_parser("user", help="manage accounts", description="Create, list and inspect accounts; set their limits.",
                                epilog="example: manta admin user list --json")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    quota_help = ("limits as NAME=VALUE,...: objects, bytes (K/M/G/T/P suffixes), jobs, tasks, "
                  "outputs; VALUE none removes a limit")
    add = user_sub.add_parser("add", help="create an account and print its keys",
                              epilog="example: manta admin user add alice --quota objects=1000,bytes=10G --json")
    add.add_argument("name")
    add.add_argument("--quota", default=None, metavar="NAME=VALUE,...", help=quota_help)
    add.add_argument("--json", action="store_true", help="print one JSON object")
    add.set_defaults(func=_admin_user_add)
    set_ = user_sub.add_parser("set", help="change an account's limits",
                               epilog="example: manta admin user set alice --quota bytes=50G,jobs=none")
    set_.add_argument("name")
    set_.add_argument("--quota", required=True, metavar="NAME=VALUE,...", help=quota_help)
    set_.add_argument("--json", action="store_true", help="print one JSON object")
    set_.set_defaults(func=_admin_user_set)
    get = user_sub.add_parser("get", help="an account's keys, limits and usage",
                              epilog="example: manta admin user get alice --json")
    get.add_argument("name")
    get.add_argument("--json", action="store_true",
                     help="print one JSON object (quota, quota_set, usage: {objects, bytes}, ...)")
    get.set_defaults(func=_admin_user_get)
    lst = user_sub.add_parser("list", help="list accounts", epilog="example: manta admin user list")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    lst.set_defaults(func=_admin_user_list)
    scrub = admin_sub.add_parser("scrub", help="verify every replica now and repair what is damaged",
                                 epilog="example: manta admin scrub --json")
    scrub.add_argument("--json", action="store_true",
                       help="print one JSON object (checked, damaged, repaired, lost, ...)")
    scrub.set_defaults(func=_admin_scrub)
    gc = admin_sub.add_parser("gc", help="delete blob copies no object needs (older than MANTA_GC_GRACE_S) now",
                              epilog="example: manta admin gc --json")
    gc.add_argument("--json", action="store_true", help='print one JSON object {"removed": N}')
    gc.set_defaults(func=_admin_gc)
    nodes = admin_sub.add_parser("nodes", help="list storage nodes: health, space, objects",
                                 epilog="example: manta admin nodes --json")
    nodes.add_argument("--json", action="store_true", help="print a JSON array")
    nodes.set_defaults(func=_admin_nodes)
    _register_images(admin_sub)
    _register_lifecycle(admin_sub)
    catalog_admin.register(admin_sub)
