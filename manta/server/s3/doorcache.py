"""What a front door over a remote catalog keeps of what it read, for a second.

With PostgreSQL every catalog read is a round trip (and, off the event loop, a thread
hop). Two reads come with almost every request, and the door keeps them for DOOR_TTL_S:
- the account a request is signed with, as Manta's front doors read accounts through an
  authentication cache (mahi): a changed secret, quota or a removed account takes effect
  on every door within that long;
- the bucket a PUT checks before it reads the body (its name and owner, `BucketRef` with
  no generation), kept only while it has no access settings (policy, public access block,
  ownership controls): the commit checks the bucket again in any case, so a stale entry
  costs a PUT into a bucket deleted a moment ago its body, then NoSuchBucket. A bucket
  deleted and made again by the same owner within that second takes the PUT. A PUT with
  an ACL header always reads the bucket (its settings may refuse the ACL); a policy set
  through another door binds its owner's PUTs here within that second, and a door that
  sets one forgets the bucket at once (`drop`).
With the embedded LMDB catalog nothing is cached (a read takes microseconds)."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

__all__ = ["DOOR_TTL_S", "TtlCache"]

DOOR_TTL_S = 1.0
_MAX_ENTRIES = 10_000
V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(self, ttl_s: float = DOOR_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, name: str) -> V | None:
        entry = self._entries.get(name)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)

    def put(self, name: str, value: V) -> None:
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # many names at once: start over rather than track ages
        self._entries[name] = (time.monotonic() + self.ttl_s, value)
