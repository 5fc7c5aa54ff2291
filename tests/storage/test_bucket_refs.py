"""Writes re-check, in their own transaction, the bucket they were authorised against:
a bucket deleted and re-created (by another account or the same one) between the
authorisation and the commit is NoSuchBucket, in both directions, for every write path."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from storage import errors
from storage.catalog import BucketRef, Catalog, generation_of
from storage.objects import ObjectStore
from storage.records import BlobRecord
from storage.uploads import UploadStore

NAME = "shared-name"


class Stores:
    def __init__(self, path: str) -> None:
        self.catalog = Catalog(path)
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)

    def ref(self, name: str) -> BucketRef:
        record = self.catalog.buckets.get(name)
        return BucketRef(name, record.owner, generation_of(record))

    def hand_over(self, name: str, new_owner: str) -> None:
        """Empty and delete the bucket, then `new_owner` creates one of the same name."""
        listing = self.objects.list(name)
        assert not listing.truncated
        self.objects.delete_many(name, [r["key"] for r in listing.contents])
        self.uploads.abort_all(name)
        self.catalog.buckets.delete(name)
        self.catalog.buckets.create(name, new_owner)


@pytest.fixture
def st(catalog_location: str) -> Iterator[Stores]:
    stores = Stores(catalog_location)
    yield stores
    stores.catalog.close()


def record(size: int = 4, etag: str = "e") -> dict[str, Any]:
    return {"size": size, "etag": etag, "mtime": 1.0, "segments": [[secrets.token_hex(16), size]],
            "headers": {}, "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}


OWNERS = [pytest.param("bob", "alice", id="into-other-account"),
          pytest.param("alice", "bob", id="from-other-account"),
          pytest.param("bob", "bob", id="same-account-recreated")]


@pytest.mark.parametrize(("first", "second"), OWNERS)
def test_put_checks_the_bucket_it_was_authorised_for(st: Stores, first: str, second: str) -> None:
    st.catalog.buckets.create(NAME, first)
    ref = st.ref(NAME)
    st.hand_over(NAME, second)
    new = record()
    with pytest.raises(errors.NoSuchBucket):
        st.objects.put(ref, "k", new, {new["segments"][0][0]: BlobRecord(size=4)})
    assert st.objects.list(NAME).contents == []
    assert {b for b, _ in st.catalog.blobrefs.records()} == set()  # the caller frees the blob it wrote
    st.objects.put(st.ref(NAME), "k", new)  # the current bucket's ref works
    assert st.objects.get(st.ref(NAME), "k")["etag"] == "e"
    with pytest.raises(errors.NoSuchBucket):
        st.objects.get(ref, "k")
    with pytest.raises(errors.NoSuchBucket):
        st.objects.delete(ref, "k")


@pytest.mark.parametrize(("first", "second"), OWNERS)
def test_copy_checks_source_and_destination(st: Stores, first: str, second: str) -> None:
    st.catalog.buckets.create("src", first)
    st.catalog.buckets.create(NAME, first)
    st.objects.put("src", "k", record(etag="mine"))
    src_ref, dst_ref = st.ref("src"), st.ref(NAME)

    st.hand_over(NAME, second)  # the destination changes hands
    with pytest.raises(errors.NoSuchBucket):
        st.objects.copy(src_ref, "k", dst_ref, "k", {})
    assert st.objects.list(NAME).contents == []

    st.catalog.buckets.create("mine", first)
    st.hand_over("src", second)  # the source changes hands, holding the other's object
    st.objects.put("src", "k", record(etag="theirs"))
    with pytest.raises(errors.NoSuchBucket):
        st.objects.copy(src_ref, "k", st.ref("mine"), "stolen", {})
    assert st.objects.list("mine").contents == []


@pytest.mark.parametrize(("first", "second"), OWNERS)
def test_parts_and_completion_check_the_bucket(st: Stores, first: str, second: str) -> None:
    st.catalog.buckets.create(NAME, first)
    ref = st.ref(NAME)
    upload = st.uploads.create(ref, "mp", first, {"headers": {}, "meta": {}})
    assert upload["bucket_gen"] == ref.generation
    part = {"number": 1, "blob": secrets.token_hex(16), "size": 4, "etag": "p1", "checksums": {}}
    st.uploads.put_part(ref, "mp", upload["upload_id"], part)
    st.hand_over(NAME, second)
    with pytest.raises(errors.NoSuchBucket):
        st.uploads.put_part(ref, "mp", upload["upload_id"], {**part, "blob": secrets.token_hex(16)})
    with pytest.raises(errors.NoSuchBucket):
        st.uploads.complete(ref, "mp", upload["upload_id"], [(1, "p1")], lambda up, parts: {"size": 4})
    with pytest.raises(errors.NoSuchUpload):  # the new bucket never had that upload
        st.uploads.get(st.ref(NAME), "mp", upload["upload_id"])
    assert st.objects.list(NAME).contents == []
    assert {b for b, _ in st.catalog.blobrefs.records()} == set()


def test_an_upload_from_an_earlier_bucket_of_the_name_is_no_such_upload(st: Stores) -> None:
    st.catalog.buckets.create(NAME, "bob")
    old = st.ref(NAME)
    upload = st.uploads.create(old, "mp", "bob", {"headers": {}, "meta": {}})
    # as if the abort with the delete were lost
    st.catalog.write(lambda txn: st.catalog.delete(txn, "buckets", NAME.encode()))
    st.catalog.buckets.create(NAME, "bob")
    with pytest.raises(errors.NoSuchUpload):
        st.uploads.get(st.ref(NAME), "mp", upload["upload_id"])


def test_deleting_by_a_stale_ref_leaves_the_new_bucket_alone(st: Stores) -> None:
    st.catalog.buckets.create(NAME, "bob")
    ref = st.ref(NAME)
    st.hand_over(NAME, "alice")
    upload = st.uploads.create(st.ref(NAME), "mp", "alice", {"headers": {}, "meta": {}})
    with pytest.raises(errors.NoSuchBucket):
        st.uploads.abort_all(ref)
    with pytest.raises(errors.NoSuchBucket):
        st.catalog.buckets.delete(ref)
    assert st.catalog.buckets.get(NAME).owner == "alice"
    assert st.uploads.get(NAME, "mp", upload["upload_id"])["owner"] == "alice"


def test_setting_tags_checks_the_bucket_and_changes_only_the_tags(st: Stores) -> None:
    st.catalog.buckets.create(NAME, "bob")
    ref = st.ref(NAME)
    st.objects.put(ref, "k", record())
    st.objects.set_tags(ref, "k", {"a": "1"})
    tagged = st.objects.get(ref, "k")
    assert tagged["tags"] == {"a": "1"} and tagged["segments"] == st.objects.get(NAME, "k")["segments"]
    st.objects.set_tags(ref, "k", {})
    assert "tags" not in st.objects.get(ref, "k")
    with pytest.raises(errors.NoSuchKey):
        st.objects.set_tags(ref, "missing", {"a": "1"})
    st.hand_over(NAME, "alice")
    st.objects.put(NAME, "k", record())
    with pytest.raises(errors.NoSuchBucket):
        st.objects.set_tags(ref, "k", {"a": "1"})
    assert "tags" not in st.objects.get(NAME, "k")


def test_buckets_from_before_generations_use_their_creation_time(st: Stores) -> None:
    st.catalog.write(lambda txn: st.catalog.put(txn, "buckets", b"legacy",
                                                {"v": 1, "name": "legacy", "owner": "bob", "created": 12.5}))
    ref = st.ref("legacy")
    assert ref.generation == "created:12.5"
    st.objects.put(ref, "k", record())
    st.objects.delete(ref, "k")
    st.catalog.buckets.delete(ref)
    st.catalog.buckets.create("legacy", "bob")
    assert st.ref("legacy").generation != ref.generation
    with pytest.raises(errors.NoSuchBucket):
        st.objects.put(ref, "k", record())


def test_job_outputs_only_land_in_the_job_owners_bucket(st: Stores) -> None:
    st.catalog.write(lambda txn: st.catalog.buckets.ensure_in(txn, "_jobs_bob", "bob"))
    assert st.catalog.buckets.get("_jobs_bob").gen is not None
    st.catalog.write(lambda txn: st.objects.put_in(txn, "_jobs_bob", "out", record(), owner="bob"))
    with pytest.raises(errors.NoSuchBucket):
        st.catalog.write(lambda txn: st.objects.put_in(txn, "_jobs_bob", "out2", record(), owner="alice"))
    assert [r["key"] for r in st.objects.list("_jobs_bob").contents] == ["out"]
