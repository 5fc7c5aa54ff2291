"""Crash safety: SIGKILL the server in the middle of many uploads, restart it on the same
data dir, and check that what was acknowledged survived and nothing partial is visible.

Eight writer threads upload objects under keys no other attempt uses: small and
multi-MiB PUTs with boto3, multi-MiB PUTs streamed slowly over raw HTTP, and multipart
uploads (a 5 MiB part plus a small one). A reader thread lists and reads back while they
run. Every attempt is entered in a ledger (key, SHA-256 of the full body) before its first
byte is sent, and marked acknowledged when a 200 came back. After each restart:

- every acknowledged object is listed and reads back byte-identical;
- every listed object hashes to the body the client sent in full for that key, so no
  partial or mixed object is ever visible (the reader checks this before the kill too);
- no temp file is left under <data>/nodes/*/tmp;
- the catalog agrees with the disk: its objects are exactly the listed ones, every blob an
  object or a pending part references exists with the recorded size, each reference
  count equals the number of references, and the journal of not-yet-fsync'd small blobs
  holds only referenced blobs whose files exist;
- a blob file nothing references is an orphan of an unacknowledged write (committed to
  disk, killed before the catalog commit): its bytes hash to a body or part some client
  sent and never saw acknowledged, and there are no more orphans than such attempts.
  (GC of orphans waits for a grace period, 1 h by default, so none are collected here.)

Each kill timing runs two crash/restart rounds on the same data dir.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import http.client
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from storage.catalog import Catalog
from tests.conftest import ROOT_AK, ROOT_SK, Server, catalog_of

MIB = 1024 * 1024
WRITERS = 8
BLOB_ID = re.compile(r"[0-9a-f]{32}")
MIX = ["small", "small", "large", "slow", "multipart"]
SMALL_HEAVY = ["small"] * 12 + ["large", "slow", "multipart"]  # many journalled small PUTs
NO_RETRIES: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 30}


# -- shared helpers: signing hand-made requests, inspecting a data dir -----------------------

class _Signer(S3SigV4Auth):
    def __init__(self, payload_hash: str | None) -> None:
        super().__init__(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1")
        self._payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash or super().payload(request)


def sign(server: Server, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes = b"", payload_hash: str | None = None, now: datetime | None = None) -> dict[str, str]:
    """Headers (Host included) that sign `method target` as the root account."""
    request = AWSRequest(method=method, url=server.url + target, data=body, headers=headers or {})
    signer = _Signer(payload_hash)
    if now is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
            signer.add_auth(request)
    return {"Host": f"127.0.0.1:{server.port}", **dict(request.headers.items())}


def tmp_files(data_dir: str) -> set[str]:
    return set(glob.glob(os.path.join(data_dir, "nodes", "*", "tmp", "*")))


def node_blob_paths(data_dir: str) -> dict[str, dict[str, str]]:
    """Every blob file on disk, per node (whatever the fan-out): node id -> blob id -> path."""
    out: dict[str, dict[str, str]] = {}
    for root in glob.glob(os.path.join(data_dir, "nodes", "*", "blobs")):
        found = out.setdefault(os.path.basename(os.path.dirname(root)), {})
        for dirpath, _dirs, files in os.walk(root):
            found.update({name: os.path.join(dirpath, name) for name in files if BLOB_ID.fullmatch(name)})
    return out


def blob_paths(data_dir: str) -> dict[str, str]:
    """Every blob on any node: id -> the path of one copy."""
    return {blob_id: path for found in node_blob_paths(data_dir).values() for blob_id, path in found.items()}


def blob_sizes(data_dir: str) -> dict[str, int]:
    return {blob_id: os.path.getsize(path) for blob_id, path in blob_paths(data_dir).items()}


@dataclass
class CatalogView:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    parts: list[dict[str, Any]] = field(default_factory=list)
    refcounts: dict[str, int] = field(default_factory=dict)
    blob_nodes: dict[str, list[str]] = field(default_factory=dict)  # the nodes holding each blob
    journal: dict[str, bytes] = field(default_factory=dict)  # small blobs not yet fsync'd

    def keys(self, bucket: str) -> set[str]:
        return {k for b, k in self.objects if b == bucket}


def read_catalog(data_dir: str) -> CatalogView:
    """A consistent snapshot of the catalog, read-only (the server may be running)."""
    view = CatalogView()
    catalog = Catalog(catalog_of(data_dir), readonly=True)
    try:
        with catalog.read() as txn:
            for raw, record in catalog.scan(txn, "objects"):
                bucket, _, key = raw.partition(b"\0")
                if raw.endswith(b"\xff") and "overflow" in record:  # keys past LMDB's key limit
                    for long_key, rec in record["overflow"].items():
                        view.objects[bucket.decode(), long_key] = rec
                else:
                    view.objects[bucket.decode(), key.decode()] = record
            view.parts = [part for _, part in catalog.scan(txn, "parts")]
            blobs = dict(catalog.blobrefs.scan(txn))
            view.refcounts = {blob_id: record.refs for blob_id, record in blobs.items()}
            view.blob_nodes = {blob_id: record.nodes for blob_id, record in blobs.items()}
            view.journal = dict(catalog.journal.scan(txn))
    finally:
        catalog.close()
    return view


def check_catalog_against_disk(view: CatalogView, data_dir: str) -> set[str]:
    """Assert every referenced blob exists with its size on every node the catalog says
    holds it, the refcounts are exact and the journal holds only referenced blobs;
    return the ids of blob files nothing references."""
    on_disk = blob_sizes(data_dir)
    per_node = node_blob_paths(data_dir)
    refs: collections.Counter[str] = collections.Counter()
    for (bucket, key), record in view.objects.items():
        assert sum(size for _, size in record["segments"]) == record["size"], (bucket, key)
        for blob_id, size in record["segments"]:
            refs[blob_id] += 1
            assert on_disk.get(blob_id) == size, f"{bucket}/{key}: blob {blob_id} missing or wrong size"
    for part in view.parts:
        refs[part["blob"]] += 1
        assert on_disk.get(part["blob"]) == part["size"], f"part blob {part['blob']} missing or wrong size"
    assert dict(refs) == view.refcounts, "reference counts disagree with the records"
    for blob_id, data in view.journal.items():
        assert blob_id in refs and on_disk.get(blob_id) == len(data), f"journalled blob {blob_id}"
    for blob_id, nodes in view.blob_nodes.items():
        for node in nodes:
            path = per_node.get(node, {}).get(blob_id)
            assert path and os.path.getsize(path) == on_disk[blob_id], f"blob {blob_id} missing on {node}"
    return set(on_disk) - set(refs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the workload ---------------------------------------------------------------------------

@dataclass
class Unacked:
    """The bodies and parts on their way: until its 200 arrives, each one's blob may be an
    orphan after a kill (whole, or the start of it: see `partial_write`)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    unacked_blobs: collections.Counter[str] = field(default_factory=collections.Counter)  # sha -> n
    unacked_bodies: dict[str, bytes] = field(default_factory=dict)  # sha -> the bytes, while unacked

    def blob_sent(self, data: bytes) -> None:
        """A body or part is on its way: until its 200 arrives, its blob may be an orphan."""
        with self.lock:
            self.unacked_blobs[sha(data)] += 1
            self.unacked_bodies[sha(data)] = data

    def blob_acked(self, data: bytes) -> None:
        with self.lock:
            self.unacked_blobs[sha(data)] -= 1
            if self.unacked_blobs[sha(data)] <= 0:
                self.unacked_bodies.pop(sha(data), None)

    def partial_write(self, content: bytes) -> bool:
        """Whether `content` is the start of an unacknowledged body: a small blob is written
        in place without fsync (storage/blobs.py write_unsynced), so a kill between its
        create and its last write leaves such a prefix, unreferenced, for the GC."""
        return any(len(body) > len(content) and body.startswith(content)
                   for body in self.unacked_bodies.values())


