"""The repair queue and the journal of small blobs: blob ids waiting for work.

    repairs    blob id  -> {v, nodes: {node id: reason}, at}
    journal    blob id  -> raw bytes of a small blob not yet fsync'd

A reader or the scrubber that finds a bad replica queues the blob for repair (only while
the blob has a record); the Repairer (storage.daemons) works through the queue. The
journal holds a small blob's bytes from the commit that placed it without fsync
(storage.blobs.MemoryBlobWriter) until the JournalFlusher has synced it on its nodes;
after a crash, start-up rewrites what is left (`Store.recover_journal`). Both entries
go when their blob is freed (`BlobRefs.unref`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.engine import Engine, ReadTxn, WriteTxn
from storage.records.blobrefs import TABLE as BLOBS
from storage.records.codec import NO_EXTRA, extra_of, pack, unpack

__all__ = ["Journal", "RepairRecord", "Repairs"]

TABLE = "repairs"
JOURNAL = "journal"
_KNOWN = frozenset(("v", "nodes", "at"))


@dataclass(slots=True)
class RepairRecord:
    at: float  # when the blob was first queued
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> what was wrong there
    extra: Mapping[str, Any] = NO_EXTRA


def encode(record: RepairRecord) -> bytes:
    d: dict[str, Any] = {"v": 1, "nodes": record.nodes, "at": record.at}
    if record.extra:
        d.update(record.extra)
    return pack(d)


def decode(raw: bytes | memoryview) -> RepairRecord:
    d = unpack(raw)
    return RepairRecord(d["at"], d.get("nodes") or {}, extra_of(d, _KNOWN))


class Repairs:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def queue(self, blob_id: str, node_id: str, reason: str) -> concurrent.futures.Future[None]:
        """Note that `node_id`'s copy of the blob is bad (nothing if the blob is gone)."""
        key = blob_id.encode()

        def op(txn: WriteTxn) -> None:
            if txn.get(BLOBS, key) is None:
                return
            raw = txn.get(TABLE, key)
            record = RepairRecord(time.time()) if raw is None else decode(raw)
            record.nodes[node_id] = reason
            txn.put(TABLE, key, encode(record))

        return self.engine.submit(op)

    def scan(self, txn: ReadTxn) -> Iterator[tuple[str, RepairRecord]]:
        """(blob id, record) of every queued blob in a caller's read, in blob id order."""
        for key, raw in txn.scan(TABLE):
            yield bytes(key).decode(), decode(raw)

    def pending(self, limit: int = 1000) -> list[tuple[str, RepairRecord]]:
        """Up to `limit` queued blobs, in blob id order."""
        with self.engine.read() as txn:
            return list(itertools.islice(self.scan(txn), limit))

    def drop(self, blob_id: str) -> None:
        self.engine.write(lambda txn: txn.delete(TABLE, blob_id.encode()))

    def forget(self, txn: WriteTxn, blob_id: str) -> None:
        txn.delete(TABLE, blob_id.encode())


class Journal:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, txn: WriteTxn, blob_id: str, data: bytes) -> None:
        txn.put(JOURNAL, blob_id.encode(), data)

    def scan(self, txn: ReadTxn) -> Iterator[tuple[str, bytes]]:
        """(blob id, bytes) of every journalled blob in a caller's read, in blob id order."""
        for key, value in txn.scan(JOURNAL):
            yield bytes(key).decode(), bytes(value)

    def entries(self, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """Up to `limit` journalled (blob id, bytes), in blob id order."""
        with self.engine.read() as txn:
            return list(itertools.islice(self.scan(txn), limit))

    def drop(self, blob_ids: list[str]) -> None:
        def op(txn: WriteTxn) -> None:
            txn.prefetch((JOURNAL, blob_id.encode()) for blob_id in blob_ids)
            for blob_id in blob_ids:
                txn.delete(JOURNAL, blob_id.encode())

        self.engine.write(op)

    def forget(self, txn: WriteTxn, blob_id: str) -> None:
        txn.delete(JOURNAL, blob_id.encode())
