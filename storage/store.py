"""The embedded store: the catalog plus this process's storage nodes.

Nodes come from specs (`dir:PATH`, `zfs:POOL/DATASET`); each keeps its id across restarts
(marker file + catalog). Blobs are written to `copies` distinct nodes (ReplicatedWriter,
place_small) and read through BlobReader, which fails over between replicas and reports
bad ones to the catalog's repair queue (never for ResourceExhausted: a shortage of file
descriptors or memory is this process's, not a replica's). Start-up sweeps temp files,
replays the journal of small blobs, and counts per-account usage if the catalog predates
it: once per store, so `recover=False` leaves that out for the second and later processes
over the same data dir (`manta serve --workers N`: the supervisor recovers, the workers
do not; LMDB is multi-process safe, each process opens its own env). Freed blobs are deleted from every node right after the commit
that freed them; crash leftovers are collected by `daemons.OrphanCollector`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from storage.blobs import MemoryBlobWriter
from storage.catalog import Catalog
from storage.engine import ReadTxn
from storage.errors import NoSuchBlob, ResourceExhausted
from storage.node import MARKER, LocalNode, NodeSpec, parse_spec
from storage.nodeapi import Node
from storage.objects import ObjectStore
from storage.replicas import BlobMeta, BlobReader, ReplicatedWriter, place_small
from storage.uploads import UploadStore

__all__ = ["Store", "StoreConfig"]

log = logging.getLogger("manta.storage")
SHARED_TEMP_AGE_S = 3600.0  # with a shared catalog, start-up sweeps only temp files idle this long


@dataclass(frozen=True)
class StoreConfig:
    data_dir: str
    node_count: int = 1
    copies: int | None = None  # default min(2, number of nodes)
    specs: tuple[str, ...] = field(default_factory=tuple)
    gc_grace_s: float = 3600.0
    gc_interval_s: float = 600.0
    scrub_interval_s: float = 24 * 3600.0
    scrub_rate_mb_s: float = 50.0
    repair_interval_s: float = 5.0
    lifecycle_interval_s: float = 3600.0  # lifecycle rules are enforced this often (storage.lifecycle)
    health_ttl_s: float = 1.0  # local nodes' health cache
    heartbeat_interval_s: float = 1.0  # remote nodes' health polls
    node_urls: tuple[str, ...] = ()  # remote nodes (`manta node`); then no nodes run in this process
    cluster_secret: str | None = field(default=None, repr=False)
    catalog: str | None = field(default=None, repr=False)  # a postgresql:// URL; None: LMDB in data_dir/catalog
    connect_timeout_s: float = 10.0  # how long start-up waits for a node it has never seen
    extra_tables: tuple[str, ...] = ()  # catalog tables of other packages (jobs.records.TABLES)

    def node_specs(self) -> list[NodeSpec]:
        if self.specs:
            if self.node_count not in (1, len(self.specs)):
                raise ValueError(f"--nodes {self.node_count} but {len(self.specs)} storage specs given")
            return [parse_spec(s) for s in self.specs]
        return [NodeSpec("dir", os.path.abspath(os.path.join(self.data_dir, "nodes", f"n{i}")))
                for i in range(self.node_count)]

    def copy_count(self) -> int:
        n = len(self.node_urls) or len(self.specs) or self.node_count
        return self.copies if self.copies is not None else min(2, n)

    def validate(self) -> None:
        if self.gc_grace_s < 0 or self.gc_interval_s <= 0:
            raise ValueError("gc_grace_s must be >= 0 and gc_interval_s > 0")
        if min(self.scrub_interval_s, self.repair_interval_s, self.health_ttl_s,
               self.heartbeat_interval_s, self.lifecycle_interval_s) <= 0:
            raise ValueError("scrub, repair, lifecycle, health and heartbeat intervals must be positive")
        if self.node_count < 1:
            raise ValueError("at least one node is needed")
        n = len(self.node_urls) or len(self.specs) or self.node_count
        if self.node_urls and not self.cluster_secret:
            raise ValueError("remote nodes need the cluster secret")
        if not 1 <= self.copy_count() <= n:
            raise ValueError(f"copies must be between 1 and the number of nodes ({n})")
        self.node_specs()


class Store:
    def __init__(self, config: StoreConfig, recover: bool = True) -> None:
        config.validate()
        self.config = config
        self.copies = config.copy_count()
        # the data dir is traversable (0711) so task sandboxes can bind blob files by path;
        # the catalog and the credentials stay private (0700 / 0600)
        os.makedirs(config.data_dir, exist_ok=True)
        os.chmod(config.data_dir, 0o711)
        catalog_dir = os.path.join(config.data_dir, "catalog")
        os.makedirs(catalog_dir, mode=0o700, exist_ok=True)
        nodes_dir = os.path.join(config.data_dir, "nodes")
        os.makedirs(nodes_dir, exist_ok=True)
        os.chmod(nodes_dir, 0o711)
        self.catalog = Catalog(config.catalog or catalog_dir, config.extra_tables)
        self.nodes: dict[str, Node] = {}
        self.heartbeat: Any = None  # storage.remote.Heartbeat over remote nodes
        if config.node_urls:
            self._attach_remote(config.node_urls)
        else:
            for spec in config.node_specs():
                local = self._attach(spec)
                self.nodes[local.id] = local
        self.repair_wanted = threading.Event()  # this process's Repairer; others poll the queue
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)
        if recover:
            self._recover()

    def _recover(self) -> None:
        """What a start after a crash repairs, once per store and before anyone serves."""
        # a shared catalog (PostgreSQL) may have other front doors writing to these nodes
        # right now: leave their temp files, take only what nobody has written to for long
        age = SHARED_TEMP_AGE_S if self.catalog.engine.remote else 0.0
        for local in self.local_nodes():  # a remote node sweeps its own at its start
            swept = local.sweep_temp(age)
            if swept:
                log.info("node %s: removed %d leftover temp files", local.id, swept)
        recovered = self.recover_journal()
        if recovered:
            log.info("rewrote %d journalled small blobs", recovered)
        if not self.catalog.usage.built():  # a catalog from before per-account usage
            self.uploads.rebuild_usage()
            log.info("counted every account's stored objects and bytes")

    def _attach(self, spec: NodeSpec) -> LocalNode:
        root, zfs = LocalNode.prepare(spec)
        known = self.catalog.nodes.all()
        node_id = LocalNode.read_marker(root)
        if node_id is None:
            same = [nid for nid, rec in known.items() if rec.spec == str(spec)]
            node_id = same[0] if same else _next_id(set(known) | set(self.nodes))
            if same and self._holds_blobs(node_id):
                # a known node without its marker is a disk that is missing or not mounted, not
                # a new empty node: marking it would make it look healthy and hold nothing
                log.error("node %s (%s) has no %s but the catalog places blobs on it: its disk is "
                          "missing or not mounted. It stays down until the marker is back; to start "
                          "it over empty, write its id to %s", node_id, spec, MARKER,
                          os.path.join(root, MARKER))
            else:
                LocalNode.write_marker(root, node_id)
        if node_id in self.nodes:
            raise ValueError(f"{spec} is the same node as {self.nodes[node_id].address} ({node_id})")
        self.catalog.nodes.put(node_id, str(spec))
        return LocalNode(node_id, spec, root, zfs, health_ttl_s=self.config.health_ttl_s)

    def _attach_remote(self, urls: tuple[str, ...]) -> None:
        """Remote nodes by URL: each says its id; one that does not answer keeps the id the
        catalog knows for its URL and starts down (the heartbeat brings it back). A URL never
        seen that does not answer within `connect_timeout_s` fails the start."""
        from storage.remote import (  # the HTTP client only where nodes are remote
            Heartbeat,
            RemoteNode,
        )

        assert self.config.cluster_secret is not None
        known = {rec.spec: nid for nid, rec in self.catalog.nodes.all().items()}
        pending = [RemoteNode(url, self.config.cluster_secret) for url in urls]
        errors: dict[str, str] = {n.url: "" for n in pending}
        deadline = time.monotonic() + self.config.connect_timeout_s
        while True:
            for node in pending:
                if errors.get(node.url) is not None:
                    try:
                        node.connect()
                        errors.pop(node.url)
                    except OSError as exc:
                        errors[node.url] = str(exc)
            if not errors or time.monotonic() >= deadline or all(url in known for url in errors):
                break
            time.sleep(0.2)
        for node in pending:
            if node.url in errors:
                if node.url not in known:
                    raise ValueError(f"storage node {node.url} does not answer: {errors[node.url]}")
                node.id = known[node.url]
                node.mark_failed(f"not answering at start: {errors[node.url]}")
                log.warning("node %s (%s) does not answer; it starts down", node.id, node.url)
            if node.id in self.nodes:
                raise ValueError(f"{node.url} is the same node as {self.nodes[node.id].address} ({node.id})")
            self.catalog.nodes.put(node.id, node.url)
            self.nodes[node.id] = node
        self.heartbeat = Heartbeat([n for n in self.nodes.values() if isinstance(n, RemoteNode)],
                                   interval_s=self.config.heartbeat_interval_s)
        self.heartbeat.start()

    def _holds_blobs(self, node_id: str) -> bool:
        return any(node_id in rec.nodes for _, rec in self.catalog.blobrefs.records())

    def node_list(self) -> list[Node]:
        return list(self.nodes.values())

    @property
    def remote(self) -> bool:
        """Are the nodes on other hosts? Then every blob call may wait for the network, and
        callers on an event loop make it from a worker thread."""
        return bool(self.config.node_urls)

    def local_nodes(self) -> list[LocalNode]:
        """The nodes in this process (the embedded mode's; none behind `--node URL`)."""
        return [n for n in self.nodes.values() if isinstance(n, LocalNode)]

    # -- blobs ----------------------------------------------------------------------

    def writer(self, first: Node | None = None) -> ReplicatedWriter:
        """A writer for a new blob; `first` (a task's node) gets a copy if it can."""
        return ReplicatedWriter(self.node_list(), self.copies, first)

    def place_small(self, small: MemoryBlobWriter) -> BlobMeta:
        return place_small(self.node_list(), self.copies, small)

    def readers(self, blob_ids: list[str], txn: ReadTxn | None = None) -> list[BlobReader]:
        """Readers for these blobs, each with its first replica already open (their
        records read in `txn`, a caller's read transaction, if given)."""
        if txn is None:
            with self.catalog.read() as txn:
                return self.readers(blob_ids, txn)
        metas = [(blob_id, self.catalog.blobrefs.get(txn, blob_id)) for blob_id in blob_ids]
        out: list[BlobReader] = []
        try:
            for blob_id, meta in metas:
                if meta is None:
                    raise NoSuchBlob(blob_id)
                out.append(BlobReader(blob_id, meta, self.nodes, self.report_damage))
                if not out[-1].prime() and not self._listed(blob_id):
                    raise NoSuchBlob(blob_id)  # freed between the record read and the open
        except (NoSuchBlob, ResourceExhausted):
            for reader in out:
                reader.close()
            raise
        return out

    def _listed(self, blob_id: str) -> bool:
        with self.catalog.read() as txn:
            return self.catalog.blobrefs.get(txn, blob_id) is not None

    def report_damage(self, blob_id: str, node_id: str, reason: str) -> None:
        """Queue a repair of a bad replica; called on whatever thread read it (the event loop
        for small local reads), so with a remote catalog the look-up runs on a thread of its own."""
        if self.catalog.engine.remote:
            threading.Thread(target=self._report_damage, args=(blob_id, node_id, reason),
                             name="report-damage", daemon=True).start()
        else:
            self._report_damage(blob_id, node_id, reason)

    def _report_damage(self, blob_id: str, node_id: str, reason: str) -> None:
        if not self._listed(blob_id):  # freed by a delete or overwrite: nothing to repair
            log.debug("blob %s on node %s: %s after it was freed", blob_id, node_id, reason)
            return
        log.warning("blob %s on node %s: %s (queued for repair)", blob_id, node_id, reason)
        self.catalog.repairs.queue(blob_id, node_id, reason)
        self.repair_wanted.set()

    def free(self, blob_ids: list[str]) -> None:
        """Delete unreferenced blobs from every reachable node (down nodes: GC later)."""
        for node in self.nodes.values():
            if not node.healthy():
                continue
            for blob_id in blob_ids:
                try:
                    node.delete(blob_id)
                except OSError as exc:
                    log.warning("node %s: could not delete blob %s: %s", node.id, blob_id, exc)

    def sync_placed(self, blob_ids: list[str]) -> None:
        for node in self.nodes.values():
            if node.healthy():
                try:
                    node.sync(blob_ids)
                except ConnectionError as exc:  # a remote node gone: the journal keeps the bytes
                    node.mark_failed(f"sync failed: {exc}")
                    raise

    def recover_journal(self) -> int:
        """After a crash, rewrite every journalled small blob durably, then drop the journal."""
        total = 0
        while entries := self.catalog.journal.entries():
            with self.catalog.read() as txn:
                metas = {blob_id: self.catalog.blobrefs.get(txn, blob_id) for blob_id, _ in entries}
            for blob_id, data in entries:
                meta = metas[blob_id]
                for node_id in meta.nodes if meta is not None else ():
                    node = self.nodes.get(node_id)
                    if node is not None and node.healthy():
                        node.put_unsynced(blob_id, data)
            ids = [blob_id for blob_id, _ in entries]
            self.sync_placed(ids)
            self.catalog.journal.drop(ids)
            total += len(entries)
        return total

    def node_infos(self) -> list[dict[str, Any]]:
        """Each node's health and space, with how many blobs and objects have a copy there."""
        placed = {blob_id: rec.nodes for blob_id, rec in self.catalog.blobrefs.records()}
        blobs: dict[str, int] = dict.fromkeys(self.nodes, 0)
        objects: dict[str, int] = dict.fromkeys(self.nodes, 0)
        for nodes in placed.values():
            for node_id in nodes:
                blobs[node_id] = blobs.get(node_id, 0) + 1
        for record in self.objects.all_records():
            for node_id in {n for seg in record["segments"] for n in placed.get(seg[0], [])}:
                objects[node_id] = objects.get(node_id, 0) + 1
        out = []
        for node in self.nodes.values():
            info = node.info()
            if info.get("last_heartbeat") is not None:
                info["heartbeat_age_s"] = round(max(0.0, time.time() - info["last_heartbeat"]), 3)
            info["blob_count"] = blobs.get(node.id, 0)
            info["object_count"] = objects.get(node.id, 0)
            out.append(info)
        return out

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for node in self.nodes.values():
            node.close()
        self.catalog.close()


def _next_id(taken: set[str]) -> str:
    i = 0
    while f"n{i}" in taken:
        i += 1
    return f"n{i}"
