"""The catalog: accounts, buckets, objects, multipart uploads and blob reference counts.

LMDB holds one named database per record kind; values are msgpack maps carrying a
schema version ``v``. Keys::

    accounts   access_key                      -> {v, name, secret, created, root}
    names      account name                    -> access_key
    buckets    bucket name                     -> {v, name, owner, created, gen, acl?}
    objects    bucket \\0 key (UTF-8)           -> object record (see `ObjectRecord`)
    uploads    upload id                       -> {v, bucket, key, owner, initiated, ...}
    upkeys     bucket \\0 key \\0 upload id       -> 1  (ListMultipartUploads order)
    parts      upload id \\0 part number (u32be) -> {v, number, blob, size, etag, mtime, ...}
    completions  completed at (u64be s) upload id -> 1  (expiry order of completed uploads)
    blobs      blob id                         -> {v, refs, size, sha256, blocks, nodes}
    journal    blob id                         -> raw bytes of a small blob not yet fsync'd
    repairs    blob id                         -> {v, nodes: {node id: reason}, at}
    nodes      node id                         -> {v, id, spec, created}
    usage      account name                    -> {v, objects, bytes}  (+ USAGE_BUILT marker)
    jobs, jobinputs, jobtasks                  -> records of the jobs package (jobs/records.py)

Object keys never contain NUL (the S3 layer rejects it), so byte order of the LMDB keys
is the UTF-8 binary order S3 lists in.

Writes: every write is one function applied inside an LMDB write transaction. A single
writer thread drains the queue of pending writes and applies a batch of them, each in a
nested transaction (so one failing write rolls back alone), then commits the batch once:
one fsync for many concurrent requests (group commit). `write()` returns only after the
commit is durable. Reads open short read transactions on the caller's thread.

Buckets: a bucket record carries a random generation `gen` made at creation, so a name
deleted and created again (by the same or another account) is a different bucket. A
request is authorised against a `BucketRef(name, owner, generation)` and every write
re-checks that ref inside its transaction (`check_bucket`): a bucket that changed hands
or was re-created meanwhile is NoSuchBucket. Buckets made before generations existed
have no `gen`; their `created` timestamp stands in for it (`generation_of`).

Usage and quotas: `usage` holds each account's stored objects and bytes (objects' sizes
plus pending parts'), changed by `charge()` in the same transaction as the write that
changes them; a write that grows a resource past the account's limit (storage.quota)
raises QuotaExceeded and rolls back. A catalog without the USAGE_BUILT marker (made
before usage existed) has it rebuilt from the records at open (`Store`).

Blob lifetimes: a record that starts referencing a blob increments its count; one that
stops decrements it. Writes return the blobs whose count reached zero; the caller deletes
those files after the commit. A crash in between leaves orphans that GC collects.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack

from storage import errors
from storage.engine import Engine, ReadTxn, WriteTxn
from storage.engines import open_engine
from storage.quota import DEFAULT_QUOTA, Quota

__all__ = ["USAGE_BUILT", "Bucket", "BucketRef", "Catalog", "Txn", "bucket_name", "generation_of"]

T = TypeVar("T")
Txn = WriteTxn  # what a write function gets; reads get a ReadTxn
Record = dict[str, Any]

TABLES = ("accounts", "names", "buckets", "objects", "uploads", "upkeys", "parts", "blobs",
        "completions", "journal", "repairs", "nodes", "usage",
        "jobs", "jobinputs", "jobtasks")  # the last three belong to the jobs package
USAGE_BUILT = b"\0built"  # key in `usage`: usage was counted from the start or rebuilt


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


def generation_of(record: Record) -> str:
    """A bucket record's generation; buckets made before generations use their creation time."""
    return str(record.get("gen") or f"created:{record['created']!r}")


def pack(record: Any) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False)


def object_key(bucket: str, key: str) -> bytes:
    return bucket.encode() + b"\0" + key.encode()


def part_key(upload_id: str, number: int) -> bytes:
    return upload_id.encode() + b"\0" + struct.pack(">I", number)


