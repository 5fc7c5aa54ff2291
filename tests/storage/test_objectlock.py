"""Object Lock in storage (storage.objectlock through ObjectStore), on both catalog engines:
a retained or held version cannot be removed by any caller, GOVERNANCE yields to bypass,
COMPLIANCE to nothing but time; retention changes; default retention; the bucket's state.

The storage clock (`Versions.clock`) is moved instead of waiting for a date to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from storage import errors
from storage.objectlock import LockConfig
from tests.storage.test_versions import Stores, record

NOW = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def st(catalog_location: str) -> Iterator[tuple[Stores, Clock]]:
    stores = Stores(catalog_location)
    stores.catalog.accounts.add("bob", "BOBKEY", "bob-secret")
    stores.catalog.buckets.create("lb", "bob", lock=True)
    stores.catalog.buckets.create("vb", "bob")
    clock = Clock()
    stores.objects.versions.clock = clock
    yield stores, clock
    stores.catalog.close()


def put(st: Stores, key: str, bucket: str = "lb", **fields: Any) -> dict[str, Any]:
    rec = {**record(5), **fields}
    st.objects.put(bucket, key, rec)
    return rec


@pytest.mark.parametrize("long", [False, True], ids=["short", "long-key"])
def test_retention_refuses_deleting_the_version_until_it_expires(st: tuple[Stores, Clock], long: bool) -> None:
    s, clock = st
    key = ("k" * 900) if long else "k"
    v1 = put(s, key, lock_mode="COMPLIANCE", lock_until=NOW + 60)
    v2 = put(s, key)
    assert s.catalog.buckets.get("lb").versioning == "Enabled"
    for bypass in (False, True):  # COMPLIANCE: not even with bypass, whether current or not
        with pytest.raises(errors.ObjectLocked):
            s.objects.delete_version("lb", key, v1["vid"], bypass_governance=bypass)
    _, marker = s.objects.delete_version("lb", key)  # a plain delete adds a marker
    assert marker is not None and marker["marker"]
    assert s.objects.get_version("lb", key, v1["vid"])["lock_mode"] == "COMPLIANCE"
    s.objects.delete_version("lb", key, v2["vid"])  # unlocked versions go
    clock.now = NOW + 61
    _, gone = s.objects.delete_version("lb", key, v1["vid"])
    assert gone is not None and gone["vid"] == v1["vid"]


def test_governance_yields_to_bypass_and_legal_hold_to_nothing(st: tuple[Stores, Clock]) -> None:
    s, clock = st
    gov = put(s, "g", lock_mode="GOVERNANCE", lock_until=NOW + 60)
    held = put(s, "h", legal_hold=True)
    with pytest.raises(errors.ObjectLocked):
        s.objects.delete_version("lb", "g", gov["vid"])
    s.objects.delete_version("lb", "g", gov["vid"], bypass_governance=True)
    clock.now = NOW + 10**9
    with pytest.raises(errors.ObjectLocked):
        s.objects.delete_version("lb", "h", held["vid"], bypass_governance=True)
    s.objects.set_legal_hold("lb", "h", held["vid"], False)
    s.objects.delete_version("lb", "h", held["vid"])


def test_delete_each_keeps_locked_versions_and_deletes_the_others(st: tuple[Stores, Clock]) -> None:
    s, _ = st
    locked = put(s, "a", lock_mode="GOVERNANCE", lock_until=NOW + 60)
    free = put(s, "b")
    freed, results = s.objects.delete_each("lb", [("a", locked["vid"]), ("b", free["vid"]), ("c", None)])
    assert isinstance(results[0], errors.ObjectLocked) and results[0].version_id == locked["vid"]
    assert results[1] is not None and results[2] is not None and results[2]["marker"]
    assert freed == [free["segments"][0][0]]
    assert s.objects.get_version("lb", "a", locked["vid"])["etag"] == locked["etag"]
    with pytest.raises(errors.NoSuchVersion):
        s.objects.get_version("lb", "b", free["vid"])


def test_retention_changes(st: tuple[Stores, Clock]) -> None:
    s, clock = st
    comp = put(s, "c", lock_mode="COMPLIANCE", lock_until=NOW + 60)
    put(s, "c")  # comp is noncurrent now: changed in the versions table
    vid = comp["vid"]
    for mode, until, bypass in (("COMPLIANCE", NOW + 30, True), ("GOVERNANCE", NOW + 90, True), (None, None, True)):
        with pytest.raises(errors.ObjectLocked):
            s.objects.set_retention("lb", "c", vid, mode, until, bypass)
    assert s.objects.set_retention("lb", "c", vid, "COMPLIANCE", NOW + 90)["lock_until"] == NOW + 90
    assert s.objects.get_version("lb", "c", vid)["lock_until"] == NOW + 90
    gov = put(s, "g", lock_mode="GOVERNANCE", lock_until=NOW + 60)
    with pytest.raises(errors.ObjectLocked):
        s.objects.set_retention("lb", "g", None, "GOVERNANCE", NOW + 30)
    s.objects.set_retention("lb", "g", None, "GOVERNANCE", NOW + 120)  # extending needs no bypass
    s.objects.set_retention("lb", "g", gov["vid"], None, None, bypass_governance=True)
    assert "lock_mode" not in s.objects.get("lb", "g")
    s.objects.set_retention("lb", "g", None, "COMPLIANCE", NOW + 5)
    clock.now = NOW + 6  # expired: anything goes
    s.objects.set_retention("lb", "g", None, "GOVERNANCE", NOW + 7)
    with pytest.raises(errors.ObjectLocked):
        s.objects.set_retention("lb", "g", None, None, None)
    clock.now = NOW + 8
    s.objects.set_retention("lb", "g", None, None, None)


def test_default_retention_and_copies(st: tuple[Stores, Clock]) -> None:
    s, _ = st
    s.catalog.buckets.set_lock("lb", LockConfig("GOVERNANCE", days=2))
    assert s.catalog.buckets.get("lb").lock == LockConfig("GOVERNANCE", days=2)
    put(s, "d")
    plain = s.objects.get("lb", "d")
    assert (plain["lock_mode"], plain["lock_until"]) == ("GOVERNANCE", NOW + 2 * 86400)
    explicit = put(s, "e", lock_mode="COMPLIANCE", lock_until=NOW + 5)
    assert explicit["lock_until"] == NOW + 5
    s.objects.set_legal_hold("lb", "e", None, True)
    copied, _ = s.objects.copy("lb", "e", "vb", "e2", {})  # a copy does not inherit locks
    assert not {"lock_mode", "lock_until", "legal_hold"} & copied.keys()
    s.catalog.buckets.set_lock("lb", LockConfig("COMPLIANCE", years=1))
    put(s, "y")
    assert s.objects.get("lb", "y")["lock_until"] == pytest.approx(NOW + 365 * 86400, abs=86400)


def test_bucket_state_rules(st: tuple[Stores, Clock]) -> None:
    s, _ = st
    with pytest.raises(errors.InvalidBucketState):
        s.catalog.buckets.set_versioning("lb", "Suspended")
    with pytest.raises(errors.InvalidBucketState):  # lock on an unversioned bucket
        s.catalog.buckets.set_lock("vb", LockConfig())
    with pytest.raises(errors.ObjectLockNotEnabled):
        put(s, "k", bucket="vb", legal_hold=True)
    put(s, "k", bucket="vb")
    with pytest.raises(errors.ObjectLockNotEnabled):
        s.objects.set_legal_hold("vb", "k", None, True)
    s.catalog.buckets.set_versioning("vb", "Enabled")
    s.catalog.buckets.set_lock("vb", LockConfig())  # an existing versioned bucket may get it
    assert s.catalog.buckets.get("vb").lock == LockConfig()
    with pytest.raises(ValueError):
        LockConfig("GOVERNANCE", days=1, years=1)


def test_update_in_rewrites_a_noncurrent_version_and_refuses_markers(st: tuple[Stores, Clock]) -> None:
    s, _ = st
    v1 = put(s, "t")
    put(s, "t")
    s.objects.set_tags("lb", "t", {"a": "1"}, vid=v1["vid"])
    assert s.objects.get_version("lb", "t", v1["vid"])["tags"] == {"a": "1"}
    assert "tags" not in s.objects.get("lb", "t")
    _, marker = s.objects.delete_version("lb", "t")
    assert marker is not None
    with pytest.raises(errors.DeleteMarker):
        s.objects.set_tags("lb", "t", {}, vid=marker["vid"])
    with pytest.raises(errors.NoSuchKey):
        s.objects.set_tags("lb", "t", {})
    with pytest.raises(errors.NoSuchVersion):
        s.objects.set_tags("lb", "t", {}, vid="0" * 24)
