"""Blob records: each blob's reference count and where its replicas are.

    blobs      blob id  -> {v, refs, nodes, size, sha256, blocks}

`nodes` lists the nodes holding a copy (repair and scrub change it); `blocks` is the
blob's per-block CRC32Cs (storage.replicas); `sha256` its digest. A record that starts
referencing a blob increments its count (`ref`, which makes the blob's record from the
writer's metadata the first time); one that stops decrements it (`unref`). Writes return
the blobs whose count reached zero; the caller deletes those files after the commit. A
crash in between leaves orphans that GC collects. A freed blob's journal entry and
pending repair go with its record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from storage.engine import Engine, ReadTxn, WriteTxn
from storage.records.codec import NO_EXTRA, extra_of, pack, unpack

__all__ = ["BlobRecord", "BlobRefs"]

TABLE = "blobs"
_KNOWN = frozenset(("v", "refs", "nodes", "size", "sha256", "blocks"))


@dataclass(slots=True)
class BlobRecord:
    refs: int = 0
    size: int = 0
    sha256: bytes | None = None
    blocks: bytes | None = None   # per-block CRC32Cs; None in records made before them
    nodes: list[str] = field(default_factory=list)
    extra: Mapping[str, Any] = NO_EXTRA

    def referenced(self, refs: int) -> BlobRecord:
        """This record with `refs` references (the replica list is shared, not copied)."""
        return BlobRecord(refs, self.size, self.sha256, self.blocks, self.nodes, self.extra)


def encode(record: BlobRecord) -> bytes:
    d: dict[str, Any] = {"v": 1, "refs": record.refs, "nodes": record.nodes, "size": record.size}
    if record.sha256 is not None:
        d["sha256"] = record.sha256
    if record.blocks is not None:
        d["blocks"] = record.blocks
    if record.extra:
        d.update(record.extra)
    return pack(d)


def decode(raw: bytes | memoryview) -> BlobRecord:
    d = unpack(raw)
    return BlobRecord(d["refs"], d.get("size", 0), d.get("sha256"), d.get("blocks"), d.get("nodes") or [],
                      extra_of(d, _KNOWN))


class Dependent(Protocol):
    """Entries kept per blob elsewhere (the journal, the repair queue) that go with it."""

    def forget(self, txn: WriteTxn, blob_id: str) -> None: ...


class BlobRefs:
    def __init__(self, engine: Engine, dependents: tuple[Dependent, ...] = ()) -> None:
        self.engine = engine
        self.dependents = dependents

    @staticmethod
    def engine_key(blob_id: str) -> tuple[str, bytes]:
        """Where the blob's record is (for `WriteTxn.prefetch`)."""
        return TABLE, blob_id.encode()

    def get(self, txn: ReadTxn, blob_id: str) -> BlobRecord | None:
        raw = txn.get(TABLE, blob_id.encode())
        return None if raw is None else decode(raw)

    def ref(self, txn: WriteTxn, blob_ids: list[str], meta: Mapping[str, BlobRecord] | None = None,
            count: int = 1) -> None:
        """Add `count` references to each blob; a blob seen for the first time takes its `meta`."""
        for blob_id in blob_ids:
            key = blob_id.encode()
            raw = txn.get(TABLE, key)
            if raw is not None:
                record = decode(raw)
                record = record.referenced(record.refs + count)
            else:
                new = (meta or {}).get(blob_id)
                record = BlobRecord(count) if new is None else new.referenced(count)
            txn.put(TABLE, key, encode(record))

    def unref(self, txn: WriteTxn, blob_ids: list[str]) -> list[str]:
        """Drop a reference from each; returns the blob ids that are no longer referenced."""
        freed = []
        for blob_id in blob_ids:
            key = blob_id.encode()
            raw = txn.get(TABLE, key)
            record = None if raw is None else decode(raw)
            if record is not None and record.refs > 1:
                txn.put(TABLE, key, encode(record.referenced(record.refs - 1)))
            else:
                txn.delete(TABLE, key)
                for dependent in self.dependents:
                    dependent.forget(txn, blob_id)
                freed.append(blob_id)
        return freed

    def scan(self, txn: ReadTxn) -> Iterator[tuple[str, BlobRecord]]:
        """(blob id, record) of every blob in a caller's read, in blob id order."""
        for key, raw in txn.scan(TABLE):
            yield bytes(key).decode(), decode(raw)

    def records(self) -> Iterator[tuple[str, BlobRecord]]:
        """Every blob record (one read transaction per call of this generator)."""
        with self.engine.read() as txn:
            yield from self.scan(txn)

    def set_nodes(self, blob_id: str, nodes: list[str], expect: list[str] | None = None) -> bool:
        """Replace a blob's replica list (repair); False if the blob is gone or changed."""

        def op(txn: WriteTxn) -> bool:
            record = self.get(txn, blob_id)
            if record is None or (expect is not None and record.nodes != expect):
                return False
            record.nodes = nodes
            txn.put(TABLE, blob_id.encode(), encode(record))
            return True

        return self.engine.write(op)
