"""Bucket configurations (S3's bucket sub-resources: CORS rules, tags, lifecycle rules,
policies...): each kind's document, as the layer that understands it stores it.

    bucketconf   bucket name \0 kind  -> the configuration (bytes: XML or JSON, say)

The bucket's record lists the kinds it has (`BucketRecord.conf`), and a request that may
need a configuration checks that list (which it has read anyway) before reading one: a
bucket without configurations costs nothing more. Setting or removing a configuration
re-checks the bucket ref in the same transaction; deleting a bucket removes them all
(`Buckets.delete`), so a bucket made again under the name starts with none.
"""

from __future__ import annotations

import dataclasses
import re

from storage.engine import Engine, ReadTxn, WriteTxn
from storage.records.buckets import (
    CONF_TABLE,
    TABLE,
    Bucket,
    BucketRecord,
    Buckets,
    bucket_name,
    encode,
)

__all__ = ["BucketConfigs"]

_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")


def conf_key(name: str, kind: str) -> bytes:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"configuration kinds are lowercase words: {kind!r}")
    return name.encode() + b"\0" + kind.encode()


class BucketConfigs:
    def __init__(self, engine: Engine, buckets: Buckets) -> None:
        self.engine = engine
        self.buckets = buckets

    def get(self, bucket: Bucket, kind: str, txn: ReadTxn | None = None) -> bytes | None:
        """The bucket's configuration of `kind`, or None (NoSuchBucket if the bucket is gone
        or, for a ref, is no longer that bucket)."""
        if txn is None:
            with self.engine.read() as t:
                return self.get(bucket, kind, t)
        record = self.buckets.check(txn, bucket)
        if kind not in record.conf:
            return None
        return txn.get(CONF_TABLE, conf_key(record.name, kind))

    def of(self, record: BucketRecord, kind: str, txn: ReadTxn) -> bytes | None:
        """`get` for a bucket record just read in `txn` (no second read of it)."""
        if kind not in record.conf:
            return None
        raw = txn.get(CONF_TABLE, conf_key(record.name, kind))
        return None if raw is None else bytes(raw)

    def set(self, bucket: Bucket, kind: str, value: bytes | None) -> None:
        """Store (None: remove) the bucket's configuration of `kind`."""
        key = conf_key(bucket_name(bucket), kind)

        def op(txn: WriteTxn) -> None:
            record = self.buckets.check(txn, bucket)
            conf = record.conf | {kind} if value is not None else record.conf - {kind}
            if value is None:
                txn.delete(CONF_TABLE, key)
            else:
                txn.put(CONF_TABLE, key, bytes(value))
            if conf != record.conf:
                txn.put(TABLE, record.name.encode(), encode(dataclasses.replace(record, conf=frozenset(conf))))

        self.engine.write(op)
