from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest
from awscrt import checksums as crt

from manta.server.s3 import checksums
from manta.server.s3 import errors as s3e

CHECK = b"123456789"
DIRECT = {"CRC32": zlib.crc32, "CRC32C": crt.crc32c, "CRC64NVME": crt.crc64nvme}


def raw(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def digest(algorithm: str, data: bytes) -> bytes:
    checksum = checksums.new(algorithm)
    checksum.update(data)
    return checksum.digest()


@pytest.mark.parametrize(
    ("algorithm", "data", "expected"),
    [
        ("CRC32", b"", raw(0, 4)),
        ("CRC32", b"hello", raw(0x3610A686, 4)),
        ("CRC32", CHECK, raw(0xCBF43926, 4)),
        ("CRC32C", CHECK, raw(0xE3069283, 4)),
        ("CRC32C", b"", raw(0, 4)),
        ("CRC64NVME", CHECK, raw(0xAE8B14860A799888, 8)),
        ("SHA1", b"hello", hashlib.sha1(b"hello").digest()),
        ("SHA256", b"", hashlib.sha256(b"").digest()),
    ],
)
def test_known_vectors(algorithm, data, expected):
    assert digest(algorithm, data) == expected
    checksum = checksums.new(algorithm)
    checksum.update(data)
    assert checksum.b64() == b64(expected)


def test_known_b64_values():
    assert checksums.new("crc32").b64() == "AAAAAA=="
    assert b64(digest("CRC32C", b"a" * 66560)) == "sOO8/Q=="


@pytest.mark.parametrize("algorithm", checksums.ALGORITHMS)
def test_incremental_updates_match_one_shot(algorithm):
    data = os.urandom(100_000)
    checksum = checksums.new(algorithm)
    view = memoryview(data)
    for i in range(0, len(data), 7777):
        checksum.update(view[i : i + 7777])
    assert checksum.digest() == digest(algorithm, data)


def test_header_names():
    assert checksums.header_name("CRC32") == "x-amz-checksum-crc32"
    assert checksums.header_name("crc64nvme") == "x-amz-checksum-crc64nvme"
    assert checksums.algorithm_from_header("x-amz-checksum-sha256") == "SHA256"
    assert checksums.algorithm_from_header("X-Amz-Checksum-CRC32C") == "CRC32C"
    assert checksums.algorithm_from_header("x-amz-checksum-algorithm") is None
    assert checksums.algorithm_from_header("x-amz-checksum-type") is None
    assert checksums.algorithm_from_header("content-md5") is None


def test_unknown_algorithm():
    with pytest.raises(s3e.InvalidRequest):
        checksums.new("MD5")
    with pytest.raises(s3e.InvalidRequest):
        checksums.header_name("XXHASH64")


def test_decode():
    assert checksums.decode("CRC32", "AAAAAA==") == b"\0\0\0\0"
    for bad in ("AAAA", "not base64!", "AAAAAAAAAAA=", ""):
        with pytest.raises(s3e.BadDigest, match="x-amz-checksum-crc32"):
            checksums.decode("CRC32", bad)


@pytest.mark.parametrize("algorithm", checksums.ALGORITHMS)
def test_composite(algorithm):
    parts = [os.urandom(1000), os.urandom(2000), os.urandom(5)]
    part_digests = [digest(algorithm, part) for part in parts]
    expected = b64(digest(algorithm, b"".join(part_digests))) + "-3"
    assert checksums.composite(algorithm, part_digests) == expected


@pytest.mark.parametrize("algorithm", checksums.CRC_ALGORITHMS)
@pytest.mark.parametrize(
    "sizes", [[0], [1], [5, 0, 7], [1000, 1000, 1000, 17], [65536, 1, 300_000], []]
)
def test_full_object_crc_matches_the_crc_of_the_whole(algorithm, sizes):
    parts = [os.urandom(size) for size in sizes]
    pairs = [(digest(algorithm, part), len(part)) for part in parts]
    whole = digest(algorithm, b"".join(parts))
    assert checksums.full_object_crc(algorithm, pairs) == b64(whole)


@pytest.mark.parametrize("algorithm", checksums.CRC_ALGORITHMS)
def test_combine_matches_awscrt(algorithm):
    combine = getattr(crt, f"combine_{algorithm.lower()}", None)
    if combine is None:
        pytest.skip("this awscrt has no CRC combine functions")
    for length in (1, 8, 1023, 5 * 2**20, 5 * 2**30, 2**40 + 3):
        a, b = int.from_bytes(os.urandom(8)), int.from_bytes(os.urandom(8))
        mask = (1 << (8 * len(digest(algorithm, b"")))) - 1
        a, b = a & mask, b & mask
        assert checksums.combine_crc(algorithm, a, b, length) == combine(a, b, length)
    assert checksums.combine_crc(algorithm, 12345, 0, 0) == combine(12345, 0, 0) == 12345


def test_full_object_is_only_for_crcs():
    with pytest.raises(s3e.InvalidRequest):
        checksums.full_object_crc("SHA256", [(b"\0" * 32, 1)])
