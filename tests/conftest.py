"""Shared fixtures: a real `manta serve` on a loopback port, boto3 clients, system-test gating.

Tests that need a system tool (zfs, bwrap, awscli, root) call `require(...)`: on a laptop
they skip with the reason; with MANTA_REQUIRE_SYSTEM_TESTS=1 (set by CI) they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.config import Config

from jobs.cgroups import running as alive
from tests.pgserver import PgServer, pg_unavailable
from tests.ports import free_port
from tests.zfs_pools import Pool, PoolFactory, zfs_unavailable

ROOT_AK = "MANTAROOTTESTKEY0001"
ROOT_SK = "manta-root-test-secret-key-0000000000001"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite never reads the client profiles or AWS files of whoever runs it (./run.sh writes
# a `default` profile): clients find only what a test sets. A subprocess given an environment
# of its own gets NO_USER_CONFIG in it too.
NO_USER_CONFIG = {name: os.devnull for name in ("MANTA_CONFIG_FILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
os.environ.update(NO_USER_CONFIG)
for _name in ("MANTA_PROFILE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_name, None)
# Task images are built once per run (and kept across runs): every test server takes built
# image tars from this one cache instead of running pip again (jobs/imagebuild.py).
os.environ.setdefault("MANTA_IMAGE_CACHE", "/var/tmp/manta-image-cache")


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("MANTA_REQUIRE_SYSTEM_TESTS") == "1":
        pytest.fail(f"required system test cannot run: {reason}")
    pytest.skip(reason)


def require_root_sandbox(why_root: str) -> None:
    """Skip (or fail, in CI) unless bubblewrap runs task containers here, as root."""
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    require(os.geteuid() == 0, why_root)
    from jobs.sandbox import Sandbox

    reason = Sandbox().check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def terminate(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Send `sig` to a process that still runs and wait for it; SIGKILL after `timeout_s`."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def default_workers() -> int:
    """The fixtures' `manta serve --workers`: 1 unless MANTA_TEST_WORKERS says otherwise."""
    return int(os.environ.get("MANTA_TEST_WORKERS") or 1)


# and every other `manta serve` the suite starts (tests/netns.py, test_tls, ...) gets as many
os.environ["MANTA_WORKERS"] = str(default_workers())


def test_catalog() -> str:
    """The catalog engine of the servers the suite starts: MANTA_TEST_CATALOG=postgresql puts
    each in a fresh database of one throwaway PostgreSQL server (`./run.sh test` runs the S3
    and job end-to-end tests a second time that way); default lmdb."""
    return os.environ.get("MANTA_TEST_CATALOG") or "lmdb"


_databases = [0]


def new_pg_database(prefix: str) -> str:
    """The URL of a fresh database on the session's PostgreSQL server (started on first use)."""
    _databases[0] += 1
    return shared_pg().new_database(f"{prefix}_{_databases[0]}")


_server_catalogs: dict[str, str] = {}  # data dir -> the postgresql:// URL of its server's catalog


def catalog_of(data_dir: str) -> str:
    """Where the catalog of the server over `data_dir` is: its database, else its LMDB dir."""
    return _server_catalogs.get(data_dir) or os.path.join(data_dir, "catalog")


@dataclass
class Server:
    data_dir: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    scheme: str = "http"  # "https" for a server started with --tls-cert/--tls-key
    workers: int = field(default_factory=default_workers)
    catalog: str | None = None  # a postgresql:// URL; None: LMDB, unless MANTA_TEST_CATALOG says so

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.log_path = os.path.join(os.path.dirname(self.data_dir), f"server-{self.port}.log")
        log = open(self.log_path, "ab")  # noqa: SIM115
        log_start = log.tell()
        env = {**os.environ, "MANTA_ROOT_ACCESS_KEY": ROOT_AK, "MANTA_ROOT_SECRET_KEY": ROOT_SK,
               **self.env}
        if self.catalog is None and test_catalog() == "postgresql":
            self.catalog = new_pg_database("manta_server")  # kept across restarts of this server
        catalog = ["--catalog", self.catalog] if self.catalog else []
        if self.catalog:
            _server_catalogs[self.data_dir] = self.catalog
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "manta", "serve", "--data", self.data_dir,
             "--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers), *catalog,
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            if self.workers > 1 or self.catalog:  # a supervisor listens before its workers serve
                if "manta: ready in" in self.log(since=log_start):
                    return
                time.sleep(0.05)
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (its workers too: a SIGKILLed supervisor takes them along)."""
        workers = self.worker_pids()
        terminate(self.proc, sig)
        self.proc = None
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self, since: int | None = None) -> str:
        """The last 4000 characters of the log, or everything after byte offset `since`."""
        try:
            with open(self.log_path, "rb") as fh:
                if since is not None:
                    fh.seek(since)
                    return fh.read().decode(errors="replace")
                return fh.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The pids of the server's worker processes (none for `--workers 1`)."""
        if self.proc is None:
            return []
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                return [int(pid) for pid in fh.read().split()]
        except OSError:
            return []

    def client(self, access_key: str = ROOT_AK, secret_key: str = ROOT_SK, **config: object) -> object:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name="us-east-1",
            config=Config(**config) if config else None)  # type: ignore[arg-type]


