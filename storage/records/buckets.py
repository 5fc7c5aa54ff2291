"""Buckets: who owns a name, which generation of it, its canned ACL, and which
configurations it has.

    buckets    bucket name   -> {v, name, owner, created, gen, acl?, conf?, versioning?}

A bucket record carries a random generation `gen` made at creation, so a name deleted
and created again (by the same or another account) is a different bucket. A request is
authorised against a `BucketRef(name, owner, generation)` and every write re-checks that
ref inside its transaction (`Buckets.check`): a bucket that changed hands or was
re-created meanwhile is NoSuchBucket. Buckets made before generations existed have no
`gen`; their `created` timestamp stands in for it (`BucketRecord.generation`). `acl` is
absent for a private bucket. `conf` lists the kinds of configuration the bucket has
(storage.records.bucketconf keeps them: CORS rules, tags...), so that a request reads a
configuration only when its bucket has one. `versioning` is S3's versioning status
("Enabled" or "Suspended"; absent: never enabled), kept here because every object write
reads the bucket record anyway (storage.versions). `lock` is present on a bucket with
Object Lock (storage.objectlock): {} or its default retention {mode, days | years}; such a
bucket's versioning stays Enabled (suspending it is InvalidBucketState), and a bucket
without it pays nothing on its object paths (the record in hand says so).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from storage import errors
from storage.engine import Engine, ReadTxn, WriteTxn
from storage.objectlock import LockConfig
from storage.records.codec import NO_EXTRA, decoded_once, extra_of, pack, unpack

__all__ = ["Bucket", "BucketRecord", "BucketRef", "Buckets", "bucket_name", "generation_of"]

TABLE = "buckets"
CONF_TABLE = "bucketconf"  # storage.records.bucketconf: bucket name \0 kind -> configuration
_KNOWN = frozenset(("v", "name", "owner", "created", "gen", "acl", "conf", "versioning", "lock"))
VERSIONING_STATES = ("Enabled", "Suspended")


@dataclass(frozen=True)
class BucketRef:
    """The bucket a request was authorised against. `generation` None accepts any
    generation of the owner's bucket of that name (the jobs bucket, which only its owner
    can ever hold)."""

    name: str
    owner: str
    generation: str | None = None


Bucket = str | BucketRef  # a bare name: whatever bucket has it (internal callers, tests)


def bucket_name(bucket: Bucket) -> str:
    return bucket.name if isinstance(bucket, BucketRef) else bucket


@dataclass(frozen=True, slots=True)
class BucketRecord:
    name: str
    owner: str
    created: float
    gen: str | None = None   # None: made before generations
    acl: str | None = None   # a canned ACL name; None: private
    extra: Mapping[str, Any] = NO_EXTRA
    conf: frozenset[str] = frozenset()  # kinds of configuration it has (records.bucketconf)
    versioning: str | None = None  # "Enabled", "Suspended"; None: never enabled
    lock: LockConfig | None = None  # Object Lock (storage.objectlock); None: not enabled

    @property
    def generation(self) -> str:
        """The generation; buckets made before generations use their creation time."""
        return self.gen or f"created:{self.created!r}"

    def ref(self) -> BucketRef:
        return BucketRef(self.name, self.owner, self.generation)


def generation_of(record: BucketRecord) -> str:
    return record.generation


def encode(record: BucketRecord) -> bytes:
    d: dict[str, Any] = {"v": 1, "name": record.name, "owner": record.owner, "created": record.created}
    if record.gen is not None:
        d["gen"] = record.gen
    if record.acl is not None:
        d["acl"] = record.acl
    if record.conf:
        d["conf"] = sorted(record.conf)
    if record.versioning is not None:
        d["versioning"] = record.versioning
    if record.lock is not None:
        d["lock"] = record.lock.encode()
    if record.extra:
        d.update(record.extra)
    return pack(d)


@decoded_once()
def decode(raw: bytes | memoryview) -> BucketRecord:
    d = unpack(raw)
    return BucketRecord(d["name"], d["owner"], d["created"], d.get("gen"), d.get("acl"), extra_of(d, _KNOWN),
                        frozenset(d.get("conf", ())), d.get("versioning"),
                        LockConfig.decode(d["lock"]) if "lock" in d else None)


class Buckets:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str, owner: str, acl: str | None = None, lock: bool = False) -> BucketRecord:
        """A new bucket; `acl` (a canned ACL name, absent: private) is stored as given;
        `lock`: with Object Lock (no default retention) and versioning Enabled."""

        def op(txn: WriteTxn) -> BucketRecord:
            existing = self.find(name, txn)
            if existing is not None:
                raise errors.BucketAlreadyExists(name, owned_by_you=existing.owner == owner)
            record = self.ensure_in(txn, name, owner)
            if acl is not None or lock:
                record = dataclasses.replace(record, acl=acl)
                if lock:
                    record = dataclasses.replace(record, versioning="Enabled", lock=LockConfig())
                txn.put(TABLE, name.encode(), encode(record))
            return record

        return self.engine.write(op)

    def set_acl(self, bucket: Bucket, acl: str) -> None:
        def op(txn: WriteTxn) -> None:
            r = self.check(txn, bucket)
            txn.put(TABLE, r.name.encode(), encode(dataclasses.replace(r, acl=acl)))

        self.engine.write(op)

    def set_versioning(self, bucket: Bucket, status: str) -> None:
        """Set the bucket's versioning status ("Enabled" or "Suspended")."""
        if status not in VERSIONING_STATES:
            raise ValueError(f"versioning status is one of {VERSIONING_STATES}: {status!r}")

        def op(txn: WriteTxn) -> None:
            r = self.check(txn, bucket)
            if r.lock is not None and status != "Enabled":
                raise errors.InvalidBucketState(r.name, "An Object Lock configuration is present on this bucket, "
                                                "so the versioning state cannot be changed.")
            txn.put(TABLE, r.name.encode(), encode(dataclasses.replace(r, versioning=status)))

        self.engine.write(op)

    def set_lock(self, bucket: Bucket, config: LockConfig) -> None:
        """Enable Object Lock with `config` (or replace its default retention); the bucket's
        versioning must be Enabled (InvalidBucketState). Object Lock is never disabled."""

        def op(txn: WriteTxn) -> None:
            r = self.check(txn, bucket)
            if r.versioning != "Enabled":
                raise errors.InvalidBucketState(r.name, "Versioning must be 'Enabled' on the bucket to apply a "
                                                "Object Lock configuration")
            txn.put(TABLE, r.name.encode(), encode(dataclasses.replace(r, lock=config)))

        self.engine.write(op)

    def ensure_in(self, txn: WriteTxn, name: str, owner: str) -> BucketRecord:
        """The bucket record of `name`, made for `owner` (with a new generation) if missing."""
        record = self.find(name, txn)
        if record is None:
            record = BucketRecord(name, owner, time.time(), secrets.token_hex(12))
            txn.put(TABLE, name.encode(), encode(record))
        return record

    def find(self, name: str, txn: ReadTxn) -> BucketRecord | None:
        raw = txn.get(TABLE, name.encode())
        return None if raw is None else decode(raw)

    @staticmethod
    def engine_key(name: str) -> tuple[str, bytes]:
        """Where the bucket's record is (for `WriteTxn.prefetch`)."""
        return TABLE, name.encode()

    def get(self, name: str, txn: ReadTxn | None = None) -> BucketRecord:
        """The bucket's record; NoSuchBucket if none."""
        if txn is None:
            with self.engine.read() as t:
                return self.get(name, t)
        raw = txn.get(TABLE, name.encode())
        if raw is None:
            raise errors.NoSuchBucket(name)
        return decode(raw)

    def check(self, txn: ReadTxn, bucket: Bucket) -> BucketRecord:
        """The bucket's record if it exists and, for a ref, is still the bucket the ref
        names (same owner and generation); NoSuchBucket otherwise."""
        record = self.get(bucket_name(bucket), txn)
        if isinstance(bucket, BucketRef) and (
                record.owner != bucket.owner
                or (bucket.generation is not None and record.generation != bucket.generation)):
            raise errors.NoSuchBucket(bucket.name)
        return record

    def scan(self, txn: ReadTxn) -> Iterator[BucketRecord]:
        """Every bucket, in name order."""
        for _, raw in txn.scan(TABLE):
            yield decode(raw)

    def owned_by(self, owner: str) -> list[BucketRecord]:
        with self.engine.read() as txn:
            return [r for r in self.scan(txn) if r.owner == owner]

    def delete(self, bucket: Bucket) -> None:
        """Remove an empty bucket: one with no objects, no object versions (delete markers
        included) and no pending multipart uploads (the `objects`, `versions` and `upkeys`
        tables, keyed bucket \\0 ...)."""
        name = bucket_name(bucket)

        def op(txn: WriteTxn) -> None:
            self.check(txn, bucket)
            prefix = name.encode() + b"\0"
            for _ in txn.scan("objects", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            for _ in txn.scan("versions", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            for _ in txn.scan("upkeys", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            for key, _ in list(txn.scan(CONF_TABLE, prefix=prefix)):
                txn.delete(CONF_TABLE, key)
            txn.delete(TABLE, name.encode())

        self.engine.write(op)
