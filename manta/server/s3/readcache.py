"""Small blobs kept in memory once read, for the GETs of hot small objects.

A blob id names one content for good: ids are random per written blob, copies share the
blob and its id, and a repair or a journal replay rewrites the same bytes. So a blob's
bytes, checked against its block CRC32Cs when first read, can answer later GETs without
opening a replica again (an open, a pread and a close were about a quarter of a 4 KiB
GET's time). Only local blobs of at most CACHED_BLOB_BYTES are kept, least recently used
first out, within a byte budget per server process (`MANTA_READ_CACHE_MB`, default 64;
0 turns it off). The catalog is read first on every GET, as before: a deleted or
overwritten object is never answered from here, and its freed blob only waits for
eviction. Used on the event loop only (one thread): no lock.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["CACHED_BLOB_BYTES", "BlobCache"]

CACHED_BLOB_BYTES = 64 * 1024


class BlobCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()

    def get(self, blob_id: str) -> bytes | None:
        data = self._blobs.get(blob_id)
        if data is not None:
            self._blobs.move_to_end(blob_id)
        return data

    def put(self, blob_id: str, data: bytes) -> None:
        if len(data) > CACHED_BLOB_BYTES or len(data) > self.max_bytes or blob_id in self._blobs:
            return
        self._blobs[blob_id] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, old = self._blobs.popitem(last=False)
            self.bytes -= len(old)

    def __len__(self) -> int:
        return len(self._blobs)
