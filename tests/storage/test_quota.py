"""Per-account usage (objects, bytes) kept by every write, and quotas enforced at commit.

Blob ids are fake (no bytes are stored): the catalog only counts references and sizes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from storage import Store, StoreConfig, errors
from storage.catalog import USAGE_BUILT, BucketRef, Catalog, generation_of
from storage.objects import ObjectStore
from storage.uploads import MIN_PART_SIZE, UploadStore


class Stores:
    def __init__(self, path: str) -> None:
        self.catalog = Catalog(path)
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)

    def usage(self, name: str = "bob") -> tuple[int, int]:
        used = self.catalog.usage.get(name)
        return used.objects, used.bytes


@pytest.fixture
def st(catalog_location: str) -> Iterator[Stores]:
    stores = Stores(catalog_location)
    stores.catalog.accounts.add("bob", "BOBKEY", "bob-secret")
    stores.catalog.accounts.add("alice", "ALICEKEY", "alice-secret")
    stores.catalog.buckets.create("bobs", "bob")
    stores.catalog.buckets.create("alices", "alice")
    yield stores
    stores.catalog.close()


def record(size: int, etag: str = "e") -> dict[str, Any]:
    return {"size": size, "etag": etag, "mtime": 1.0, "segments": [[secrets.token_hex(16), size]],
            "headers": {}, "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}


def part(number: int, size: int) -> dict[str, Any]:
    return {"number": number, "blob": secrets.token_hex(16), "size": size, "etag": f"p{number}", "checksums": {}}


def build(upload: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"size": sum(p["size"] for p in parts), "etag": "mp-1", "mtime": 2.0, "headers": {}, "meta": {},
            "checksums": {}, "checksum_type": None, "parts": [p["size"] for p in parts]}


def test_usage_follows_put_overwrite_copy_and_delete(st: Stores) -> None:
    st.objects.put("bobs", "a", record(10))
    st.objects.put("bobs", "b", record(5))
    assert st.usage() == (2, 15)
    st.objects.put("bobs", "a", record(3))  # an overwrite counts the difference
    assert st.usage() == (2, 8)
    st.objects.copy("bobs", "a", "bobs", "c", {})
    assert st.usage() == (3, 11)
    st.objects.delete("bobs", "b")
    st.objects.delete("bobs", "b")  # deleting nothing changes nothing
    assert st.usage() == (2, 6)
    st.objects.delete_many("bobs", ["a", "c", "missing"])
    assert st.usage() == (0, 0)
    assert st.usage("alice") == (0, 0)


def test_usage_follows_parts_completion_and_abort(st: Stores) -> None:
    up = st.uploads.create("bobs", "mp", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp", up, part(1, MIN_PART_SIZE))
    st.uploads.put_part("bobs", "mp", up, part(2, 7))
    st.uploads.put_part("bobs", "mp", up, part(2, 4))  # a re-sent part replaces the first
    st.uploads.put_part("bobs", "mp", up, part(3, 9))
    assert st.usage() == (1, MIN_PART_SIZE + 13)  # the pending upload counts as an object
    st.uploads.complete("bobs", "mp", up, [(1, "p1"), (2, "p2")], build)  # part 3 is dropped
    assert st.usage() == (1, MIN_PART_SIZE + 4)

    up2 = st.uploads.create("bobs", "other", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "other", up2, part(1, 100))
    assert st.usage() == (2, MIN_PART_SIZE + 104)
    st.uploads.abort("bobs", "other", up2)
    assert st.usage() == (1, MIN_PART_SIZE + 4)
    up3 = st.uploads.create("bobs", "third", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "third", up3, part(1, 50))
    st.uploads.abort_all("bobs")
    assert st.usage() == (1, MIN_PART_SIZE + 4)


def test_the_object_quota_refuses_a_new_key_at_commit_but_not_an_overwrite(st: Stores) -> None:
    st.catalog.accounts.set_quota("bob", {"objects": 2})
    st.objects.put("bobs", "a", record(1))
    st.objects.put("bobs", "b", record(1))
    with pytest.raises(errors.QuotaExceeded) as err:
        st.objects.put("bobs", "c", record(1))
    assert (err.value.account, err.value.resource, err.value.limit) == ("bob", "objects", 2)
    with pytest.raises(errors.QuotaExceeded):
        st.objects.copy("bobs", "a", "bobs", "copy", {})
    with pytest.raises(errors.QuotaExceeded):
        st.objects.check_room("bobs", "c", 1)  # the early check a PUT makes
    st.objects.put("bobs", "a", record(100))  # overwriting at the limit is fine
    assert st.usage() == (2, 101)
    assert [r["key"] for r in st.objects.list("bobs").contents] == ["a", "b"]
    st.objects.put("alices", "x", record(1))  # other accounts are unaffected
    st.objects.put("alices", "y", record(1))
    st.objects.put("alices", "z", record(1))
    assert st.usage("alice") == (3, 3)
    st.catalog.accounts.set_quota("bob", {"objects": None})
    st.objects.put("bobs", "c", record(1))
    assert st.usage() == (3, 102)


def test_the_byte_quota_counts_objects_and_pending_parts(st: Stores) -> None:
    st.catalog.accounts.set_quota("bob", {"bytes": 100})
    st.objects.put("bobs", "a", record(60))
    with pytest.raises(errors.QuotaExceeded) as err:
        st.objects.put("bobs", "b", record(41))
    assert err.value.resource == "bytes"
    st.objects.put("bobs", "a", record(20))  # a smaller overwrite frees room
    up = st.uploads.create("bobs", "mp", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp", up, part(1, 70))
    with pytest.raises(errors.QuotaExceeded):
        st.uploads.put_part("bobs", "mp", up, part(2, 11))
    with pytest.raises(errors.QuotaExceeded):
        st.uploads.check_room("bobs", "mp", up, 2, 11)
    st.uploads.check_room("bobs", "mp", up, 1, 80)  # re-sending part 1 counts the difference
    assert st.usage() == (2, 90)
    st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)  # completing adds no bytes
    assert st.usage() == (2, 90)


def test_a_pending_upload_holds_an_object_of_the_quota_until_it_ends(st: Stores) -> None:
    """Zero-byte parts cost no bytes, so without this an account at its objects limit could
    keep making catalog records: uploads without end, each with up to 10,000 parts."""
    st.catalog.accounts.set_quota("bob", {"objects": 2})
    st.objects.put("bobs", "a", record(1))
    up = st.uploads.create("bobs", "mp", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp", up, part(1, 0))
    assert st.usage() == (2, 1)
    with pytest.raises(errors.QuotaExceeded) as err:  # a second upload
        st.uploads.create("bobs", "mp2", "bob", {"headers": {}, "meta": {}})
    assert (err.value.account, err.value.resource, err.value.limit) == ("bob", "objects", 2)
    with pytest.raises(errors.QuotaExceeded):  # a new key: the upload holds the last one
        st.objects.put("bobs", "b", record(1))
    assert [u["upload_id"] for u in st.uploads.list_uploads("bobs")] == [up]
    st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)  # started within the limit: completes
    assert st.usage() == (2, 1)
    st.uploads.rebuild_usage()
    assert st.usage() == (2, 1)
    with pytest.raises(errors.QuotaExceeded):  # at the limit even an overwrite's upload needs room
        st.uploads.create("bobs", "a", "bob", {"headers": {}, "meta": {}})
    st.objects.delete("bobs", "mp")
    up_a = st.uploads.create("bobs", "a", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "a", up_a, part(1, 5))
    st.uploads.complete("bobs", "a", up_a, [(1, "p1")], build)  # an overwrite: one object
    assert st.usage() == (1, 5)


def test_completing_refuses_an_object_past_a_quota_lowered_meanwhile(st: Stores) -> None:
    st.objects.put("bobs", "a", record(1))
    up = st.uploads.create("bobs", "mp", "bob", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp", up, part(1, 5))
    st.catalog.accounts.set_quota("bob", {"objects": 1})
    with pytest.raises(errors.QuotaExceeded):
        st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)
    assert st.usage() == (2, 6)  # as it was: still pending
    st.uploads.abort("bobs", "mp", up)
    assert st.usage() == (1, 1)



def test_another_accounts_upload_is_charged_to_and_checked_for_the_bucket_owner(st: Stores) -> None:
    st.catalog.accounts.set_quota("bob", {"objects": 1, "bytes": 100})
    up = st.uploads.create("bobs", "mp", "alice", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp", up, part(1, 70))
    assert (st.usage(), st.usage("alice")) == ((1, 70), (0, 0))
    with pytest.raises(errors.QuotaExceeded):
        st.uploads.check_room("bobs", "mp", up, 2, 31)
    with pytest.raises(errors.QuotaExceeded):
        st.uploads.put_part("bobs", "mp", up, part(2, 31))
    st.uploads.put_part("bobs", "mp", up, part(1, 60))  # a re-sent part counts the difference
    with pytest.raises(errors.QuotaExceeded) as err:  # alice's upload holds bob's one object
        st.uploads.create("bobs", "mp2", "alice", {"headers": {}, "meta": {}})
    assert (err.value.account, err.value.resource) == ("bob", "objects")
    with pytest.raises(errors.QuotaExceeded):
        st.objects.put("bobs", "a", record(10))
    assert (st.usage(), st.usage("alice")) == ((1, 60), (0, 0))
    assert [p["size"] for p in st.uploads.parts(up)] == [60]
    st.uploads.rebuild_usage()
    assert (st.usage(), st.usage("alice")) == ((1, 60), (0, 0))
    st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)
    assert (st.usage(), st.usage("alice")) == ((1, 60), (0, 0))
    st.catalog.accounts.set_quota("bob", {"objects": 2, "bytes": 100})
    up2 = st.uploads.create("bobs", "mp2", "alice", {"headers": {}, "meta": {}})["upload_id"]
    st.uploads.put_part("bobs", "mp2", up2, part(1, 40))
    assert (st.usage(), st.usage("alice")) == ((2, 100), (0, 0))
    st.uploads.abort("bobs", "mp2", up2)
    assert (st.usage(), st.usage("alice")) == ((1, 60), (0, 0))


def test_an_upload_recorded_before_bucket_owner_is_refunded_to_its_starter(st: Stores) -> None:
    up = st.uploads.create("bobs", "mp", "alice", {"headers": {}, "meta": {}})["upload_id"]

    def as_before(txn: Any) -> None:  # before `bucket_owner`, and so before `counted`
        record = st.catalog.get(txn, "uploads", up.encode())
        del record["bucket_owner"], record["counted"]
        st.catalog.put(txn, "uploads", up.encode(), record)
        st.catalog.usage.charge(txn, "bob", -1, 0)

    st.catalog.write(as_before)
    st.uploads.put_part("bobs", "mp", up, part(1, 70))
    assert (st.usage(), st.usage("alice")) == ((0, 0), (0, 70))
    st.uploads.rebuild_usage()
    assert (st.usage(), st.usage("alice")) == ((0, 0), (0, 70))
    st.catalog.accounts.set_quota("bob", {"bytes": 50})
    with pytest.raises(errors.QuotaExceeded):  # the object is the bucket owner's
        st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)
    assert (st.usage(), st.usage("alice")) == ((0, 0), (0, 70))
    st.catalog.accounts.set_quota("bob", {"bytes": None})
    st.uploads.complete("bobs", "mp", up, [(1, "p1")], build)
    assert (st.usage(), st.usage("alice")) == ((1, 70), (0, 0))


def test_job_outputs_count_for_the_owner_without_being_refused(st: Stores) -> None:
    st.catalog.accounts.set_quota("bob", {"objects": 0})
    st.catalog.write(lambda txn: st.catalog.buckets.ensure_in(txn, "_jobs_bob", "bob"))
    st.catalog.write(lambda txn: st.objects.put_in(txn, "_jobs_bob", "out", record(8), owner="bob"))
    assert st.usage() == (1, 8)
    with pytest.raises(errors.QuotaExceeded):
        st.catalog.write(lambda txn: st.objects.put_in(txn, "_jobs_bob", "o2", record(8), owner="bob",
                                                       enforce_quota=True))


def test_usage_is_rebuilt_when_a_catalog_predates_it(tmp_path: object) -> None:
    data = os.path.join(str(tmp_path), "data")
    store = Store(StoreConfig(data))
    assert store.catalog.usage.built()
    store.catalog.accounts.add("bob", "BOBKEY", "bob-secret")
    store.catalog.buckets.create("bobs", "bob")
    bobs = store.catalog.buckets.get("bobs")
    ref = BucketRef("bobs", "bob", generation_of(bobs))
    store.objects.put(ref, "a", record(10))
    store.objects.put(ref, "k" * 1000, record(7))  # an overflow-grouped long key
    up = store.uploads.create(ref, "mp", "bob", {"headers": {}, "meta": {}})["upload_id"]
    store.uploads.put_part(ref, "mp", up, part(1, 5))
    expected = store.catalog.usage.get("bob")
    assert expected.to_dict() == {"objects": 3, "bytes": 22}  # two objects, one pending upload
    # as a catalog made before usage existed
    store.catalog.write(lambda txn: [txn.delete("usage", k) for k, _ in list(txn.scan("usage"))])
    assert not store.catalog.usage.built()
    store.close()

    store = Store(StoreConfig(data))
    try:
        assert store.catalog.usage.built()
        assert store.catalog.usage.get("bob") == expected
        with store.catalog.read() as txn:
            assert txn.get("usage", USAGE_BUILT) is not None
    finally:
        store.close()
