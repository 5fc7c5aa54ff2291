"""Small blobs made durable through the catalog journal, and their recovery."""

from __future__ import annotations

import os

from storage import JournalFlusher, MemoryBlobWriter, Store, StoreConfig


def _put_small(store: Store, key: str, data: bytes) -> str:
    small = MemoryBlobWriter()
    small.write(data)
    blob = store.place_small(small)
    record = {"segments": [[blob.blob_id, blob.size]], "size": blob.size, "etag": blob.md5.hex(), "mtime": 0.0}
    store.objects.put_async("b", key, record, {blob.blob_id: bytes(small.buffer)},
                            {blob.blob_id: blob.record()}).result()
    return blob.blob_id


def _store(path: str) -> Store:
    store = Store(StoreConfig(path))
    if not store.catalog.accounts.all():
        store.catalog.accounts.add("root", "AK", "SK", root=True)
        store.catalog.buckets.create("b", "root")
    return store


def test_unflushed_small_blob_is_rewritten_at_start(tmp_path) -> None:
    store = _store(str(tmp_path))
    blob_id = _put_small(store, "k", b"journalled bytes")
    assert dict(store.catalog.journal.entries()) == {blob_id: b"journalled bytes"}
    # a power cut loses the file that was never fsync'd; the journal entry is durable
    os.unlink(store.nodes["n0"].blobs.path(blob_id))
    store.close()
    reopened = _store(str(tmp_path))
    with reopened.nodes["n0"].blobs.open(blob_id) as fh:
        assert fh.read() == b"journalled bytes"
    assert reopened.catalog.journal.entries() == []
    reopened.close()


def test_flusher_drops_journal_after_sync(tmp_path) -> None:
    store = _store(str(tmp_path))
    ids = [_put_small(store, f"k{i}", bytes([i]) * 100) for i in range(20)]
    assert JournalFlusher(store).run_once() == 20
    assert store.catalog.journal.entries() == []
    assert all(store.nodes["n0"].blobs.exists(b) for b in ids)
    store.close()


def test_deleting_an_unflushed_object_drops_its_journal_entry(tmp_path) -> None:
    store = _store(str(tmp_path))
    blob_id = _put_small(store, "k", b"short-lived")
    store.free(store.objects.delete("b", "k"))
    assert store.catalog.journal.entries() == []
    assert not store.nodes["n0"].blobs.exists(blob_id)
    store.close()