@dataclass
class Ledger(Unacked):
    """What the clients sent (SHA-256 of each full body, per key) and what was acknowledged."""
    sent: dict[str, str] = field(default_factory=dict)  # object key -> sha of the whole object
    acked: set[str] = field(default_factory=set)  # object keys

    def attempt(self, key: str, body: bytes) -> None:
        with self.lock:
            assert key not in self.sent
            self.sent[key] = sha(body)

    def ack(self, key: str) -> None:
        with self.lock:
            self.acked.add(key)


def slow_put(server: Server, bucket: str, key: str, body: bytes, piece: int = 64 * 1024) -> int:
    """PUT over raw HTTP, streaming the body in pieces with pauses; returns the status."""
    target = f"/{bucket}/{key}"
    headers = sign(server, "PUT", target, body=body)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("PUT", target, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for i in range(0, len(body), piece):
            conn.send(body[i:i + piece])
            time.sleep(0.004)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def upload_one(server: Server, s3: Any, bucket: str, key: str, kind: str, rng: random.Random,
               ledger: Ledger) -> None:
    if kind == "multipart":
        parts = [rng.randbytes(5 * MIB), rng.randbytes(rng.randint(1, 256 * 1024))]
        ledger.attempt(key, b"".join(parts))
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = []
        for number, data in enumerate(parts, 1):
            ledger.blob_sent(data)
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                  Body=data)["ETag"]
            ledger.blob_acked(data)
            done.append({"PartNumber": number, "ETag": etag})
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                     MultipartUpload={"Parts": done})
    else:
        size = {"small": rng.randint(0, 200 * 1024), "large": rng.randint(MIB, 3 * MIB),
                "slow": rng.randint(2 * MIB, 3 * MIB)}[kind]
        body = rng.randbytes(size)
        ledger.attempt(key, body)
        ledger.blob_sent(body)
        if kind == "slow":
            status = slow_put(server, bucket, key, body)
            assert status == 200, f"slow PUT of {key} answered {status}"
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        ledger.blob_acked(body)
    ledger.ack(key)


