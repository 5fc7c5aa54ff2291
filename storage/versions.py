"""Object versions (S3 versioning): noncurrent versions and delete markers.

`objects` (storage.objects) stays the index of current objects, so a GET, a listing and
the jobs of any bucket read exactly what they read without versioning. A bucket whose
record has a `versioning` status ("Enabled" or "Suspended") keeps what an overwrite or a
delete replaces in a second table::

    versions   bucket \\0 key \\0 vsk  -> a noncurrent version's object record, or a delete marker

`vsk`, a version's sort key, is 12 bytes: 2**64-1 less the write's time in nanoseconds
(big-endian, so newest first) and 4 random bytes; a new version's key is always newer
than the key's newest so far, whatever the clock does. A version id is its vsk in hex (24
characters). The null version (written while versioning is suspended, or before it was
enabled) has no `vid` and reads as "null". Fields versioning adds to an object record:
`vid` (absent: null), `vsk` (absent on records written before versioning: derived from
`mtime`); a delete marker is {v, key, vid?, vsk, mtime, marker: True, size: 0, segments: []}.

Invariant: a key's latest version is its `objects` record when it has one; when it has
none, its newest `versions` entry (if any) is a delete marker. Every write keeps it: an
overwrite moves the current record into `versions` (Suspended: the null version is
replaced instead, wherever it is); a plain DELETE moves it and adds a marker; removing a
version by id that leaves no current record promotes the newest remaining version back
into `objects`, unless that is a marker.

A noncurrent version keeps its blob references (storage.records.blobrefs), so GC and scrub
keep its copies; usage counts it as an object with its bytes (markers count nothing).
Removing a version unrefs its blobs, as a delete does; a version under Object Lock
(storage.objectlock) cannot be removed: `delete_version_in` raises ObjectLocked before it
writes anything. `update_in` rewrites one version's record in place (current or
noncurrent), for settings that belong to a version (retention, legal hold, tags). Keys whose catalog key would pass
LMDB's bound share one overflow entry per DIRECT_MAX-byte stem, {key: [records, newest
first]}, as storage.objects does for current records.
"""

from __future__ import annotations

import itertools
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from storage import errors, objectlock
from storage.catalog import BucketRecord, Catalog, Record, Txn, object_key, unpack

__all__ = ["NULL", "VersionListing", "Versions", "is_marker", "parse_version_id", "version_id"]

TABLE = "versions"
NULL = "null"
VSK_BYTES = 12
DIRECT_MAX = 480 - 1 - VSK_BYTES  # storage.objects.MAX_DIRECT less the separator and the sort key
VERSION_FIELDS = ("vid", "vsk", "marker")
_NEWEST = 2**64 - 1

ReadCurrent = Callable[[Any, str, str], "Record | None"]
WriteCurrent = Callable[[Txn, str, str, "Record | None"], None]
ScanCurrent = Callable[[Any, str, str, bytes, str], Iterator[tuple[str, Record]]]  # (txn, bucket, prefix, start, delimiter)


def new_sort_key(newest: bytes | None = None) -> bytes:
    """The sort key of a version written now, newer than `newest` (the key's newest so far)."""
    head = _NEWEST - time.time_ns()
    if newest is not None:
        head = min(head, struct.unpack(">Q", newest[:8])[0] - 1)
    return struct.pack(">Q", head) + secrets.token_bytes(4)


def sort_key(record: Record) -> bytes:
    vsk = record.get("vsk")
    if vsk is not None:
        return bytes(vsk)
    return struct.pack(">Q", _NEWEST - int(record["mtime"] * 1e9)) + bytes(4)


def version_id(record: Record) -> str:
    return record.get("vid") or NULL


def is_marker(record: Record) -> bool:
    return bool(record.get("marker"))


def parse_version_id(text: str) -> bytes | None:
    """The sort key a version id names (None: the null version); InvalidVersionId if it
    cannot name one."""
    if text == NULL:
        return None
    try:
        vsk = bytes.fromhex(text)
    except ValueError:
        vsk = b""
    if len(vsk) != VSK_BYTES or vsk.hex() != text:
        raise errors.InvalidVersionId(text)
    return vsk


def _blobs(records: list[Record]) -> list[str]:
    return [seg[0] for r in records for seg in r["segments"]]


@dataclass
class VersionListing:
    entries: list[tuple[Record, bool]] = field(default_factory=list)  # (version or marker, is latest)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_key_marker: str | None = None
    next_version_marker: str | None = None


