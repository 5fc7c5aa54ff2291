"""File-backed ZFS pools for tests (zfs-fuse or OpenZFS), always destroyed afterwards.

    with PoolFactory(tmp_dir) as pools:
        pool = pools.create()            # a sparse 256 MiB file vdev under tmp_dir
        pool.dataset("node")             # "<pool>/node", a name for a node spec
        pool.sync()                      # force the open txg to the vdev file
        pool.umount("node"), pool.mount("node")
        pool.corrupt(needle)             # overwrite every copy of `needle` in the vdev

Pool names are `mantat-<pid>-<random>`: unique per run, so parallel runs on one machine
never collide. A pool whose creating process is gone (a run that was killed) is destroyed
the next time a factory starts. `zfs_unavailable()` says why pools cannot be made here.
Tests get them through the fixtures in tests/conftest.py: `zfs_pools` (a factory whose
pools are destroyed after the test) and `zfs_session_pool` (one pool for the session);
both skip without ZFS, or fail when MANTA_REQUIRE_SYSTEM_TESTS=1.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType

from storage.zfs import CommandDriver, ZfsError

__all__ = ["DROP_CACHES", "POOL_PREFIX", "Pool", "PoolFactory", "drop_caches", "zfs_unavailable"]

POOL_PREFIX = "mantat"
_OURS = re.compile(rf"{POOL_PREFIX}-(\d+)-[0-9a-f]+\Z")
DROP_CACHES = "/proc/sys/vm/drop_caches"


def _run(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)


def zfs_unavailable() -> str | None:
    """None when file-backed pools can be created here, else the reason they cannot."""
    driver = CommandDriver()
    for tool in (driver.zfs, driver.zpool):
        if not (shutil.which(tool) or os.path.exists(tool)):
            return f"{os.path.basename(tool)} is not installed (apt-get install zfs-fuse)"
    if os.geteuid() != 0:
        return "ZFS pools need root"
    try:
        done = _run(driver.zpool, "list", "-H", "-o", "name", timeout_s=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"zpool list failed: {exc}"
    if done.returncode != 0:
        return f"zpool does not answer (is the zfs-fuse daemon running?): {done.stderr.strip()}"
    return None


def drop_caches() -> None:
    """Drop the kernel page cache so reads of `primarycache=metadata` datasets reach the vdev."""
    os.sync()
    with open(DROP_CACHES, "w") as fh:
        fh.write("3\n")


def pid_alive(pid: int) -> bool:
    """Is a process with this pid still there (a run that made something with it in its name)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Pool:
    name: str
    vdev: str
    mountpoint: str
    driver: CommandDriver

    def dataset(self, child: str) -> str:
        return f"{self.name}/{child}"

    def sync(self) -> None:
        """Force the open transaction group to disk (zfs-fuse has no `zpool sync`: a snapshot
        commits the txg too)."""
        if _run(self.driver.zpool, "sync", self.name).returncode == 0:
            return
        snap = f"{self.name}@manta-sync"
        for args in (("snapshot", snap), ("destroy", snap)):
            done = _run(self.driver.zfs, *args)
            if done.returncode != 0:
                raise ZfsError(f"zfs {' '.join(args)}: {done.stderr.strip()}")

    def umount(self, child: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (done := _run(self.driver.zfs, "umount", self.dataset(child))).returncode != 0:
            if time.monotonic() > deadline:  # "busy" while a file on it is still open
                raise ZfsError(f"zfs umount {self.dataset(child)}: {done.stderr.strip()}")
            time.sleep(0.1)

    def mount(self, child: str) -> None:
        done = _run(self.driver.zfs, "mount", self.dataset(child))
        if done.returncode != 0:
            raise ZfsError(f"zfs mount {self.dataset(child)}: {done.stderr.strip()}")

    def corrupt(self, needle: bytes) -> int:
        """Overwrite every occurrence of `needle` in the vdev file with its bitwise inverse;
        returns how many were found. Call `sync()` first, `drop_caches()` after."""
        assert len(needle) >= 32, "a short needle could match metadata"
        found = 0
        with open(self.vdev, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as vdev:
            at = vdev.find(needle)
            while at >= 0:
                vdev[at:at + len(needle)] = bytes(b ^ 0xFF for b in needle)
                found += 1
                at = vdev.find(needle, at + len(needle))
            vdev.flush()
            os.fsync(fh.fileno())
        return found


class PoolFactory:
    """Creates pools under `base_dir`; `close()` (or leaving the `with`) destroys them all."""

    def __init__(self, base_dir: str, size_mb: int = 256) -> None:
        self.base_dir = base_dir
        self.size_mb = size_mb
        self.driver = CommandDriver()
        self.pools: list[Pool] = []
        os.makedirs(base_dir, exist_ok=True)
        self._destroy_stale()

    def __enter__(self) -> PoolFactory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def create(self) -> Pool:
        name = f"{POOL_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        vdev = os.path.join(self.base_dir, f"{name}.vdev")
        mountpoint = os.path.join(self.base_dir, name)
        with open(vdev, "wb") as fh:
            fh.truncate(self.size_mb * 1024 * 1024)
        done = _run(self.driver.zpool, "create", "-m", mountpoint, name, vdev)
        if done.returncode != 0:
            os.unlink(vdev)
            raise ZfsError(f"zpool create {name}: {done.stderr.strip()}")
        pool = Pool(name, vdev, mountpoint, self.driver)
        self.pools.append(pool)
        return pool

    def close(self) -> None:
        failures = []
        while self.pools:
            pool = self.pools.pop()
            problem = self._destroy(pool.name)
            if problem:
                failures.append(problem)
            else:
                for path in (pool.vdev, pool.mountpoint):
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    elif os.path.exists(path):
                        os.unlink(path)
        if failures:
            raise RuntimeError("could not destroy test pools: " + "; ".join(failures))

    def _destroy(self, name: str, timeout_s: float = 15.0) -> str | None:
        """Unmount the datasets deepest first (a mounted zfs-fuse pool is often "busy"),
        then destroy the pool, retrying while it stays busy. None on success."""
        deadline = time.monotonic() + timeout_s
        pause = 0.02
        while True:
            listed = _run(self.driver.zfs, "list", "-H", "-o", "name", "-r", name)
            if listed.returncode != 0:
                gone = "does not exist" in listed.stderr or "no such pool" in listed.stderr
                return None if gone else f"{name}: {listed.stderr.strip()}"
            for dataset in sorted(listed.stdout.split(), key=lambda d: d.count("/"), reverse=True):
                _run(self.driver.zfs, "umount", "-f", dataset)
            done = _run(self.driver.zpool, "destroy", "-f", name)
            if done.returncode == 0:
                return None
            if time.monotonic() > deadline:
                return f"{name}: {done.stderr.strip()}"
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _destroy_stale(self) -> None:
        listed = _run(self.driver.zpool, "list", "-H", "-o", "name")
        for name in listed.stdout.split() if listed.returncode == 0 else []:
            match = _OURS.match(name)
            if match and not pid_alive(int(match.group(1))):
                self._destroy(name, timeout_s=5.0)
