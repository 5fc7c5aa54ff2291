"""S3 Lifecycle: a bucket's rules, as the S3 layer parsed them, and the daemon that
enforces them.

    bucketconf  bucket \\0 "lifecycle" -> {"v": 1, "rules": [Rule.to_json(), ...]}

The S3 layer validates a LifecycleConfiguration document and stores `encode(rules)`; this
module never sees XML. A rule's `Filter` remembers the form it was written in (`form`), so
GET answers the document's shape, not only its meaning.

When a rule is due (S3's rounding): an age of N days is reached at the first midnight UTC
after the start time plus N days (`due_after`): an object written 2026-01-15 10:30 with
Days 3 expires 2026-01-19 00:00. The start time is the object's mtime (Expiration), the
time its successor was written (NoncurrentVersionExpiration: the mtime of the next newer
version or delete marker), or the upload's initiation (AbortIncompleteMultipartUpload).
A Date is due from that midnight on.

A pass (`LifecycleDaemon.run(at)`), per bucket whose record lists "lifecycle", with the
rules that are Enabled, key by key (pages of PAGE keys, each a read transaction of its own):

    current object, a matching Expiration due      -> delete (versioned: a delete marker;
                                                      suspended: the null version replaced)
    noncurrent version (or marker), a matching      -> removed, except the
      NoncurrentVersionExpiration due                  NewerNoncurrentVersions newest ones
    delete marker that is the key's only version,   -> removed
      a matching ExpiredObjectDeleteMarker (or an
      Expiration Days due for the marker's age)
    pending upload of a matching prefix, due        -> aborted (its parts freed)

A key whose current object was expired is left for the next pass (its new noncurrent
version waits for its own days). Every change goes through ObjectStore / UploadStore,
so usage, blob references and GC stay right, and is conditional (`ObjectStore.delete_if`):
what the pass read must still be there, unchanged, in the deleting transaction, or
nothing happens. A storage error on one object (a locked version, say) is logged and
counted, and the pass goes on. At most `max_actions` changes per pass; the rest waits.

The clock is injectable (`now`): tests and `manta admin lifecycle run` run a pass as of
any moment. A delete marker an expiration adds carries the pass's time, so that the version
it makes noncurrent is noncurrent from then, as it would be had the pass run then.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from storage import errors, objectlock
from storage.catalog import BucketRecord, BucketRef, Record
from storage.daemons import Daemon
from storage.store import Store
from storage.versions import is_marker, sort_key, version_id

__all__ = ["KIND", "Filter", "LifecycleDaemon", "LifecycleReport", "Rule", "decode", "due_after", "encode"]

log = logging.getLogger("manta.storage.lifecycle")

KIND = "lifecycle"
DAY_S = 86400
PAGE = 1000
PLANNED_MAX = 1000  # changes a dry run lists (its counts cover them all)
FILTER_FORMS = ("legacy", "none", "prefix", "tag", "gt", "lt", "and")


def due_after(start: float, days: int) -> float:
    """When an age of `days` days counted from `start` is reached: the first midnight UTC
    after start + days (S3 rounds up to the next day)."""
    return (int((start + days * DAY_S) // DAY_S) + 1) * DAY_S


@dataclass(frozen=True)
class Filter:
    """Which objects a rule applies to: all of prefix, tags, sizes (None: no bound).
    `form` is how the document said it: "legacy" (the rule's own Prefix), "none" (an empty
    Filter), "prefix", "tag", "gt", "lt" (a Filter with that one member) or "and"."""

    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    size_gt: int | None = None
    size_lt: int | None = None
    form: str = "prefix"

    def matches(self, key: str, record: Record | None = None) -> bool:
        """Whether the object `key` (its record: tags and size; a delete marker has
        neither, so a rule with tags or sizes never applies to one) is under the rule."""
        if not key.startswith(self.prefix):
            return False
        if not (self.tags or self.size_gt is not None or self.size_lt is not None):
            return True
        if record is None or is_marker(record):
            return False
        tags = record.get("tags") or {}
        if any(tags.get(k) != v for k, v in self.tags):
            return False
        size = record.get("size", 0)
        return ((self.size_gt is None or size > self.size_gt)
                and (self.size_lt is None or size < self.size_lt))

    @property
    def prefix_only(self) -> bool:
        return not self.tags and self.size_gt is None and self.size_lt is None


@dataclass(frozen=True)
class Rule:
    id: str
    enabled: bool
    filter: Filter = field(default_factory=Filter)
    expiration_days: int | None = None
    expiration_date: float | None = None  # a midnight UTC, seconds since the epoch
    expired_marker: bool | None = None  # ExpiredObjectDeleteMarker (None: not given)
    noncurrent_days: int | None = None
    newer_noncurrent: int | None = None  # NewerNoncurrentVersions kept
    abort_days: int | None = None  # AbortIncompleteMultipartUpload DaysAfterInitiation

    def expires(self, key: str, record: Record, at: float) -> bool:
        """Whether the Expiration of this rule applies to the current object now."""
        if not self.filter.matches(key, record):
            return False
        if self.expiration_date is not None:
            return at >= self.expiration_date
        return self.expiration_days is not None and at >= due_after(record["mtime"], self.expiration_days)

    def expires_noncurrent(self, key: str, record: Record, since: float, newer: int, at: float) -> bool:
        """Whether the version `record`, noncurrent since `since` with `newer` noncurrent
        versions newer than it, is to be removed now."""
        return (self.noncurrent_days is not None and newer >= (self.newer_noncurrent or 0)
                and self.filter.matches(key, record) and at >= due_after(since, self.noncurrent_days))

    def removes_marker(self, key: str, marker: Record, at: float) -> bool:
        """Whether the delete marker, the key's only version, is to be removed now."""
        if not self.filter.matches(key, marker):
            return False
        if self.expired_marker:
            return True
        return self.expiration_days is not None and at >= due_after(marker["mtime"], self.expiration_days)

    def aborts(self, upload: Record, at: float) -> bool:
        return (self.abort_days is not None and upload["key"].startswith(self.filter.prefix)
                and at >= due_after(upload["initiated"], self.abort_days))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "enabled": self.enabled, "form": self.filter.form,
                               "prefix": self.filter.prefix}
        if self.filter.tags:
            out["tags"] = [list(t) for t in self.filter.tags]
        for name in ("size_gt", "size_lt"):
            if getattr(self.filter, name) is not None:
                out[name] = getattr(self.filter, name)
        for name in ("expiration_days", "expiration_date", "expired_marker", "noncurrent_days",
                     "newer_noncurrent", "abort_days"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Rule:
        flt = Filter(d.get("prefix", ""), tuple((k, v) for k, v in d.get("tags", ())), d.get("size_gt"),
                     d.get("size_lt"), d.get("form", "prefix"))
        return cls(d["id"], d["enabled"], flt, d.get("expiration_days"), d.get("expiration_date"),
                   d.get("expired_marker"), d.get("noncurrent_days"), d.get("newer_noncurrent"),
                   d.get("abort_days"))


def encode(rules: list[Rule]) -> bytes:
    return json.dumps({"v": 1, "rules": [r.to_json() for r in rules]}, separators=(",", ":")).encode()


def decode(raw: bytes) -> list[Rule]:
    return [Rule.from_json(d) for d in json.loads(raw)["rules"]]


@dataclass
class LifecycleReport:
    at: float
    buckets: int = 0  # buckets with enabled rules looked at
    expired: int = 0  # current objects expired
    noncurrent: int = 0  # noncurrent versions (and noncurrent markers) removed
    markers: int = 0  # expired object delete markers removed
    aborted: int = 0  # incomplete multipart uploads aborted
    failed: int = 0  # objects a storage error kept (locked, say); logged
    truncated: bool = False  # max_actions reached: the rest waits for the next pass
    dry_run: bool = False  # nothing changed: the counts and `planned` say what a pass would do
    planned: list[dict[str, str]] = field(default_factory=list)  # a dry run's first PLANNED_MAX changes

    @property
    def actions(self) -> int:
        return self.expired + self.noncurrent + self.markers + self.aborted

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at, "buckets": self.buckets, "expired": self.expired, "noncurrent": self.noncurrent,
            "markers": self.markers, "aborted": self.aborted, "failed": self.failed, "truncated": self.truncated}
        if self.dry_run:
            out.update(dry_run=True, planned=self.planned)
        return out


