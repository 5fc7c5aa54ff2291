"""Object records: put, get, delete, copy and list over the catalog.

An object record (msgpack map, ``v`` = 1)::

    {v, key, size, etag, mtime, segments: [[blob_id, size], ...], sha256: bytes | None,
     headers: {content-type, content-encoding, ...}, meta: {name: value},
     checksums: {ALGORITHM: base64}, checksum_type: "FULL_OBJECT" | "COMPOSITE" | None,
     parts: [part sizes] | None, replicas: [node ids], acl: canned ACL name (absent: private),
     part_checksums: [[part number, {ALGORITHM: base64}], ...] (multipart objects completed since it was added),
     tags: {key: value} (S3 object tags; absent or empty: none),
     lock_mode, lock_until, legal_hold (Object Lock, storage.objectlock; absent: none)}

An object is the concatenation of its segments. A simple PUT has one segment; a
completed multipart upload has one per part (parts are never copied); CopyObject makes a
second record that references the same blobs (reference counts keep them alive).

Every method takes its bucket as a name or a `BucketRef`; the S3 layer passes the ref it
authorised, and each transaction re-checks it (catalog.buckets.check), so a bucket deleted
and re-created by another account mid-request is NoSuchBucket, never the other's data.
Writes charge the bucket owner's usage (catalog.usage.charge) in the same transaction: a new
key +1 object, bytes by the change in size; growth past the owner's quota is QuotaExceeded.

In a bucket with a versioning status, writes and deletes keep the versions they replace
and add delete markers (storage.versions; `objects` stays the index of current records).
In a bucket with Object Lock (storage.objectlock) a new version takes the bucket's default
retention unless its write set one; Object Lock fields on a write to a bucket without it
are ObjectLockNotEnabled, and a copy never inherits its source's.

Conditional writes (S3's If-None-Match: * and If-Match on PUT and CompleteMultipartUpload)
pass a `WriteCondition`; it is checked against the key's current record inside the write's
transaction, so the check and the write are one step: of two racing create-only PUTs of
one key exactly one commits, the other is PreconditionFailed and its blob is freed.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from storage import errors, objectlock
from storage.catalog import Bucket, BucketRef, Catalog, Record, Txn, bucket_name, object_key, unpack
from storage.engine import ReadTxn
from storage.records.blobrefs import BlobRecord
from storage.versions import VERSION_FIELDS, VersionListing, Versions, is_marker, marker_group

__all__ = ["Listing", "ObjectStore", "WriteCondition"]


@dataclass(frozen=True)
class WriteCondition:
    """What a conditional write requires of the key's current object: none at all
    (`absent`, If-None-Match: *), or one whose ETag is in `etags` ("*": any object)."""

    absent: bool = False
    etags: tuple[str, ...] = ()

    def check(self, bucket: str, key: str, current: Record | None) -> None:
        if self.absent and current is not None:
            raise errors.PreconditionFailed(bucket, key, "If-None-Match")
        if self.etags:
            if current is None:
                raise errors.NoSuchKey(bucket, key)
            if "*" not in self.etags and current["etag"] not in self.etags:
                raise errors.PreconditionFailed(bucket, key, "If-Match")


@dataclass
class Listing:
    contents: list[Record] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_marker: str | None = None  # last key or common prefix returned


# LMDB keys are at most 511 bytes; bucket + NUL + a 1,024-byte key can exceed that. Keys
# whose catalog key is longer than MAX_DIRECT share one "overflow" entry stored under their
# first MAX_DIRECT bytes + 0xFF (a byte UTF-8 never contains), whose value maps each full
# key to its record. Every key with those first bytes is in that entry, and the entry sorts
# exactly where its keys belong, so listings stay in binary order.
MAX_DIRECT = 480


def seek_key(full: bytes) -> bytes:
    return full if len(full) <= MAX_DIRECT else full[:MAX_DIRECT] + b"\xff"


def growth(old: Record | None, size: int) -> tuple[int, int]:
    """(objects, bytes) an account's usage grows by when (bucket, key), now `old`, holds `size` bytes."""
    return (0, size - old["size"]) if old else (1, size)


def segment_blobs(record: Record | None) -> list[str]:
    return [] if record is None else [seg[0] for seg in record["segments"]]


