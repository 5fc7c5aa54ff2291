"""Multipart uploads: upload records, part records, and completion without copying.

Each part is its own blob. Completing an upload writes one object record whose segments
are the chosen parts' blobs, in order, and drops the part records; parts that were
uploaded but not chosen lose their last reference and are freed. Aborting frees every
part. A part uploaded twice replaces the earlier one (whose blob is freed).

An upload remembers its bucket's generation (`bucket_gen`); parts and completion re-check
the `BucketRef` they were authorised against inside their transaction, and deleting a
bucket aborts its uploads, so nothing lands in a bucket re-created meanwhile.

The bucket owner pays for what is stored in its bucket, whoever sends it (as with S3, and
as with PutObject): an upload records its bucket's owner (`bucket_owner`), pending parts'
sizes count in that account's stored bytes (catalog.usage.charge, refused past its quota
when a part is recorded), and completion refunds the parts and charges the object to the
bucket owner like any put, so its objects and bytes quotas are checked at commit (refused:
nothing changes, the upload stays pending). Uploads recorded before `bucket_owner` charged
their parts to the account that started them (`owner`), and are refunded to it.

A pending upload also counts as one of the bucket owner's objects (refused past its objects
quota when it is created; `counted` in its record), refunded when it completes or is
aborted: its parts are catalog records too, at most 10,000 of them (S3's part numbers), so
an account's objects limit bounds what its pending uploads hold. Completion refunds the
upload before the put charges the object, so an upload started within the limit completes
within it. Uploads recorded before `counted` were never charged an object and are not
refunded one.

Completion is idempotent for a client retrying after a lost answer: the upload record is
replaced by a small completion record {bucket, key, owner, bucket_gen, completed: {digest,
etag, mtime}} (`digest`: the part list as sent), indexed in `completions` by time. The same
part list again answers the object it made, as long as that object is still the key's
current one; a different list, or an object since overwritten or deleted, is NoSuchUpload,
as is every other use of a completed upload id. Completions older than COMPLETION_TTL_S
are dropped, a few at each completion. A part list may name a part number more than once
(a client that re-sent a part lists both): the part as last uploaded is used, once.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from storage import errors
from storage.catalog import (
    Bucket,
    BucketRef,
    Catalog,
    Record,
    Txn,
    bucket_name,
    object_key,
    part_key,
)
from storage.objects import ObjectStore, WriteCondition
from storage.records.blobrefs import BlobRecord
from storage.records.usage import Usage

__all__ = ["COMPLETION_TTL_S", "MIN_PART_SIZE", "UploadStore"]

MIN_PART_SIZE = 5 * 1024 * 1024
# the upload index key is bucket \0 key, cut to fit LMDB's key limit, \0 upload id;
# listings re-sort by the full key, so the cut only widens the scan
INDEX_KEY_BYTES = 440
ID_TIME_DIGITS = 14  # hex digits of an upload id's initiation (microseconds): to the year 4253
# part numbers a part key can hold (four bytes, big-endian); no part exists outside them
PART_KEY_NUMBERS = range(2**32)
# how long a completed upload answers a repeated CompleteMultipartUpload
COMPLETION_TTL_S = 24 * 3600
# expired completion records dropped per completion (more are made than this never)
COMPLETIONS_PRUNED_PER_WRITE = 8


def completion_key(at: float, upload_id: str) -> bytes:
    return struct.pack(">Q", int(at)) + upload_id.encode()


def parts_digest(chosen: list[tuple[int, str]]) -> str:
    """The identity of a CompleteMultipartUpload part list, as sent."""
    return hashlib.sha256(repr([(n, e.strip('"')) for n, e in chosen]).encode()).hexdigest()


def new_upload_id(now: float) -> tuple[str, float]:
    """(an upload id, the initiation time it names): the microseconds since the epoch in
    ID_TIME_DIGITS hex digits, a dot, then 18 random bytes. So a key's uploads sort by id
    as they sort by initiation, S3's two orders for ListMultipartUploads, and an
    upload-id-marker still names a place once its upload is gone (a client that aborts
    each page of uploads before it asks for the next one)."""
    micros = int(now * 1_000_000)
    return f"{micros:0{ID_TIME_DIGITS}x}.{secrets.token_urlsafe(18)}", micros / 1_000_000


def id_place(key: str, upload_id: str) -> tuple[bytes, float, str] | None:
    """The place (key, initiated, upload id) an upload id of new_upload_id's form names in
    the listing order of `key`'s uploads; None for any other string (ids made before it)."""
    stamp, dot, _ = upload_id.partition(".")
    if not dot or len(stamp) != ID_TIME_DIGITS or stamp.strip("0123456789abcdef"):
        return None
    return key.encode(), int(stamp, 16) / 1_000_000, upload_id


