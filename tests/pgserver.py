"""A throwaway PostgreSQL 15 server for tests: `initdb` into a temporary directory, listening
on 127.0.0.1 at a free port and on a unix socket inside that directory, trust auth,
fsync on (tests check durability, including after a SIGKILL).

PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user
(`runuser`), and the temporary directory belongs to it. `stop()` leaves nothing running
and removes the directory.

`deadlock_timeout` is 50ms (the default is 1s): it is how long a lock waiter sleeps before
checking for a deadlock, and the engine tests make front doors deadlock on purpose (two
writers locking the same keys in opposite orders), so each deadlock would otherwise cost
a second.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from typing import LiteralString

import psycopg
from psycopg import sql

from jobs.cgroups import running
from tests.ports import free_port

__all__ = ["PG_BIN", "PgServer", "pg_unavailable"]

PG_BIN = os.environ.get("MANTA_PG_BIN", "/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
DATABASE = "manta_test"


def pg_unavailable() -> str | None:
    """Why a PgServer cannot start here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not os.access(os.path.join(PG_BIN, tool), os.X_OK):
            return f"PostgreSQL 15 is not installed ({PG_BIN}/{tool} is missing; apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` system user to run PostgreSQL as"
    return None


class PgServer:
    """One PostgreSQL cluster in a temporary directory (`start()`, then `url`)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = ""
        self._started = False

    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.base, "sock")

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, "postgres.log")

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Make the cluster (the first time) and start the server; returns once it accepts."""
        if not self.base:
            self._init()
        self._pg_ctl("start", "-w", "-t", "60", "-l", self.log_path)
        self._started = True
        if not self._has_database(DATABASE):
            self._admin("CREATE DATABASE {}", DATABASE)

    def stop(self) -> None:
        """Stop the server (a fast shutdown; SIGKILL if it does not finish) and remove its
        directory. Safe to call more than once."""
        if self.base:
            if self._postmaster_pid() is not None:
                try:
                    self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast")
                except subprocess.CalledProcessError:
                    self.kill()
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = ""
        self._started = False

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, as a machine crash would
        (the server's data stays; `restart()` runs crash recovery)."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        victims = [pid, *_descendants(pid)]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(running(v) for v in victims) and time.monotonic() < deadline:
            time.sleep(0.02)
        # the postmaster was started by pg_ctl, which exited: init reaps it, in its own time.
        # Until then a new postmaster takes the zombie's pid in postmaster.pid for a live
        # server and refuses to start. All of them are dead, so the lock file can go.
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.data_dir, "postmaster.pid"))

    def restart(self) -> None:
        """Start again on the same directory and port (after `kill()` or a stop of the
        process only)."""
        if self._postmaster_pid() is not None:
            self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast")
        self._pg_ctl("start", "-w", "-t", "60", "-l", self.log_path)

    def new_database(self, name: str) -> str:
        """A fresh, empty database (dropped first if it exists); its URL."""
        self.drop_database(name)
        self._admin("CREATE DATABASE {}", name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def _init(self) -> None:
        base = tempfile.mkdtemp(prefix="manta-pg-")
        self.base = base
        os.chmod(base, 0o700)
        os.mkdir(self.socket_dir, 0o700)
        if os.geteuid() == 0:  # the server runs as `postgres`, which must own its directory
            entry = pwd.getpwnam("postgres")
            for path in (base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._as_pg([os.path.join(PG_BIN, "initdb"), "-D", self.data_dir, "-U", SUPERUSER,
                     "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"])
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "deadlock_timeout": "'50ms'",  # see the module docstring
            "max_connections": "200",
            "shared_buffers": "'64MB'",
        }
        conf = os.path.join(self.data_dir, "postgresql.auto.conf")
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._as_pg(["sh", "-c", f"cat >> '{conf}'"], input=lines.encode())

    def _as_pg(self, argv: list[str], input: bytes | None = None) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *argv], input=input, capture_output=True, cwd="/")
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout,
                result.stderr + f"\n{self.log()}".encode())

    def _pg_ctl(self, *args: str) -> None:
        self._as_pg([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data_dir, *args])

    def _admin(self, statement: LiteralString, database: str) -> None:
        """`statement` on the `postgres` database, its {} the quoted name `database`."""
        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(database)))

    def _has_database(self, name: str) -> bool:
        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as fh:
                pid = int(fh.readline())
        except (OSError, ValueError):
            return None
        return pid if running(pid) else None


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as fh:
                children = [int(child) for child in fh.read().split()]
        except OSError:
            continue
        found.extend(children)
        pending.extend(children)
    return found
