"""ZFS dataset management for storage nodes: one interface, two drivers.

- `CommandDriver` runs the `zfs`/`zpool` commands (OpenZFS or zfs-fuse; the CI and test
  pools are zfs-fuse pools on files).
- `LzcDriver` creates datasets through pyzfs (`libzfs_core`) where `/dev/zfs` exists and
  the module imports; pool status and scrubs still go through `zpool`, which libzfs_core
  does not cover.

A node dataset is created with `checksum=sha256` and compression on, so a damaged block
fails the read with EIO instead of returning wrong bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["CommandDriver", "LzcDriver", "ScrubStatus", "ZfsError", "driver"]

NODE_PROPERTIES = {"checksum": "sha256", "compression": "on"}


class ZfsError(Exception):
    pass


@dataclass(frozen=True)
class ScrubStatus:
    running: bool
    errors: int
    summary: str


class CommandDriver:
    name = "zfs-commands"

    def __init__(self, zfs: str | None = None, zpool: str | None = None, timeout_s: float = 120.0) -> None:
        self.zfs = zfs or shutil.which("zfs") or "/usr/sbin/zfs"
        self.zpool = zpool or shutil.which("zpool") or "/usr/sbin/zpool"
        self.timeout_s = timeout_s

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZfsError(f"{' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise ZfsError(f"{' '.join(args)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def get(self, dataset: str, prop: str) -> str:
        return self._run(self.zfs, "get", "-H", "-p", "-o", "value", prop, dataset).strip()

    def exists(self, dataset: str) -> bool:
        try:
            self.get(dataset, "name")
            return True
        except ZfsError:
            return False

    def create(self, dataset: str, properties: dict[str, str]) -> None:
        args = [self.zfs, "create", "-p"]
        for key, value in properties.items():
            args += ["-o", f"{key}={value}"]
        self._run(*args, dataset)

    def set(self, dataset: str, prop: str, value: str) -> None:
        self._run(self.zfs, "set", f"{prop}={value}", dataset)

    def ensure_dataset(self, dataset: str) -> str:
        """Create the node dataset if needed (sha256 checksums, compression); returns its mountpoint."""
        if not self.exists(dataset):
            self.create(dataset, NODE_PROPERTIES)
        for prop, value in NODE_PROPERTIES.items():
            if self.get(dataset, prop) != value:
                self.set(dataset, prop, value)
        if self.get(dataset, "mounted") != "yes":
            self._run(self.zfs, "mount", dataset)
        return self.mountpoint(dataset)

    def mountpoint(self, dataset: str) -> str:
        return self.get(dataset, "mountpoint")

    def space(self, dataset: str) -> tuple[int, int]:
        """(used, available) bytes."""
        return int(self.get(dataset, "used")), int(self.get(dataset, "available"))

    def pool_health(self, pool: str) -> str:
        out = self._run(self.zpool, "list", "-H", "-o", "health", pool)
        return out.strip() or "UNKNOWN"

    def status(self, pool: str) -> str:
        return self._run(self.zpool, "status", "-v", pool)

    def start_scrub(self, pool: str) -> None:
        self._run(self.zpool, "scrub", pool)

    def scrub_status(self, pool: str) -> ScrubStatus:
        text = self.status(pool)
        line = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(("scrub:", "scan:"))), "")
        running = "in progress" in line
        match = re.search(r"with (\d+) errors", line)
        errors = int(match.group(1)) if match else 0
        return ScrubStatus(running=running, errors=errors, summary=line)



class LzcDriver(CommandDriver):
    """Dataset creation through libzfs_core (pyzfs); everything else as CommandDriver."""

    name = "libzfs_core"

    def __init__(self) -> None:
        super().__init__()
        import libzfs_core  # type: ignore[import-not-found]

        self._lzc = libzfs_core

    def create(self, dataset: str, properties: dict[str, str]) -> None:
        props = {k.encode(): v.encode() for k, v in properties.items()}
        try:
            self._lzc.lzc_create(dataset.encode(), ds_type="zfs", props=props)
        except Exception as exc:  # pyzfs raises its own exception tree
            raise ZfsError(f"lzc_create {dataset}: {exc}") from exc


def driver() -> CommandDriver:
    """pyzfs where /dev/zfs exists and it imports, else the commands."""
    if os.path.exists("/dev/zfs"):
        try:
            return LzcDriver()
        except ImportError:
            pass
    return CommandDriver()
