"""Flexible checksums: the x-amz-checksum-* values of objects and parts.

A value is the base64 of the raw big-endian digest. Three things are built
from one primitive, `Checksum` (update / digest / b64):

- the checksum of a body, computed while it streams (`new()`);
- a multipart COMPOSITE checksum: the checksum of the concatenated raw part
  digests, suffixed "-<part count>" (`composite()`);
- a multipart FULL_OBJECT checksum, CRCs only: the CRC of the whole object,
  combined from the part CRCs and lengths without reading the data again
  (`full_object_crc()`).

Combining uses CRC algebra over GF(2): for these CRCs (reflected, initial
value and final xor all ones)

    crc(A || B) = crc(A) * x^(8 * len(B))  mod P   xor  crc(B)

with polynomials held in the reflected bit order the CRC registers use
(the top bit is x^0). x^(8n) mod P is built from precomputed x^(2^k) mod P
by repeated multiplication, so each part costs O(log n) products, and one
when all parts have the same length (cached).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from functools import lru_cache

from awscrt import checksums as crt

from manta.server.s3 import errors as s3e

__all__ = [
    "ALGORITHMS",
    "CRC_ALGORITHMS",
    "Checksum",
    "algorithm_from_header",
    "combine_crc",
    "composite",
    "decode",
    "full_object_crc",
    "header_name",
    "new",
]

ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
CRC_ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME")
_HEADER_PREFIX = "x-amz-checksum-"
_DIGEST_SIZES = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}
_CRC_FUNCTIONS: dict[str, Callable[..., int]] = {
    "CRC32": zlib.crc32,
    "CRC32C": crt.crc32c,
    "CRC64NVME": crt.crc64nvme,
}
# Reflected generator polynomials and register widths.
_CRC_POLYNOMIALS = {
    "CRC32": (0xEDB88320, 32),
    "CRC32C": (0x82F63B78, 32),
    "CRC64NVME": (0x9A6C9329AC4BC9B5, 64),
}


def _canonical(algorithm: str) -> str:
    name = algorithm.upper()
    if name not in ALGORITHMS:
        raise s3e.InvalidRequest(f"Checksum algorithm {algorithm!r} is not supported.")
    return name


def header_name(algorithm: str) -> str:
    return _HEADER_PREFIX + _canonical(algorithm).lower()


def algorithm_from_header(name: str) -> str | None:
    """The algorithm of a checksum header ("x-amz-checksum-crc32" -> "CRC32"), else None."""
    name = name.lower()
    if not name.startswith(_HEADER_PREFIX):
        return None
    algorithm = name[len(_HEADER_PREFIX) :].upper()
    return algorithm if algorithm in ALGORITHMS else None


class Checksum:
    """A running checksum of one algorithm."""

    __slots__ = ("algorithm",)

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm

    def update(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def digest(self) -> bytes:
        """The raw big-endian value."""
        raise NotImplementedError

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc(Checksum):
    __slots__ = ("_function", "_size", "value")

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        self._function = _CRC_FUNCTIONS[algorithm]
        self._size = _DIGEST_SIZES[algorithm]
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = self._function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self._size, "big")


class _Hash(Checksum):
    __slots__ = ("_hash",)

    def __init__(self, algorithm: str) -> None:
        super().__init__(algorithm)
        self._hash = hashlib.new(algorithm.lower())

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def new(algorithm: str) -> Checksum:
    name = _canonical(algorithm)
    return _Crc(name) if name in _CRC_FUNCTIONS else _Hash(name)


def decode(algorithm: str, value: str) -> bytes:
    """The raw digest of a client-sent base64 value; BadDigest if it is not the base64
    of a digest of the algorithm's size (as for a value that does not match)."""
    name = _canonical(algorithm)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _DIGEST_SIZES[name]:
        raise s3e.BadDigest(f"Value for {header_name(name)} is not a valid {name} checksum.")
    return raw


def composite(algorithm: str, part_digests: list[bytes]) -> str:
    """COMPOSITE multipart checksum: b64(hash(raw part digests)) + "-<count>"."""
    checksum = new(algorithm)
    for digest in part_digests:
        checksum.update(digest)
    return f"{checksum.b64()}-{len(part_digests)}"


def _multiply(a: int, b: int, polynomial: int, top: int) -> int:
    """a * b mod P, both in reflected order (bit `top` is x^0)."""
    product = 0
    bit = top
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ polynomial if b & 1 else b >> 1
    return product


def _powers_of_x(polynomial: int, width: int) -> tuple[int, ...]:
    """x^(2^k) mod P for k = 0..63, enough for any length in bits below 2^64."""
    top = 1 << (width - 1)
    powers = [top >> 1]  # x^1
    for _ in range(63):
        powers.append(_multiply(powers[-1], powers[-1], polynomial, top))
    return tuple(powers)


_POWERS = {name: _powers_of_x(*params) for name, params in _CRC_POLYNOMIALS.items()}


@lru_cache(maxsize=256)
def _x_to_8n(algorithm: str, length: int) -> int:
    """x^(8 * length) mod P: the factor that shifts a CRC past `length` bytes."""
    polynomial, width = _CRC_POLYNOMIALS[algorithm]
    top = 1 << (width - 1)
    result = top  # x^0
    bits = 8 * length
    k = 0
    while bits:
        if bits & 1:
            result = _multiply(_POWERS[algorithm][k], result, polynomial, top)
        bits >>= 1
        k += 1
    return result


def combine_crc(algorithm: str, crc_a: int, crc_b: int, length_b: int) -> int:
    """crc(A || B) from crc(A), crc(B) and len(B)."""
    polynomial, width = _CRC_POLYNOMIALS[algorithm]
    shift = _x_to_8n(algorithm, length_b)
    return _multiply(shift, crc_a, polynomial, 1 << (width - 1)) ^ crc_b


def full_object_crc(algorithm: str, parts: list[tuple[bytes, int]]) -> str:
    """FULL_OBJECT checksum from (raw part CRC, part length) pairs, in part order."""
    name = _canonical(algorithm)
    if name not in _CRC_POLYNOMIALS:
        raise s3e.InvalidRequest(f"The FULL_OBJECT checksum type is not supported for {name}.")
    crc = 0  # the CRC of no bytes
    for raw, length in parts:
        crc = combine_crc(name, crc, int.from_bytes(raw, "big"), length)
    return base64.b64encode(crc.to_bytes(_DIGEST_SIZES[name], "big")).decode("ascii")
