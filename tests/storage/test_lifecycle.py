"""Lifecycle rules without HTTP: S3's rounding of ages to midnight UTC, filter matching,
the rules' stored form, and passes of the daemon over a real store with its clock set
(expiration, noncurrent versions, lone delete markers, uploads; conditional deletes; one
object's storage error does not stop a pass)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import Store, StoreConfig, errors
from storage.lifecycle import DAY_S, KIND, Filter, LifecycleDaemon, Rule, decode, due_after, encode

OWNER = "root"


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


T0 = ts("2026-01-15T10:30:00")


def record(key: str, size: int = 1, mtime: float = T0, tags: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "size": size, "etag": f"e{size}", "mtime": mtime, "segments": [],
                           "headers": {}, "meta": {}, "checksums": {}, "checksum_type": None, "parts": None,
                           "replicas": []}
    if tags:
        out["tags"] = tags
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(StoreConfig(str(tmp_path / "data")))
    yield st
    st.close()


def configure(store: Store, bucket: str, *rules: Rule, versioning: str | None = None) -> None:
    store.catalog.buckets.create(bucket, OWNER)
    if versioning:
        store.catalog.buckets.set_versioning(bucket, versioning)
    store.catalog.bucketconf.set(bucket, KIND, encode(list(rules)))


def keys(store: Store, bucket: str) -> list[str]:
    return [r["key"] for r in store.objects.list(bucket).contents]


def versions(store: Store, bucket: str) -> list[tuple[str, bool, float]]:
    """(key, is a marker, mtime) of every version, newest first per key."""
    return [(r["key"], bool(r.get("marker")), r["mtime"]) for r, _ in store.objects.list_versions(bucket).entries]


# -- when a rule is due ---------------------------------------------------------------------

def test_ages_round_up_to_the_next_midnight_utc() -> None:
    assert due_after(T0, 3) == ts("2026-01-19T00:00:00")  # S3's own example
    assert due_after(ts("2026-01-15T23:59:59"), 1) == ts("2026-01-17T00:00:00")
    assert due_after(ts("2026-01-15T00:00:00"), 1) == ts("2026-01-17T00:00:00")  # the next day's midnight
    assert due_after(T0, 1) % DAY_S == 0


def test_expiration_by_days_and_by_date() -> None:
    by_days = Rule("d", True, expiration_days=3)
    assert not by_days.expires("k", record("k"), ts("2026-01-18T23:59:59"))
    assert by_days.expires("k", record("k"), ts("2026-01-19T00:00:00"))
    by_date = Rule("t", True, expiration_date=ts("2026-03-01T00:00:00"))
    assert not by_date.expires("k", record("k"), ts("2026-02-28T23:59:59"))
    assert by_date.expires("k", record("k", mtime=ts("2026-02-28T23:00:00")), ts("2026-03-01T00:00:00"))


def test_noncurrent_days_count_from_the_successor_and_keep_newer_versions() -> None:
    rule = Rule("n", True, noncurrent_days=2, newer_noncurrent=1)
    since = ts("2026-01-10T12:00:00")
    assert not rule.expires_noncurrent("k", record("k"), since, 1, ts("2026-01-12T23:00:00"))
    assert rule.expires_noncurrent("k", record("k"), since, 1, ts("2026-01-13T00:00:00"))
    assert not rule.expires_noncurrent("k", record("k"), since, 0, ts("2026-02-13T00:00:00"))  # the newest one kept


# -- filters --------------------------------------------------------------------------------

def test_filters_match_prefix_tags_and_sizes() -> None:
    everything = Filter(form="none")
    assert everything.matches("any", record("any"))
    logs = Filter("logs/")
    assert logs.matches("logs/a", record("logs/a")) and not logs.matches("log/a", record("log/a"))
    tagged = Filter(tags=(("class", "tmp"), ("team", "a")), form="and")
    assert tagged.matches("k", record("k", tags={"class": "tmp", "team": "a", "x": "y"}))
    assert not tagged.matches("k", record("k", tags={"class": "tmp"}))
    assert not tagged.matches("k", record("k", tags={"class": "tmp", "team": "b"}))
    assert not tagged.matches("k", record("k"))
    sized = Filter(size_gt=10, size_lt=20, form="and")
    assert [sized.matches("k", record("k", size=n)) for n in (10, 11, 19, 20)] == [False, True, True, False]


def test_delete_markers_match_only_prefix_filters() -> None:
    marker = {"key": "logs/a", "marker": True, "size": 0, "mtime": T0, "segments": []}
    assert Filter("logs/").matches("logs/a", marker)
    assert not Filter("logs/", size_lt=5, form="and").matches("logs/a", marker)
    assert not Filter(tags=(("a", "b"),), form="tag").matches("logs/a", marker)


def test_rules_round_trip_through_their_stored_form() -> None:
    rules = [Rule("a", True, Filter("p/", (("k", "v"),), 1, 99, "and"), expiration_days=5, noncurrent_days=3,
                  newer_noncurrent=2, abort_days=7),
             Rule("b", False, Filter("old/", form="legacy"), expiration_date=ts("2030-01-01T00:00:00")),
             Rule("c", True, Filter(form="none"), expired_marker=False)]
    assert decode(encode(rules)) == rules


# -- passes ----------------------------------------------------------------------------------

def test_a_pass_expires_only_what_its_rules_name(store: Store) -> None:
    configure(store, "plain", Rule("logs", True, Filter("logs/"), expiration_days=1),
              Rule("tmp", True, Filter(tags=(("class", "tmp"),), form="tag"), expiration_days=1),
              Rule("big", True, Filter(size_gt=100, form="gt"), expiration_days=1),
              Rule("off", False, Filter("keep/"), expiration_days=1))
    for rec in (record("logs/a"), record("logs/new", mtime=T0 + 5 * DAY_S), record("data/a"),
                record("t1", tags={"class": "tmp"}), record("t2", tags={"class": "keep"}),
                record("big", size=101), record("small", size=100), record("keep/a")):
        store.objects.put("plain", rec["key"], rec)
    daemon = LifecycleDaemon(store)
    assert daemon.run(T0 + 0.5 * DAY_S).actions == 0  # nothing is a day old yet
    report = daemon.run(T0 + 2 * DAY_S)
    assert (report.buckets, report.expired, report.failed) == (1, 3, 0)
    assert keys(store, "plain") == ["data/a", "keep/a", "logs/new", "small", "t2"]
    assert store.catalog.usage.get(OWNER).objects == 5
    assert daemon.run(T0 + 2 * DAY_S).actions == 0  # a second pass finds nothing


def test_versioned_bucket_noncurrent_versions_markers_and_expiration(store: Store) -> None:
    configure(store, "vb", Rule("nc", True, Filter("v/"), noncurrent_days=1, newer_noncurrent=1),
              Rule("markers", True, Filter("gone/"), expired_marker=True),
              Rule("cur", True, Filter("cur/"), expiration_days=10), versioning="Enabled")
    for day in range(4):  # v/k: three noncurrent versions, noncurrent since days 1, 2 and 3
        store.objects.put("vb", "v/k", record("v/k", size=day + 1, mtime=T0 + day * DAY_S))
    store.objects.put("vb", "gone/k", record("gone/k"))
    store.objects.delete("vb", "gone/k")  # a marker over one version: not alone, kept
    store.objects.put("vb", "gone/lone", record("gone/lone"))
    lone_vid = store.objects.list_versions("vb", prefix="gone/lone").entries[-1][0]["vid"]
    store.objects.delete("vb", "gone/lone")
    store.objects.delete_version("vb", "gone/lone", lone_vid)  # only its marker is left
    store.objects.put("vb", "cur/k", record("cur/k"))

    report = LifecycleDaemon(store).run(T0 + 4 * DAY_S + 1)  # versions noncurrent since days 1, 2: due
    # v/k's newest noncurrent version is kept (NewerNoncurrentVersions 1), the two older go
    assert [(k, m) for k, m, _ in versions(store, "vb") if k == "v/k"] == [("v/k", False), ("v/k", False)]
    assert (report.noncurrent, report.markers, report.expired) == (2, 1, 0)
    assert [k for k, _, _ in versions(store, "vb") if k.startswith("gone/")] == ["gone/k", "gone/k"]

    report = LifecycleDaemon(store).run(T0 + 12 * DAY_S)  # cur/k is now 12 days old: a marker on top
    assert report.expired == 1
    assert [(k, m) for k, m, _ in versions(store, "vb") if k == "cur/k"] == [("cur/k", True), ("cur/k", False)]
    assert keys(store, "vb") == ["v/k"]


def test_a_pass_run_ahead_of_time_makes_its_markers_as_of_then(store: Store) -> None:
    """A pass as of 40 days from now expires an object: its marker is dated then, so the
    version it made noncurrent waits its NoncurrentDays from then, not from now."""
    now = time.time()
    configure(store, "ahead", Rule("r", True, Filter("x/"), expiration_days=10, noncurrent_days=30),
              versioning="Enabled")
    store.objects.put("ahead", "x/k", record("x/k", mtime=now))
    at = now + 40 * DAY_S
    assert LifecycleDaemon(store).run(at).expired == 1
    assert versions(store, "ahead") == [("x/k", True, at), ("x/k", False, now)]
    assert LifecycleDaemon(store).run(at).noncurrent == 0  # noncurrent for 0 days as of `at`
    report = LifecycleDaemon(store).run(due_after(at, 30))
    assert (report.noncurrent, report.markers) == (1, 1)  # and the marker, then alone and 10 days old
    assert versions(store, "ahead") == []


def test_suspended_bucket_expiration_replaces_the_null_version(store: Store) -> None:
    configure(store, "sb", Rule("all", True, Filter(form="none"), expiration_days=1), versioning="Suspended")
    store.objects.put("sb", "k", record("k"))
    assert LifecycleDaemon(store).run(T0 + 3 * DAY_S).expired == 1
    assert [(k, m) for k, m, _ in versions(store, "sb")] == [("k", True)]  # the null version is gone
    assert store.catalog.usage.get(OWNER).objects == 0


def test_incomplete_uploads_are_aborted_by_prefix_and_age(store: Store) -> None:
    configure(store, "up", Rule("abort", True, Filter("tmp/"), abort_days=2))
    old = store.uploads.create("up", "tmp/a", OWNER, {})
    other = store.uploads.create("up", "data/a", OWNER, {})
    daemon = LifecycleDaemon(store)
    assert daemon.run(old["initiated"] + DAY_S).aborted == 0
    assert daemon.run(old["initiated"] + 3 * DAY_S).aborted == 1
    assert [u["upload_id"] for u in store.uploads.list_uploads("up")] == [other["upload_id"]]


def test_deletes_are_conditional_on_what_the_pass_read(store: Store) -> None:
    store.catalog.buckets.create("c", OWNER)
    store.objects.put("c", "k", record("k", size=1))
    assert store.objects.delete_if("c", "k", None, lambda current, older: False) is None
    assert keys(store, "c") == ["k"]
    freed, _ = store.objects.delete_if("c", "k", None, lambda current, older: current is not None) or ([], None)
    assert keys(store, "c") == [] and freed == []


def test_a_storage_error_on_one_object_does_not_stop_the_pass(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(store, "lk", Rule("all", True, Filter(form="none"), expiration_days=1))
    for key in ("a", "b", "c"):
        store.objects.put("lk", key, record(key))
    real = store.objects.delete_if

    def locked_b(bucket: Any, key: str, vid: Any, still: Any, at: Any = None) -> Any:
        if key == "b":
            raise errors.PreconditionFailed("lk", "b", "locked")  # any storage error (a locked version)
        return real(bucket, key, vid, still, at)

    monkeypatch.setattr(store.objects, "delete_if", locked_b)
    report = LifecycleDaemon(store).run(T0 + 3 * DAY_S)
    assert (report.expired, report.failed) == (2, 1)
    assert keys(store, "lk") == ["b"]


def test_buckets_without_rules_or_with_disabled_rules_are_skipped(store: Store) -> None:
    store.catalog.buckets.create("none", OWNER)
    store.objects.put("none", "k", record("k"))
    configure(store, "off", Rule("off", False, Filter(form="none"), expiration_days=1))
    store.objects.put("off", "k", record("k"))
    daemon = LifecycleDaemon(store)
    assert [r.name for r, _ in daemon.configured()] == []
    report = daemon.run(T0 + 100 * DAY_S)
    assert (report.buckets, report.actions) == (0, 0)
    assert keys(store, "none") == ["k"] and keys(store, "off") == ["k"]


def test_a_pass_stops_at_max_actions(store: Store) -> None:
    configure(store, "many", Rule("all", True, Filter(form="none"), expiration_days=1))
    for i in range(5):
        store.objects.put("many", f"k{i}", record(f"k{i}"))
    report = LifecycleDaemon(store, max_actions=3).run(T0 + 3 * DAY_S)
    assert (report.expired, report.truncated) == (3, True)
    assert LifecycleDaemon(store, max_actions=3).run(T0 + 3 * DAY_S).expired == 2


def test_a_dry_run_changes_nothing_and_says_what_the_pass_then_does(store: Store) -> None:
    store.catalog.buckets.create("lk", OWNER, lock=True)  # versioned, with Object Lock
    store.catalog.bucketconf.set("lk", KIND, encode([
        Rule("nc", True, Filter("v/"), noncurrent_days=1), Rule("cur", True, Filter("cur/"), expiration_days=3),
        Rule("markers", True, Filter("gone/"), expired_marker=True), Rule("abort", True, Filter("tmp/"), abort_days=2)]))
    store.objects.put("lk", "v/held", record("v/held", size=1) | {"legal_hold": True})
    store.objects.put("lk", "v/held", record("v/held", size=2, mtime=T0 + DAY_S))  # the held one is noncurrent
    store.objects.put("lk", "v/free", record("v/free", size=1))
    store.objects.put("lk", "v/free", record("v/free", size=2, mtime=T0 + DAY_S))
    store.objects.put("lk", "cur/k", record("cur/k"))
    store.objects.put("lk", "gone/lone", record("gone/lone"))
    lone_vid = store.objects.list_versions("lk", prefix="gone/lone").entries[-1][0]["vid"]
    store.objects.delete("lk", "gone/lone")
    store.objects.delete_version("lk", "gone/lone", lone_vid)  # only its marker is left
    upload = store.uploads.create("lk", "tmp/u", OWNER, {})
    before = versions(store, "lk")
    at = max(T0, upload["initiated"]) + 10 * DAY_S

    dry = LifecycleDaemon(store).run(at, dry_run=True)
    assert versions(store, "lk") == before  # nothing changed
    assert [u["upload_id"] for u in store.uploads.list_uploads("lk")] == [upload["upload_id"]]
    counts = (dry.expired, dry.noncurrent, dry.markers, dry.aborted, dry.failed)
    assert counts == (1, 1, 1, 1, 1)  # the held version would be kept: failed, as in a real pass
    free_vid = store.objects.list_versions("lk", prefix="v/free").entries[-1][0]["vid"]
    marker_vid = store.objects.list_versions("lk", prefix="gone/lone").entries[0][0]["vid"]
    assert sorted(dry.planned, key=lambda c: c["action"]) == [
        {"action": "aborted", "bucket": "lk", "upload_id": upload["upload_id"], "key": "tmp/u"},
        {"action": "expired", "bucket": "lk", "key": "cur/k"},
        {"action": "markers", "bucket": "lk", "version_id": marker_vid, "key": "gone/lone"},
        {"action": "noncurrent", "bucket": "lk", "version_id": free_vid, "key": "v/free"}]
    assert dry.as_dict()["dry_run"] is True

    real = LifecycleDaemon(store).run(at)
    assert (real.expired, real.noncurrent, real.markers, real.aborted, real.failed) == counts
    assert "planned" not in real.as_dict()