class _Full(Exception):
    """max_actions reached."""


class LifecycleDaemon(Daemon):
    """Enforces every bucket's lifecycle rules every `interval_s`, as of `now()`."""

    def __init__(self, store: Store, interval_s: float | None = None, now: Callable[[], float] = time.time,
                 max_actions: int = 100_000) -> None:
        super().__init__()
        self.store = store
        self.objects = store.objects
        self.interval_s = interval_s if interval_s is not None else store.config.lifecycle_interval_s
        self.now = now
        self.max_actions = max_actions

    def run_once(self) -> int:
        report = self.run(self.now())
        if report.actions or report.failed:
            log.info("lifecycle: %s", report.as_dict())
        return report.actions

    def configured(self, only: str | None = None) -> list[tuple[BucketRecord, list[Rule]]]:
        """The buckets with a lifecycle configuration (`only`: that bucket, if it has one),
        with their enabled rules; buckets without one cost a look at their record."""
        found = []
        with self.store.catalog.read() as txn:
            records = self.store.catalog.buckets.scan(txn) if only is None else filter(
                None, [self.store.catalog.buckets.find(only, txn)])
            for record in records:
                raw = self.store.catalog.bucketconf.of(record, KIND, txn)
                if raw is not None:
                    rules = [r for r in decode(raw) if r.enabled]
                    if rules:
                        found.append((record, rules))
        return found

    def run(self, at: float, bucket: str | None = None, dry_run: bool = False) -> LifecycleReport:
        """One pass as of the time `at` (over `bucket` only, if given). A dry run changes
        nothing and reports what the pass would do; a version Object Lock keeps now counts
        as failed, as in a real pass. (Only a real pass checks, key by key inside its
        transaction, that nothing changed since the listing was read.)"""
        report = LifecycleReport(at, dry_run=dry_run)
        for record, rules in self.configured(bucket):
            report.buckets += 1
            try:
                self._bucket(record, rules, at, report)
            except _Full:
                report.truncated = True
                break
            except errors.NoSuchBucket:
                continue  # deleted (or re-created) meanwhile
        return report

    # -- one bucket ---------------------------------------------------------------------------

    def _bucket(self, bucket: BucketRecord, rules: list[Rule], at: float, report: LifecycleReport) -> None:
        ref = bucket.ref()
        object_rules = [r for r in rules if r.expiration_days is not None or r.expiration_date is not None
                        or r.noncurrent_days is not None or r.expired_marker]
        if object_rules:
            prefix = os.path.commonprefix([r.filter.prefix for r in object_rules])
            for key, versions in self._keys(ref, bucket.versioning is not None, prefix):
                self._key(ref, key, versions, object_rules, at, report)
        abort_rules = [r for r in rules if r.abort_days is not None]
        if abort_rules:
            prefix = os.path.commonprefix([r.filter.prefix for r in abort_rules])
            for upload in self.store.uploads.iter_uploads(ref, prefix, page=PAGE):
                if any(r.aborts(upload, at) for r in abort_rules):
                    self._act(report, "aborted", upload["key"], functools.partial(
                        self.store.uploads.abort, ref, upload["key"], upload["upload_id"]),
                        plan={"bucket": ref.name, "upload_id": upload["upload_id"]})

    def _keys(self, ref: BucketRef, versioned: bool, prefix: str) -> Iterator[tuple[str, list[Record]]]:
        """(key, its versions newest first; the first is the latest), a page at a time.
        Unversioned: the current record only."""
        if not versioned:
            after = ""
            while True:
                page = self.objects.list(ref, prefix, start_after=after, max_keys=PAGE)
                for record in page.contents:
                    yield record["key"], [record]
                if not page.truncated or page.next_marker is None:
                    return
                after = page.next_marker
        key_marker, version_marker = "", ""
        key: str | None = None
        versions: list[Record] = []
        while True:
            listing = self.objects.list_versions(ref, prefix, key_marker=key_marker,
                                                 version_marker=version_marker, max_keys=PAGE)
            for record, _latest in listing.entries:
                if record["key"] != key:
                    if key is not None:
                        yield key, versions
                    key, versions = record["key"], []
                versions.append(record)
            if not listing.truncated or listing.next_key_marker is None:
                break
            key_marker, version_marker = listing.next_key_marker, listing.next_version_marker or ""
        if key is not None:
            yield key, versions

    def _key(self, ref: BucketRef, key: str, versions: list[Record], rules: list[Rule], at: float,
             report: LifecycleReport) -> None:
        latest = versions[0]
        if not is_marker(latest) and any(r.expires(key, latest, at) for r in rules):
            self._act(report, "expired", key, lambda: self.objects.delete_if(  # a marker made as of `at`
                ref, key, None, lambda current, _older: current is not None and _same(current, latest), at),
                plan={"bucket": ref.name})
            return
        kept = [latest]
        for i, version in enumerate(versions[1:]):
            since = versions[i]["mtime"]  # written when its successor was
            if any(r.expires_noncurrent(key, version, since, i, at) for r in rules):
                done = self._act(report, "noncurrent", key, functools.partial(
                    self.objects.delete_if, ref, key, version_id(version), functools.partial(_noncurrent, version)),
                    plan={"bucket": ref.name, "version_id": version_id(version)}, locked=version)
                if done:
                    continue
            kept.append(version)
        if len(kept) == 1 and is_marker(latest) and any(r.removes_marker(key, latest, at) for r in rules):
            self._act(report, "markers", key, lambda: self.objects.delete_if(
                ref, key, version_id(latest), lambda current, older: current is None and len(older) == 1
                and _same(older[0], latest)), plan={"bucket": ref.name, "version_id": version_id(latest)})

    def _act(self, report: LifecycleReport, kind: str, key: str,
             change: Callable[[], tuple[list[str], Record | None] | list[str] | None],
             plan: dict[str, str], locked: Record | None = None) -> bool:
        """Make one change (counted under `kind` when it happened; its freed blobs freed).
        A dry run only counts it, and lists it (`plan`, with the key and `kind`), unless
        Object Lock keeps the version `locked` now."""
        if report.actions >= self.max_actions:
            raise _Full()
        if report.dry_run:
            if locked is not None:
                try:  # the check a real delete makes
                    objectlock.check_delete(locked, plan["bucket"], version_id(locked), False,
                                            self.objects.versions.clock())
                except errors.ObjectLocked:
                    report.failed += 1
                    return False
            if len(report.planned) < PLANNED_MAX:
                report.planned.append({"action": kind, **plan, "key": key})
            setattr(report, kind, getattr(report, kind) + 1)
            return True
        try:
            result = change()
        except errors.NoSuchBucket:
            raise
        except (errors.NoSuchUpload, errors.NoSuchKey, errors.NoSuchVersion):
            return False  # gone meanwhile
        except errors.StorageError as exc:
            report.failed += 1
            log.warning("lifecycle: %s: %s (skipped)", key, exc)
            return False
        if result is None:
            return False  # changed meanwhile
        freed = result if isinstance(result, list) else result[0]
        if freed:
            self.store.free(freed)
        setattr(report, kind, getattr(report, kind) + 1)
        return True


def _same(a: Record, b: Record) -> bool:
    return sort_key(a) == sort_key(b) and a.get("etag") == b.get("etag") and a["mtime"] == b["mtime"]


def _noncurrent(version: Record, current: Record | None, older: list[Record]) -> bool:
    """Whether `version` is still one of the key's noncurrent versions (not its latest)."""
    latest_is_older = current is None
    return any(_same(version, r) for r in (older[1:] if latest_is_older else older))
