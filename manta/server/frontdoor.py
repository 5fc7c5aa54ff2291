"""Server wiring: the embedded store, root credentials, the ASGI app and uvicorn.

`serve` is the single-process server (`--workers 1`); manta.server.workers runs N of the
same over one listening socket from these parts (build_app, uvicorn_config, daemons)."""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp

from jobs import TABLES as JOB_TABLES
from jobs import JobScheduler, Sandbox, SandboxConfig, SchedulerConfig
from manta.server import admin_api, images_api, jobs_api, login
from manta.server.config import ServerConfig
from manta.server.keys import (
    Credentials,
    credentials_path,
    new_access_key,
    new_secret_key,
    read_root_credentials,
    write_root_credentials,
)
from manta.server.protocol import (
    ConnectionLimits,
    WorkerShares,
    default_max_connections,
    protocol_for,
)
from manta.server.s3.app import S3App, S3Starlette
from manta.server.s3.context import S3Request
from manta.server.serving import serve_until_stopped
from storage import JournalFlusher, OrphanCollector, Repairer, Store, StoreConfig
from storage.daemons import BackgroundScrubber, Daemon
from storage.lifecycle import LifecycleDaemon

log = logging.getLogger("manta")


def ensure_root(store: Store, data_dir: str) -> tuple[Credentials, str | None]:
    """Create the root account on first start; returns (credentials, file written or None)."""
    existing = [a for a in store.catalog.accounts.all() if a.root]
    if existing:
        root = existing[0]
        return Credentials(root.access_key, root.secret), None
    env_ak, env_sk = os.environ.get("MANTA_ROOT_ACCESS_KEY"), os.environ.get("MANTA_ROOT_SECRET_KEY")
    creds = Credentials(env_ak, env_sk) if env_ak and env_sk else Credentials(new_access_key(), new_secret_key())
    store.catalog.accounts.add("root", creds.access_key, creds.secret_key, root=True)
    if env_ak and env_sk:
        return creds, None
    return creds, write_root_credentials(data_dir, creds)


def manta_routes(scheduler: JobScheduler) -> Callable[[S3Request], Awaitable[Response]]:
    """Everything under /_manta/: the jobs API, the admin API and its images part."""
    jobs = jobs_api.routes(scheduler)
    images = images_api.routes(scheduler.images)

    async def handle(req: S3Request) -> Response:
        if req.key == "jobs" or req.key.startswith("jobs/"):
            return await jobs(req)
        if req.key == images_api.PREFIX or req.key.startswith(images_api.PREFIX + "/"):
            return await images(req)
        return await admin_api.handle(req)

    return handle


def store_config(config: ServerConfig) -> StoreConfig:
    """The store's settings, from the server's."""
    return StoreConfig(config.data_dir, node_count=config.nodes, copies=config.copies,
                       specs=config.storage, gc_grace_s=config.gc_grace_s,
                       gc_interval_s=config.gc_interval_s, scrub_interval_s=config.scrub_interval_s,
                       scrub_rate_mb_s=config.scrub_rate_mb_s, repair_interval_s=config.repair_interval_s,
                       health_ttl_s=config.health_ttl_s, heartbeat_interval_s=config.heartbeat_interval_s,
                       lifecycle_interval_s=config.lifecycle_interval_s,
                       node_urls=config.node_urls, cluster_secret=config.cluster_secret,
                       catalog=config.catalog, extra_tables=JOB_TABLES)


def build_app(config: ServerConfig, jobs: bool = True,
              recover: bool = True) -> tuple[S3Starlette, Store, JobScheduler]:
    """The whole server but its listener and daemons: the store, the job scheduler (not
    started) and the ASGI app. `jobs=False` leaves the sandbox out, as on a host without
    bubblewrap (tasks cannot run): what the in-process tests of the S3 handlers use.
    `recover=False`: another process has done the store's start-up recovery (a worker)."""
    config.validate()
    store = Store(store_config(config), recover=recover)
    # tasks run on the nodes: in this process only when the nodes are
    sandbox: Sandbox | None = Sandbox(SandboxConfig()) if jobs and not config.node_urls else None
    problem = sandbox.check() if sandbox is not None else None
    if problem:
        log.warning("jobs are disabled: %s", problem)
        sandbox = None
    elif sandbox is not None and not _traversable(config.data_dir):
        log.warning("the data dir %s is inside a directory other users cannot traverse: job tasks "
                    "(run as an unprivileged user) will not be able to read their inputs",
                    os.path.abspath(config.data_dir))
    scheduler = JobScheduler(store, sandbox, scheduler_config(config))
    s3 = S3App(store, config, extra={admin_api.PREFIX: manta_routes(scheduler)},
               sockets={admin_api.PREFIX: login.login_handler(scheduler, config.login_idle_s)})
    return s3.starlette(), store, scheduler