class Versions:
    """The versioned side of ObjectStore's writes and reads, inside its transactions;
    `read_current`, `write_current` and `scan_current` are ObjectStore's own access to
    `objects`."""

    def __init__(self, catalog: Catalog, read_current: ReadCurrent, write_current: WriteCurrent,
                 scan_current: ScanCurrent, clock: Callable[[], float] = time.time) -> None:
        self.catalog = catalog
        self.clock = clock  # Object Lock's "now" (tests move it)
        self.read_current = read_current
        self.write_current = write_current
        self.scan_current = scan_current

    # -- the table --------------------------------------------------------------------

    @staticmethod
    def _slot(bucket: str, key: str, vsk: bytes) -> tuple[bytes, bool]:
        full = object_key(bucket, key)
        if len(full) <= DIRECT_MAX:
            return full + b"\0" + vsk, False
        return full[:DIRECT_MAX] + b"\xff", True

    def of_key(self, txn: Any, bucket: str, key: str, first_only: bool = False) -> list[Record]:
        """The key's noncurrent versions and delete markers, newest first."""
        full = object_key(bucket, key)
        if len(full) <= DIRECT_MAX:
            scan = txn.scan(TABLE, prefix=full + b"\0")
            return [unpack(raw) for _, raw in (itertools.islice(scan, 1) if first_only else scan)]
        group = self.catalog.get(txn, TABLE, full[:DIRECT_MAX] + b"\xff")
        return list(group["overflow"].get(key, [])) if group else []

    def _add(self, txn: Txn, bucket: str, key: str, record: Record) -> None:
        vsk = sort_key(record)
        record = {**record, "vsk": vsk}
        slot, grouped = self._slot(bucket, key, vsk)
        if not grouped:
            self.catalog.put(txn, TABLE, slot, record)
            return
        group = self.catalog.get(txn, TABLE, slot) or {"v": 1, "overflow": {}}
        group["overflow"][key] = sorted([*group["overflow"].get(key, []), record], key=sort_key)
        self.catalog.put(txn, TABLE, slot, group)

    def _remove(self, txn: Txn, bucket: str, key: str, vsk: bytes) -> None:
        slot, grouped = self._slot(bucket, key, vsk)
        if not grouped:
            self.catalog.delete(txn, TABLE, slot)
            return
        group = self.catalog.get(txn, TABLE, slot)
        if group is None:
            return
        kept = [r for r in group["overflow"].get(key, []) if sort_key(r) != vsk]
        if kept:
            group["overflow"][key] = kept
        else:
            group["overflow"].pop(key, None)
        if group["overflow"]:
            self.catalog.put(txn, TABLE, slot, group)
        else:
            self.catalog.delete(txn, TABLE, slot)

    # -- reads ------------------------------------------------------------------------

    def find(self, txn: Any, bucket: str, key: str, vid: str) -> tuple[Record | None, Record | None]:
        """(the version `vid` of the key or None, the key's current record or None)."""
        vsk = parse_version_id(vid)
        current = self.read_current(txn, bucket, key)
        if current is not None and version_id(current) == vid:
            return current, current
        full = object_key(bucket, key)
        if vsk is not None and len(full) <= DIRECT_MAX:
            return self.catalog.get(txn, TABLE, full + b"\0" + vsk), current
        return next((r for r in self.of_key(txn, bucket, key) if version_id(r) == vid), None), current

    def latest_marker(self, txn: Any, bucket: str, key: str) -> Record | None:
        """The delete marker that is the key's latest version, if it has no current record."""
        if self.read_current(txn, bucket, key) is not None:
            return None
        newest = self.of_key(txn, bucket, key, first_only=True)
        return newest[0] if newest and is_marker(newest[0]) else None

    def _newest(self, txn: Any, bucket: str, key: str, current: Record | None) -> bytes | None:
        keys = [sort_key(r) for r in self.of_key(txn, bucket, key, first_only=True)]
        if current is not None:
            keys.append(sort_key(current))
        return min(keys) if keys else None

    # -- writes -----------------------------------------------------------------------

    def _drop_null(self, txn: Txn, bucket: str, key: str) -> list[Record]:
        """Remove the key's noncurrent null version (a suspended bucket's write replaces it)."""
        nulls = [r for r in self.of_key(txn, bucket, key) if version_id(r) == NULL]
        for record in nulls:
            self._remove(txn, bucket, key, sort_key(record))
        return nulls

    def _retire(self, txn: Txn, bucket: BucketRecord, key: str, current: Record | None) -> list[Record]:
        """Make way for a new latest version: the current record becomes noncurrent (or,
        suspended, the null version goes); returns the records dropped."""
        dropped: list[Record] = []
        if current is not None:
            if bucket.versioning == "Suspended" and version_id(current) == NULL:
                dropped.append(current)
            else:
                self._add(txn, bucket.name, key, current)
        if bucket.versioning == "Suspended":
            dropped += self._drop_null(txn, bucket.name, key)
        return dropped

    def _charge_dropped(self, txn: Txn, owner: str, dropped: list[Record], objects: int = 0,
                        nbytes: int = 0, check: bool = False) -> None:
        kept = [r for r in dropped if not is_marker(r)]
        self.catalog.usage.charge(txn, owner, objects - len(kept), nbytes - sum(r["size"] for r in kept),
                                  check=check)

    def put_in(self, txn: Txn, bucket: BucketRecord, key: str, record: Record, current: Record | None,
               blobs: Any, enforce_quota: bool) -> list[str]:
        """Store `record` as the key's new latest version (its `vid` and `vsk` are set in
        place); returns the blob ids freed."""
        vsk = new_sort_key(self._newest(txn, bucket.name, key, current))
        record["vsk"] = vsk
        if bucket.versioning == "Enabled":
            record["vid"] = vsk.hex()
        dropped = self._retire(txn, bucket, key, current)
        self._charge_dropped(txn, bucket.owner, dropped, 1, record["size"], check=enforce_quota)
        self.catalog.blobrefs.ref(txn, _blobs([record]), blobs)
        self.write_current(txn, bucket.name, key, record)
        return self.catalog.blobrefs.unref(txn, _blobs(dropped))  # type: ignore[no-any-return]

    def delete_in(self, txn: Txn, bucket: BucketRecord, key: str, current: Record | None,
                  at: float | None = None) -> tuple[list[str], Record]:
        """A plain DELETE: a delete marker becomes the latest version; returns (blob ids
        freed, the marker). `at`: the marker's time, when not now (a lifecycle pass run as
        of a later time)."""
        vsk = new_sort_key(self._newest(txn, bucket.name, key, current))
        marker: Record = {"v": 1, "key": key, "vsk": vsk, "mtime": time.time() if at is None else at, "marker": True,
                          "size": 0, "segments": []}
        if bucket.versioning == "Enabled":
            marker["vid"] = vsk.hex()
        dropped = self._retire(txn, bucket, key, current)
        if current is not None:
            self.write_current(txn, bucket.name, key, None)
        self._add(txn, bucket.name, key, marker)
        self._charge_dropped(txn, bucket.owner, dropped)
        return self.catalog.blobrefs.unref(txn, _blobs(dropped)), marker

    def delete_version_in(self, txn: Txn, bucket: BucketRecord, key: str, vid: str,
                          bypass_governance: bool = False) -> tuple[list[str], Record | None]:
        """Remove exactly the version `vid` (any bucket: "null" is an unversioned bucket's
        object); returns (blob ids freed, the version removed or None if there was none).
        In a bucket with Object Lock, a retained or held version is ObjectLocked (nothing
        written); `bypass_governance` lifts GOVERNANCE retention."""
        record, current = self.find(txn, bucket.name, key, vid)
        if record is None:
            return [], None
        if bucket.lock is not None:
            objectlock.check_delete(record, bucket.name, vid, bypass_governance, self.clock())
        if record is current:
            self.write_current(txn, bucket.name, key, None)
            current = None
        else:
            self._remove(txn, bucket.name, key, sort_key(record))
        if current is None:
            newest = self.of_key(txn, bucket.name, key, first_only=True)
            if newest and not is_marker(newest[0]):
                self._remove(txn, bucket.name, key, sort_key(newest[0]))
                self.write_current(txn, bucket.name, key, newest[0])
        self._charge_dropped(txn, bucket.owner, [record])
        return self.catalog.blobrefs.unref(txn, _blobs([record])), record

    def update_in(self, txn: Txn, bucket: BucketRecord, key: str, vid: str | None,
                  change: Callable[[Record], Record]) -> Record:
        """Rewrite one version's record in place: the current one (`vid` None) or the
        version `vid`, current or not, as `change(record)` returns it (`change` may raise
        to refuse; it must keep `vid` and `vsk`). Returns the new record. NoSuchKey or
        NoSuchVersion when there is none; DeleteMarker when `vid` names a marker."""
        if vid is None:
            record = current = self.read_current(txn, bucket.name, key)
            if record is None:
                raise errors.NoSuchKey(bucket.name, key)
        else:
            record, current = self.find(txn, bucket.name, key, vid)
            if record is None:
                raise errors.NoSuchVersion(bucket.name, key, vid)
            if is_marker(record):
                raise errors.DeleteMarker(bucket.name, key, vid, record["mtime"], latest=False)
        new = change(record)
        if record is current:
            self.write_current(txn, bucket.name, key, new)
        else:
            self._remove(txn, bucket.name, key, sort_key(record))
            self._add(txn, bucket.name, key, new)
        return new

    # -- listing ----------------------------------------------------------------------

    def _scan(self, txn: Any, bucket: str, prefix: str, seek: bytes) -> Iterator[tuple[str, Record]]:
        """(key, record) of the `versions` entries with `prefix` from about `seek` on, in key
        order and newest first within a key (the caller filters keys before its marker)."""
        base = bucket.encode() + b"\0"
        pfx = base + prefix.encode()
        start = max(seek, pfx)
        if len(start) > DIRECT_MAX:
            # the overflow entry of its first DIRECT_MAX bytes: the key of exactly those
            # bytes sorts before `start`, and its own slots (before that entry) would end
            # the scan below as not under the prefix
            start = start[:DIRECT_MAX] + b"\xff"
        for slot, raw in txn.scan(TABLE, start):
            value = unpack(raw)
            if slot.endswith(b"\xff") and "overflow" in value:
                stem = slot[:-1]
                if not (stem.startswith(pfx) or pfx.startswith(stem)):
                    return
                for key in sorted(value["overflow"], key=lambda k: k.encode()):
                    if (base + key.encode()).startswith(pfx):
                        for record in value["overflow"][key]:
                            yield key, record
            else:
                if not slot.startswith(pfx):
                    return
                yield slot[len(base):-(VSK_BYTES + 1)].decode(), value

    def _keys(self, txn: Any, bucket: str, prefix: str, seek: bytes,
              delimiter: str) -> Iterator[tuple[str, list[Record]]]:
        """(key, its versions newest first, the latest first) for every key with `prefix`
        that has a current record or a noncurrent version, in binary key order (with a
        delimiter, the current records of a group past its first key may be skipped)."""
        current = self.scan_current(txn, bucket, prefix, seek, delimiter)
        older = ((k, [r for _, r in group]) for k, group in
                 itertools.groupby(self._scan(txn, bucket, prefix, seek), key=lambda kr: kr[0]))
        c, n = next(current, None), next(older, None)
        while c is not None or n is not None:
            if n is None or (c is not None and c[0].encode() < n[0].encode()):
                assert c is not None
                yield c[0], [c[1]]
                c = next(current, None)
            elif c is None or n[0].encode() < c[0].encode():
                yield n
                n = next(older, None)
            else:
                yield c[0], [c[1], *n[1]]
                c, n = next(current, None), next(older, None)

    def list(self, txn: Any, bucket: str, prefix: str = "", delimiter: str = "", key_marker: str = "",
             version_marker: str = "", max_keys: int = 1000) -> VersionListing:
        """One page of ListObjectVersions: versions and markers after (key_marker,
        version_marker), keys in binary order, newest first within a key."""
        out = VersionListing()
        if max_keys <= 0:
            return out
        base = bucket.encode() + b"\0"
        marker = key_marker.encode()
        skip_group = marker_group(key_marker, prefix, delimiter)
        group: str | None = None
        count = 0
        for key, records in self._keys(txn, bucket, prefix, base + marker if key_marker else b"", delimiter):
            kb = key.encode()
            if key_marker and (kb < marker or (kb == marker and not version_marker)):
                continue
            if skip_group is not None and key.startswith(skip_group):
                continue
            if group is not None and key.startswith(group):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                if count >= max_keys:
                    out.truncated = True
                    break
                group = key[: cut + len(delimiter)]
                out.common_prefixes.append(group)
                out.next_key_marker, out.next_version_marker = group, None
                count += 1
                continue
            latest = records[0]
            if key_marker and kb == marker:
                records = _after(records, version_marker)
            for record in records:
                if count >= max_keys:
                    out.truncated = True
                    return out
                out.entries.append((record, record is latest))
                out.next_key_marker, out.next_version_marker = key, version_id(record)
                count += 1
        return out

    def records_in(self, txn: Any) -> Iterator[tuple[str, Record]]:
        """(bucket name, record) of every noncurrent version and delete marker."""
        for slot, raw in txn.scan(TABLE):
            value = unpack(raw)
            bucket = slot.split(b"\0", 1)[0].decode()
            if slot.endswith(b"\xff") and "overflow" in value:
                for records in value["overflow"].values():
                    for record in records:
                        yield bucket, record
            else:
                yield bucket, value


def marker_group(marker: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix a listing's marker (start-after, key-marker) falls in, if any: the
    whole group sorts at or before the marker, so the listing goes on past all of it, as
    S3's does (a marker "a/b" with delimiter "/" lists neither "a/" nor "a/c"). A key equal
    to the prefix, like "folder/" under prefix "folder/", is a key, not a group."""
    if not (marker and delimiter and marker.startswith(prefix)):
        return None
    cut = marker.find(delimiter, len(prefix))
    return None if cut < 0 else marker[:cut + len(delimiter)]


def _after(records: list[Record], version_marker: str) -> list[Record]:
    """The versions of a key listed after `version_marker` (newest first)."""
    for i, record in enumerate(records):
        if version_id(record) == version_marker:
            return records[i + 1:]
    try:
        vsk = parse_version_id(version_marker)
    except errors.InvalidVersionId:
        return []
    return [] if vsk is None else [r for r in records if sort_key(r) > vsk]