def traversable_dir(prefix: str) -> str:
    """A fresh directory in /tmp whose path the task sandbox user can traverse (0711):
    task containers run as an unprivileged user that binds blob files by path, and
    pytest's own tmp dirs live under a 0700 directory."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o711)
    return base


@contextlib.contextmanager
def running_server(prefix: str = "manta-test-", **options: Any) -> Iterator[Server]:
    """A started server (Server's `options`: env, extra_args, scheme, workers) whose data dir task
    containers can reach; stopped and removed after the block."""
    base = traversable_dir(prefix)
    srv = Server(os.path.join(base, "data"), free_port(), **options)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server shared by the tests that do not restart or kill it."""
    with running_server(env={"MANTA_BODY_TIMEOUT_S": "2"}) as srv:
        yield srv


@pytest.fixture
def fresh_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server of the test's own, for tests that kill or restart it (not started). Its
    `--workers` comes from an indirect parametrization (`workers`) if the test has one."""
    base = traversable_dir("manta-test-")
    srv = Server(os.path.join(base, "data"), free_port(),
                 workers=getattr(request, "param", None) or default_workers())
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def zfs_pools() -> Iterator[PoolFactory]:
    """File-backed ZFS pools for one test, destroyed after it (skips, or fails in CI, without ZFS)."""
    reason = zfs_unavailable()
    require(reason is None, reason or "")
    base = traversable_dir("manta-zfs-")  # nodes' mountpoints must be reachable by the task user
    try:
        with PoolFactory(os.path.join(base, "zfs")) as pools:
            yield pools
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def zfs_session_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """One file-backed ZFS pool shared by the session's tests (each makes its own datasets)."""
    reason = zfs_unavailable()
    require(reason is None, reason or "")
    with PoolFactory(str(tmp_path_factory.mktemp("zfs"))) as pools:
        yield pools.create()


_pg: list[PgServer] = []


def shared_pg() -> PgServer:
    """The session's throwaway PostgreSQL 15 server (tests/pgserver.py), started on first use
    and stopped when the session ends; skips, or fails in CI, without the binaries."""
    if not _pg:
        reason = pg_unavailable()
        require(reason is None, reason or "")
        srv = PgServer()
        srv.start()
        _pg.append(srv)
    return _pg[0]


# `./run.sh test` runs the suite in two processes (pytest-xdist, `-n 2 --dist loadfile`): each
# test module runs whole in one process, so its module fixtures are made once. The modules
# that make ZFS pools or network namespaces (their source names a fixture or helper of
# tests/zfs_pools.py or tests/netns.py) count as one file and so never overlap: zfs-fuse
# wedged, `zfs create` stuck for minutes, with two processes doing ZFS work at once, and a
# new network looks for a free 10.213.X before it takes one.
MACHINE_WIDE = ("zfs_pools", "zfs_session_pool", "tests.netns")
_scopes: dict[str, str] = {}


def xdist_scope(module: str) -> str:
    """The unit of work of a test module (a path from the repository root) in a parallel run."""
    if module not in _scopes:
        with open(os.path.join(REPO, module)) as fh:
            source = fh.read()
        _scopes[module] = "zfs-and-netns" if any(name in source for name in MACHINE_WIDE) else module
    return _scopes[module]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LoadFileKeepingMachineWideTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid.split("::", 1)[0])

    return LoadFileKeepingMachineWideTogether(config, log)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    while _pg:
        _pg.pop().stop()


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    return shared_pg()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's PostgreSQL, dropped after the test."""
    _databases[0] += 1
    name = f"manta_test_{_databases[0]}"
    yield pg_server.new_database(name)
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def s3(server: Server) -> object:
    return server.client()


@pytest.fixture(scope="session")
def s3_once(server: Server) -> object:
    """A client that does not retry: botocore retries a BadDigest (400) four times with
    backoff, 5-10 s a call, where a test of that answer wants it once."""
    return server.client(retries={"total_max_attempts": 1})


_counter = [0]


@pytest.fixture
def bucket(s3: object) -> Iterator[str]:
    _counter[0] += 1
    name = f"test-{os.getpid()}-{_counter[0]}"
    s3.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    yield name
