"""ListObjects with a delimiter over both engines (the engine's scan_skip jumps from group
to group): pages agree with a listing computed by brute force, long keys (overflow entries
past LMDB's key limit) and non-ASCII keys included."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from storage.catalog import Catalog
from storage.objects import ObjectStore


@pytest.fixture
def objects(catalog_location: str) -> Iterator[ObjectStore]:
    catalog = Catalog(catalog_location)
    catalog.buckets.create("b", "root")
    yield ObjectStore(catalog)
    catalog.close()


def reference(keys: list[str], prefix: str, delimiter: str, start_after: str) -> list[str]:
    """Every key and common prefix after start_after, in order (a common prefix counts once)."""
    out: list[str] = []
    for key in sorted(keys, key=str.encode):
        if not key.startswith(prefix) or key.encode() <= start_after.encode():
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key[: cut + len(delimiter)] if cut >= 0 else key
        if entry.encode() <= start_after.encode() or (out and out[-1] == entry):
            continue
        out.append(entry)
    return out


def test_delimiter_pages_match_brute_force(objects: ObjectStore) -> None:
    rng = random.Random(11)
    keys = {f"d{rng.randrange(40):02d}/{rng.choice(['a', 'b', 'é'])}/{i}" for i in range(600)}
    keys |= {f"top{i}" for i in range(30)}
    keys |= {"L" * 470 + f"/{i:03d}/" + "x" * 40 for i in range(5)}  # overflow entries
    keys |= {"L" * 500 + f"/{i}" for i in range(5)}  # a group whose prefix is past the limit
    keys |= {"d05/", "d05//", "d//"}

    def put_all(txn: object) -> None:
        for key in sorted(keys):
            objects.put_in(txn, "b", key, {"size": 1, "etag": "e", "mtime": 1.0, "segments": [],
                                           "headers": {}, "meta": {}, "checksums": {},
                                           "checksum_type": None, "parts": None}, owner="root")

    objects.catalog.write(put_all)
    for prefix, delimiter in [("", "/"), ("d05/", "/"), ("d", "/"), ("", "b/"), ("L" * 470, "/"),
                              ("L" * 500, "/"), ("", "")]:
        want = reference(sorted(keys), prefix, delimiter, "")
        got: list[str] = []
        marker = ""
        while True:
            page = objects.list("b", prefix, delimiter, marker, max_keys=7)
            entries = sorted([r["key"] for r in page.contents] + page.common_prefixes, key=str.encode)
            got += entries
            if not page.truncated:
                break
            assert page.next_marker is not None
            marker = page.next_marker
        assert got == want, (prefix, delimiter)
