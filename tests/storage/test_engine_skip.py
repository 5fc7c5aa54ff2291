"""`scan_skip` (storage.engine): a scan that jumps past each group of keys sharing a prefix
up to a delimiter, the same on both engines and the same as filtering a plain scan."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest

from storage.engine import Engine, skip_past
from storage.engines import open_engine


@pytest.fixture(params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    location = str(tmp_path / "catalog") if request.param == "lmdb" else request.getfixturevalue("pg_url")
    opened = open_engine(location, ("objects",))
    yield opened
    opened.close()


def expected(keys: list[bytes], start: bytes, prefix: bytes, delimiter: bytes, cut: int) -> list[bytes]:
    """What scan_skip must give, from the sorted keys by the rule itself."""
    out: list[bytes] = []
    low = max(start, prefix)
    for key in sorted(keys):
        if key >= low and key.startswith(prefix):
            out.append(key)
            low = skip_past(key, delimiter, cut)
    return out


def test_scan_skip_jumps_groups_like_the_rule(engine: Engine) -> None:
    rng = random.Random(7)
    keys = {b"b\0" + f"dir{d:03d}/file{f:02d}".encode() for d in range(300) for f in range(rng.randrange(1, 6))}
    keys |= {b"b\0" + f"top{i:03d}".encode() for i in range(200)}  # keys without the delimiter
    keys |= {b"b\0dir\xc3\xa9/x", b"b\0dir//y", b"b\0dir/", b"a\0dir000/z", b"c\0dir000/z"}
    sorted_keys = sorted(keys)

    def fill(txn: Any) -> None:
        for key in sorted_keys:
            txn.put("objects", key, key[::-1])

    engine.write(fill)
    cases = [(b"", b"b\0", b"/", 2), (b"", b"b\0dir", b"/", 2), (b"b\0dir150/", b"b\0", b"/", 2),
             (b"b\0dir150/file00\0", b"b\0", b"/", 2), (b"", b"b\0", b"ir", 2), (b"", b"", b"\0", 0),
             (b"", b"b\0top", b"/", 5)]
    with engine.read() as txn:
        for start, prefix, delimiter, cut in cases:
            got = list(txn.scan_skip("objects", start, prefix, delimiter, cut))
            assert [k for k, _ in got] == expected(sorted_keys, start, prefix, delimiter, cut), (start, prefix)
            assert all(v == k[::-1] for k, v in got)
        stopped = txn.scan_skip("objects", b"", b"b\0", b"/", 2)
        assert next(stopped)[0] == b"b\0dir/"  # a scan that stops early


def test_a_key_that_ends_its_own_group_is_passed(engine: Engine) -> None:
    """An overflow entry's slot (storage.objects) is its keys' first bytes and 0xFF: when
    those bytes end with the delimiter, the slot is where its group ends. The scan must
    go on past it, not seek to it again (a listing then never answered)."""
    group = b"b\0" + b"d" * 10 + b"/"
    keys = sorted([b"b\0a", group + b"1", group + b"\xff", b"b\0e", b"b\0f/1", b"b\0f/\xff"])
    engine.write(lambda txn: [txn.put("objects", key, key) for key in keys])
    with engine.read() as txn:
        for start, prefix in ((b"", b"b\0"), (group + b"\xff", b"b\0"), (b"", b"b\0d")):
            # bounded: a scan that seeks to the same slot again yields it without end
            got = [k for k, _ in itertools.islice(txn.scan_skip("objects", start, prefix, b"/", 2), 20)]
            assert got == expected(keys, start, prefix, b"/", 2), (start, prefix)
        # seeking past group + b"1" lands on the slot, which the caller expands: each key
        # comes once, and the scan ends
        assert [k for k, _ in txn.scan_skip("objects", b"", b"b\0", b"/", 2)] == keys