def writer(server: Server, bucket: str, ident: str, seed: int, kinds: list[str], ledger: Ledger,
           stop: threading.Event, errors: list[str]) -> None:
    s3: Any = server.client(**NO_RETRIES)
    rng = random.Random(seed)
    try:
        n = 0
        while not stop.is_set():
            try:
                upload_one(server, s3, bucket, f"{ident}/obj-{n:04d}", rng.choice(kinds), rng, ledger)
            except Exception as exc:  # noqa: BLE001 - expected once the server is killed
                if not stop.is_set():
                    errors.append(f"{ident}: {exc!r}")
                return
            n += 1
    finally:
        s3.close()


def reader(server: Server, bucket: str, ledger: Ledger, stop: threading.Event, problems: list[str]) -> None:
    """While uploads run: whatever is listed must read back as a complete body."""
    s3: Any = server.client(**NO_RETRIES)
    try:
        while not stop.is_set():
            try:
                for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                    data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    if ledger.sent.get(obj["Key"]) != sha(data):
                        problems.append(f"{obj['Key']} listed with bytes no client sent in full")
            except Exception as exc:  # noqa: BLE001 - expected once the server is killed
                if not stop.is_set():
                    problems.append(f"reader: {exc!r}")
                return
    finally:
        s3.close()


def lose_unsynced_blobs(data_dir: str) -> int:
    """Simulate a power cut on top of the kill: blob files still in the journal were never
    fsync'd, so they lose their bytes (even ids truncated) or their name (odd ids gone)."""
    journal = read_catalog(data_dir).journal
    lost = 0
    for found in node_blob_paths(data_dir).values():
        for blob_id in journal.keys() & found.keys():
            if int(blob_id, 16) % 2:
                os.unlink(found[blob_id])
            else:
                os.truncate(found[blob_id], 0)
            lost += 1
    return lost


