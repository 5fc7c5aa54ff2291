"""What every repository of the catalog shares: msgpack values and the `extra` of a record.

Values are msgpack maps carrying a schema version ``v`` (1 for every kind so far). A
record's dataclass names the fields this version knows; any other field in a stored map
(written by a newer version) is kept in the record's `extra` and written back unchanged
by a read-modify-write, after the known fields. A record this version writes carries
``v`` = 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

__all__ = ["NO_EXTRA", "extra_of", "pack", "unpack"]



class _Empty(Mapping[str, Any]):
    """An immutable, hashable empty mapping (so a dataclass may take it as a default)."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


NO_EXTRA: Mapping[str, Any] = _Empty()  # shared: a record without unknown fields


def pack(record: Any) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False)


def extra_of(stored: dict[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    """The fields of `stored` outside `known` (NO_EXTRA, without allocating, when none)."""
    if stored.keys() <= known:
        return NO_EXTRA
    return {k: v for k, v in stored.items() if k not in known}
