"""The small-blob read cache (manta/server/s3/readcache.py): its LRU byte budget, and GETs
in process that it answers, or must not: the catalog is read first on every GET."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from manta.server.s3.readcache import CACHED_BLOB_BYTES, BlobCache
from tests.inprocess import InProcessS3, inprocess_s3


def test_the_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    cache = BlobCache(max_bytes=10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # now the most recent
    cache.put("c", b"cccc")  # 12 bytes: the least recently used (b) goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"aaaa", None, b"cccc")
    assert cache.bytes == 8 and len(cache) == 2
    cache.put("big", b"x" * 11)  # more than the whole budget: not kept, nothing evicted
    assert cache.get("big") is None and len(cache) == 2
    roomy = BlobCache(max_bytes=1 << 30)
    roomy.put("over", b"x" * (CACHED_BLOB_BYTES + 1))  # only small blobs
    assert roomy.get("over") is None


def remove_blob_files(s3: InProcessS3) -> int:
    """Delete every replica file of every blob (the catalog still names them)."""
    removed = 0
    for node_dir in (Path(s3.config.data_dir) / "nodes").iterdir():
        for path in (node_dir / "blobs").rglob("*"):
            if path.is_file():
                path.unlink()
                removed += 1
    return removed


@pytest.fixture(params=[64.0, 0.0], ids=["cache", "no-cache"])
def door(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[InProcessS3]:
    yield from inprocess_s3(tmp_path, read_cache_mb=request.param)


def test_small_gets_are_answered_from_memory_once_read(door: InProcessS3) -> None:
    door.create_bucket("bkt")
    small, large = os.urandom(4096), os.urandom(CACHED_BLOB_BYTES + 1)
    door.put("bkt", "small", small)
    door.put("bkt", "large", large)
    assert door.request("GET", "/bkt/small").content == small
    assert door.request("GET", "/bkt/large").content == large
    assert remove_blob_files(door) >= 2
    cached = door.config.read_cache_mb > 0
    again = door.request("GET", "/bkt/small")
    assert (again.status_code, again.content == small) == ((200, True) if cached else (503, False))
    if cached:
        ranged = door.request("GET", "/bkt/small", headers={"Range": "bytes=100-199"})
        assert (ranged.status_code, ranged.content) == (206, small[100:200])
        assert ranged.headers["content-range"] == f"bytes 100-199/{len(small)}"
    assert door.request("GET", "/bkt/large").status_code == 503  # too big to keep: read from its files


def test_the_catalog_decides_before_the_cache(s3: InProcessS3, bucket: str) -> None:
    s3.put(bucket, "k", b"one")
    assert s3.request("GET", f"/{bucket}/k").content == b"one"
    s3.put(bucket, "k", b"two")  # a new blob: the cached one is no longer the key's
    assert s3.request("GET", f"/{bucket}/k").content == b"two"
    assert s3.request("DELETE", f"/{bucket}/k").status_code == 204
    assert s3.request("GET", f"/{bucket}/k").status_code == 404
    etag = s3.put(bucket, "c", b"cond").headers["etag"]
    assert s3.request("GET", f"/{bucket}/c").content == b"cond"
    assert s3.request("GET", f"/{bucket}/c", headers={"If-None-Match": etag}).status_code == 304
    assert s3.request("HEAD", f"/{bucket}/c").headers["content-length"] == "4"
