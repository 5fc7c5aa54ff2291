"""The catalog's repositories read catalogs written before them, write the same bytes,
and keep fields they do not know.

The fixture catalog is written through the engine directly, as the flat `Catalog` of
before the repositories wrote it (msgpack maps, keys in the same order)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from storage import errors
from storage.catalog import TABLES, Catalog
from storage.engines import open_engine
from storage.records import USAGE_BUILT, BlobRecord, Usage

SHA, CRCS = bytes(range(32)), b"\x00\x01\x02\x03"

# what the flat Catalog wrote, table -> key -> value (dicts in the order it built them)
OLD: dict[str, dict[bytes, Any]] = {
    "accounts": {
        b"AKBOB": {"v": 1, "name": "bob", "access_key": "AKBOB", "secret": "s3cret", "created": 10.5,
                   "root": False, "quota": {"objects": 5}},
        b"AKROOT": {"v": 1, "name": "root", "access_key": "AKROOT", "secret": "rs", "created": 1.0,
                    "root": True, "quota": {}},
        b"AKOLD": {"v": 1, "name": "old", "secret": "o", "created": 2.0, "root": False},  # before quotas
    },
    "names": {b"bob": b"AKBOB", b"root": b"AKROOT", b"old": b"AKOLD"},
    "buckets": {
        b"bobs": {"v": 1, "name": "bobs", "owner": "bob", "created": 11.0, "gen": "ab" * 12},
        b"open": {"v": 1, "name": "open", "owner": "bob", "created": 12.0, "gen": "cd" * 12,
                  "acl": "public-read"},
        b"legacy": {"v": 1, "name": "legacy", "owner": "root", "created": 12.5},  # before generations
    },
    "blobs": {
        b"b1": {"v": 1, "refs": 2, "nodes": ["n0", "n1"], "size": 4, "sha256": SHA, "blocks": CRCS},
        b"b2": {"v": 1, "refs": 1, "nodes": ["n1"], "size": 9, "sha256": SHA, "blocks": CRCS},
    },
    "journal": {b"b2": b"123456789"},
    "repairs": {b"b2": {"v": 1, "nodes": {"n1": "bad block 0"}, "at": 20.0}},
    "nodes": {b"n0": {"v": 1, "id": "n0", "created": 3.0, "spec": "dir:/a"},
              b"n1": {"v": 1, "id": "n1", "created": 4.0, "spec": "dir:/b"}},
    "usage": {b"bob": {"v": 1, "objects": 2, "bytes": 13}, USAGE_BUILT: {"v": 1}},
}


def pack(value: Any) -> bytes:
    return value if isinstance(value, bytes) else msgpack.packb(value, use_bin_type=True)


def raw(cat: Catalog, table: str, key: bytes) -> bytes | None:
    with cat.read() as txn:
        value = txn.get(table, key)
    return None if value is None else bytes(value)


@pytest.fixture
def old(catalog_location: str) -> Iterator[Catalog]:
    engine = open_engine(catalog_location, TABLES)
    try:
        def fill(txn: Any) -> None:
            for table, rows in OLD.items():
                for key, value in rows.items():
                    txn.put(table, key, pack(value))

        engine.write(fill)
    finally:
        engine.close()
    cat = Catalog(catalog_location)
    yield cat
    cat.close()


def test_an_old_catalog_reads_back_through_the_repositories(old: Catalog) -> None:
    bob = old.accounts.get("AKBOB")
    assert (bob.name, bob.access_key, bob.secret, bob.created, bob.root) == ("bob", "AKBOB", "s3cret", 10.5, False)
    assert dict(bob.quota) == {"objects": 5} and bob.limits.objects == 5
    assert old.accounts.named("bob") == bob
    legacy_account = old.accounts.named("old")
    assert legacy_account.access_key == "AKOLD" and dict(legacy_account.quota) == {}
    assert sorted(a.name for a in old.accounts.all()) == ["bob", "old", "root"]
    with pytest.raises(errors.NoSuchAccount):
        old.accounts.get("AKNOBODY")

    bobs = old.buckets.get("bobs")
    assert (bobs.owner, bobs.gen, bobs.acl, bobs.generation) == ("bob", "ab" * 12, None, "ab" * 12)
    assert old.buckets.get("open").acl == "public-read"
    assert old.buckets.get("legacy").generation == "created:12.5"
    assert [b.name for b in old.buckets.owned_by("bob")] == ["bobs", "open"]

    with old.read() as txn:
        b1 = old.blobrefs.get(txn, "b1")
    assert b1 == BlobRecord(2, 4, SHA, CRCS, ["n0", "n1"])
    assert dict(old.blobrefs.records()).keys() == {"b1", "b2"}
    assert old.journal.entries() == [("b2", b"123456789")]
    [(blob_id, repair)] = old.repairs.pending()
    assert (blob_id, repair.nodes, repair.at) == ("b2", {"n1": "bad block 0"}, 20.0)
    nodes = old.nodes.all()
    assert {n: (r.id, r.spec, r.created) for n, r in nodes.items()} == {"n0": ("n0", "dir:/a", 3.0),
                                                                         "n1": ("n1", "dir:/b", 4.0)}
    assert old.usage.get("bob") == Usage(2, 13) and old.usage.get("nobody") == Usage(0, 0)
    assert old.usage.built()


def test_writes_make_the_bytes_the_flat_catalog_made(old: Catalog) -> None:
    old.accounts.set_quota("bob", {"objects": 5})  # the same limit again: an unchanged record
    assert raw(old, "accounts", b"AKBOB") == pack(OLD["accounts"][b"AKBOB"])
    old.nodes.put("n0", "dir:/a")
    assert raw(old, "nodes", b"n0") == pack(OLD["nodes"][b"n0"])
    old.buckets.set_acl("open", "public-read")
    assert raw(old, "buckets", b"open") == pack(OLD["buckets"][b"open"])

    def churn(txn: Any) -> None:
        old.blobrefs.ref(txn, ["b1"])
        old.blobrefs.unref(txn, ["b1"])
        old.blobrefs.ref(txn, ["b3"], {"b3": BlobRecord(0, 4, SHA, CRCS, ["n0", "n1"])})
        old.usage.charge(txn, "bob", 0, 0)
        old.usage.charge(txn, "bob", 1, 4)
        old.usage.charge(txn, "bob", -1, -4)

    old.write(churn)
    assert raw(old, "blobs", b"b1") == pack(OLD["blobs"][b"b1"])
    assert raw(old, "blobs", b"b3") == pack({**OLD["blobs"][b"b1"], "refs": 1})
    assert raw(old, "usage", b"bob") == pack(OLD["usage"][b"bob"])
    old.repairs.queue("b2", "n1", "bad block 0").result()
    assert raw(old, "repairs", b"b2") == pack(OLD["repairs"][b"b2"])
    made = old.buckets.create("new", "bob")
    assert raw(old, "buckets", b"new") == pack({"v": 1, "name": "new", "owner": "bob",
                                                "created": made.created, "gen": made.gen})


def test_fields_a_newer_version_wrote_survive_a_read_modify_write(old: Catalog) -> None:
    def add_fields(txn: Any) -> None:
        txn.put("accounts", b"AKBOB", pack({**OLD["accounts"][b"AKBOB"], "mfa": "totp"}))
        txn.put("buckets", b"bobs", pack({**OLD["buckets"][b"bobs"], "region": "eu"}))
        txn.put("blobs", b"b1", pack({**OLD["blobs"][b"b1"], "tier": "cold"}))
        txn.put("usage", b"bob", pack({**OLD["usage"][b"bob"], "parts": 3}))
        txn.put("nodes", b"n0", pack({**OLD["nodes"][b"n0"], "zone": "a"}))
        txn.put("repairs", b"b2", pack({**OLD["repairs"][b"b2"], "tries": 1}))

    old.write(add_fields)
    old.accounts.set_quota("bob", {"bytes": 100})
    old.buckets.set_acl("bobs", "public-read")
    old.write(lambda txn: old.blobrefs.unref(txn, ["b1"]))
    old.write(lambda txn: old.usage.charge(txn, "bob", 1, 1))
    old.nodes.put("n0", "dir:/c")
    old.repairs.queue("b2", "n0", "missing").result()
    assert old.accounts.get("AKBOB").extra == {"mfa": "totp"}
    assert dict(old.accounts.get("AKBOB").quota) == {"objects": 5, "bytes": 100}
    assert (old.buckets.get("bobs").extra, old.buckets.get("bobs").acl) == ({"region": "eu"}, "public-read")
    with old.read() as txn:
        b1 = old.blobrefs.get(txn, "b1")
    assert b1 is not None and (b1.refs, dict(b1.extra)) == (1, {"tier": "cold"})
    assert old.usage.get("bob") == Usage(3, 14, {"parts": 3})
    assert (old.nodes.all()["n0"].spec, dict(old.nodes.all()["n0"].extra)) == ("dir:/c", {"zone": "a"})
    [(_, repair)] = old.repairs.pending()
    assert (repair.nodes, dict(repair.extra)) == ({"n1": "bad block 0", "n0": "missing"}, {"tries": 1})


def test_a_freed_blob_takes_its_journal_entry_and_repair_along(old: Catalog) -> None:
    assert old.write(lambda txn: old.blobrefs.unref(txn, ["b2"])) == ["b2"]
    assert old.journal.entries() == [] and old.repairs.pending() == []
    old.repairs.queue("b2", "n0", "gone").result()  # a blob without a record is not queued
    assert old.repairs.pending() == []


def test_bucket_configurations_live_and_die_with_their_bucket(old: Catalog) -> None:
    """A configuration is listed in its bucket's record (read only when listed), set and
    removed against a ref (a bucket made again under the name is not that bucket), and
    goes with the bucket; the record's other fields stay as they were."""
    confs, buckets = old.bucketconf, old.buckets
    ref = buckets.get("open").ref()
    assert buckets.get("open").conf == frozenset() and confs.get(ref, "cors") is None
    confs.set(ref, "cors", b"<CORSConfiguration/>")
    confs.set("open", "tagging", b"<Tagging/>")
    record = buckets.get("open")
    assert record.conf == {"cors", "tagging"} and record.acl == "public-read" and record.ref() == ref
    assert (confs.get(ref, "cors"), confs.get("open", "tagging")) == (b"<CORSConfiguration/>", b"<Tagging/>")
    confs.set(ref, "cors", None)
    assert buckets.get("open").conf == {"tagging"} and confs.get(ref, "cors") is None
    with pytest.raises(ValueError):
        confs.set(ref, "No Such Kind", b"x")

    with old.read() as txn:
        keys = [key for key, _ in txn.scan("objects", prefix=b"open\0")]
    old.write(lambda txn: [txn.delete("objects", key) for key in keys])  # empty, to delete it
    buckets.delete(ref)
    with pytest.raises(errors.NoSuchBucket):
        confs.set(ref, "cors", b"<CORSConfiguration/>")
    again = buckets.create("open", "bob")
    assert again.conf == frozenset() and confs.get(again.ref(), "tagging") is None
    with old.read() as txn:
        assert list(txn.scan("bucketconf", prefix=b"open\0")) == []
