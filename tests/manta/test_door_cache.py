"""The front door's caches (used only over a remote catalog): an entry lives its TTL,
then the next request reads the account (or bucket) again."""

from __future__ import annotations

import time

from manta.server.s3.doorcache import TtlCache
from storage.records.accounts import Account


def account(secret: str) -> Account:
    return Account(name="bob", access_key="BOBKEY", secret=secret, created=1.0, root=False, quota={})


def test_an_entry_lives_its_ttl_then_is_read_again() -> None:
    cache: TtlCache[Account] = TtlCache(ttl_s=0.2)
    assert cache.get("BOBKEY") is None
    cache.put("BOBKEY", account("old"))
    assert cache.get("BOBKEY") == account("old")
    assert cache.get("OTHER") is None
    time.sleep(0.25)
    assert cache.get("BOBKEY") is None  # a rotated secret is read afresh
    cache.put("BOBKEY", account("new"))
    assert cache.get("BOBKEY") == account("new")
