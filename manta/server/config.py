"""Server configuration: one validated dataclass, units in the names."""

from __future__ import annotations

import os
import ssl
import urllib.parse
from dataclasses import dataclass, field

DEFAULT_DATA_DIR = "./manta-data"
DEFAULT_LISTEN = "127.0.0.1:9000"
# the background schedules: ServerConfig field -> its environment variable
TIMINGS = {"health_ttl_s": "MANTA_HEALTH_TTL_S", "gc_interval_s": "MANTA_GC_INTERVAL_S",
           "scrub_interval_s": "MANTA_SCRUB_INTERVAL_S", "repair_interval_s": "MANTA_REPAIR_INTERVAL_S",
           "heartbeat_interval_s": "MANTA_HEARTBEAT_S", "lifecycle_interval_s": "MANTA_LIFECYCLE_INTERVAL_S"}


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 9000
    domain: str | None = None
    region: str = "us-east-1"
    max_skew_s: int = 900
    body_timeout_s: float = 30.0
    min_body_rate: float = 500.0  # bytes/s a body must average past its first body_timeout_s (0: any rate)
    max_header_bytes: int = 8192
    max_meta_bytes: int = 2048
    gc_grace_s: float = 3600.0
    nodes: int = 1
    copies: int | None = None
    storage: tuple[str, ...] = ()
    scrub_rate_mb_s: float = 50.0
    read_cache_mb: float = 64.0  # small blobs kept in memory once read, per server process (MANTA_READ_CACHE_MB)
    health_ttl_s: float = 1.0  # a node's health is checked again after this long (cached between)
    gc_interval_s: float = 600.0  # orphan blob files are collected this often (and once at start)
    scrub_interval_s: float = 24 * 3600.0  # a full background scrub this often
    repair_interval_s: float = 5.0  # the repair queue is looked at this often (and when a read queues)
    heartbeat_interval_s: float = 1.0  # remote nodes' /v1/health is polled this often
    lifecycle_interval_s: float = 3600.0  # buckets' lifecycle rules are enforced this often
    task_slots: int | None = None  # concurrent tasks per node (default: CPU count)
    task_memory_budget_mb: int | None = None  # memory all running tasks share (default: host's - reserve)
    task_max_memory_mb: int | None = None  # ceiling of a phase's memory_mb (default: min(16384, budget))
    task_max_disk_mb: int | None = None  # ceiling of a phase's disk_mb (default: min(65536, budget))
    image_cache_dir: str | None = None  # built task images by id, shareable by servers (MANTA_IMAGE_CACHE)
    tls_cert_file: str | None = None  # PEM certificate chain: serve HTTPS (with tls_key_file)
    tls_key_file: str | None = None
    head_timeout_s: float = 30.0  # a request head must be complete this long after it starts
    idle_timeout_s: float = 30.0  # a keep-alive connection idle this long is closed
    login_idle_s: float = 600.0  # a `manta login` session idle this long is closed (MANTA_LOGIN_IDLE_S)
    max_connections: int | None = None  # default: manta.server.protocol.default_max_connections(fd limit)
    max_websockets: int = 128  # open websocket connections per process (MANTA_MAX_WEBSOCKETS): manta login
    node_urls: tuple[str, ...] = ()  # storage nodes on other hosts (`manta node`); none: nodes in this process
    cluster_secret: str | None = field(default=None, repr=False)  # signs requests to remote nodes
    workers: int = 1  # server processes sharing the listening socket (manta.server.workers)
    catalog: str | None = field(default=None, repr=False)  # postgresql://... (may hold a password); None: LMDB in data_dir

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file else "http"

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.body_timeout_s <= 0 or self.max_skew_s <= 0:
            raise ValueError("timeouts must be positive")
        for name in TIMINGS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{TIMINGS[name]} must be positive")
        # imported here: the CLI's other commands (manta ls, manta job) need not load storage
        from storage import parse_spec

        for spec in self.storage:
            parse_spec(spec)
        if self.max_websockets < 1:
            raise ValueError("MANTA_MAX_WEBSOCKETS must be at least 1")
        if not self.min_body_rate >= 0:  # NaN too
            raise ValueError("MANTA_MIN_BODY_RATE must be 0 (off) or more")
        if not self.read_cache_mb >= 0:  # NaN too
            raise ValueError("MANTA_READ_CACHE_MB must be 0 (off) or more")
        if self.task_slots is not None and self.task_slots < 1:
            raise ValueError("MANTA_TASK_SLOTS must be at least 1")
        for name, low in (("task_memory_budget_mb", 16), ("task_max_memory_mb", 16), ("task_max_disk_mb", 8)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"MANTA_{name.upper()} must be at least {low}")
        if self.head_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("MANTA_HEAD_TIMEOUT_S and MANTA_IDLE_TIMEOUT_S must be positive")
        if not 0 < self.login_idle_s <= 8 * 3600:
            raise ValueError("MANTA_LOGIN_IDLE_S must be positive and at most 28800 (8 hours)")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("MANTA_MAX_CONNECTIONS must be at least 1")
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if self.catalog is not None and not self.catalog.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"--catalog must be a postgresql://USER@HOST/DB URL, not {self.catalog!r}")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        self._validate_remote()
        count = len(self.node_urls) or len(self.storage) or self.nodes
        if self.storage and self.nodes not in (1, len(self.storage)):
            raise ValueError(f"--nodes {self.nodes} does not match {len(self.storage)} --storage specs")
        if self.copies is not None and not 1 <= self.copies <= count:
            raise ValueError(f"--copies must be between 1 and the number of nodes ({count})")
        if self.domain is not None and (not self.domain or self.domain.startswith(".")):
            raise ValueError(f"invalid domain {self.domain!r}")
        self._validate_tls()

    def _validate_remote(self) -> None:
        if not self.node_urls:
            return
        if self.storage or self.nodes != 1:
            raise ValueError("--node (remote storage nodes) and --storage/--nodes (nodes in this process) "
                             "do not mix")
        for url in self.node_urls:
            parse_node_url(url)
        if len(set(self.node_urls)) != len(self.node_urls):
            raise ValueError("the same --node URL is given twice")
        if not self.cluster_secret:
            raise ValueError("remote nodes need the cluster secret: set MANTA_CLUSTER_SECRET or "
                             "give --cluster-secret-file")

    def _validate_tls(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
        if self.tls_cert_file is None or self.tls_key_file is None:
            return
        for flag, path in (("--tls-cert", self.tls_cert_file), ("--tls-key", self.tls_key_file)):
            if not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: no such file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"--tls-cert {self.tls_cert_file} / --tls-key {self.tls_key_file}: "
                             f"not a PEM certificate and its matching private key ({exc})") from None


def parse_node_url(url: str) -> str:
    """A storage node's base URL, `http://HOST:PORT`, without a trailing slash."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname or parsed.port is None or parsed.path not in ("", "/") \
            or parsed.query or parsed.fragment:
        raise ValueError(f"--node wants http://HOST:PORT, got {url!r}")
    return url.rstrip("/")


def read_nodes_file(path: str) -> list[str]:
    """Node URLs, one per line (blank lines and # comments ignored)."""
    try:
        with open(path) as fh:
            lines = [line.split("#", 1)[0].strip() for line in fh]
    except OSError as exc:
        raise ValueError(f"--nodes-file {path}: {exc.strerror or exc}") from None
    return [line for line in lines if line]


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None


def env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