def upload_index_key(bucket: str, key: str, upload_id: str) -> bytes:
    return object_key(bucket, key)[:INDEX_KEY_BYTES] + b"\0" + upload_id.encode()


def charged_to(upload: Record) -> str:
    """The account an upload's pending parts are charged to (see the module docstring)."""
    return str(upload.get("bucket_owner") or upload["owner"])


class UploadStore:
    def __init__(self, catalog: Catalog, objects: ObjectStore) -> None:
        self.catalog = catalog
        self.objects = objects

    def create(self, bucket: Bucket, key: str, owner: str, fields: dict[str, Any]) -> Record:
        upload_id, initiated = new_upload_id(time.time())
        name = bucket_name(bucket)
        record = {**fields, "v": 1, "upload_id": upload_id, "bucket": name, "key": key,
                  "owner": owner, "initiated": initiated}

        def op(txn: Txn) -> Record:
            bucket_record = self.catalog.buckets.check(txn, bucket)
            record["bucket_gen"] = bucket_record.generation
            record["bucket_owner"] = bucket_record.owner
            record["counted"] = True
            self.catalog.usage.charge(txn, bucket_record.owner, 1, 0)
            self.catalog.put(txn, "uploads", upload_id.encode(), record)
            self.catalog.put(txn, "upkeys", upload_index_key(name, key, upload_id), 1)
            return record

        return self.catalog.write(op)

    def get(self, bucket: Bucket, key: str, upload_id: str, txn: Txn | None = None) -> Record:
        """The upload record; a ref's bucket is checked too (NoSuchBucket), and an upload
        made in an earlier bucket of the same name is NoSuchUpload."""
        if txn is None:
            with self.catalog.read() as t:
                return self.get(bucket, key, upload_id, t)
        if isinstance(bucket, BucketRef):
            self.catalog.buckets.check(txn, bucket)
        record = self.catalog.get(txn, "uploads", upload_id.encode())
        if (record is None or "completed" in record
                or record["bucket"] != bucket_name(bucket) or record["key"] != key):
            raise errors.NoSuchUpload(upload_id)
        if (isinstance(bucket, BucketRef) and bucket.generation is not None
                and record.get("bucket_gen", bucket.generation) != bucket.generation):
            raise errors.NoSuchUpload(upload_id)
        return record

    def check_room(self, bucket: Bucket, key: str, upload_id: str, number: int, size: int) -> None:
        """Raise QuotaExceeded now if a part of `size` bytes would be refused at commit."""
        with self.catalog.read() as txn:
            upload = self.get(bucket, key, upload_id, txn)
            old = self.catalog.get(txn, "parts", part_key(upload_id, number))
            self.catalog.usage.check_room(charged_to(upload), 0, size - (old["size"] if old else 0), txn)

    def put_part(self, bucket: Bucket, key: str, upload_id: str, part: Record,
                 blobs: dict[str, BlobRecord] | None = None) -> list[str]:
        """Record a part (its blob is durable already); returns freed blob ids."""
        if part["number"] not in PART_KEY_NUMBERS:
            raise errors.InvalidPart(part["number"])
        part = {**part, "v": 1, "mtime": time.time()}

        def op(txn: Txn) -> list[str]:
            upload = self.get(bucket, key, upload_id, txn)
            pkey = part_key(upload_id, part["number"])
            old = self.catalog.get(txn, "parts", pkey)
            self.catalog.usage.charge(txn, charged_to(upload), 0, part["size"] - (old["size"] if old else 0))
            self.catalog.blobrefs.ref(txn, [part["blob"]], blobs)
            self.catalog.put(txn, "parts", pkey, part)
            return self.catalog.blobrefs.unref(txn, [old["blob"]] if old else [])

        return self.catalog.write(op)

    def parts(self, upload_id: str, after: int = 0) -> list[Record]:
        first = max(after + 1, PART_KEY_NUMBERS.start)
        if first not in PART_KEY_NUMBERS:
            return []
        with self.catalog.read() as txn:
            return [p for _, p in self.catalog.scan(
                txn, "parts", start=part_key(upload_id, first), prefix=upload_id.encode() + b"\0")]

    def iter_uploads(self, bucket: Bucket, prefix: str = "", key_marker: str = "",
                     upload_id_marker: str = "", page: int = 1000) -> Iterator[Record]:
        """list_uploads' uploads, read `page` at a time (each page a read transaction of its
        own): a caller that stops early reads little, and none holds a snapshot long."""
        after: tuple[bytes, float, str] | None = None
        while True:
            batch = self.list_uploads(bucket, prefix, key_marker, upload_id_marker, limit=page, after=after)
            yield from batch
            if len(batch) < page:
                return
            # the next page starts after the last one's place, which stays put even if that
            # upload is completed or aborted meanwhile (a marker naming it would not)
            key_marker, upload_id_marker, after = batch[-1]["key"], "", _place(batch[-1])

    def list_uploads(self, bucket: Bucket, prefix: str = "", key_marker: str = "",
                     upload_id_marker: str = "", limit: int | None = None,
                     after: tuple[bytes, float, str] | None = None) -> list[Record]:
        """Pending uploads of keys with `prefix`, ordered by key then initiation, after the
        (key_marker, upload_id_marker) position as S3 defines it; at most `limit` of them,
        read a page's worth from the index (the next page starts at the last one's key and
        upload id). The index orders by key cut to INDEX_KEY_BYTES, then upload id: uploads
        whose cut keys are equal form a group, sorted when it is complete. `after`: only
        uploads placed after this (key, initiated, upload id) place (iter_uploads' pages)."""
        base = bucket_name(bucket).encode() + b"\0"
        start = (base + max(key_marker, prefix).encode())[:INDEX_KEY_BYTES]
        out: list[Record] = []
        group: list[Record] = []
        group_key: bytes | None = None
        with self.catalog.read() as txn:
            for raw, _ in self.catalog.scan(txn, "upkeys", start=start,
                                            prefix=(base + prefix.encode())[:INDEX_KEY_BYTES]):
                cut = raw[:raw.rindex(b"\0")]
                if cut != group_key:
                    out += _after_marker(group, key_marker, upload_id_marker, after)
                    if limit is not None and len(out) >= limit:
                        return out[:limit]
                    group, group_key = [], cut
                record = self.catalog.get(txn, "uploads", raw.rsplit(b"\0", 1)[1])
                if record is not None and record["key"].startswith(prefix):
                    group.append(record)
        out += _after_marker(group, key_marker, upload_id_marker, after)
        return out if limit is None else out[:limit]

    def _parts_in(self, txn: Txn, upload_id: str) -> list[Record]:
        return [p for _, p in self.catalog.scan(txn, "parts", prefix=upload_id.encode() + b"\0")]

    def _refund(self, txn: Txn, upload: Record, parts: list[Record]) -> None:
        """Give back what the pending upload was charged: its parts' bytes, and its object."""
        self.catalog.usage.charge(txn, charged_to(upload), -_objects_of(upload),
                                  -sum(p["size"] for p in parts), check=False)

    def _drop(self, txn: Txn, upload: Record, refund: bool = True, parts: list[Record] | None = None) -> list[str]:
        """Remove the upload and its parts (`parts`: all of them, when the caller has them)."""
        upload_id = upload["upload_id"]
        parts = self._parts_in(txn, upload_id) if parts is None else parts
        for part in parts:
            self.catalog.delete(txn, "parts", part_key(upload_id, part["number"]))
        if refund:
            self._refund(txn, upload, parts)
        self.catalog.delete(txn, "uploads", upload_id.encode())
        self.catalog.delete(txn, "upkeys", upload_index_key(upload["bucket"], upload["key"], upload_id))
        return self.catalog.blobrefs.unref(txn, [p["blob"] for p in parts])

    def abort(self, bucket: Bucket, key: str, upload_id: str) -> list[str]:
        def op(txn: Txn) -> list[str]:
            return self._drop(txn, self.get(bucket, key, upload_id, txn))

        return self.catalog.write(op)

    def abort_all(self, bucket: Bucket) -> list[str]:
        """Drop every pending upload of a bucket (used when the bucket is deleted)."""
        prefix = bucket_name(bucket).encode() + b"\0"

        def op(txn: Txn) -> list[str]:
            self.catalog.buckets.check(txn, bucket)
            freed: list[str] = []
            uploads = [self.catalog.get(txn, "uploads", raw.rsplit(b"\0", 1)[1])
                       for raw, _ in self.catalog.scan(txn, "upkeys", prefix=prefix)]
            for upload in uploads:
                if upload is not None:
                    freed += self._drop(txn, upload)
            return freed

        return self.catalog.write(op)

    def complete(self, bucket: Bucket, key: str, upload_id: str, chosen: list[tuple[int, str]],
                 build: Callable[[Record, list[Record]], Record],
                 condition: WriteCondition | None = None) -> tuple[Record, list[str]]:
        """Turn the chosen (number, etag) parts into the object, without copying bytes.

        `build(upload, parts)` makes the object record (ETag, checksums) from the part
        records; it runs inside the transaction and must not do I/O. Numbers must not
        descend; a number listed more than once is the part as last uploaded, whose ETag
        must be among those listed for it. With `condition`, the key's current object must
        satisfy it at commit. Repeating a completion answers the record it made.
        """
        digest = parts_digest(chosen)

        def op(txn: Txn) -> tuple[Record, list[str]]:
            done = self.catalog.get(txn, "uploads", upload_id.encode())
            if done is not None and "completed" in done:
                return self._completed_object(txn, bucket, key, upload_id, done, digest), []
            upload = self.get(bucket, key, upload_id, txn)
            parts = self._chosen_parts(txn, upload_id, chosen)
            for part in parts[:-1]:
                if part["size"] < MIN_PART_SIZE:
                    raise errors.EntityTooSmall(part["number"], part["size"], MIN_PART_SIZE)
            record = build(upload, parts)
            record = {**record, "v": 1, "key": key,
                      "segments": [[p["blob"], p["size"]] for p in parts],
                      "part_checksums": [[p["number"], p.get("checksums") or {}] for p in parts]}
            # the parts' bytes become the object's: refunded first, so that the put charges
            # and checks the bucket owner for the net change (a refusal rolls back both)
            pending = self._parts_in(txn, upload_id)
            self._refund(txn, upload, pending)
            freed = self.objects._put_in(txn, bucket, key, record, condition=condition)
            freed += self._drop(txn, upload, refund=False, parts=pending)
            self._remember(txn, upload, record, digest)
            self._prune_completions(txn, time.time())
            return record, freed

        return self.catalog.write(op)

    def _chosen_parts(self, txn: Txn, upload_id: str, chosen: list[tuple[int, str]]) -> list[Record]:
        numbers = [n for n, _ in chosen]
        if any(b < a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise errors.InvalidPartOrder()
        listed: dict[int, set[str]] = {}
        for number, etag in chosen:
            if number not in PART_KEY_NUMBERS:
                raise errors.InvalidPart(number)
            listed.setdefault(number, set()).add(etag.strip('"'))
        parts = []
        for number, etags in listed.items():
            part = self.catalog.get(txn, "parts", part_key(upload_id, number))
            if part is None or part["etag"] not in etags:
                raise errors.InvalidPart(number)
            parts.append(part)
        return parts

    def _remember(self, txn: Txn, upload: Record, record: Record, digest: str) -> None:
        """Replace the upload record by its completion record (see the module docstring)."""
        upload_id = upload["upload_id"]
        self.catalog.put(txn, "uploads", upload_id.encode(), {
            "v": 1, "upload_id": upload_id, "bucket": upload["bucket"], "key": upload["key"],
            "owner": upload["owner"], "bucket_gen": upload.get("bucket_gen"),
            "completed": {"digest": digest, "etag": record.get("etag"), "mtime": record.get("mtime")}})
        self.catalog.put(txn, "completions", completion_key(time.time(), upload_id), 1)

    def _completed_object(self, txn: Txn, bucket: Bucket, key: str, upload_id: str,
                          done: Record, digest: str) -> Record:
        """The object a completed upload made, for a repeat of the same completion."""
        if isinstance(bucket, BucketRef):
            self.catalog.buckets.check(txn, bucket)
        if (done["bucket"] != bucket_name(bucket) or done["key"] != key
                or (isinstance(bucket, BucketRef) and bucket.generation is not None
                    and (done.get("bucket_gen") or bucket.generation) != bucket.generation)):
            raise errors.NoSuchUpload(upload_id)
        completed = done["completed"]
        current = self.objects.read_in(txn, bucket_name(bucket), key)
        if (completed["digest"] != digest or current is None
                or current.get("etag") != completed["etag"] or current.get("mtime") != completed["mtime"]):
            raise errors.NoSuchUpload(upload_id)
        return current

    def _prune_completions(self, txn: Txn, now: float) -> None:
        """Drop a few completion records older than COMPLETION_TTL_S (they hold no blobs)."""
        cutoff = struct.pack(">Q", int(now - COMPLETION_TTL_S))
        expired: list[bytes] = []
        for raw, _ in self.catalog.scan(txn, "completions"):
            if raw >= cutoff or len(expired) >= COMPLETIONS_PRUNED_PER_WRITE:
                break
            expired.append(raw)
        for raw in expired:
            self.catalog.delete(txn, "completions", raw)
            self.catalog.delete(txn, "uploads", raw[8:])

    def usage_totals(self, txn: Txn) -> dict[str, dict[str, int]]:
        """{account charged: {objects, bytes}} of pending uploads and their parts (a usage
        rebuild)."""
        totals: dict[str, dict[str, int]] = {}
        for _, upload in self.catalog.scan(txn, "uploads"):
            if "completed" in upload:
                continue
            used = totals.setdefault(charged_to(upload), {"objects": 0, "bytes": 0})
            used["objects"] += _objects_of(upload)
            used["bytes"] += sum(p["size"] for p in self._parts_in(txn, upload["upload_id"]))
        return totals

    def rebuild_usage(self) -> None:
        """Count every account's usage from the object and part records, in one write."""

        def op(txn: Txn) -> None:
            totals = self.objects.usage_totals(txn)
            for owner, used in self.usage_totals(txn).items():
                mine = totals.setdefault(owner, {"objects": 0, "bytes": 0})
                mine["objects"] += used["objects"]
                mine["bytes"] += used["bytes"]
            self.catalog.usage.replace(txn, {o: Usage(t["objects"], t["bytes"]) for o, t in totals.items()})

        self.catalog.write(op)


def _objects_of(upload: Record) -> int:
    """The objects a pending upload is charged (none for one recorded before `counted`)."""
    return 1 if upload.get("counted") else 0


def _place(upload: Record) -> tuple[bytes, float, str]:
    return upload["key"].encode(), upload["initiated"], upload["upload_id"]


def _after_marker(group: list[Record], key_marker: str, upload_id_marker: str,
                  after: tuple[bytes, float, str] | None = None) -> list[Record]:
    """One index group's uploads in S3's order (key, then initiation), those after the
    (key_marker, upload_id_marker) position only (or after the place `after`)."""
    group.sort(key=_place)
    if after is not None:
        return [r for r in group if _place(r) > after]
    if not key_marker:
        return group
    marker = key_marker.encode()
    later = [r for r in group if r["key"].encode() > marker]
    if not upload_id_marker:
        return later
    # the marker upload's place: its own while it is pending, else the one its id names
    # (it may have been aborted or completed since the page that named it); an id of no
    # known form keeps S3's rule, the uploads whose ids sort after it
    place = next((_place(r) for r in group if r["key"] == key_marker and r["upload_id"] == upload_id_marker),
                 None) or id_place(key_marker, upload_id_marker)
    same = [r for r in group if r["key"] == key_marker
            and (_place(r) > place if place is not None else r["upload_id"] > upload_id_marker)]
    return same + later  # the group is in order, and `same` sorts before `later`
