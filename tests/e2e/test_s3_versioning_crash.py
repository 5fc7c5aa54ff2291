"""Versioning under failure (issue 17, acceptance 2): SIGKILL the server while several
writers overwrite the same few keys of a versioned bucket, restart it on the same data dir,
and check that no acknowledged version is lost and no partial version is listed.

Six writer threads overwrite three shared keys with small and multi-MiB PUTs and multipart
uploads (5 MiB + a small part). Every body's SHA-256 is entered in a ledger before its first
byte is sent; an acknowledged write records the version id the server answered. After each
restart:

- every acknowledged (key, version id) is listed and reads back by id byte-identical;
- every listed version reads back as a body some client sent in full for that key (so no
  partial or mixed version is visible), each key has exactly one latest version, and a plain
  GET answers that one;
- the catalog agrees with the disk (tests/e2e/test_crash.py's check, with every noncurrent
  version's record counted as a reference holder): referenced blobs exist with their sizes,
  reference counts are exact, and a blob nothing references is an unacknowledged write's.

Each kill timing runs two crash/restart rounds on the same data dir.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from storage.catalog import Catalog
from tests.conftest import Server, catalog_of
from tests.e2e.test_crash import (
    MIB,
    NO_RETRIES,
    Unacked,
    check_orphans,
    lose_unsynced_blobs,
    read_catalog,
    sha,
    tmp_files,
)
from tests.e2e.test_s3_versioning import versions

WRITERS = 6
KEYS = ["doc", "dir/log", "x" * 600]  # the last one long enough for the catalog's overflow entries
KINDS = ["small", "small", "small", "large", "multipart"]


@dataclass
class VersionLedger(Unacked):
    sent: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))  # key -> body shas
    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (key, version id) -> body sha

    def attempt(self, key: str, body: bytes) -> None:
        with self.lock:
            self.sent[key].add(sha(body))

    def ack(self, key: str, version: str, body: bytes) -> None:
        with self.lock:
            assert (key, version) not in self.acked, f"version id {version} given twice"
            self.acked[key, version] = sha(body)


def overwrite_once(s3: Any, bucket: str, key: str, kind: str, rng: random.Random, ledger: VersionLedger) -> None:
    if kind == "multipart":
        parts = [rng.randbytes(5 * MIB), rng.randbytes(rng.randint(1, 256 * 1024))]
        body = b"".join(parts)
        ledger.attempt(key, body)
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = []
        for number, data in enumerate(parts, 1):
            ledger.blob_sent(data)
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
            ledger.blob_acked(data)
            done.append({"PartNumber": number, "ETag": etag})
        version = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                               MultipartUpload={"Parts": done})["VersionId"]
    else:
        body = rng.randbytes(rng.randint(0, 200 * 1024) if kind == "small" else rng.randint(MIB, 3 * MIB))
        ledger.attempt(key, body)
        ledger.blob_sent(body)
        version = s3.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]
        ledger.blob_acked(body)
    ledger.ack(key, version, body)


def writer(server: Server, bucket: str, seed: int, ledger: VersionLedger, stop: threading.Event,
           errors: list[str]) -> None:
    s3: Any = server.client(**NO_RETRIES)
    rng = random.Random(seed)
    try:
        while not stop.is_set():
            try:
                overwrite_once(s3, bucket, rng.choice(KEYS), rng.choice(KINDS), rng, ledger)
            except Exception as exc:  # noqa: BLE001 - expected once the server is killed
                if not stop.is_set():
                    errors.append(f"writer {seed}: {exc!r}")
                return
    finally:
        s3.close()


def catalog_with_versions(data_dir: str) -> Any:
    """test_crash's CatalogView with every noncurrent version added as a reference holder."""
    view = read_catalog(data_dir)
    catalog = Catalog(catalog_of(data_dir), readonly=True)
    try:
        with catalog.read() as txn:
            for n, (raw, value) in enumerate(catalog.scan(txn, "versions")):
                records = ([r for rs in value["overflow"].values() for r in rs]
                           if raw.endswith(b"\xff") and "overflow" in value else [value])
                for i, record in enumerate(records):
                    view.objects["\0versions", f"{n}.{i}"] = record
    finally:
        catalog.close()
    return view


def verify(server: Server, bucket: str, ledger: VersionLedger) -> tuple[int, int]:
    if not (server.catalog or "").startswith("postgresql"):  # a shared catalog's doors sweep only hour-old temps
        assert not tmp_files(server.data_dir), "temp files survived the restart"
    listed = versions(server, bucket)
    ids = {(key, vid) for key, vid, _, _ in listed}
    missing = set(ledger.acked) - ids
    assert not missing, f"acknowledged versions lost: {sorted(missing)}"
    assert not any(marker for *_, marker in listed), "a delete marker nobody asked for"
    assert len(ids) == len(listed), "a version listed twice"
    latest = collections.Counter(key for key, _, is_latest, _ in listed if is_latest)
    assert all(n == 1 for n in latest.values()) and set(latest) == {key for key, *_ in listed}
    s3: Any = server.client()
    try:
        for key, vid, is_latest, _ in listed:
            data = s3.get_object(Bucket=bucket, Key=key, VersionId=vid)["Body"].read()
            assert sha(data) in ledger.sent[key], f"{key} version {vid} is not a body sent in full"
            if (key, vid) in ledger.acked:
                assert sha(data) == ledger.acked[key, vid], f"{key} version {vid} reads back other bytes"
            if is_latest:
                current = s3.get_object(Bucket=bucket, Key=key)
                assert current["VersionId"] == vid and sha(current["Body"].read()) == sha(data)
    finally:
        s3.close()
    view = catalog_with_versions(server.data_dir)
    return len(listed), check_orphans(view, server.data_dir, ledger)


@pytest.mark.parametrize("kill_after_s,power_cut", [(0.7, False), (2.0, False), (1.5, True)],
                         ids=["kill-early", "kill-late", "kill-and-lose-unsynced"])
def test_sigkill_during_versioned_overwrites(fresh_server: Server, kill_after_s: float, power_cut: bool) -> None:
    fresh_server.start()
    bucket = "versioned-crash"
    s3: Any = fresh_server.client()
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.close()
    ledger = VersionLedger()
    for round_no in (1, 2):
        stop = threading.Event()
        errors: list[str] = []
        threads = [threading.Thread(target=writer, args=(fresh_server, bucket, i * 10 + round_no, ledger, stop, errors))
                   for i in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(kill_after_s)
        stop.set()
        fresh_server.kill()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a client thread hung after the kill"
        assert not errors, f"writes failed before the kill: {errors}"
        lost = lose_unsynced_blobs(fresh_server.data_dir) if power_cut else 0
        fresh_server.start()
        listed, orphans = verify(fresh_server, bucket, ledger)
        print(f"\nversioned crash round {round_no} (kill after {kill_after_s}s): "
              f"{sum(len(s) for s in ledger.sent.values())} attempted, {len(ledger.acked)} acknowledged, "
              f"{listed} versions listed, {lost} unsynced blobs lost, {orphans} orphan blobs")
        assert len(ledger.acked) > len(KEYS), "too few versions acknowledged before the kill to prove anything"
