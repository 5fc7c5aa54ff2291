"""Object versions in the catalog (storage.versions), on both catalog engines: version ids,
delete markers, the null version, promotion, listing pages, long keys, usage and blob refs.

Blob ids are fake (no bytes are stored): the catalog only counts references and sizes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from storage import errors
from storage.versions import DIRECT_MAX, NULL, version_id
from tests.storage.test_quota import Stores as QuotaStores


class Stores(QuotaStores):
    """The catalog with its object and upload stores (as the quota tests build them)."""

    def put(self, key: str, size: int) -> dict[str, Any]:
        rec = record(size)
        self.objects.put("vb", key, rec)
        return rec

    def listed(self, **kw: Any) -> list[tuple[str, str, bool, bool]]:
        """(key, version id, is latest, is a delete marker) of one listing page."""
        page = self.objects.list_versions("vb", **kw)
        return [(r["key"], version_id(r), latest, bool(r.get("marker"))) for r, latest in page.entries]


def record(size: int) -> dict[str, Any]:
    return {"size": size, "etag": secrets.token_hex(4), "mtime": 1.0, "segments": [[secrets.token_hex(16), size]],
            "headers": {}, "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}


@pytest.fixture
def st(catalog_location: str) -> Iterator[Stores]:
    stores = Stores(catalog_location)
    stores.catalog.accounts.add("bob", "BOBKEY", "bob-secret")
    stores.catalog.buckets.create("vb", "bob")
    yield stores
    stores.catalog.close()


def test_enabled_keeps_every_version_newest_first(st: Stores) -> None:
    before = st.put("k", 1)  # written before versioning: the null version
    st.catalog.buckets.set_versioning("vb", "Enabled")
    assert st.catalog.buckets.get("vb").versioning == "Enabled"
    v1, v2 = st.put("k", 10), st.put("k", 100)
    assert "vid" not in before and v1["vid"] != v2["vid"] and len(v2["vid"]) == 24
    assert st.objects.get("vb", "k")["etag"] == v2["etag"]
    assert st.listed() == [("k", v2["vid"], True, False), ("k", v1["vid"], False, False), ("k", NULL, False, False)]
    assert st.objects.get_version("vb", "k", v1["vid"])["etag"] == v1["etag"]
    assert st.objects.get_version("vb", "k", NULL)["etag"] == before["etag"]
    assert st.usage() == (3, 111)  # every stored version counts
    with pytest.raises(errors.NoSuchVersion):
        st.objects.get_version("vb", "k", "0" * 24)
    with pytest.raises(errors.InvalidVersionId):
        st.objects.get_version("vb", "k", "not-an-id")


def test_delete_marker_then_removing_versions_promotes_the_previous(st: Stores) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    v1, v2 = st.put("k", 10), st.put("k", 20)
    freed, marker = st.objects.delete_version("vb", "k")
    assert freed == [] and marker is not None and marker["marker"]
    with pytest.raises(errors.NoSuchKey):
        st.objects.get("vb", "k")
    latest = st.objects.latest_marker("vb", "k")
    assert latest is not None and latest["vid"] == marker["vid"]
    with pytest.raises(errors.DeleteMarker):
        st.objects.get_version("vb", "k", marker["vid"])
    assert st.objects.list("vb").contents == []  # the current index: as if deleted
    assert st.usage() == (2, 30)
    # removing the marker makes v2 current again
    freed, removed = st.objects.delete_version("vb", "k", marker["vid"])
    assert freed == [] and removed is not None and removed["marker"]
    assert st.objects.get("vb", "k")["vid"] == v2["vid"]
    # removing the current version frees its blob and promotes v1
    freed, removed = st.objects.delete_version("vb", "k", v2["vid"])
    assert freed == [v2["segments"][0][0]]
    assert st.objects.get("vb", "k")["vid"] == v1["vid"]
    assert st.listed() == [("k", v1["vid"], True, False)]
    assert st.usage() == (1, 10)
    # a version that does not exist: nothing happens
    assert st.objects.delete_version("vb", "k", "f" * 24) == ([], None)
    freed, _ = st.objects.delete_version("vb", "k", v1["vid"])
    assert freed == [v1["segments"][0][0]] and st.listed() == [] and st.usage() == (0, 0)
    st.catalog.buckets.delete("vb")


def test_suspended_writes_replace_the_null_version(st: Stores) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    v1 = st.put("k", 10)
    st.catalog.buckets.set_versioning("vb", "Suspended")
    n1 = st.put("k", 20)
    assert "vid" not in n1
    n2 = record(30)
    assert st.objects.put("vb", "k", n2) == [n1["segments"][0][0]]  # overwrites the null version
    assert st.listed() == [("k", NULL, True, False), ("k", v1["vid"], False, False)]
    assert st.usage() == (2, 40)
    freed, marker = st.objects.delete_version("vb", "k")  # a null marker replaces the null version
    assert freed == [n2["segments"][0][0]] and marker is not None and "vid" not in marker
    assert st.listed() == [("k", NULL, True, True), ("k", v1["vid"], False, False)]
    assert st.objects.put("vb", "k", record(5)) == []  # and a null version replaces the null marker
    assert st.listed() == [("k", NULL, True, False), ("k", v1["vid"], False, False)]
    assert st.usage() == (2, 15)


def test_bucket_with_only_versions_is_not_empty(st: Stores) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    st.put("k", 1)
    st.objects.delete("vb", "k")
    assert st.objects.list("vb").contents == [] and st.objects.has_versions("vb")
    with pytest.raises(errors.BucketNotEmpty):
        st.catalog.buckets.delete("vb")


@pytest.mark.parametrize("long", [False, True], ids=["short", "long-keys"])
def test_listing_pages_with_markers_and_delimiter(st: Stores, long: bool) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    stem = "x" * (900 if long else 1)
    keys = [f"{stem}a", f"{stem}b/1", f"{stem}b/2", f"{stem}c"]
    for key in keys:
        st.put(key, 1)
        st.put(key, 2)
    st.objects.delete("vb", keys[3])
    everything = st.listed()
    assert [k for k, *_ in everything] == [keys[0]] * 2 + [keys[1]] * 2 + [keys[2]] * 2 + [keys[3]] * 3
    assert [latest for _, _, latest, _ in everything] == [True, False] * 3 + [True, False, False]
    assert everything[6][3]  # c's latest is its delete marker
    for size in (1, 2, 4):
        seen: list[tuple[str, str, bool, bool]] = []
        key_marker, version_marker = "", ""
        while True:
            page = st.objects.list_versions("vb", key_marker=key_marker, version_marker=version_marker,
                                            max_keys=size)
            seen += [(r["key"], version_id(r), latest, bool(r.get("marker"))) for r, latest in page.entries]
            if not page.truncated:
                break
            key_marker, version_marker = page.next_key_marker or "", page.next_version_marker or ""
        assert seen == everything, size
    grouped = st.objects.list_versions("vb", delimiter="/")
    assert grouped.common_prefixes == [f"{stem}b/"]
    assert [r["key"] for r, _ in grouped.entries] == [keys[0]] * 2 + [keys[3]] * 3
    page = st.objects.list_versions("vb", delimiter="/", max_keys=3)
    assert page.truncated and page.next_key_marker == f"{stem}b/"
    rest = st.objects.list_versions("vb", delimiter="/", key_marker=f"{stem}b/")
    assert [r["key"] for r, _ in rest.entries] == [keys[3]] * 3
    inside = st.objects.list_versions("vb", delimiter="/", key_marker=f"{stem}b/1")  # the group sorts before it
    assert inside.common_prefixes == [] and [r["key"] for r, _ in inside.entries] == [keys[3]] * 3
    assert [k for k, *_ in st.listed(prefix=f"{stem}b/")] == [keys[1]] * 2 + [keys[2]] * 2
    # removing versions of long keys works as of short ones
    for r, _ in st.objects.list_versions("vb").entries:
        st.objects.delete_version("vb", r["key"], version_id(r))
    assert st.listed() == [] and st.usage() == (0, 0)


def test_listing_past_a_key_as_long_as_the_overflow_stem(st: Stores) -> None:
    """A key whose catalog key is exactly DIRECT_MAX bytes keeps its versions in slots of
    its own, which sort before the overflow entry of the longer keys it starts; a listing
    whose prefix or key marker goes past it must start at that entry, not stop at them."""
    st.catalog.buckets.set_versioning("vb", "Enabled")
    stem = "k" * (DIRECT_MAX - len(b"vb\0"))
    for key in (stem, f"{stem}zz", f"{stem}zz"):
        st.put(key, 1)
    st.objects.delete("vb", stem)
    st.objects.delete("vb", f"{stem}y")
    assert [k for k, *_ in st.listed(prefix=f"{stem}z")] == [f"{stem}zz"] * 2
    assert [k for k, *_ in st.listed(prefix=f"{stem}y")] == [f"{stem}y"]
    everything = st.listed()
    assert [k for k, *_ in everything] == [stem] * 2 + [f"{stem}y"] + [f"{stem}zz"] * 2
    seen: list[tuple[str, str, bool, bool]] = []
    key_marker, version_marker = "", ""
    while True:  # pages of one: each marker past the first is longer than the stem
        page = st.objects.list_versions("vb", key_marker=key_marker, version_marker=version_marker, max_keys=1)
        seen += [(r["key"], version_id(r), latest, bool(r.get("marker"))) for r, latest in page.entries]
        if not page.truncated:
            break
        key_marker, version_marker = page.next_key_marker or "", page.next_version_marker or ""
    assert seen == everything


def test_usage_rebuild_counts_every_version(st: Stores) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    st.put("a", 3)
    st.put("a", 4)
    st.objects.delete("vb", "a")
    st.put("b", 5)
    assert st.usage() == (3, 12)
    st.uploads.rebuild_usage()
    assert st.usage() == (3, 12)


def test_copy_of_an_old_version(st: Stores) -> None:
    st.catalog.buckets.set_versioning("vb", "Enabled")
    v1 = st.put("k", 10)
    st.put("k", 20)
    copied, freed = st.objects.copy("vb", "k", "vb", "k2", {}, src_version=v1["vid"])
    assert freed == [] and copied["size"] == 10 and copied["vid"] != v1["vid"]
    assert st.objects.get("vb", "k2")["segments"] == v1["segments"]
    with pytest.raises(errors.NoSuchVersion):
        st.objects.copy("vb", "k", "vb", "k3", {}, src_version="0" * 24)


def test_quota_counts_kept_versions(st: Stores) -> None:
    st.catalog.accounts.set_quota("bob", {"bytes": 100})
    st.catalog.buckets.set_versioning("vb", "Enabled")
    st.put("k", 60)
    with pytest.raises(errors.QuotaExceeded):
        st.objects.check_room("vb", "k", 41)  # the PUT's early check: the old version stays
    with pytest.raises(errors.QuotaExceeded):
        st.put("k", 41)
    st.catalog.buckets.set_versioning("vb", "Suspended")
    st.put("k", 30)  # a null version beside the 60-byte one
    st.objects.check_room("vb", "k", 40)  # replaces the null version: room for 40
    st.put("k", 40)
    assert st.usage() == (2, 100)
