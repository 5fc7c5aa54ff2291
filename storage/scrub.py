"""Scrub: verify every replica of every blob and restore `copies` good replicas.

    for each ZFS pool behind a node: `zpool scrub`, wait, record the result
    for each blob record:
        for each listed replica: on a node that is down -> unavailable (a node that only
                                 looks down is asked afresh first, at most every few seconds)
                                 else read it all back: size, SHA-256, block CRC32Cs
        no good replica          -> rebuilt block by block from the replicas' good blocks
                                    when every block has one (SHA-256 checked), else lost
                                    (unless a replica is on a node that is down)
        damaged replica          -> rewritten in place from a good one (new ZFS blocks)
        fewer than `copies` good -> copied to other healthy nodes (weighted by free space)
        the blob's node list is updated in one catalog write (only if nobody changed it)

Counters: checked (replicas read), damaged (replicas that failed the check), repaired
(replicas written), lost (blobs whose every replica was read and is damaged),
unavailable (replicas on nodes that are down). The background scrubber is rate-limited;
`manta admin scrub` runs one pass at full speed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from storage.errors import BlobUnavailable
from storage.nodeapi import Node
from storage.records.blobrefs import BlobRecord
from storage.replicas import BlobReader, choose_nodes, copy_blob
from storage.store import Store

__all__ = ["BlobCheck", "ScrubReport", "Scrubber"]

log = logging.getLogger("manta.storage")

RECHECK_S = 5.0  # a node that looks down is asked afresh at most this often during a pass


@dataclass
class BlobCheck:
    checked: int = 0
    damaged: int = 0
    repaired: int = 0
    lost: int = 0
    unavailable: int = 0


@dataclass
class ScrubReport:
    checked: int = 0
    damaged: int = 0
    repaired: int = 0
    lost: int = 0
    unavailable: int = 0
    blobs: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    pools: dict[str, Any] = field(default_factory=dict)
    lost_blobs: list[str] = field(default_factory=list)

    def add(self, check: BlobCheck) -> None:
        self.checked += check.checked
        self.damaged += check.damaged
        self.repaired += check.repaired
        self.lost += check.lost
        self.unavailable += check.unavailable

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scrubber:
    def __init__(self, store: Store, rate_mb_s: float | None = None, zpool_timeout_s: float = 600.0) -> None:
        self.store = store
        self.rate_mb_s = rate_mb_s
        self.zpool_timeout_s = zpool_timeout_s
        self._bytes = 0
        self._started = time.monotonic()
        self._asked: dict[str, float] = {}  # node id -> when a node that looked down was last asked afresh

    def run_once(self) -> ScrubReport:
        started = time.monotonic()
        self._bytes, self._started = 0, started
        for node in self.store.node_list():
            self._ask(node)  # once per pass; check_blob then uses the cached state
        report = ScrubReport(pools=self._scrub_pools())
        for blob_id in [b for b, _ in self.store.catalog.blobrefs.records()]:
            check = self.check_blob(blob_id)
            report.add(check)
            report.blobs += 1
            if check.lost:
                report.lost_blobs.append(blob_id)
        report.bytes_read = self._bytes
        report.seconds = round(time.monotonic() - started, 3)
        log.info("scrub: %s", {k: v for k, v in report.as_dict().items() if k not in ("pools", "lost_blobs")})
        return report

    def _scrub_pools(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for node in self.store.node_list():
            if node.pool_key() in out or not node.healthy():
                continue
            try:
                result = node.scrub_pool(self.zpool_timeout_s)
            except ConnectionError as exc:  # a remote node gone meanwhile: its copies are unavailable
                node.mark_failed(f"pool scrub failed: {exc}")
                continue
            if result is not None:
                out[result[0]] = result[1]
        return out

    def _verify(self, node: Node, blob_id: str, meta: BlobRecord) -> str | None:
        """None if the replica is good (size, block CRC32Cs, SHA-256), else why not;
        ConnectionError when a remote node is gone."""
        return node.verify(blob_id, meta.size, meta.sha256 or b"", meta.blocks or b"",
                           self._throttle)

    def _throttle(self, n: int) -> None:
        self._bytes += n
        if self.rate_mb_s:
            ahead = self._bytes / (self.rate_mb_s * 1e6) - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)

    def check_blob(self, blob_id: str) -> BlobCheck:
        store = self.store
        check = BlobCheck()
        with store.catalog.read() as txn:
            meta = store.catalog.blobrefs.get(txn, blob_id)
        if meta is None:
            return check
        listed: list[str] = list(meta.nodes)
        good: list[Node] = []
        damaged: list[Node] = []
        for node_id in listed:
            node = store.nodes.get(node_id)
            if node is None or not self._up(node):
                check.unavailable += 1
                continue
            try:
                problem = self._verify(node, blob_id, meta)
            except ConnectionError as exc:  # a remote node gone mid-check: its copy is unavailable
                node.mark_failed(f"verify failed: {exc}")
                check.unavailable += 1
                continue
            check.checked += 1
            if problem is None:
                good.append(node)
            else:
                log.warning("scrub: blob %s on node %s: %s", blob_id, node_id, problem)
                check.damaged += 1
                damaged.append(node)
        if not good and damaged and self._rebuild(damaged[0], blob_id, meta, damaged):
            log.warning("scrub: blob %s rebuilt on node %s from the good blocks of %d damaged replicas",
                        blob_id, damaged[0].id, len(damaged))
            good.append(damaged.pop(0))
            check.repaired += 1
        if not good:
            if listed and not check.unavailable:  # a copy on a node that is down may be good
                check.lost += 1
                log.error("scrub: blob %s has no good replica", blob_id)
            return check
        source = good[0]
        placed = [n.id for n in good]
        for node in damaged:  # rewrite in place: the node is healthy, only these blocks were bad
            if self._copy(source, node, blob_id):
                placed.append(node.id)
                check.repaired += 1
        while len(placed) < store.copies:
            extra = choose_nodes(store.node_list(), 1, exclude=set(placed) | set(listed))
            if not extra or not self._copy(source, extra[0], blob_id):
                break
            placed.append(extra[0].id)
            check.repaired += 1
        if placed != listed and not store.catalog.blobrefs.set_nodes(blob_id, placed, expect=listed):
            log.info("scrub: blob %s changed while being repaired; left for the next pass", blob_id)
        return check

    def _up(self, node: Node) -> bool:
        """Whether `node` is up: its cached health, or, when that says down, a fresh check at
        most every RECHECK_S per node. A remote node whose heartbeat lagged (a loaded host, a
        slow pool right after the pool scrubs) is not taken for down, so its replicas are
        not copied elsewhere and dropped from the catalog; one that is down costs one health
        poll per RECHECK_S, not one per blob."""
        if node.healthy():
            return True
        if time.monotonic() - self._asked.get(node.id, -RECHECK_S) < RECHECK_S:
            return False  # asked lately (at the pass's start, or for an earlier blob)
        up = self._ask(node)
        if up:
            log.info("scrub: node %s looked down but answers a fresh check", node.id)
        return up

    def _ask(self, node: Node) -> bool:
        """A fresh health check of `node`, remembered for `_up`."""
        self._asked[node.id] = time.monotonic()
        return node.recheck()

    def _rebuild(self, target: Node, blob_id: str, meta: BlobRecord, sources: list[Node]) -> bool:
        """No replica is wholly good, but each may be bad in different blocks: assemble the
        blob block by block from whichever replica has that block right (the reads' own
        failover), check the whole against its SHA-256, and rewrite `target` with it."""
        reader = BlobReader(blob_id, meta, {n.id: n for n in sources}, lambda *_: None)
        writer = target.open_write(blob_id)
        sha = hashlib.sha256()
        try:
            for block in reader.read(0, meta.size):
                self._throttle(len(block))
                sha.update(block)
                writer.write(block)
            if meta.sha256 and sha.digest() != meta.sha256:
                raise BlobUnavailable(blob_id)
            writer.commit()
            return True
        except (BlobUnavailable, OSError) as exc:
            writer.abort()
            log.info("scrub: blob %s cannot be rebuilt from its damaged replicas: %s", blob_id, exc)
            return False
        finally:
            reader.close()

    def _copy(self, source: Node, target: Node, blob_id: str) -> bool:
        try:
            copy_blob(source, target, blob_id)
            return True
        except OSError as exc:
            log.warning("scrub: copying blob %s from %s to %s failed: %s", blob_id, source.id, target.id, exc)
            return False
