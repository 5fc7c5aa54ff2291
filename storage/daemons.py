"""Background daemons, each a class with `run_once()` (the work) and `run_forever()`
(the schedule), after Swift's daemons: journal flushing, orphan GC, repair.

One set runs per store, in one process (with `manta serve --workers N`, the leader's). Their
work comes from the catalog, which every process writes: the journal, the blob records, the
repair queue. A read in another process that queues a repair sets no event here; the
Repairer finds it at its next round (`repair_interval_s`)."""

from __future__ import annotations

import logging
import threading

from storage.scrub import Scrubber
from storage.store import Store

__all__ = ["BackgroundScrubber", "Daemon", "JournalFlusher", "OrphanCollector", "Repairer"]

log = logging.getLogger("manta.storage")


class Daemon:
    interval_s = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()

    def run_once(self) -> int:
        raise NotImplementedError

    def wait(self) -> bool:
        """Sleep until the next round; True when asked to stop."""
        return self._stop.wait(self.interval_s)

    def run_forever(self) -> None:
        while not self.wait():
            try:
                self.run_once()
            except Exception:
                log.exception("%s failed", type(self).__name__)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name=type(self).__name__, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


class JournalFlusher(Daemon):
    """Makes small blobs durable on their nodes and drops their journal copies."""

    def __init__(self, store: Store, interval_s: float = 0.5) -> None:
        super().__init__()
        self.store = store
        self.interval_s = interval_s

    def run_once(self) -> int:
        entries = self.store.catalog.journal.entries()
        if not entries:
            return 0
        ids = [blob_id for blob_id, _ in entries]
        self.store.sync_placed(ids)
        self.store.catalog.journal.drop(ids)
        return len(ids)


class OrphanCollector(Daemon):
    """Deletes blob files that no catalog record places on their node, once older than
    the grace period (so writes in flight are never touched). Honours reference counts:
    a blob is kept while any record references it, and only on the nodes listed for it."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.interval_s = store.config.gc_interval_s
        self._first = True

    def wait(self) -> bool:
        if self._first:  # a round right after start collects what a crash left
            self._first = False
            return self._stop.is_set()
        return super().wait()

    def run_once(self) -> int:
        placed = {blob_id: set(rec.nodes) for blob_id, rec in self.store.catalog.blobrefs.records()}
        removed = 0
        for node in self.store.node_list():
            if not node.healthy():
                continue
            here = {blob_id for blob_id, nodes in placed.items() if node.id in nodes}

            def placed_since(blob_id: str, node_id: str = node.id) -> bool:
                """Written after the snapshot above? Ask the catalog again before deleting."""
                with self.store.catalog.read() as txn:
                    record = self.store.catalog.blobrefs.get(txn, blob_id)
                return record is not None and node_id in record.nodes

            removed += node.collect_orphans(here, self.store.config.gc_grace_s, placed_since)
        if removed:
            log.info("garbage collection removed %d orphan blob files", removed)
        return removed


class Repairer(Daemon):
    """Repairs the blobs that reads reported as damaged (the catalog's repair queue)."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.interval_s = store.config.repair_interval_s
        self.scrubber = Scrubber(store)

    def wait(self) -> bool:
        self.store.repair_wanted.wait(self.interval_s)
        self.store.repair_wanted.clear()
        return self._stop.is_set()

    def stop(self) -> None:
        super().stop()
        self.store.repair_wanted.set()

    def run_once(self) -> int:
        repaired = 0
        for blob_id, _ in self.store.catalog.repairs.pending():
            result = self.scrubber.check_blob(blob_id)
            repaired += result.repaired
            self.store.catalog.repairs.drop(blob_id)
        return repaired


class BackgroundScrubber(Daemon):
    """A rate-limited full scrub every `scrub_interval_s`."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.interval_s = store.config.scrub_interval_s

    def run_once(self) -> int:
        report = Scrubber(self.store, rate_mb_s=self.store.config.scrub_rate_mb_s).run_once()
        return report.repaired
