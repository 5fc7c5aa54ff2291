"""Blob-store contract: every backend (a directory, a ZFS dataset) passes these tests.

A backend joins the suite by adding one entry to `BACKENDS`: a function that opens a
store on a given location (a directory; for ZFS a POOL/DATASET: a fresh dataset on the
session's file-backed pool, created and mounted by `ensure_dataset`). Opening a second
store on the same location stands for a restart of the node.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable

import pytest

from storage.blobs import BlobInfo, DirectoryBlobStore, verify_file
from storage.errors import BlobMissing
from storage.replicas import block_sums
from storage.zfs import CommandDriver

OpenStore = Callable[[], DirectoryBlobStore]


def _directory_backend(root: str) -> DirectoryBlobStore:
    return DirectoryBlobStore(root)


def _zfs_backend(dataset: str) -> DirectoryBlobStore:
    return DirectoryBlobStore(CommandDriver().ensure_dataset(dataset))


BACKENDS: dict[str, Callable[[str], DirectoryBlobStore]] = {
    "dir": _directory_backend,
    "zfs": _zfs_backend,  # marked `zfs`: skips without zfs-fuse/OpenZFS, required in CI
}
MARKS = {"zfs": [pytest.mark.zfs]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(BACKENDS)])
def open_store(request: pytest.FixtureRequest, tmp_path: object) -> OpenStore:
    if request.param == "zfs":
        location = request.getfixturevalue("zfs_session_pool").dataset(f"node-{secrets.token_hex(4)}")
    else:
        location = os.path.join(str(tmp_path), "node")
    make = BACKENDS[request.param]
    return lambda: make(location)


@pytest.fixture
def blobs(open_store: OpenStore) -> DirectoryBlobStore:
    return open_store()


def read_all(store: DirectoryBlobStore, blob_id: str) -> bytes:
    with store.open(blob_id) as fh:
        return fh.read()


def problem(store: DirectoryBlobStore, blob_id: str, data: bytes) -> str | None:
    """The nodes' check of a replica against its catalog record (size and block CRC32Cs)."""
    return verify_file(store.path(blob_id), {"size": len(data), "blocks": block_sums(data)})


