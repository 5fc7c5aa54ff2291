"""The catalog: an engine (transactions, group commit) under typed repositories.

The engine (storage.engine; LMDB or PostgreSQL) holds ordered tables of byte keys and
values. Each kind of record has a repository that owns its tables' key and value
encoding (msgpack maps with a schema version ``v``) and hands out dataclass records;
unknown fields of a stored record survive its read-modify-write (storage.records.codec).
A `Catalog` opens the engine and exposes them::

    catalog.accounts  accounts, names      Account             (storage.records.accounts)
    catalog.buckets   buckets              BucketRecord        (storage.records.buckets)
    catalog.bucketconf bucketconf          CORS, tags... bytes (storage.records.bucketconf)
    catalog.usage     usage                Usage, quotas       (storage.records.usage)
    catalog.blobrefs  blobs                BlobRecord, refs    (storage.records.blobrefs)
    catalog.repairs   repairs              RepairRecord        (storage.records.repairs)
    catalog.journal   journal              small blobs' bytes  (storage.records.repairs)
    catalog.nodes     nodes                NodeRecord          (storage.records.nodes)

Objects and multipart uploads are repositories over the same catalog in their own
modules (storage.objects `ObjectStore`: `objects`, and through storage.versions `versions`; storage.uploads `UploadStore`:
`uploads`, `upkeys`, `parts`, `completions`); they use the generic `get/put/delete/scan`
here. So does the jobs package (jobs.records), which owns its tables: storage does not
name them; whoever runs jobs opens the catalog with `extra_tables=jobs.records.TABLES`
(`StoreConfig.extra_tables`). A catalog opened without them serves storage alone.

Object keys never contain NUL (the S3 layer rejects it), so byte order of the keys
``bucket \\0 key`` is the UTF-8 binary order S3 lists in.

Writes: every write is one function applied inside an engine write transaction;
`submit()` queues it and the engine commits many at once (group commit), each in a
nested transaction so one failing write rolls back alone; `write()` returns only after
the commit is durable (`durable=False`: once committed; storage.engine says what that
gives up). Reads are snapshots (`read()`), opened on the caller's thread.

Buckets are authorised as a `BucketRef(name, owner, generation)` that every write
re-checks (`catalog.buckets.check`); usage is charged in the same transaction as the
write that changes it (`catalog.usage.charge`); a write that stops referencing a blob
returns it once its count reaches zero and the caller deletes its files after the commit
(`catalog.blobrefs.unref`). The per-kind modules say more.
"""

from __future__ import annotations

import concurrent.futures
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from storage.engine import Engine, ReadTxn, Relaxed, WriteTxn
from storage.engines import open_engine
from storage.records.accounts import Accounts
from storage.records.blobrefs import BlobRefs
from storage.records.bucketconf import BucketConfigs
from storage.records.buckets import (
    Bucket,
    BucketRecord,
    BucketRef,
    Buckets,
    bucket_name,
    generation_of,
)
from storage.records.codec import pack, unpack
from storage.records.nodes import Nodes
from storage.records.repairs import Journal, Repairs
from storage.records.usage import USAGE_BUILT, UsageLedger

__all__ = ["TABLES", "USAGE_BUILT", "Bucket", "BucketRecord", "BucketRef", "Catalog", "Txn", "bucket_name",
           "generation_of", "pack", "unpack"]

T = TypeVar("T")
Txn = WriteTxn  # what a write function gets; reads get a ReadTxn
Record = dict[str, Any]  # the objects', uploads' and jobs' records (still maps)

TABLES = ("accounts", "names", "buckets", "objects", "uploads", "upkeys", "parts", "blobs",
          "completions", "journal", "repairs", "nodes", "usage", "bucketconf", "versions")  # storage's own


def object_key(bucket: str, key: str) -> bytes:
    return bucket.encode() + b"\0" + key.encode()


def part_key(upload_id: str, number: int) -> bytes:
    return upload_id.encode() + b"\0" + struct.pack(">I", number)


class Catalog:
    """The catalog's repositories over an engine (storage.engine): `location` is an LMDB
    directory (the embedded default) or a postgresql:// URL; `extra_tables`: tables of
    other packages (jobs) opened along with storage's."""

    def __init__(self, location: str, extra_tables: tuple[str, ...] = (), **options: Any) -> None:
        self.tables = TABLES + tuple(t for t in extra_tables if t not in TABLES)
        engine = open_engine(location, self.tables, **options)
        self._engine = engine
        self.accounts = Accounts(engine)
        self.buckets = Buckets(engine)
        self.bucketconf = BucketConfigs(engine, self.buckets)
        self.usage = UsageLedger(engine, self.accounts)
        self.journal = Journal(engine)
        self.repairs = Repairs(engine)
        self.blobrefs = BlobRefs(engine, (self.journal, self.repairs))
        self.nodes = Nodes(engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        """Put every repository over `engine` (a test's wrapper that watches the reads)."""
        self._engine = engine
        for repository in (self.accounts, self.buckets, self.bucketconf, self.usage, self.journal,
                           self.repairs, self.blobrefs, self.nodes):
            repository.engine = engine

    def close(self) -> None:
        self._engine.close()

    # -- transactions -------------------------------------------------------------

    def read(self) -> Any:
        """A snapshot read transaction, for `with`."""
        return self._engine.read()

    def submit(self, fn: Callable[[Txn], T], durable: bool = True) -> concurrent.futures.Future[T]:
        """Queue a write (group-committed; see storage.engine for what `fn` may do, and
        for what `durable=False` gives up: a machine crash may undo it)."""
        return self._engine.submit(fn if durable else Relaxed(fn))

    def write(self, fn: Callable[[Txn], T], durable: bool = True) -> T:
        return self.submit(fn, durable).result()

    # -- generic record access (objects, uploads, jobs) ------------------------------

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
