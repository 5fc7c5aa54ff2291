"""Load: 32 concurrent clients doing mixed PUT / GET / LIST / DELETE (plus CopyObject and
DeleteObjects) for MANTA_LOAD_SECONDS (default 30) against one fresh server.

Each client is a thread with its own boto3 client (no retries, so a 500 or a dropped
connection surfaces) and its own key space `cNN/`, of which it keeps an exact model
(key -> SHA-256 of the bytes last written). What is asserted:

- no unexpected error: the only error allowed is NoSuchKey on a GET of a key that is not
  (or no longer) there;
- a GET of one of the client's own keys returns exactly the bytes last PUT (or copied) there,
  or NoSuchKey when the model says the key is absent; a GET of another client's key returns
  NoSuchKey or bytes that client wrote to that key at some point;
- a LIST of the client's own prefix equals its model (keys and sizes);
- afterwards the whole listing equals the union of the models and every object reads back
  as modelled; the catalog holds exactly those objects, every referenced blob file exists
  with its recorded size, the reference counts are exact, and the set of blob files on
  disk equals the set of referenced blobs (nothing leaked, nothing missing); no temp file.

Throughput (ops/s) and latencies are printed, never asserted.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Server
from tests.e2e.test_crash import (
    NO_RETRIES,
    blob_sizes,
    check_catalog_against_disk,
    read_catalog,
    tmp_files,
)

pytestmark = pytest.mark.load

CLIENTS = 32
KEYS_PER_CLIENT = 40
DURATION_S = float(os.environ.get("MANTA_LOAD_SECONDS", "30"))
BUCKET = "load"
OPS = {"put": 30, "get_own": 22, "get_other": 8, "list": 10, "delete": 14, "copy": 8, "delete_many": 4}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class History:
    """Every body any client ever wrote to each key (for cross-client GETs)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    bodies: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))

    def add(self, key: str, digest: str) -> None:
        with self.lock:
            self.bodies[key].add(digest)

    def seen(self, key: str, digest: str) -> bool:
        with self.lock:
            return digest in self.bodies[key]


@dataclass
class Client:
    ident: int
    s3: Any
    history: History
    rng: random.Random
    model: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (sha, size)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"c{self.ident:02d}/"

    def own_key(self) -> str:
        return f"{self.prefix}k{self.rng.randrange(KEYS_PER_CLIENT):03d}"

    def body(self) -> bytes:
        size = self.rng.randint(256 * 1024, 1024 * 1024) if self.rng.random() < 0.05 else self.rng.randint(0, 64 * 1024)
        return self.rng.randbytes(size)

    def run(self, deadline: float) -> None:
        ops, weights = list(OPS), list(OPS.values())
        while time.monotonic() < deadline and not self.errors:
            op = self.rng.choices(ops, weights)[0]
            started = time.monotonic()
            try:
                getattr(self, op)()
            except Exception as exc:  # noqa: BLE001 - every unexpected error is a failure
                self.errors.append(f"client {self.ident} {op}: {exc!r}")
            self.latencies[op].append(time.monotonic() - started)

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise

    # -- operations ------------------------------------------------------------------

    def put(self) -> None:
        key, data = self.own_key(), self.body()
        self.history.add(key, sha(data))
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        self.model[key] = (sha(data), len(data))

    def get_own(self) -> None:
        key = self.own_key()
        data = self.get(key)
        got = None if data is None else (sha(data), len(data))
        assert got == self.model.get(key), f"GET {key}: {got} but last written {self.model.get(key)}"

    def get_other(self) -> None:
        key = f"c{self.rng.randrange(CLIENTS):02d}/k{self.rng.randrange(KEYS_PER_CLIENT):03d}"
        data = self.get(key)
        assert data is None or self.history.seen(key, sha(data)), f"GET {key}: bytes nobody wrote there"

    def list(self) -> None:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=self.prefix)
        listed = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
        assert listed == {k: size for k, (_, size) in self.model.items()}, f"LIST {self.prefix}"

    def delete(self) -> None:
        key = self.own_key()
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        self.model.pop(key, None)

    def copy(self) -> None:
        if not self.model:
            return self.put()
        src, dst = self.rng.choice(sorted(self.model)), self.own_key()
        self.history.add(dst, self.model[src][0])
        self.s3.copy_object(Bucket=BUCKET, Key=dst, CopySource={"Bucket": BUCKET, "Key": src},
                            MetadataDirective="REPLACE")
        self.model[dst] = self.model[src]
        return None

    def delete_many(self) -> None:
        keys = sorted({self.own_key() for _ in range(self.rng.randint(1, 6))})
        reply = self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
        assert not reply.get("Errors"), reply.get("Errors")
        assert sorted(d["Key"] for d in reply.get("Deleted", [])) == keys
        for key in keys:
            self.model.pop(key, None)


def report(clients: list[Client], elapsed_s: float) -> None:
    by_op: dict[str, list[float]] = collections.defaultdict(list)
    for c in clients:
        for op, values in c.latencies.items():
            by_op[op].extend(values)
    total = sum(len(v) for v in by_op.values())
    print(f"\nload: {CLIENTS} clients, {elapsed_s:.1f}s, {total} ops, {total / elapsed_s:.0f} ops/s")
    print(f"{'op':<12}{'count':>8}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for op in OPS:
        values = sorted(by_op[op])
        if values:
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"{op:<12}{len(values):>8}{len(values) / elapsed_s:>9.1f}"
                  f"{statistics.median(values) * 1000:>9.1f}{p99 * 1000:>9.1f}")


@pytest.mark.slow
@pytest.mark.parametrize("workers,duration_s", [(None, DURATION_S), (2, min(DURATION_S, 10.0))],
                         ids=["default-workers", "2-workers"])
def test_mixed_load_keeps_listing_catalog_and_blobs_consistent(fresh_server: Server, workers: int | None,
                                                               duration_s: float) -> None:
    fresh_server.workers = workers or fresh_server.workers
    fresh_server.start()
    admin: Any = fresh_server.client()
    admin.create_bucket(Bucket=BUCKET)
    history = History()
    clients = [Client(i, fresh_server.client(**NO_RETRIES), history, random.Random(i)) for i in range(CLIENTS)]
    started = time.monotonic()
    threads = [threading.Thread(target=c.run, args=(started + duration_s,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 120)
        assert not t.is_alive(), "a client hung"
    report(clients, time.monotonic() - started)
    for c in clients:
        c.s3.close()
    errors = [e for c in clients for e in c.errors]
    assert not errors, f"{len(errors)} unexpected errors, first: {errors[:5]}"

    try:
        expected = {k: v for c in clients for k, v in c.model.items()}
        pages = admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        listed = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
        assert listed == {k: size for k, (_, size) in expected.items()}
        for key, (digest, _) in expected.items():
            assert sha(admin.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == digest, key
    finally:
        admin.close()
    assert not tmp_files(fresh_server.data_dir)
    view = read_catalog(fresh_server.data_dir)
    assert view.keys(BUCKET) == set(expected)
    on_disk = blob_sizes(fresh_server.data_dir)
    leaked = check_catalog_against_disk(view, fresh_server.data_dir)
    assert not leaked, f"{len(leaked)} blob files nothing references"
    assert len(on_disk) == len(view.refcounts)
    print(f"final: {len(expected)} objects, {len(on_disk)} blob files, all referenced")