class TestBlobStoreContract:
    def test_write_commit_round_trip_with_hashes(self, blobs: DirectoryBlobStore) -> None:
        pieces: list[bytes | memoryview] = [b"hello ", memoryview(b"blob "), b"world", b"", os.urandom(300_000)]
        data = b"".join(bytes(p) for p in pieces)
        writer = blobs.writer()
        for piece in pieces:
            writer.write(piece)
        assert writer.size == len(data)
        assert not blobs.exists(writer.blob_id), "visible before commit"
        info = writer.commit()
        assert isinstance(info, BlobInfo)
        assert info.blob_id == writer.blob_id
        assert info.size == len(data)
        assert info.md5 == hashlib.md5(data).digest()
        assert info.sha256 == hashlib.sha256(data).digest()
        assert blobs.exists(info.blob_id)
        assert blobs.size(info.blob_id) == len(data)
        assert read_all(blobs, info.blob_id) == data
        assert [b for b, _ in blobs.iter_blobs()] == [info.blob_id]
        assert blobs.sweep_temp() == 0, "a committed write left its temp file behind"

    def test_empty_blob(self, blobs: DirectoryBlobStore) -> None:
        info = blobs.put(b"")
        assert info.size == 0
        assert info.md5 == hashlib.md5(b"").digest()
        assert read_all(blobs, info.blob_id) == b""
        assert problem(blobs, info.blob_id, b"") is None

    def test_ids_are_unique_random_128_bit_hex(self, blobs: DirectoryBlobStore) -> None:
        ids = {blobs.put(b"x").blob_id for _ in range(50)}
        assert len(ids) == 50
        assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)

    def test_abort_leaves_no_temp_file_and_no_blob(self, blobs: DirectoryBlobStore) -> None:
        writer = blobs.writer()
        writer.write(b"x" * 100_000)
        writer.abort()
        writer.abort()  # idempotent
        assert not blobs.exists(writer.blob_id)
        assert list(blobs.iter_blobs()) == []
        assert blobs.sweep_temp() == 0, "abort left its temp file behind"

    def test_put_failure_aborts(self, blobs: DirectoryBlobStore) -> None:
        with pytest.raises(TypeError):
            blobs.put("not bytes")  # type: ignore[arg-type]
        assert list(blobs.iter_blobs()) == []
        assert blobs.sweep_temp() == 0

    def test_sweep_temp_removes_interrupted_writes(self, open_store: OpenStore) -> None:
        store = open_store()
        writer = store.writer()
        writer.write(b"half a blob")
        # the process "crashes" here; a restarted node sweeps the leftover
        restarted = open_store()
        assert restarted.sweep_temp() == 1
        assert restarted.sweep_temp() == 0
        writer.abort()  # the old handle goes away quietly
        assert list(restarted.iter_blobs()) == []

    def test_sweep_temp_with_an_age_leaves_files_being_written(self, open_store: OpenStore) -> None:
        """A start over a shared catalog: another front door may be writing right now."""
        store = open_store()
        busy, stale = store.writer(), store.writer()
        busy.write(b"being written")
        stale.write(b"left by a crash")
        (stale_path,) = [os.path.join(store.tmp_dir, name) for name in os.listdir(store.tmp_dir)
                         if os.path.getsize(os.path.join(store.tmp_dir, name)) == len(b"left by a crash")]
        os.utime(stale_path, (time.time() - 7200, time.time() - 7200))
        assert store.sweep_temp(3600) == 1
        assert not os.path.exists(stale_path)
        busy.commit()
        stale.abort()
        assert store.sweep_temp() == 0

    def test_committed_blobs_survive_restart(self, open_store: OpenStore) -> None:
        info = open_store().put(b"durable")
        restarted = open_store()
        assert restarted.sweep_temp() == 0
        assert read_all(restarted, info.blob_id) == b"durable"
        assert problem(restarted, info.blob_id, b"durable") is None

    def test_verify_detects_a_flipped_byte(self, blobs: DirectoryBlobStore) -> None:
        data = os.urandom(3 * (1 << 20) + 17)  # spans several read blocks
        info = blobs.put(data)
        assert problem(blobs, info.blob_id, data) is None
        with open(blobs.path(info.blob_id), "r+b") as fh:
            fh.seek(2 * (1 << 20) + 5)
            byte = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([byte[0] ^ 0x01]))
        assert problem(blobs, info.blob_id, data) == "checksum mismatch"

    def test_missing_blob(self, blobs: DirectoryBlobStore) -> None:
        missing = "0" * 32
        assert not blobs.exists(missing)
        with pytest.raises(BlobMissing):
            blobs.open(missing)
        with pytest.raises(BlobMissing):
            blobs.size(missing)
        assert problem(blobs, missing, b"") == "missing"
        assert blobs.delete(missing) is False

    def test_delete(self, blobs: DirectoryBlobStore) -> None:
        info = blobs.put(b"gone soon")
        assert blobs.delete(info.blob_id) is True
        assert not blobs.exists(info.blob_id)
        assert blobs.delete(info.blob_id) is False

    @pytest.mark.parametrize("bad", [
        "",
        "../../../../etc/passwd",
        "0" * 31,
        "0" * 33,
        "A" * 32,
        "g" * 32,
        "0" * 30 + "/x",
        "0" * 30 + "..",
        "0" * 31 + "\0",
        "0" * 32 + "\n",
        "\n" + "0" * 32,
        "/" + "0" * 31,
        "0" * 32 + "/../x",
    ])
    def test_path_rejects_bad_ids(self, blobs: DirectoryBlobStore, bad: str) -> None:
        for call in (blobs.path, blobs.open, blobs.exists, blobs.size, blobs.delete):
            with pytest.raises(ValueError):
                call(bad)

    def test_path_stays_inside_the_store(self, blobs: DirectoryBlobStore) -> None:
        info = blobs.put(b"x")
        path = os.path.realpath(blobs.path(info.blob_id))
        assert path.startswith(os.path.realpath(blobs.root) + os.sep)
        assert os.path.basename(path) == info.blob_id