class ObjectStore:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.versions = Versions(catalog, self._read, self._write, self._scan_current)

    def _reading(self, txn: ReadTxn | None) -> Any:
        """The caller's read transaction (several reads, one snapshot), or a new one."""
        return contextlib.nullcontext(txn) if txn is not None else self.catalog.read()

    def get(self, bucket: Bucket, key: str, txn: ReadTxn | None = None) -> Record:
        name = bucket_name(bucket)
        with self._reading(txn) as t:
            self.catalog.buckets.check(t, bucket)
            record = self._read(t, name, key)
        if record is None:
            raise errors.NoSuchKey(name, key)
        return record

    def check_condition(self, bucket: Bucket, key: str, condition: WriteCondition,
                        txn: ReadTxn | None = None) -> None:
        """Raise now if `condition` does not hold (a PUT checks it before reading the body;
        the check at commit is the one that decides)."""
        with self._reading(txn) as t:
            self.catalog.buckets.check(t, bucket)
            condition.check(bucket_name(bucket), key, self._read(t, bucket_name(bucket), key))

    def check_room(self, bucket: Bucket, key: str, size: int, txn: ReadTxn | None = None) -> None:
        """Raise QuotaExceeded now if putting `size` bytes at (bucket, key) would be refused
        at commit (a PUT checks this from its Content-Length before reading the body)."""
        with self._reading(txn) as t:
            owner = self.catalog.buckets.check(t, bucket).owner
            self.catalog.usage.check_room(owner, *growth(self.replaced_in(t, bucket, key), size), txn=t)

    def replaced_in(self, txn: Any, bucket: Bucket, key: str) -> Record | None:
        """The stored record a write of (bucket, key) would replace, for counting usage: the
        current one, except in a versioned bucket, where only a current null version is
        replaced (a suspended write; a noncurrent null one is not looked for)."""
        current = self._read(txn, bucket_name(bucket), key)
        if current is None:
            return None
        versioning = self.catalog.buckets.check(txn, bucket).versioning
        if versioning is None:
            return current
        return current if versioning == "Suspended" and "vid" not in current else None

    def read_in(self, txn: Txn, bucket: str, key: str) -> Record | None:
        """The record of (bucket, key) inside a caller's read transaction, or None."""
        return self._read(txn, bucket, key)

    def _read(self, txn: Txn, bucket: str, key: str) -> Record | None:
        full = object_key(bucket, key)
        value = self.catalog.get(txn, "objects", seek_key(full))
        if value is None or len(full) <= MAX_DIRECT:
            return value
        return value["overflow"].get(key)

    def _write(self, txn: Txn, bucket: str, key: str, record: Record | None) -> None:
        """Store (or with None, remove) the record of (bucket, key)."""
        full = object_key(bucket, key)
        slot = seek_key(full)
        if len(full) <= MAX_DIRECT:
            if record is None:
                self.catalog.delete(txn, "objects", slot)
            else:
                self.catalog.put(txn, "objects", slot, record)
            return
        group = self.catalog.get(txn, "objects", slot) or {"v": 1, "overflow": {}}
        if record is None:
            group["overflow"].pop(key, None)
        else:
            group["overflow"][key] = record
        if group["overflow"]:
            self.catalog.put(txn, "objects", slot, group)
        else:
            self.catalog.delete(txn, "objects", slot)

    def scan(self, txn: Txn, bucket: str, prefix: str = "", start: bytes = b"") -> Iterator[tuple[str, Record]]:
        """(key, record) for keys with `prefix` whose catalog key is >= `start`, in binary order."""
        base = bucket.encode() + b"\0"
        pfx = base + prefix.encode()
        start = max(start, pfx)
        return self._expand(txn.scan("objects", seek_key(start)), base, pfx, start)

    def _scan_current(self, txn: Txn, bucket: str, prefix: str, start: bytes,
                      delimiter: str) -> Iterator[tuple[str, Record]]:
        return self._scan_groups(txn, bucket, prefix, start, delimiter) if delimiter else self.scan(
            txn, bucket, prefix, start)

    def _scan_groups(self, txn: Txn, bucket: str, prefix: str, start: bytes,
                     delimiter: str) -> Iterator[tuple[str, Record]]:
        """`scan`, but past a key holding `delimiter` after the prefix the engine jumps over
        the rest of its group (a few keys of a group may still come from an overflow entry:
        the caller skips them)."""
        base = bucket.encode() + b"\0"
        pfx = base + prefix.encode()
        start = max(start, pfx)
        # an overflow entry's stem is its keys' first MAX_DIRECT bytes: a longer prefix
        # may not be a prefix of the stem, so the engine is not told it
        bound = pfx if len(pfx) <= MAX_DIRECT else b""
        slots = txn.scan_skip("objects", seek_key(start), bound, delimiter.encode(), len(pfx))
        return self._expand(slots, base, pfx, start)

    @staticmethod
    def _expand(slots: Iterator[tuple[bytes, bytes]], base: bytes, pfx: bytes,
                start: bytes) -> Iterator[tuple[str, Record]]:
        """(key, record) of catalog slots from `start` on while they hold keys with `pfx`,
        overflow entries expanded in binary order."""
        for slot, raw in slots:
            value = unpack(raw)
            if slot.endswith(b"\xff") and "overflow" in value:
                stem = slot[:-1]
                if not (stem.startswith(pfx) or pfx.startswith(stem)):
                    return
                for key in sorted(value["overflow"], key=lambda k: k.encode()):
                    full = base + key.encode()
                    if full.startswith(pfx) and full >= start:
                        yield key, value["overflow"][key]
            else:
                if not slot.startswith(pfx):
                    return
                if slot >= start:
                    yield slot[len(base):].decode(), value

    def put(self, bucket: Bucket, key: str, record: Record, blobs: dict[str, BlobRecord] | None = None) -> list[str]:
        """Store `record` under (bucket, key); returns blob ids freed by the overwrite.
        `blobs` carries the metadata (size, sha256, blocks, nodes) of newly written blobs."""
        return self.put_async(bucket, key, record, blobs=blobs).result()  # type: ignore[no-any-return]

    def put_async(self, bucket: Bucket, key: str, record: Record, journal: dict[str, bytes] | None = None,
                  blobs: dict[str, BlobRecord] | None = None, condition: WriteCondition | None = None) -> Any:
        """Queue the put; `journal` holds the bytes of small blobs placed without fsync.
        With `condition`, the put happens only if it holds at commit (else PreconditionFailed
        or NoSuchKey, and nothing is written). In a versioned bucket the caller's `record`
        gets its version fields (`vid`, `vsk`) at commit."""
        given, record = record, {**record, "v": 1, "key": key}

        def op(txn: Txn) -> list[str]:
            freed = self._put_in(txn, bucket, key, record, blobs, condition=condition)
            for name in VERSION_FIELDS:
                given.pop(name, None)
                if name in record:
                    given[name] = record[name]
            for blob_id, data in (journal or {}).items():
                self.catalog.journal.put(txn, blob_id, data)
            return freed

        return self.catalog.submit(op)

    def put_in(self, txn: Txn, bucket: Bucket, key: str, record: Record,
               blobs: dict[str, BlobRecord] | None = None, *, owner: str | None = None,
               generation: str | None = None, enforce_quota: bool = False) -> list[str]:
        """Put inside a caller's catalog write (with other records, atomically). With
        `owner` (and `generation`) the bucket must still be that owner's (that one).
        The owner's usage is charged; its quota is enforced only with `enforce_quota`
        (job outputs: the jobs package limits those and decides what a refused task does)."""
        if owner is not None:
            bucket = BucketRef(bucket_name(bucket), owner, generation)
        return self._put_in(txn, bucket, key, {**record, "v": 1, "key": key}, blobs,
                            enforce_quota=enforce_quota)

    def _put_in(self, txn: Txn, bucket: Bucket, key: str, record: Record,
                blobs: dict[str, BlobRecord] | None = None, enforce_quota: bool = True,
                condition: WriteCondition | None = None) -> list[str]:
        name = bucket_name(bucket)
        if self.catalog.engine.remote:
            txn.prefetch(self._put_reads(bucket, key, record))
        bucket_record = self.catalog.buckets.check(txn, bucket)
        owner = bucket_record.owner
        old = self._read(txn, name, key)
        if condition is not None:
            condition.check(name, key, old)
        for field_name in VERSION_FIELDS:  # a copy of a version is a new version
            record.pop(field_name, None)
        if bucket_record.lock is not None:
            objectlock.apply_default(bucket_record.lock, record, self.versions.clock())
        elif "lock_mode" in record or "legal_hold" in record:
            raise errors.ObjectLockNotEnabled(name)
        if bucket_record.versioning is not None:
            return self.versions.put_in(txn, bucket_record, key, record, old, blobs, enforce_quota)
        self.catalog.usage.charge(txn, owner, *growth(old, record["size"]), check=enforce_quota)
        self.catalog.blobrefs.ref(txn, segment_blobs(record), blobs)
        self._write(txn, name, key, record)
        return self.catalog.blobrefs.unref(txn, segment_blobs(old))

    def _put_reads(self, bucket: Bucket, key: str, record: Record) -> list[tuple[str, bytes]]:
        """What a put reads first (for one round trip with a remote engine): the bucket,
        the key's record, the owner's usage (when the ref names the owner), the new blobs."""
        name, catalog = bucket_name(bucket), self.catalog
        keys = [catalog.buckets.engine_key(name), ("objects", seek_key(object_key(name, key)))]
        if isinstance(bucket, BucketRef):
            keys.append(catalog.usage.engine_key(bucket.owner))
        return keys + [catalog.blobrefs.engine_key(blob_id) for blob_id in segment_blobs(record)]

    def delete(self, bucket: Bucket, key: str) -> list[str]:
        """Delete (idempotent; in a versioned bucket, add a delete marker); returns freed blob ids."""
        return self.delete_version(bucket, key)[0]

    def delete_version(self, bucket: Bucket, key: str, vid: str | None = None,
                       bypass_governance: bool = False) -> tuple[list[str], Record | None]:
        """Delete the key (`vid` None) or exactly its version `vid`; returns (freed blob
        ids, what the delete did: the delete marker it added, the version it removed, or
        None when there was nothing to delete in an unversioned bucket). A version under
        Object Lock is ObjectLocked (`bypass_governance` lifts GOVERNANCE retention)."""
        freed, results = self.delete_each(bucket, [(key, vid)], {key} if bypass_governance else frozenset())
        if isinstance(results[0], errors.ObjectLocked):
            raise results[0]
        return freed, results[0]

    def delete_if(self, bucket: Bucket, key: str, vid: str | None,
                  still: Callable[[Record | None, list[Record]], bool],
                  at: float | None = None) -> tuple[list[str], Record | None] | None:
        """`delete_version`, made only if `still(the key's current record, its noncurrent
        versions and markers newest first)` holds inside the deleting transaction (the
        lifecycle daemon: what it read has not changed since); None when it does not. `at`:
        the time of a delete marker it adds, when not now."""
        name = bucket_name(bucket)

        def op(txn: Txn) -> tuple[list[str], Record | None] | None:
            self.catalog.buckets.check(txn, bucket)
            if not still(self._read(txn, name, key), self.versions.of_key(txn, name, key)):
                return None
            return self._delete_in(txn, bucket, key, vid, at=at)

        return self.catalog.write(op)

    def delete_each(self, bucket: Bucket, items: list[tuple[str, str | None]],
                    bypass_governance: AbstractSet[str] = frozenset(),
                    ) -> tuple[list[str], list[Record | errors.ObjectLocked | None]]:
        """`delete_version` of each (key, version id or None), in one transaction; returns
        (freed blob ids, what each delete did, or the ObjectLocked error of a version
        Object Lock kept: the others are deleted). `bypass_governance`: the keys whose
        GOVERNANCE retention the caller may bypass."""

        def op(txn: Txn) -> tuple[list[str], list[Record | errors.ObjectLocked | None]]:
            freed: list[str] = []
            results: list[Record | errors.ObjectLocked | None] = []
            for key, vid in items:
                try:
                    gone, result = self._delete_in(txn, bucket, key, vid, key in bypass_governance)
                except errors.ObjectLocked as exc:  # raised before that delete wrote anything
                    results.append(exc)
                    continue
                freed += gone
                results.append(result)
            return freed, results

        return self.catalog.write(op)

    def _delete_in(self, txn: Txn, bucket: Bucket, key: str, vid: str | None = None,
                   bypass_governance: bool = False, at: float | None = None) -> tuple[list[str], Record | None]:
        bucket_record = self.catalog.buckets.check(txn, bucket)
        if vid is not None:
            return self.versions.delete_version_in(txn, bucket_record, key, vid, bypass_governance)
        old = self._read(txn, bucket_name(bucket), key)
        if bucket_record.versioning is not None:
            return self.versions.delete_in(txn, bucket_record, key, old, at)
        if old is None:
            return [], None
        self.catalog.usage.charge(txn, bucket_record.owner, -1, -old["size"])
        self._write(txn, bucket_name(bucket), key, None)
        return self.catalog.blobrefs.unref(txn, segment_blobs(old)), None

    def delete_many(self, bucket: Bucket, keys: list[str]) -> list[str]:
        return self.delete_each(bucket, [(key, None) for key in keys])[0] if keys else []

    def get_version(self, bucket: Bucket, key: str, vid: str, txn: ReadTxn | None = None) -> Record:
        """The key's version `vid`: NoSuchVersion if there is none, DeleteMarker if it is one."""
        name = bucket_name(bucket)
        with self._reading(txn) as t:
            self.catalog.buckets.check(t, bucket)
            record, _ = self.versions.find(t, name, key, vid)
        if record is None:
            raise errors.NoSuchVersion(name, key, vid)
        if is_marker(record):
            raise errors.DeleteMarker(name, key, vid, record["mtime"], latest=False)
        return record

    def latest_marker(self, bucket: Bucket, key: str, txn: ReadTxn | None = None) -> Record | None:
        """The delete marker that is the key's latest version, if any (a GET's 404 says so)."""
        with self._reading(txn) as t:
            return self.versions.latest_marker(t, bucket_name(bucket), key)

    def has_versions(self, bucket: Bucket) -> bool:
        """Whether the bucket holds any noncurrent version or delete marker."""
        with self.catalog.read() as txn:
            self.catalog.buckets.check(txn, bucket)
            return any(True for _ in txn.scan("versions", prefix=bucket_name(bucket).encode() + b"\0"))

    def list_versions(self, bucket: Bucket, prefix: str = "", delimiter: str = "", key_marker: str = "",
                      version_marker: str = "", max_keys: int = 1000) -> VersionListing:
        """One page of every version and delete marker (ListObjectVersions)."""
        with self.catalog.read() as txn:
            self.catalog.buckets.check(txn, bucket)
            return self.versions.list(txn, bucket_name(bucket), prefix, delimiter, key_marker,
                                      version_marker, max_keys)

    def copy(self, src_bucket: Bucket, src_key: str, dst_bucket: Bucket, dst_key: str,
             update: dict[str, Any], expect_etag: str | None = None,
             src_version: str | None = None) -> tuple[Record, list[str]]:
        """Link the source's blobs (its version `src_version`, if given) under a new key (no
        bytes copied). Both buckets are checked in the copy's transaction. `update`'s
        fields replace the source's; a `tags` of None leaves the copy without tags."""
        src_name = bucket_name(src_bucket)

        def op(txn: Txn) -> tuple[Record, list[str]]:
            self.catalog.buckets.check(txn, src_bucket)
            if src_version is not None:
                src, _ = self.versions.find(txn, src_name, src_key, src_version)
                if src is None or is_marker(src):
                    raise errors.NoSuchVersion(src_name, src_key, src_version)
            else:
                src = self._read(txn, src_name, src_key)
            if src is None:
                raise errors.NoSuchKey(src_name, src_key)
            if expect_etag is not None and src["etag"] != expect_etag:
                raise errors.SourceChanged(src_name, src_key)
            kept = {k: v for k, v in src.items() if k not in objectlock.LOCK_FIELDS}
            record = {**kept, **update, "key": dst_key}
            if record.get("tags", ()) is None:
                del record["tags"]
            return record, self._put_in(txn, dst_bucket, dst_key, record)

        return self.catalog.write(op)

    def acls(self, bucket: str, key: str) -> tuple[str, str, str | None] | None:
        """(bucket owner, bucket ACL, object ACL) read together, "private" where none is
        stored, None for the object ACL of a missing object (or of no key); None when there
        is no such bucket."""
        with self.catalog.read() as txn:
            record = self.catalog.buckets.find(bucket, txn)
            if record is None:
                return None
            obj = self._read(txn, bucket, key) if key else None
            return (record.owner, record.acl or "private",
                    obj.get("acl", "private") if obj is not None else None)

    def set_acl(self, bucket: Bucket, key: str, acl: str) -> None:
        """Replace the object's ACL (the S3 layer checked it)."""
        self._set_field(bucket, key, "acl", acl)

    def set_tags(self, bucket: Bucket, key: str, tags: dict[str, str], vid: str | None = None) -> Record:
        """Replace the tags of the object (or of its version `vid`; {}: none; the S3 layer
        checked them); returns the record as written."""
        return self._set_field(bucket, key, "tags", tags or None, vid)

    def _set_field(self, bucket: Bucket, key: str, attr: str, value: Any, vid: str | None = None) -> Record:
        """Set (None: drop) one field of the key's current record (or of its version
        `vid`), against the bucket ref; returns the record as written."""

        def change(record: Record) -> Record:
            kept = {k: v for k, v in record.items() if k != attr}
            return kept if value is None else {**kept, attr: value}

        return self.update_version(bucket, key, vid, change)

    def update_version(self, bucket: Bucket, key: str, vid: str | None,
                       change: Any, needs_lock: bool = False) -> Record:
        """Rewrite the current record (`vid` None) or the version `vid` as `change(record)`
        returns it, in one transaction (storage.versions `update_in`); `needs_lock`: the
        bucket must have Object Lock (ObjectLockNotEnabled). Returns the new record."""

        def op(txn: Txn) -> Record:
            bucket_record = self.catalog.buckets.check(txn, bucket)
            if needs_lock and bucket_record.lock is None:
                raise errors.ObjectLockNotEnabled(bucket_record.name)
            return self.versions.update_in(txn, bucket_record, key, vid, change)

        return self.catalog.write(op)  # type: ignore[no-any-return]

    def set_retention(self, bucket: Bucket, key: str, vid: str | None, mode: str | None,
                      until: float | None, bypass_governance: bool = False) -> Record:
        """Set (mode None: remove) the retention of the object or its version `vid`, as
        storage.objectlock allows (ObjectLocked otherwise)."""
        change = objectlock.with_retention(bucket_name(bucket), mode, until, bypass_governance,
                                           self.versions.clock())
        return self.update_version(bucket, key, vid, change, needs_lock=True)

    def set_legal_hold(self, bucket: Bucket, key: str, vid: str | None, on: bool) -> Record:
        """Turn the legal hold of the object or its version `vid` on or off."""
        return self.update_version(bucket, key, vid, objectlock.with_legal_hold(on), needs_lock=True)

    def usage_totals(self, txn: Txn) -> dict[str, dict[str, int]]:
        """{owner: {objects, bytes}} counted from the object records (a usage rebuild)."""
        owners = {r.name: r.owner for r in self.catalog.buckets.scan(txn)}
        totals: dict[str, dict[str, int]] = {}
        for bucket, record in itertools.chain(self._records_in(txn), self.versions.records_in(txn)):
            owner = owners.get(bucket)
            if owner is not None and not is_marker(record):
                used = totals.setdefault(owner, {"objects": 0, "bytes": 0})
                used["objects"] += 1
                used["bytes"] += record["size"]
        return totals

    def all_records(self) -> Iterator[Record]:
        """Every object record of every bucket (overflow groups expanded)."""
        with self.catalog.read() as txn:
            for _, record in self._records_in(txn):
                yield record

    def _records_in(self, txn: Txn) -> Iterator[tuple[str, Record]]:
        """(bucket name, record) of every object, overflow groups expanded."""
        for slot, value in self.catalog.scan(txn, "objects"):
            bucket = slot.split(b"\0", 1)[0].decode()
            if slot.endswith(b"\xff") and "overflow" in value:
                for record in value["overflow"].values():
                    yield bucket, record
            else:
                yield bucket, value

    def list(self, bucket_or_ref: Bucket, prefix: str = "", delimiter: str = "", start_after: str = "",
             max_keys: int = 1000) -> Listing:
        """One page of keys and common prefixes after `start_after`, in binary order."""
        out = Listing()
        bucket = bucket_name(bucket_or_ref)
        with self.catalog.read() as txn:
            self.catalog.buckets.check(txn, bucket_or_ref)
            base = bucket.encode() + b"\0"
            start = base + start_after.encode() + b"\0" if start_after else b""
            group_after = marker_group(start_after, prefix, delimiter)
            if group_after is not None:
                start = base + group_after.encode() + b"\xff"
            entries = (self._scan_groups(txn, bucket, prefix, start, delimiter) if delimiter
                       else self.scan(txn, bucket, prefix, start))
            group: str | None = None
            for key, record in entries:
                if group is not None and key.startswith(group):
                    continue
                if len(out.contents) + len(out.common_prefixes) >= max_keys:
                    out.truncated = True
                    break
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    group = key[: cut + len(delimiter)]
                    out.common_prefixes.append(group)
                    out.next_marker = group
                    continue
                out.contents.append(record)
                out.next_marker = key
        return out
