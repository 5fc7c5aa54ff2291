"""Storage nodes: the ids this catalog has given out and what each one is.

    nodes      node id  -> {v, id, created, spec}

`spec` is a local node's spec (`dir:PATH`, `zfs:POOL/DATASET`) or a remote node's URL; a
node keeps its id across restarts (its marker file, and this record by spec).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from storage.engine import Engine, ReadTxn, WriteTxn
from storage.records.codec import NO_EXTRA, extra_of, pack, unpack

__all__ = ["NodeRecord", "Nodes"]

TABLE = "nodes"
_KNOWN = frozenset(("v", "id", "created", "spec"))


@dataclass(slots=True)
class NodeRecord:
    id: str
    spec: str
    created: float
    extra: Mapping[str, Any] = NO_EXTRA


def encode(record: NodeRecord) -> bytes:
    d: dict[str, Any] = {"v": 1, "id": record.id, "created": record.created, "spec": record.spec}
    if record.extra:
        d.update(record.extra)
    return pack(d)


def decode(raw: bytes | memoryview) -> NodeRecord:
    d = unpack(raw)
    return NodeRecord(d["id"], d["spec"], d.get("created", 0.0), extra_of(d, _KNOWN))


class Nodes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def scan(self, txn: ReadTxn) -> Iterator[tuple[str, NodeRecord]]:
        for key, raw in txn.scan(TABLE):
            yield bytes(key).decode(), decode(raw)

    def all(self) -> dict[str, NodeRecord]:
        with self.engine.read() as txn:
            return dict(self.scan(txn))

    def put(self, node_id: str, spec: str) -> None:
        """Record the node's spec (a new node's record is made with it)."""

        def op(txn: WriteTxn) -> None:
            raw = txn.get(TABLE, node_id.encode())
            old = None if raw is None else decode(raw)
            record = (NodeRecord(node_id, spec, time.time()) if old is None
                      else NodeRecord(old.id, spec, old.created, old.extra))
            txn.put(TABLE, node_id.encode(), encode(record))

        self.engine.write(op)