class Catalog:
    """The catalog's records over an engine (storage.engine): `location` is an LMDB
    directory (the embedded default) or a postgresql:// URL."""

    def __init__(self, location: str, **options: Any) -> None:
        self.engine: Engine = open_engine(location, TABLES, **options)

    def close(self) -> None:
        self.engine.close()

    # -- transactions -------------------------------------------------------------

    def read(self) -> Any:
        """A snapshot read transaction, for `with`."""
        return self.engine.read()

    def submit(self, fn: Callable[[Txn], T]) -> concurrent.futures.Future[T]:
        """Queue a write (group-committed; see storage.engine for what `fn` may do)."""
        return self.engine.submit(fn)

    def write(self, fn: Callable[[Txn], T]) -> T:
        return self.engine.submit(fn).result()

    # -- generic record access ----------------------------------------------------

    @staticmethod
    def get(txn: ReadTxn, table: str, key: bytes) -> Any:
        raw = txn.get(table, key)
        return None if raw is None else unpack(raw)

    @staticmethod
    def put(txn: Txn, table: str, key: bytes, record: Any) -> None:
        txn.put(table, key, pack(record))

    @staticmethod
    def delete(txn: Txn, table: str, key: bytes) -> bool:
        return txn.delete(table, key)

    @staticmethod
    def scan(txn: ReadTxn, table: str, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """Records with keys >= max(start, prefix) that begin with prefix, in key order."""
        for key, raw in txn.scan(table, start, prefix):
            yield key, unpack(raw)

    # -- blobs: reference counts and replica metadata ----------------------------------

    def blob(self, txn: Txn, blob_id: str) -> Record | None:
        return self.get(txn, "blobs", blob_id.encode())

    def ref_blobs(self, txn: Txn, blob_ids: list[str], meta: dict[str, Record] | None = None) -> None:
        """Add a reference to each blob; a blob seen for the first time takes its `meta`."""
        for blob_id in blob_ids:
            key = blob_id.encode()
            record = self.get(txn, "blobs", key)
            if record is None:
                record = {"v": 1, "refs": 0, "nodes": [], **((meta or {}).get(blob_id) or {})}
            record["refs"] += 1
            self.put(txn, "blobs", key, record)

    def unref_blobs(self, txn: Txn, blob_ids: list[str]) -> list[str]:
        """Drop a reference from each; returns the blob ids that are no longer referenced."""
        freed = []
        for blob_id in blob_ids:
            key = blob_id.encode()
            record = self.get(txn, "blobs", key)
            if record is not None and record["refs"] > 1:
                record["refs"] -= 1
                self.put(txn, "blobs", key, record)
            else:
                self.delete(txn, "blobs", key)
                txn.delete("journal", key)
                txn.delete("repairs", key)
                freed.append(blob_id)
        return freed

    def blob_records(self) -> Iterator[tuple[str, Record]]:
        """Every blob record (one read transaction per call of this generator)."""
        with self.read() as txn:
            for key, record in self.scan(txn, "blobs"):
                yield key.decode(), record

    def set_blob_nodes(self, blob_id: str, nodes: list[str], expect: list[str] | None = None) -> bool:
        """Replace a blob's replica list (repair); False if the blob is gone or changed."""

        def op(txn: Txn) -> bool:
            record = self.get(txn, "blobs", blob_id.encode())
            if record is None or (expect is not None and record["nodes"] != expect):
                return False
            record["nodes"] = nodes
            self.put(txn, "blobs", blob_id.encode(), record)
            return True

        return self.write(op)

    # -- repair queue ---------------------------------------------------------------

    def queue_repair(self, blob_id: str, node_id: str, reason: str) -> concurrent.futures.Future[None]:
        def op(txn: Txn) -> None:
            if self.get(txn, "blobs", blob_id.encode()) is None:
                return
            record = self.get(txn, "repairs", blob_id.encode()) or {"v": 1, "nodes": {}, "at": time.time()}
            record["nodes"][node_id] = reason
            self.put(txn, "repairs", blob_id.encode(), record)

        return self.submit(op)

    def repairs(self, limit: int = 1000) -> list[tuple[str, Record]]:
        with self.read() as txn:
            out = []
            for key, record in self.scan(txn, "repairs"):
                out.append((key.decode(), record))
                if len(out) >= limit:
                    break
            return out

    def drop_repair(self, blob_id: str) -> None:
        self.write(lambda txn: self.delete(txn, "repairs", blob_id.encode()))

    # -- nodes ----------------------------------------------------------------------

    def nodes(self) -> dict[str, Record]:
        with self.read() as txn:
            return {k.decode(): r for k, r in self.scan(txn, "nodes")}

    def put_node(self, node_id: str, spec: str) -> None:
        def op(txn: Txn) -> None:
            record = self.get(txn, "nodes", node_id.encode()) or {"v": 1, "id": node_id, "created": time.time()}
            record["spec"] = spec
            self.put(txn, "nodes", node_id.encode(), record)

        self.write(op)

    # -- journal of small blobs (see storage.blobs.MemoryBlobWriter) ----------------

    def journal_put(self, txn: Txn, blob_id: str, data: bytes) -> None:
        txn.put("journal", blob_id.encode(), data)

    def journal(self, limit: int = 10_000) -> list[tuple[str, bytes]]:
        with self.read() as txn:
            out = []
            for key, value in txn.scan("journal"):
                out.append((key.decode(), value))
                if len(out) >= limit:
                    break
            return out

    def journal_drop(self, blob_ids: list[str]) -> None:
        def op(txn: Txn) -> None:
            for blob_id in blob_ids:
                txn.delete("journal", blob_id.encode())

        self.write(op)

    # -- accounts -----------------------------------------------------------------

    def add_account(self, name: str, access_key: str, secret: str, root: bool = False,
                    quota: dict[str, int | None] | None = None) -> Record:
        record = {"v": 1, "name": name, "access_key": access_key, "secret": secret,
                  "created": time.time(), "root": root,
                  "quota": {k: v for k, v in (quota or {}).items() if v is not None}}

        def op(txn: Txn) -> Record:
            if txn.get("names", name.encode()) is not None:
                raise errors.AccountExists(name)
            if txn.get("accounts", access_key.encode()) is not None:
                raise errors.AccountExists(name)
            self.put(txn, "accounts", access_key.encode(), record)
            txn.put("names", name.encode(), access_key.encode())
            return record

        return self.write(op)

    def account(self, access_key: str) -> Record:
        with self.read() as txn:
            record = self.get(txn, "accounts", access_key.encode())
        if record is None:
            raise errors.NoSuchAccount(access_key)
        return record

    def accounts(self) -> list[Record]:
        with self.read() as txn:
            return [r for _, r in self.scan(txn, "accounts")]

    def account_named(self, name: str, txn: Txn | None = None) -> Record:
        if txn is None:
            with self.read() as t:
                return self.account_named(name, t)
        access_key = txn.get("names", name.encode())
        record = None if access_key is None else self.get(txn, "accounts", access_key)
        if record is None:
            raise errors.NoSuchAccount(name)
        return record  # type: ignore[no-any-return]

    def quota(self, name: str, txn: Txn | None = None) -> Quota:
        """The account's limits: its own where set, the defaults elsewhere."""
        return DEFAULT_QUOTA.merged(self.account_named(name, txn).get("quota"))

    # -- usage and quotas ---------------------------------------------------------

    def usage(self, name: str, txn: Txn | None = None) -> dict[str, int]:
        """{objects, bytes} stored by an account."""
        if txn is None:
            with self.read() as t:
                return self.usage(name, t)
        record = self.get(txn, "usage", name.encode()) or {}
        return {"objects": record.get("objects", 0), "bytes": record.get("bytes", 0)}

    def limits(self, name: str, txn: Txn | None = None) -> Quota:
        """`quota()`, or the defaults for an owner without an account record."""
        try:
            return self.quota(name, txn)
        except errors.NoSuchAccount:
            return DEFAULT_QUOTA

    def check_room(self, name: str, objects: int, nbytes: int, txn: Txn | None = None,
                   used: dict[str, int] | None = None) -> None:
        """Raise QuotaExceeded if adding (objects, nbytes) would take `name` past a limit
        (a resource that does not grow is never refused); `used`: its usage, if read already."""
        if txn is None:
            with self.read() as t:
                return self.check_room(name, objects, nbytes, t, used)
        if objects <= 0 and nbytes <= 0:
            return None
        limits = self.limits(name, txn)
        if limits.objects is None and limits.bytes is None:
            return None
        used = used or self.usage(name, txn)
        for resource, delta in (("objects", objects), ("bytes", nbytes)):
            limit = getattr(limits, resource)
            if delta > 0 and limit is not None and used[resource] + delta > limit:
                raise errors.QuotaExceeded(name, resource, limit)
        return None

    def charge(self, txn: Txn, name: str, objects: int = 0, nbytes: int = 0, check: bool = True) -> None:
        """Add to an account's usage inside a write; with `check`, refuse growth past its limits."""
        if objects == 0 and nbytes == 0:
            return
        used = self.usage(name, txn)
        if check:
            self.check_room(name, objects, nbytes, txn, used)
        self.put(txn, "usage", name.encode(), {"v": 1, "objects": used["objects"] + objects,
                                                "bytes": used["bytes"] + nbytes})

    def usage_built(self) -> bool:
        with self.read() as txn:
            return txn.get("usage", USAGE_BUILT) is not None

    def replace_usage(self, txn: Txn, totals: dict[str, dict[str, int]]) -> None:
        """Set every account's usage to `totals` (a rebuild) and mark usage as built."""
        for key, _ in list(self.scan(txn, "usage")):
            self.delete(txn, "usage", key)
        for name, used in totals.items():
            self.put(txn, "usage", name.encode(), {"v": 1, **used})
        self.put(txn, "usage", USAGE_BUILT, {"v": 1})

    def set_quota(self, name: str, overrides: dict[str, int | None]) -> Record:
        """Merge limits into an account's own (a None value removes that override)."""

        def op(txn: Txn) -> Record:
            record = self.account_named(name, txn)
            own = dict(record.get("quota") or {})
            for key, value in overrides.items():
                if value is None:
                    own.pop(key, None)
                else:
                    own[key] = value
            record["quota"] = own
            self.put(txn, "accounts", record["access_key"].encode(), record)
            return record

        return self.write(op)

    # -- buckets ------------------------------------------------------------------

    def create_bucket(self, name: str, owner: str, acl: str | None = None) -> Record:
        """A new bucket; `acl` (a canned ACL name, absent: private) is stored as given."""
        def op(txn: Txn) -> Record:
            existing = self.get(txn, "buckets", name.encode())
            if existing is not None:
                raise errors.BucketAlreadyExists(name, owned_by_you=existing["owner"] == owner)
            record = self.ensure_bucket_in(txn, name, owner)
            if acl is not None:
                record["acl"] = acl
                self.put(txn, "buckets", name.encode(), record)
            return record

        return self.write(op)

    def set_bucket_acl(self, bucket: Bucket, acl: str) -> None:
        def op(txn: Txn) -> None:
            record = self.check_bucket(txn, bucket)
            self.put(txn, "buckets", bucket_name(bucket).encode(), {**record, "acl": acl})

        self.write(op)

    def ensure_bucket_in(self, txn: Txn, name: str, owner: str) -> Record:
        """The bucket record of `name`, made for `owner` (with a new generation) if missing."""
        record = self.get(txn, "buckets", name.encode())
        if record is None:
            record = {"v": 1, "name": name, "owner": owner, "created": time.time(),
                      "gen": secrets.token_hex(12)}
            self.put(txn, "buckets", name.encode(), record)
        return record  # type: ignore[no-any-return]

    def bucket(self, name: str, txn: Txn | None = None) -> Record:
        if txn is None:
            with self.read() as t:
                return self.bucket(name, t)
        record = self.get(txn, "buckets", name.encode())
        if record is None:
            raise errors.NoSuchBucket(name)
        return record

    def check_bucket(self, txn: Txn, bucket: Bucket) -> Record:
        """The bucket's record if it exists and, for a ref, is still the bucket the ref
        names (same owner and generation); NoSuchBucket otherwise."""
        record = self.bucket(bucket_name(bucket), txn)
        if isinstance(bucket, BucketRef) and (
                record["owner"] != bucket.owner
                or (bucket.generation is not None and generation_of(record) != bucket.generation)):
            raise errors.NoSuchBucket(bucket.name)
        return record

    def buckets(self, owner: str) -> list[Record]:
        with self.read() as txn:
            return [r for _, r in self.scan(txn, "buckets") if r["owner"] == owner]

    def delete_bucket(self, bucket: Bucket) -> None:
        name = bucket_name(bucket)

        def op(txn: Txn) -> None:
            self.check_bucket(txn, bucket)
            prefix = name.encode() + b"\0"
            for _ in self.scan(txn, "objects", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            for _ in self.scan(txn, "upkeys", prefix=prefix):
                raise errors.BucketNotEmpty(name)
            self.delete(txn, "buckets", name.encode())

        self.write(op)
