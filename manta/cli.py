"""The `manta` command line: `serve` and `admin` (object and job commands come later).

Client commands resolve the server URL and credentials as `manta.credentials` says:
MANTA_URL; MANTA_ACCESS_KEY/MANTA_SECRET_KEY, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
else the root credentials in the local data dir (MANTA_DATA, default ./manta-data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from manta.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    ServerConfig,
    env_float,
    env_int,
    parse_listen,
    parse_node_url,
    read_nodes_file,
)


class CliError(Exception):
    """A user-facing error: printed as `manta: message`, exit status 1."""


def _serve(args: argparse.Namespace) -> int:
    from manta.server import serve
    from storage.zfs import ZfsError

    try:
        host, port = parse_listen(args.listen)
        storage = tuple(s for s in (args.storage or "").split(",") if s)
        urls = tuple(args.node or ()) + tuple(read_nodes_file(args.nodes_file) if args.nodes_file else ())
        secret = _cluster_secret(args.cluster_secret_file) if urls else None
        config = ServerConfig(data_dir=args.data, host=host, port=port, domain=args.domain,
                              region=os.environ.get("MANTA_REGION") or "us-east-1",
                              node_urls=tuple(parse_node_url(u) for u in urls), cluster_secret=secret,
                              body_timeout_s=env_float("MANTA_BODY_TIMEOUT_S", 30.0),
                              gc_grace_s=env_float("MANTA_GC_GRACE_S", 3600.0),
                              nodes=args.nodes if args.nodes is not None else max(1, len(storage)),
                              copies=args.copies, storage=storage,
                              scrub_rate_mb_s=env_float("MANTA_SCRUB_RATE_MB_S", 50.0),
                              task_slots=env_int("MANTA_TASK_SLOTS"),
                              task_memory_budget_mb=env_int("MANTA_TASK_MEMORY_BUDGET_MB"),
                              task_max_memory_mb=env_int("MANTA_TASK_MAX_MEMORY_MB"),
                              task_max_disk_mb=env_int("MANTA_TASK_MAX_DISK_MB"),
                              tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
                              head_timeout_s=env_float("MANTA_HEAD_TIMEOUT_S", 30.0),
                              idle_timeout_s=env_float("MANTA_IDLE_TIMEOUT_S", 30.0),
                              max_connections=env_int("MANTA_MAX_CONNECTIONS"))
        config.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        serve(config)
    except ZfsError as exc:
        raise CliError(f"cannot prepare a ZFS node: {exc}") from None
    return 0


def _cluster_secret(path: str | None) -> str:
    from storage.clusterauth import SecretError, load_secret

    try:
        return load_secret(path)
    except SecretError as exc:
        raise CliError(str(exc)) from None


def _node(args: argparse.Namespace) -> int:
    from manta.nodeserver import run_node
    from storage.clusterauth import SecretError, load_secret
    from storage.zfs import ZfsError

    try:
        parse_listen(args.listen)
        secret = load_secret(args.cluster_secret_file)
        run_node(args.storage, args.listen, args.data, secret, args.advertise, args.slots)
    except (ValueError, SecretError) as exc:
        raise CliError(str(exc)) from None
    except ZfsError as exc:
        raise CliError(f"cannot prepare a ZFS node: {exc}") from None
    return 0


def _quota_arg(text: str | None) -> dict[str, int | None]:
    from storage.quota import parse_quota

    try:
        return parse_quota(text) if text is not None else {}
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _admin_user_add(args: argparse.Namespace) -> int:
    from manta.http import signed_request

    payload: dict[str, Any] = {"name": args.name}
    if args.quota is not None:
        payload["quota"] = _quota_arg(args.quota)
    user = signed_request("POST", "/_manta/admin/users", json.dumps(payload).encode())
    if args.json:
        print(json.dumps(user))
    else:
        print(f"user:       {user['name']}\naccess key: {user['access_key']}\nsecret key: {user['secret_key']}")
        for name, limit in (user.get("quota_set") or {}).items():
            print(f"{name + ' limit:':<12}{limit}")
    return 0


def _admin_user_set(args: argparse.Namespace) -> int:
    from manta.http import signed_request

    payload = {"quota": _quota_arg(args.quota)}
    user = signed_request("POST", _user_path(args.name), json.dumps(payload).encode())
    _print_user(user, args.json)
    return 0


def _admin_user_get(args: argparse.Namespace) -> int:
    from manta.http import signed_request

    _print_user(signed_request("GET", _user_path(args.name)), args.json)
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
    from manta.http import signed_request

    users = signed_request("GET", "/_manta/admin/users")["users"]
    if args.json:
        print(json.dumps(users))
    else:
        for u in users:
            print(f"{u['name']:<24} {u['access_key']:<22} {'root' if u['root'] else ''}")
    return 0


def _admin_scrub(args: argparse.Namespace) -> int:
    from manta.http import signed_request

    report = signed_request("POST", "/_manta/admin/scrub", b"{}", timeout_s=24 * 3600)
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
    from manta.http import signed_request

    report = signed_request("POST", "/_manta/admin/gc", b"{}", timeout_s=3600)
    print(json.dumps(report) if args.json else f"removed {report['removed']} blob copies no object needs")
    return 0


def _admin_nodes(args: argparse.Namespace) -> int:
    from manta.http import signed_request

    nodes = signed_request("GET", "/_manta/admin/nodes")["nodes"]
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


def subcommand(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str,
               example: str) -> argparse.ArgumentParser:
    """A subcommand whose help is its description, with one example in its epilog."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="manta",
        description="An S3-compatible object store that runs map/reduce jobs next to the data.",
        epilog="example: manta serve --data ./manta-data --listen 127.0.0.1:9000",
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (S3 API) with an embedded storage node",
                           epilog="example: manta serve --data /srv/manta --listen 0.0.0.0:9000")
    serve.add_argument("--data", default=os.environ.get("MANTA_DATA") or DEFAULT_DATA_DIR,
                       help=f"data directory (default {DEFAULT_DATA_DIR})")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    serve.add_argument("--domain", default=None,
                       help="enable virtual-host addressing: BUCKET.DOMAIN names a bucket")
    serve.add_argument("--nodes", type=int, default=None,
                       help="number of storage nodes in this process (default 1, or one per --storage spec)")
    serve.add_argument("--copies", type=int, default=None,
                       help="copies of every object on distinct nodes (default min(2, nodes))")
    serve.add_argument("--storage", default=None, metavar="SPEC[,SPEC...]",
                       help="one spec per node: dir:PATH or zfs:POOL/DATASET (default dir: under --data)")
    serve.add_argument("--tls-cert", default=None, metavar="FILE",
                       help="serve HTTPS with this PEM certificate (chain); needs --tls-key")
    serve.add_argument("--tls-key", default=None, metavar="FILE", help="the PEM private key of --tls-cert")
    serve.add_argument("--node", action="append", default=None, metavar="URL",
                       help="a storage node on its own host (`manta node`), http://HOST:PORT; repeat per "
                            "node. Its blobs and tasks live there; no nodes run in this process")
    serve.add_argument("--nodes-file", default=None, metavar="FILE",
                       help="node URLs, one per line (with or instead of --node)")
    serve.add_argument("--cluster-secret-file", default=None, metavar="FILE",
                       help="the cluster secret that signs requests to nodes (default: MANTA_CLUSTER_SECRET)")
    serve.set_defaults(func=_serve)

    node = subcommand(sub, "node", _node, "run a storage node (blobs and the task agent) for a cluster",
                      "MANTA_CLUSTER_SECRET=... manta node --storage dir:/srv/node1 --listen 0.0.0.0:9100")
    node.add_argument("--storage", required=True, metavar="SPEC", help="dir:PATH or zfs:POOL/DATASET")
    node.add_argument("--listen", required=True, help="HOST:PORT")
    node.add_argument("--data", default=None, metavar="DIR", help="the node's own state directory")
    node.add_argument("--cluster-secret-file", default=None, metavar="FILE",
                      help="the cluster secret (default: MANTA_CLUSTER_SECRET)")
    node.add_argument("--advertise", default=None, metavar="URL",
                      help="this node's URL for peers (default http://LISTEN)")
    node.add_argument("--slots", type=int, default=None, help="concurrent tasks (default: CPU count)")

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

    from manta import cli_find, cli_jobs, cli_objects

    cli_objects.register(sub)
    cli_jobs.register(sub)
    cli_find.register(sub)
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