def scheduler_config(config: ServerConfig) -> SchedulerConfig:
    """The job scheduler's settings: the server's where given, the scheduler's defaults elsewhere."""
    given = {"slots_per_node": config.task_slots, "memory_budget_mb": config.task_memory_budget_mb,
             "max_task_memory_mb": config.task_max_memory_mb, "max_task_disk_mb": config.task_max_disk_mb}
    return SchedulerConfig(**{k: v for k, v in given.items() if v is not None},
                           image_cache_dir=config.image_cache_dir)


def _traversable(path: str) -> bool:
    """Can a user other than the owner reach files below `path` (o+x on every parent)?"""
    path = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (as root, the hard one first, up
    to fs.nr_open) and return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as fh:
                ceiling = int(fh.read())
            if ceiling > hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
                soft = hard = ceiling
        except (OSError, ValueError):
            pass  # no CAP_SYS_RESOURCE (a container): the hard limit stays
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def connection_limits(config: ServerConfig, fd_limit: int, quiet: bool = False) -> ConnectionLimits:
    cap = config.max_connections or default_max_connections(fd_limit)
    limits = ConnectionLimits(head_timeout_s=config.head_timeout_s, max_connections=cap,
                              send_timeout_s=config.body_timeout_s, max_websockets=config.max_websockets)
    if quiet:
        return limits
    log.info("file descriptors: %d; at most %d connections", fd_limit, cap)
    if cap > default_max_connections(fd_limit):
        log.warning("MANTA_MAX_CONNECTIONS %d leaves too few of the %d file descriptors for blob files: "
                    "requests may get 503 SlowDown", cap, fd_limit)
    return limits


def start_daemons(store: Store) -> list[Daemon]:
    """The store's background daemons, started: one set per store (the leader's, with workers)."""
    daemons: list[Daemon] = [JournalFlusher(store), OrphanCollector(store), Repairer(store),
                             BackgroundScrubber(store), LifecycleDaemon(store)]
    for daemon in daemons:
        daemon.start()
    return daemons


def stop_daemons(store: Store, daemons: list[Daemon]) -> None:
    """Stop them and make the journalled small blobs durable (any process may, at its exit)."""
    for daemon in daemons:
        daemon.stop()
    JournalFlusher(store).run_once()


def uvicorn_config(app: ASGIApp, config: ServerConfig, limits: ConnectionLimits,
                   shares: WorkerShares | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=config.host, port=config.port, http=protocol_for(limits, shares), loop="uvloop",
        log_level="warning", access_log=False, server_header=False,
        # aws:SourceIp is the peer and aws:SecureTransport its connection: uvicorn would
        # otherwise take both from X-Forwarded-For/-Proto sent by any client on 127.0.0.1
        proxy_headers=False,
        ssl_certfile=config.tls_cert_file, ssl_keyfile=config.tls_key_file,
        timeout_keep_alive=config.idle_timeout_s)  # type: ignore[arg-type]  # a float works (call_later)


def banner_lines(config: ServerConfig, store: Store, creds: Credentials, written: str | None) -> list[str]:
    """What `manta serve` says once it listens (but the last line, `manta: ready in ...`)."""
    url = f"{config.scheme}://{config.host}:{config.port}"
    where = written or (credentials_path(config.data_dir) if read_root_credentials(config.data_dir) else None)
    lines = [f"manta: S3 endpoint {url} (region {config.region}), data in {os.path.abspath(config.data_dir)}"]
    engine = store.catalog.engine
    lines.append(f"manta: catalog {engine.name} at {engine.location} (schema {engine.schema_version()})")
    for node in store.node_list():
        lines.append(f"manta: node {node.id} {node.address} ({'up' if node.healthy() else 'DOWN'})")
    lines.append(f"manta: {store.copies} copies of every object")
    if where:
        lines.append(f"manta: root credentials in {where} (the manta CLI reads them from there)")
    else:
        lines.append(f"manta: root access key {creds.access_key} (secret from MANTA_ROOT_SECRET_KEY)")
    return lines


def serve(config: ServerConfig) -> None:
    """The single-process server: store, scheduler, daemons and uvicorn in this process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    limits = connection_limits(config, raise_fd_limit())
    app, store, scheduler = build_app(config)
    creds, written = ensure_root(store, config.data_dir)
    daemons = start_daemons(store)
    scheduler.start()
    server = uvicorn.Server(uvicorn_config(app, config, limits))

    def banner() -> str:
        lines = banner_lines(config, store, creds, written)
        return "\n".join([*lines, f"manta: ready in {time.monotonic() - started:.2f}s"])

    try:
        serve_until_stopped(server, banner)
    finally:
        scheduler.stop()
        stop_daemons(store, daemons)
        store.close()
