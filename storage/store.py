"""The embedded store: one catalog plus the local blob store(s) of this process.

Start-up sweeps temp files left by interrupted writes. Freed blobs are deleted right
after the catalog commit that freed them; `OrphanCollector` removes blobs that a crash
left unreferenced (older than a grace period, so in-flight writes are never touched).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from storage.blobs import DirectoryBlobStore
from storage.catalog import Catalog
from storage.objects import ObjectStore
from storage.uploads import UploadStore

__all__ = ["JournalFlusher", "OrphanCollector", "Store", "StoreConfig"]

log = logging.getLogger("manta.storage")


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str
    gc_grace_s: float = 3600.0
    gc_interval_s: float = 600.0

    def validate(self) -> None:
        if self.gc_grace_s < 0 or self.gc_interval_s <= 0:
            raise ValueError("gc_grace_s must be >= 0 and gc_interval_s > 0")


class Store:
    def __init__(self, config: StoreConfig) -> None:
        config.validate()
        self.config = config
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        catalog_dir = os.path.join(config.data_dir, "catalog")
        os.makedirs(catalog_dir, exist_ok=True)
        self.catalog = Catalog(catalog_dir)
        self.blobs = DirectoryBlobStore(os.path.join(config.data_dir, "nodes", "n0"))
        self.node_id = "n0"
        swept = self.blobs.sweep_temp()
        if swept:
            log.info("removed %d leftover temp files", swept)
        recovered = self.recover_journal()
        if recovered:
            log.info("rewrote %d journalled small blobs", recovered)
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)

    def recover_journal(self) -> int:
        """After a crash, rewrite every journalled small blob durably, then drop the journal."""
        total = 0
        while entries := self.catalog.journal():
            for blob_id, data in entries:
                self.blobs.write_unsynced(blob_id, data)
            ids = [blob_id for blob_id, _ in entries]
            self.blobs.sync(ids)
            self.catalog.journal_drop(ids)
            total += len(entries)
        return total

    def free(self, blob_ids: list[str]) -> None:
        for blob_id in blob_ids:
            self.blobs.delete(blob_id)

    def close(self) -> None:
        self.catalog.close()


class JournalFlusher:
    """Makes small blobs durable in the background and drops their journal copies."""

    def __init__(self, store: Store, interval_s: float = 0.2) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()

    def run_once(self) -> int:
        entries = self.store.catalog.journal()
        if not entries:
            return 0
        ids = [blob_id for blob_id, _ in entries]
        self.store.blobs.sync(ids)
        self.store.catalog.journal_drop(ids)
        return len(ids)

    def run_forever(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:
                log.exception("journal flush failed")

    def stop(self) -> None:
        self._stop.set()


class OrphanCollector:
    """Deletes blobs no catalog record references, once older than the grace period."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stop = threading.Event()

    def run_once(self) -> int:
        referenced = self.store.catalog.referenced_blobs()
        removed = self.store.blobs.collect_orphans(referenced, self.store.config.gc_grace_s)
        if removed:
            log.info("garbage collection removed %d orphan blobs", removed)
        return removed

    def run_forever(self) -> None:
        while not self._stop.wait(self.store.config.gc_interval_s):
            try:
                self.run_once()
            except Exception:
                log.exception("garbage collection failed")

    def stop(self) -> None:
        self._stop.set()
