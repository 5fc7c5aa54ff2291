"""What every repository of the catalog shares: msgpack values and the `extra` of a record.

Values are msgpack maps carrying a schema version ``v`` (1 for every kind so far). A
record's dataclass names the fields this version knows; any other field in a stored map
(written by a newer version) is kept in the record's `extra` and written back unchanged
by a read-modify-write, after the known fields. A record this version writes carries
``v`` = 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import msgpack

__all__ = ["NO_EXTRA", "decoded_once", "extra_of", "pack", "unpack"]

T = TypeVar("T")



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


def decoded_once(size: int = 1024) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A record decoder (stored value, *args) -> record that decodes each distinct stored
    value once: a record read on every request (the signer's account, the bucket) is not
    unpacked every time. Its callers share the records: make them frozen dataclasses
    (`dataclasses.replace` makes a changed copy). At most `size` values; full, it starts over."""

    def wrap(decode: Callable[..., T]) -> Callable[..., T]:
        memo: dict[tuple[Any, ...], T] = {}

        @functools.wraps(decode)
        def decode_once(raw: bytes | memoryview, *args: Any) -> T:
            key = (bytes(raw), *args)  # bytes of bytes is the same object: no copy
            record = memo.get(key)
            if record is None:
                record = decode(raw, *args)
                if len(memo) >= size:
                    memo.clear()
                memo[key] = record
            return record

        return decode_once

    return wrap


def extra_of(stored: dict[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    """The fields of `stored` outside `known` (NO_EXTRA, without allocating, when none)."""
    if stored.keys() <= known:
        return NO_EXTRA
    return {k: v for k, v in stored.items() if k not in known}
