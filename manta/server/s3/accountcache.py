"""The accounts that signed requests recently, for a front door over a remote catalog.

With PostgreSQL every catalog read is a round trip and the account a request is signed
with is read by every request: a door keeps what it read for ACCOUNT_TTL_S, as Manta's
front doors read accounts through an authentication cache (mahi). A changed secret,
quota or a removed account therefore takes effect on every door within that long. With
the embedded LMDB catalog nothing is cached (a read takes microseconds)."""

from __future__ import annotations

import time

from storage.records.accounts import Account

__all__ = ["ACCOUNT_TTL_S", "AccountCache"]

ACCOUNT_TTL_S = 1.0
_MAX_ENTRIES = 10_000


class AccountCache:
    def __init__(self, ttl_s: float = ACCOUNT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Account]] = {}

    def get(self, access_key: str) -> Account | None:
        entry = self._entries.get(access_key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, access_key: str, account: Account) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # many keys at once: start over rather than track ages
        self._entries[access_key] = (time.monotonic() + self.ttl_s, account)
