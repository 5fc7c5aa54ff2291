"""One contract for storage.Node, run against LocalNode (in process) and RemoteNode (HTTP to a
real `python -m manta node` on a loopback port)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from storage import LocalNode, Store, StoreConfig, parse_spec
from storage.errors import BlobDamaged, BlobMissing
from storage.nodeapi import BLOCK, Node
from storage.remote import Heartbeat, RemoteNode
from storage.replicas import block_sums
from storage.scrub import Scrubber
from tests.conftest import REPO, free_port, terminate

SECRET = "contract-test-cluster-secret-0001"


class NodeProcess:
    """A `manta node` subprocess serving a directory dataset on 127.0.0.1."""

    def __init__(self, root: str, secret: str = SECRET) -> None:
        self.root = root
        self.secret = secret
        self.port = free_port()
        self.log_path = root.rstrip("/") + ".log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        started_before = self.log().count("manta node: ")  # a restart appends to the same log
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "manta", "node", "--storage", f"dir:{self.root}",
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "MANTA_CLUSTER_SECRET": self.secret})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited: {self.log()}")
            if self.log().count("manta node: ") > started_before:
                return
            time.sleep(0.05)
        raise RuntimeError(f"node did not start: {self.log()}")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def client(self) -> RemoteNode:
        return RemoteNode(self.url, self.secret).connect()


@pytest.fixture(scope="module")
def node_processes() -> Iterator[list[NodeProcess]]:
    base = tempfile.mkdtemp(prefix="manta-nodes-")
    procs = [NodeProcess(os.path.join(base, f"n{i}")) for i in range(2)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["local", "remote"])
def pair(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[tuple[Node, Node, list[str]]]:
    """Two nodes of one kind and their dataset roots (for damaging files behind their back)."""
    if request.param == "local":
        nodes: list[Node] = []
        roots = []
        for i in range(2):
            spec = parse_spec(f"dir:{tmp_path}/n{i}")
            root, _ = LocalNode.prepare(spec)
            LocalNode.write_marker(root, f"local-{i}")
            nodes.append(LocalNode(f"local-{i}", spec, root))
            roots.append(root)
        yield nodes[0], nodes[1], roots
        return
    procs = request.getfixturevalue("node_processes")
    remotes = [p.client() for p in procs]
    try:
        yield remotes[0], remotes[1], [p.root for p in procs]
    finally:
        for r in remotes:
            r.close()


def new_id() -> str:
    return secrets.token_hex(16)


def put(node: Node, data: bytes, piece: int = 300_000) -> str:
    blob_id = new_id()
    writer = node.open_write(blob_id)
    for i in range(0, len(data), piece):
        writer.write(data[i:i + piece])
    writer.commit()
    return blob_id


def blob_file(root: str, blob_id: str) -> str:
    return os.path.join(root, "blobs", blob_id[:2], blob_id)


def test_write_commit_read_round_trip(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    data = os.urandom(3 * BLOCK + 12345)
    blob_id = put(node, data)
    assert node.exists(blob_id)
    crcs = block_sums(data)
    got = b"".join(node.read(blob_id, o, min(BLOCK, len(data) - o), crcs) for o in range(0, len(data), BLOCK))
    assert got == data
    assert node.verify(blob_id, len(data), hashlib.sha256(data).digest(), crcs) is None


def test_abort_leaves_nothing(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, roots = pair
    blob_id = new_id()
    writer = node.open_write(blob_id)
    writer.write(os.urandom(BLOCK))
    writer.abort()
    assert not node.exists(blob_id)
    deadline = time.monotonic() + 5
    while os.listdir(os.path.join(roots[0], "tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)  # a remote node notices the cut body on its own schedule
    assert os.listdir(os.path.join(roots[0], "tmp")) == []
    assert blob_id not in dict(node.list_blobs())


def test_missing_blob(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    blob_id = new_id()
    assert not node.exists(blob_id)
    with pytest.raises((BlobMissing, FileNotFoundError)):
        node.read(blob_id, 0, 10)
    with pytest.raises(FileNotFoundError):
        node.read_upto(blob_id, 0, 10)
    assert node.verify(blob_id, 10, b"", b"") == "missing"
    assert node.delete(blob_id) is False


def test_delete(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    blob_id = put(node, b"x" * 1000)
    assert node.delete(blob_id) is True
    assert not node.exists(blob_id)
    assert blob_id not in dict(node.list_blobs())


def test_verify_detects_a_flipped_byte(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, roots = pair
    data = os.urandom(2 * BLOCK + 7)
    blob_id = put(node, data)
    with open(blob_file(roots[0], blob_id), "r+b") as fh:
        fh.seek(BLOCK + 5)
        fh.write(bytes([data[BLOCK + 5] ^ 0xFF]))
    assert node.verify(blob_id, len(data), hashlib.sha256(data).digest(), block_sums(data)) == "checksum mismatch"
    assert node.verify(blob_id, len(data) + 1, b"", b"") is not None


def test_read_with_crcs_reports_damage(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, roots = pair
    data = os.urandom(2 * BLOCK)
    blob_id = put(node, data)
    crcs = block_sums(data)
    with open(blob_file(roots[0], blob_id), "r+b") as fh:
        fh.seek(BLOCK + 1)
        fh.write(bytes([data[BLOCK + 1] ^ 1]))
    assert node.read(blob_id, 0, BLOCK, crcs) == data[:BLOCK]
    with pytest.raises(BlobDamaged) as damaged:
        node.read(blob_id, BLOCK, BLOCK, crcs)
    assert damaged.value.reason == "checksum mismatch in block 1"
    with pytest.raises(BlobDamaged) as short:
        node.read(blob_id, BLOCK, BLOCK + 1, crcs)
    assert short.value.reason == "short read"


def test_range_reads(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    data = os.urandom(BLOCK + 999)
    blob_id = put(node, data)
    assert node.read(blob_id, 10, 100) == data[10:110]
    assert node.read(blob_id, BLOCK, 999, block_sums(data)) == data[BLOCK:]
    assert node.read_upto(blob_id, BLOCK + 900, 5000) == data[BLOCK + 900:]
    assert node.read_upto(blob_id, len(data), 10) == b""


def test_list_blobs(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    ids = {put(node, os.urandom(100)) for _ in range(3)}
    listed = dict(node.list_blobs())
    assert ids <= set(listed)
    assert all(abs(listed[i] - time.time()) < 600 for i in ids)


def test_sweep_temp(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, roots = pair
    node.sweep_temp()
    with open(os.path.join(roots[0], "tmp", f"{new_id()}.tmp"), "wb") as fh:
        fh.write(b"left over")
    assert node.sweep_temp() == 1
    assert os.listdir(os.path.join(roots[0], "tmp")) == []


def test_put_unsynced_then_sync(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    blob_id = new_id()
    node.put_unsynced(blob_id, b"small blob")
    node.sync([blob_id])
    assert node.read(blob_id, 0, 10) == b"small blob"
    node.put_unsynced(empty := new_id(), b"")
    assert node.exists(empty)


def test_copy_from_a_peer(pair: tuple[Node, Node, list[str]]) -> None:
    source, target, _ = pair
    data = os.urandom(2 * BLOCK + 3)
    blob_id = put(source, data)
    target.copy_from(source, blob_id)
    assert target.read(blob_id, 0, len(data), block_sums(data)) == data
    with pytest.raises(OSError):
        target.copy_from(source, new_id())


def test_collect_orphans_honours_grace(pair: tuple[Node, Node, list[str]]) -> None:
    node, _, _ = pair
    for blob_id, _ in list(node.list_blobs()):
        node.delete(blob_id)
    kept, orphan = put(node, b"referenced"), put(node, b"orphan")
    assert node.collect_orphans({kept}, grace_s=3600) == 0
    assert node.exists(orphan)
    assert node.collect_orphans({kept}, grace_s=0, still_wanted=lambda b: b == orphan) == 0
    assert node.collect_orphans({kept}, grace_s=0) == 1
    assert node.exists(kept) and not node.exists(orphan)


def test_a_read_that_began_before_a_delete_still_finishes(node_processes: list[NodeProcess]) -> None:
    node = node_processes[0].client()
    data = os.urandom(BLOCK + 1)
    blob_id = put(node, data)
    handle = node.pin(blob_id)
    assert node.delete(blob_id)
    assert node.read(blob_id, 0, len(data), block_sums(data), handle) == data
    node.close()


def test_heartbeat_marks_a_stopped_node_down(tmp_path: pathlib.Path) -> None:
    proc = NodeProcess(f"{tmp_path}/hb")
    proc.start()
    try:
        node = proc.client()
        beat = Heartbeat([node], interval_s=0.2, timeout_s=0.5, down_after_s=1.0)
        beat.start()
        try:
            assert node.healthy()
            node.mark_failed("test")
            assert not node.healthy()
            deadline = time.monotonic() + 5
            while not node.healthy() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert node.healthy(), "the next heartbeat clears mark_failed"
            proc.stop()
            deadline = time.monotonic() + 10
            while node.healthy() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not node.healthy()
            assert not node.writable()
            with pytest.raises(ConnectionError):
                node.read(new_id(), 0, 1)
        finally:
            beat.stop()
            node.close()
    finally:
        proc.stop()


def test_remote_write_and_read_64_mib(node_processes: list[NodeProcess]) -> None:
    node = node_processes[0].client()
    data = os.urandom(64 << 20)
    started = time.monotonic()
    blob_id = put(node, data, piece=BLOCK)
    wrote_s = time.monotonic() - started
    crcs = block_sums(data)
    started = time.monotonic()
    got = b"".join(node.read(blob_id, o, BLOCK, crcs) for o in range(0, len(data), BLOCK))
    read_s = time.monotonic() - started
    assert got == data
    print(f"RemoteNode 64 MiB on loopback: write {64 / wrote_s:.0f} MiB/s, read {64 / read_s:.0f} MiB/s")
    node.delete(blob_id)
    node.close()


def test_a_bad_task_request_is_refused_and_sigterm_stops_the_node(tmp_path: pathlib.Path) -> None:
    proc = NodeProcess(f"{tmp_path}/tasks")
    proc.start()
    try:
        node = proc.client()
        try:
            with pytest.raises(OSError, match="bad task request: owner must be a str"):
                node.post_json("/v1/tasks", {"job": "j", "task": "t"}, timeout_s=5)
        finally:
            node.close()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.stop()


def test_scrub_asks_a_node_that_only_looks_down_before_copying_its_replicas(tmp_path: pathlib.Path) -> None:
    """A remote node whose heartbeat lagged past `down_after_s` (a loaded host) looks down
    though it answers: the scrub asks it afresh and checks its replica instead of copying
    the blob to another node and dropping that replica. A node that is really down still
    counts as unavailable, and is asked at most once per RECHECK_S, not once per blob."""
    procs = [NodeProcess(f"{tmp_path}/n{i}") for i in range(3)]
    for proc in procs:
        proc.start()
    store = Store(StoreConfig(str(tmp_path / "data"), node_urls=tuple(p.url for p in procs), cluster_secret=SECRET,
                              copies=2, heartbeat_interval_s=3600))  # no heartbeat after the first polls
    try:
        store.catalog.buckets.create("b", "root")
        blob_ids = []
        for i in range(3):
            writer = store.writer()
            writer.write(os.urandom(BLOCK + i))
            meta = writer.commit()
            store.objects.put("b", f"k{i}", {"size": meta.size, "etag": "e", "mtime": 0.0,
                                             "segments": [[meta.blob_id, meta.size]], "headers": {}, "meta": {}},
                              {meta.blob_id: meta.record()})
            blob_ids.append(meta.blob_id)
        holders = {b: nodes_of(store, b) for b in blob_ids}
        remotes = [n for n in store.node_list() if isinstance(n, RemoteNode)]
        assert len(remotes) == 3
        for remote in remotes:
            remote.down_after_s = 0.2  # its last health answer is now older than that
        time.sleep(0.3)
        assert not any(node.healthy() for node in store.node_list())
        scrubber = Scrubber(store)
        for blob_id in blob_ids:
            check = scrubber.check_blob(blob_id)
            assert (check.checked, check.unavailable, check.repaired) == (2, 0, 0), check
            assert nodes_of(store, blob_id) == holders[blob_id]
        # really down: unavailable, and one fresh check for all its blobs (a new pass)
        scrubber = Scrubber(store)
        victim = holders[blob_ids[0]][0]
        node = next(r for r in remotes if r.id == victim)
        next(p for p in procs if p.url == node.url).stop()
        asked: list[bool] = []
        recheck = node.recheck

        def counted(pool: bool = True) -> bool:
            asked.append(recheck(pool))
            return asked[-1]

        node.recheck = counted  # type: ignore[method-assign]
        time.sleep(0.3)
        on_victim = [b for b in blob_ids if victim in holders[b]]
        reports = [scrubber.check_blob(b) for b in on_victim]
        assert all(r.unavailable == 1 for r in reports) and asked == [False], (reports, asked)
    finally:
        store.close()
        for proc in procs:
            proc.stop()


def nodes_of(store: Store, blob_id: str) -> list[str]:
    with store.catalog.read() as txn:
        record = store.catalog.blobrefs.get(txn, blob_id)
    assert record is not None
    return list(record.nodes)