def crash_round(server: Server, bucket: str, round_no: int, kill_after_s: float, ledger: Ledger,
                power_cut: bool) -> tuple[int, int]:
    """Upload until the kill, restart; returns (temp files the kill left, unsynced blobs lost)."""
    stop = threading.Event()
    errors: list[str] = []
    problems: list[str] = []
    kinds = SMALL_HEAVY if power_cut else MIX
    threads = [threading.Thread(target=writer, args=(server, bucket, f"r{round_no}w{i}", i * 100 + round_no,
                                                     kinds, ledger, stop, errors)) for i in range(WRITERS)]
    threads.append(threading.Thread(target=reader, args=(server, bucket, ledger, stop, problems)))
    for t in threads:
        t.start()
    time.sleep(kill_after_s)
    stop.set()
    server.kill()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a client thread hung after the kill"
    assert not errors, f"uploads failed before the kill: {errors}"
    assert not problems, problems
    left = len(tmp_files(server.data_dir))
    lost = lose_unsynced_blobs(server.data_dir) if power_cut else 0
    server.start()
    return left, lost


def verify(server: Server, bucket: str, ledger: Ledger) -> tuple[int, int]:
    """The checks listed in the module docstring; returns (objects listed, orphans)."""
    assert not tmp_files(server.data_dir), "temp files survived the restart"
    s3: Any = server.client()
    try:
        listed = {obj["Key"]: obj["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for obj in page.get("Contents", [])}
        missing = ledger.acked - set(listed)
        assert not missing, f"acknowledged objects lost: {sorted(missing)}"
        for key in listed:
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert key in ledger.sent and sha(data) == ledger.sent[key], f"{key} is not a body sent in full"
            assert len(data) == listed[key]
    finally:
        s3.close()
    view = read_catalog(server.data_dir)
    assert view.keys(bucket) == set(listed)
    return len(listed), check_orphans(view, server.data_dir, ledger)


def check_orphans(view: CatalogView, data_dir: str, unacked: Unacked) -> int:
    """Catalog and disk agree, and every unreferenced blob is an unacknowledged write (or
    the start of one); returns how many there are."""
    orphans = check_catalog_against_disk(view, data_dir)
    orphan_hashes: collections.Counter[str] = collections.Counter()
    paths = blob_paths(data_dir)
    for blob_id in orphans:
        with open(paths[blob_id], "rb") as fh:
            content = fh.read()
        if not unacked.partial_write(content):
            orphan_hashes[sha(content)] += 1
    unexplained = orphan_hashes - +unacked.unacked_blobs
    assert not unexplained, f"unreferenced blobs that are no unacknowledged write: {unexplained}"
    return len(orphans)


@pytest.mark.parametrize("kill_after_s,power_cut,nodes,workers",
                         [(0.7, False, 1, None), (2.5, False, 1, None), (1.5, True, 1, None), (1.5, True, 3, None),
                          (2.5, False, 1, 2), (1.5, True, 3, 2)],
                         ids=["kill-early", "kill-late", "kill-and-lose-unsynced", "3-nodes-2-copies",
                              "2-workers-kill-late", "2-workers-3-nodes-lose-unsynced"])
def test_sigkill_during_uploads_loses_nothing_acknowledged(fresh_server: Server, kill_after_s: float,
                                                          power_cut: bool, nodes: int, workers: int | None) -> None:
    """`workers`: `manta serve --workers` (None: the fixture's); SIGKILL of the supervisor
    takes its workers along, as a crash of the host would."""
    fresh_server.extra_args = ["--nodes", str(nodes)]
    fresh_server.workers = workers or fresh_server.workers
    fresh_server.start()
    bucket = "crash"
    s3: Any = fresh_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.close()
    ledger = Ledger()
    for round_no in (1, 2):
        left, lost = crash_round(fresh_server, bucket, round_no, kill_after_s, ledger, power_cut)
        listed, orphans = verify(fresh_server, bucket, ledger)
        print(f"\ncrash round {round_no} ({nodes} node(s), kill after {kill_after_s}s): "
              f"{len(ledger.sent)} attempted, {len(ledger.acked)} acknowledged, {listed} listed, "
              f"{left} temp files swept at restart, {lost} unsynced blobs lost, {orphans} orphan blobs")
        assert ledger.acked, "nothing was acknowledged before the kill: the test proves nothing"
    after: Any = fresh_server.client()
    try:  # and the store still takes writes
        after.put_object(Bucket=bucket, Key="after-crash", Body=b"alive")
        assert after.get_object(Bucket=bucket, Key="after-crash")["Body"].read() == b"alive"
    finally:
        after.close()
