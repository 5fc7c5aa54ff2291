"""Accounts: who may sign requests, with their own quota overrides.

    accounts   access_key    -> {v, name, access_key, secret, created, root, quota}
    names      account name  -> access_key  (raw bytes: the index by name)

`quota` holds only the limits set for this account (`manta admin user add/set --quota`);
`Account.limits` puts them over the defaults (storage.quota). Accounts made before quotas
have no `quota`; before `access_key` was stored, the record's key stands in for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage import errors
from storage.engine import Engine, ReadTxn, WriteTxn
from storage.quota import DEFAULT_QUOTA, Quota
from storage.records.codec import NO_EXTRA, decoded_once, extra_of, pack, unpack

__all__ = ["Account", "Accounts"]

TABLE = "accounts"
NAMES = "names"
_KNOWN = frozenset(("v", "name", "access_key", "secret", "created", "root", "quota"))


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    access_key: str
    secret: str = field(repr=False)
    created: float
    root: bool = False
    quota: Mapping[str, int] = NO_EXTRA  # this account's own limits
    extra: Mapping[str, Any] = NO_EXTRA

    @property
    def limits(self) -> Quota:
        """Its own limits where set, the defaults elsewhere."""
        return DEFAULT_QUOTA.merged(dict(self.quota)) if self.quota else DEFAULT_QUOTA


def encode(account: Account) -> bytes:
    record = {"v": 1, "name": account.name, "access_key": account.access_key, "secret": account.secret,
              "created": account.created, "root": account.root, "quota": dict(account.quota)}
    if account.extra:
        record.update(account.extra)
    return pack(record)


@decoded_once()
def decode(raw: bytes | memoryview, access_key: bytes) -> Account:
    d = unpack(raw)
    return Account(d["name"], d.get("access_key") or access_key.decode(), d["secret"], d["created"],
                   d.get("root", False), d.get("quota") or NO_EXTRA, extra_of(d, _KNOWN))


class Accounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, access_key: str, secret: str, root: bool = False,
            quota: Mapping[str, int | None] | None = None) -> Account:
        account = Account(name, access_key, secret, time.time(), root,
                          {k: v for k, v in (quota or {}).items() if v is not None})

        def op(txn: WriteTxn) -> Account:
            if txn.get(NAMES, name.encode()) is not None:
                raise errors.AccountExists(name)
            if txn.get(TABLE, access_key.encode()) is not None:
                raise errors.AccountExists(name)
            txn.put(TABLE, access_key.encode(), encode(account))
            txn.put(NAMES, name.encode(), access_key.encode())
            return account

        return self.engine.write(op)

    def get(self, access_key: str, txn: ReadTxn | None = None) -> Account:
        """The account of an access key (SigV4's look-up); NoSuchAccount if none."""
        if txn is None:
            with self.engine.read() as t:
                return self.get(access_key, t)
        key = access_key.encode()
        raw = txn.get(TABLE, key)
        if raw is None:
            raise errors.NoSuchAccount(access_key)
        return decode(raw, key)

    def all(self) -> list[Account]:
        with self.engine.read() as txn:
            return [decode(raw, key) for key, raw in txn.scan(TABLE)]

    def named(self, name: str, txn: ReadTxn | None = None) -> Account:
        if txn is None:
            with self.engine.read() as t:
                return self.named(name, t)
        access_key = txn.get(NAMES, name.encode())
        raw = None if access_key is None else txn.get(TABLE, bytes(access_key))
        if raw is None or access_key is None:
            raise errors.NoSuchAccount(name)
        return decode(raw, bytes(access_key))

    def quota(self, name: str, txn: ReadTxn | None = None) -> Quota:
        """The account's limits: its own where set, the defaults elsewhere."""
        return self.named(name, txn).limits

    def limits(self, name: str, txn: ReadTxn | None = None) -> Quota:
        """`quota()`, or the defaults for an owner without an account record."""
        try:
            return self.quota(name, txn)
        except errors.NoSuchAccount:
            return DEFAULT_QUOTA

    def set_quota(self, name: str, overrides: Mapping[str, int | None]) -> Account:
        """Merge limits into an account's own (a None value removes that override)."""

        def op(txn: WriteTxn) -> Account:
            account = self.named(name, txn)
            own = dict(account.quota)
            for key, value in overrides.items():
                if value is None:
                    own.pop(key, None)
                else:
                    own[key] = value
            changed = Account(account.name, account.access_key, account.secret, account.created,
                              account.root, own, account.extra)
            txn.put(TABLE, account.access_key.encode(), encode(changed))
            return changed

        return self.engine.write(op)
