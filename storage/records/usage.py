"""Usage: what each account stores, checked against its quota by every write that grows it.

    usage      account name  -> {v, objects, bytes}   (+ the USAGE_BUILT marker -> {v})

An account's usage is its objects' count and sizes plus its pending uploads (one object
each) and their parts' sizes, changed by `charge()` in the same transaction as the write
that changes them; a write that grows a resource past the account's limit (storage.quota)
raises QuotaExceeded and rolls back.
A catalog without the USAGE_BUILT marker (made before usage existed) has it rebuilt from
the records at open (`Store`, `UploadStore.rebuild_usage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storage import errors
from storage.engine import Engine, ReadTxn, WriteTxn
from storage.records.accounts import Accounts
from storage.records.codec import NO_EXTRA, extra_of, pack, unpack

__all__ = ["USAGE_BUILT", "Usage", "UsageLedger"]

TABLE = "usage"
USAGE_BUILT = b"\0built"  # key in `usage`: usage was counted from the start or rebuilt
_KNOWN = frozenset(("v", "objects", "bytes"))


@dataclass(slots=True)
class Usage:
    objects: int = 0
    bytes: int = 0
    extra: Mapping[str, Any] = NO_EXTRA

    def to_dict(self) -> dict[str, int]:
        return {"objects": self.objects, "bytes": self.bytes}


NONE_USED = Usage()


def encode(usage: Usage) -> bytes:
    record: dict[str, Any] = {"v": 1, "objects": usage.objects, "bytes": usage.bytes}
    if usage.extra:
        record.update(usage.extra)
    return pack(record)


def decode(raw: bytes | memoryview) -> Usage:
    d = unpack(raw)
    return Usage(d.get("objects", 0), d.get("bytes", 0), extra_of(d, _KNOWN))


class UsageLedger:
    def __init__(self, engine: Engine, accounts: Accounts) -> None:
        self.engine = engine
        self.accounts = accounts

    @staticmethod
    def engine_key(name: str) -> tuple[str, bytes]:
        """Where the account's usage is (for `WriteTxn.prefetch`)."""
        return TABLE, name.encode()

    def get(self, name: str, txn: ReadTxn | None = None) -> Usage:
        """The objects and bytes stored by an account."""
        if txn is None:
            with self.engine.read() as t:
                return self.get(name, t)
        raw = txn.get(TABLE, name.encode())
        return NONE_USED if raw is None else decode(raw)

    def check_room(self, name: str, objects: int, nbytes: int, txn: ReadTxn | None = None,
                   used: Usage | None = None) -> None:
        """Raise QuotaExceeded if adding (objects, nbytes) would take `name` past a limit
        (a resource that does not grow is never refused); `used`: its usage, if read already."""
        if txn is None:
            with self.engine.read() as t:
                return self.check_room(name, objects, nbytes, t, used)
        if objects <= 0 and nbytes <= 0:
            return None
        limits = self.accounts.limits(name, txn)
        if limits.objects is None and limits.bytes is None:
            return None
        used = used or self.get(name, txn)
        if objects > 0 and limits.objects is not None and used.objects + objects > limits.objects:
            raise errors.QuotaExceeded(name, "objects", limits.objects)
        if nbytes > 0 and limits.bytes is not None and used.bytes + nbytes > limits.bytes:
            raise errors.QuotaExceeded(name, "bytes", limits.bytes)
        return None

    def charge(self, txn: WriteTxn, name: str, objects: int = 0, nbytes: int = 0, check: bool = True) -> None:
        """Add to an account's usage inside a write; with `check`, refuse growth past its limits."""
        if objects == 0 and nbytes == 0:
            return
        used = self.get(name, txn)
        if check:
            self.check_room(name, objects, nbytes, txn, used)
        txn.put(TABLE, name.encode(), encode(Usage(used.objects + objects, used.bytes + nbytes, used.extra)))

    def built(self) -> bool:
        """Was usage counted from the start or rebuilt (the USAGE_BUILT marker)?"""
        with self.engine.read() as txn:
            return txn.get(TABLE, USAGE_BUILT) is not None

    def replace(self, txn: WriteTxn, totals: Mapping[str, Usage]) -> None:
        """Set every account's usage to `totals` (a rebuild) and mark usage as built."""
        for key, _ in list(txn.scan(TABLE)):
            txn.delete(TABLE, key)
        for name, used in totals.items():
            txn.put(TABLE, name.encode(), encode(used))
        txn.put(TABLE, USAGE_BUILT, pack({"v": 1}))
