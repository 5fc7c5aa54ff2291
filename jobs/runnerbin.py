"""The compiled runner of reused containers (jobs/taskrunner.c), built with the host's C
compiler the first time a process needs it and kept in a cache directory.

A reused container's runner does the same work for every task of a job phase on a slot:
take the task's message and fds, start its shell, wait, kill what is left, empty /tmp.
The Python runner (jobs/taskrunner.py) spends 0.5-0.7 ms of CPU a task on that, as much
as a light task's own command; with the C one the task processes' CPU per task fell by
0.5-1 ms (benchmarks/README.md, "the runner in C"). Both speak the same messages
(`runner_message` in jobs/warm.py).

`runner_binary()` is the binary's bytes, or None when there is no compiler (`cc`) or the
build fails: reused containers then run the Python runner, as before, and a log line says
why once. The cache key is the source's SHA-256 and the machine, so a changed source is
built again; `MANTA_RUNNER_CACHE` names the directory (default: $XDG_CACHE_HOME/manta or
~/.cache/manta; a temporary one when that cannot be written). The binary goes into each
container as a read-only copy (bwrap --ro-bind-data from a memfd), never as a host path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["cache_key", "forget", "runner_binary"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("taskrunner.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=c11")
BUILD_TIMEOUT_S = 60.0

_lock = threading.Lock()
_built: dict[str, bytes | None] = {}


def runner_binary() -> bytes | None:
    """The compiled runner, built or read from the cache once per process; None if it
    cannot be built here."""
    key = cache_key()
    with _lock:
        if key not in _built:
            _built[key] = _load_or_build(key)
        return _built[key]


@functools.cache
def cache_key() -> str:
    """The source's hash and the machine: the cached binary's name is taskrunner-<key>.
    Read once per process (every container start asks for the binary)."""
    return f"{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:20]}-{platform.machine()}"


def forget() -> None:
    """Build or read the binary again at the next call (tests)."""
    with _lock:
        _built.clear()


def _cache_dir() -> Path | None:
    named = os.environ.get("MANTA_RUNNER_CACHE")
    base = Path(named) if named else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "manta"
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return base if os.access(base, os.W_OK | os.X_OK) else None


def _load_or_build(key: str) -> bytes | None:
    cache = _cache_dir()
    cached = cache / f"taskrunner-{key}" if cache is not None else None
    if cached is not None and cached.is_file():
        return cached.read_bytes()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc): reused containers run the Python task runner")
        return None
    with tempfile.TemporaryDirectory(prefix="manta-runner-", dir=cache) as tmp:
        out = Path(tmp) / "taskrunner"
        try:
            proc = subprocess.run([compiler, *CFLAGS, "-o", str(out), str(SOURCE)], capture_output=True,
                                  timeout=BUILD_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot build the C task runner (%s): reused containers run the Python one", exc)
            return None
        if proc.returncode != 0 or not out.is_file():
            log.warning("cannot build the C task runner: %s; reused containers run the Python one",
                        proc.stderr.decode(errors="replace").strip()[-2000:])
            return None
        binary = out.read_bytes()
        if cached is not None:
            os.chmod(out, 0o500)
            os.replace(out, cached)  # atomic: another process reads the old or the new
    return binary
