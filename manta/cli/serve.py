"""`manta serve` (a front door, with embedded nodes or over `manta node`s) and `manta node`
(one storage node of a cluster)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from manta.cli.common import CliError, subcommand
from manta.server.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    TIMINGS,
    ServerConfig,
    default_workers,
    env_float,
    env_int,
    parse_listen,
    parse_node_url,
    read_nodes_file,
)

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    from manta.server.frontdoor import serve
    from manta.server.workers import supervise
    from storage.zfs import ZfsError

    try:
        host, port = parse_listen(args.listen)
        storage = tuple(s for s in (args.storage or "").split(",") if s)
        urls = tuple(args.node or ()) + tuple(read_nodes_file(args.nodes_file) if args.nodes_file else ())
        secret = _cluster_secret(args.cluster_secret_file) if urls else None
        timings: dict[str, Any] = {name: env_float(variable, getattr(ServerConfig, name))
                                   for name, variable in TIMINGS.items()}
        config = ServerConfig(data_dir=args.data, host=host, port=port, domain=args.domain,
                              region=os.environ.get("MANTA_REGION") or "us-east-1",
                              node_urls=tuple(parse_node_url(u) for u in urls), cluster_secret=secret,
                              body_timeout_s=env_float("MANTA_BODY_TIMEOUT_S", 30.0),
                              min_body_rate=env_float("MANTA_MIN_BODY_RATE", 500.0),
                              gc_grace_s=env_float("MANTA_GC_GRACE_S", 3600.0),
                              nodes=args.nodes if args.nodes is not None else max(1, len(storage)),
                              copies=args.copies, storage=storage,
                              scrub_rate_mb_s=env_float("MANTA_SCRUB_RATE_MB_S", 50.0),
                              read_cache_mb=env_float("MANTA_READ_CACHE_MB", 64.0),
                              task_slots=env_int("MANTA_TASK_SLOTS"),
                              task_memory_budget_mb=env_int("MANTA_TASK_MEMORY_BUDGET_MB"),
                              task_max_memory_mb=env_int("MANTA_TASK_MAX_MEMORY_MB"),
                              task_max_disk_mb=env_int("MANTA_TASK_MAX_DISK_MB"),
                              image_cache_dir=os.environ.get("MANTA_IMAGE_CACHE") or None,
                              tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
                              head_timeout_s=env_float("MANTA_HEAD_TIMEOUT_S", 30.0),
                              idle_timeout_s=env_float("MANTA_IDLE_TIMEOUT_S", 30.0),
                              login_idle_s=env_float("MANTA_LOGIN_IDLE_S", 600.0),
                              max_connections=env_int("MANTA_MAX_CONNECTIONS"),
                              max_websockets=_given(env_int("MANTA_MAX_WEBSOCKETS"), 128),
                              workers=args.workers if args.workers is not None else _workers_from_env(),
                              catalog=args.catalog or None,
                              **timings)
        config.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        # with a shared database a worker that loses the leader hold leaves and is started
        # again, so even one worker runs under the supervisor
        supervise(config) if config.workers > 1 or config.catalog else serve(config)
    except ZfsError as exc:
        raise CliError(f"cannot prepare a ZFS node: {exc}") from None
    return 0


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _workers_from_env() -> int:
    given = env_int("MANTA_WORKERS")
    return default_workers() if given is None else given


def _cluster_secret(path: str | None) -> str:
    from storage.clusterauth import SecretError, load_secret

    try:
        return load_secret(path)
    except SecretError as exc:
        raise CliError(str(exc)) from None


def _node(args: argparse.Namespace) -> int:
    from manta.server.node import run_node
    from storage.clusterauth import SecretError, load_secret
    from storage.zfs import ZfsError

    try:
        parse_listen(args.listen)
        secret = load_secret(args.cluster_secret_file)
        health_ttl_s = env_float(TIMINGS["health_ttl_s"], ServerConfig.health_ttl_s)
        if health_ttl_s <= 0:
            raise ValueError(f"{TIMINGS['health_ttl_s']} must be positive")
        run_node(args.storage, args.listen, args.data, secret, args.advertise, args.slots, health_ttl_s)
    except (ValueError, SecretError) as exc:
        raise CliError(str(exc)) from None
    except ZfsError as exc:
        raise CliError(f"cannot prepare a ZFS node: {exc}") from None
    return 0


def register(sub: Any) -> None:
    """Add `serve` and `node` to the `manta` command's subparsers."""
    serve = sub.add_parser("serve", help="run the server (S3 API) with an embedded storage node",
                           epilog="examples: manta serve --data /srv/manta --listen 0.0.0.0:9000\n"
                                  "          manta serve --data /srv/manta --workers 4",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
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
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="server processes sharing the port (default: MANTA_WORKERS, else the CPU "
                            "count); one of them runs the job scheduler and the background daemons")
    serve.add_argument("--catalog", default=os.environ.get("MANTA_CATALOG"), metavar="URL",
                       help="keep the catalog in PostgreSQL, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
                            "(default: MANTA_CATALOG, else LMDB in the data dir); any number of front doors "
                            "may share one database and the same nodes")
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
    node.add_argument("--slots", type=int, default=None, help="concurrent tasks (default: CPU count + 1)")
