"""verify_file: the check a replica passes before a task reads it in place."""

from __future__ import annotations

import os
from pathlib import Path

from storage.blobs import VERIFY_PIECE
from storage.replicas import BLOCK, block_sums, verify_file


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_a_good_replica_passes(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK + 17)
    meta = {"size": len(data), "blocks": block_sums(data)}
    assert verify_file(write(tmp_path / "b", data), meta) is None
    assert verify_file(write(tmp_path / "e", b""), {"size": 0, "blocks": block_sums(b"")}) is None


def test_damage_in_any_block_is_found(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK + 17)
    meta = {"size": len(data), "blocks": block_sums(data)}
    # block edges, and the edges of the pieces a block is read in
    for offset in (0, VERIFY_PIECE - 1, VERIFY_PIECE, BLOCK - 1, BLOCK, BLOCK + VERIFY_PIECE, 2 * BLOCK + 16):
        bad = bytearray(data)
        bad[offset] ^= 1
        assert verify_file(write(tmp_path / "b", bytes(bad)), meta) == "checksum mismatch", offset


def test_wrong_size_and_missing_files_are_found(tmp_path: Path) -> None:
    data = os.urandom(BLOCK + 5)
    meta = {"size": len(data), "blocks": block_sums(data)}
    assert verify_file(write(tmp_path / "short", data[:BLOCK]), meta) == f"size {BLOCK}, expected {len(data)}"
    assert verify_file(write(tmp_path / "long", data + b"x"), meta) == "checksum mismatch"
    assert verify_file(str(tmp_path / "absent"), meta) == "missing"
