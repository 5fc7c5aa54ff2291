"""aws-chunked bodies and flexible checksums against the real server.

The streaming PUTs are built by hand here (SigV4 seed signature, chunk signatures,
trailers, trailer signature, as the AWS "Signature Calculations for the Authorization
Header: Transferring Payload in Multiple Chunks" pages describe) and sent with
http.client, so the server is checked against an independent implementation, not
its own. Flexible checksums from headers go through boto3.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from awscrt import checksums as crt
from botocore.exceptions import ClientError

from tests.conftest import ROOT_AK, ROOT_SK, Server

REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"


# -- an independent client side of SigV4 and aws-chunked ----------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "CRC32":
        return b64(zlib.crc32(data).to_bytes(4, "big"))
    if algorithm == "CRC32C":
        return b64(crt.crc32c(data).to_bytes(4, "big"))
    if algorithm == "CRC64NVME":
        return b64(crt.crc64nvme(data).to_bytes(8, "big"))
    return b64(hashlib.new(algorithm.lower(), data).digest())


def hmac_sha256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class Signer:
    amz_date: str
    secret: str = ROOT_SK

    @classmethod
    def now(cls) -> Signer:
        return cls(dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))

    @property
    def scope(self) -> str:
        return f"{self.amz_date[:8]}/{REGION}/s3/aws4_request"

    @property
    def key(self) -> bytes:
        key = ("AWS4" + self.secret).encode()
        for part in (self.amz_date[:8], REGION, "s3", "aws4_request"):
            key = hmac_sha256(key, part)
        return key

    def sign_request(self, method: str, path: str, headers: dict[str, str], payload_hash: str) -> str:
        """Adds x-amz-date, x-amz-content-sha256 and Authorization; returns the signature."""
        headers["x-amz-date"] = self.amz_date
        headers["x-amz-content-sha256"] = payload_hash
        names = sorted(headers)
        canonical = "\n".join([
            method, quote(path, safe="/~"), "",
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            ";".join(names), payload_hash])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", self.amz_date, self.scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self.key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ROOT_AK}/{self.scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return signature

    def chunk_signature(self, previous: str, data: bytes) -> str:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope, previous,
                             EMPTY_SHA256, hashlib.sha256(data).hexdigest()])
        return hmac.new(self.key, to_sign.encode(), hashlib.sha256).hexdigest()

    def trailer_signature(self, previous: str, trailers: list[tuple[str, str]]) -> str:
        canonical = "".join(f"{name}:{value}\n" for name, value in trailers)
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope, previous,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        return hmac.new(self.key, to_sign.encode(), hashlib.sha256).hexdigest()


def frame(chunks: list[bytes], trailers: list[tuple[str, str]] = (),  # type: ignore[assignment]
          signatures: list[str] | None = None, trailer_signature: str | None = None) -> bytes:
    """An aws-chunked body. `signatures` has one per chunk plus one for the final 0 chunk."""
    out = []
    for i, data in enumerate([*chunks, b""]):
        ext = f";chunk-signature={signatures[i]}" if signatures is not None else ""
        out.append(f"{len(data):x}{ext}\r\n".encode() + data + (b"\r\n" if data else b""))
    for name, value in trailers:
        out.append(f"{name}:{value}\r\n".encode())
    if trailer_signature is not None:
        out.append(f"x-amz-trailer-signature:{trailer_signature}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


def chain(signer: Signer, seed: str, chunks: list[bytes]) -> list[str]:
    signatures = []
    previous = seed
    for data in [*chunks, b""]:
        previous = signer.chunk_signature(previous, data)
        signatures.append(previous)
    return signatures


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        found = re.search(rb"<Code>(.*?)</Code>", self.body)
        return found.group(1).decode() if found else None

    def xml(self) -> ET.Element:
        return ET.fromstring(self.body)


def send(server: Server, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Reply:
    """Send `body` in small, irregular pieces so framing is split at odd places.

    A server may answer an error before reading the whole body (as S3 does) and close
    the connection; like real clients, read its answer anyway."""
    pieces = []
    pos, step = 0, 1
    while pos < len(body):
        pieces.append(body[pos : pos + step])
        pos += step
        step = step * 7 % 9973 + 1
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        try:
            conn.request(method, path, body=iter(pieces) if pieces else None, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def put_streaming(server: Server, bucket: str, key: str, mode: str, chunks: list[bytes], *,
                  trailer: tuple[str, str] | None = None, content_encoding: str = "aws-chunked",
                  tamper: str = "", decoded_length: int | None = None) -> Reply:
    """A streaming PUT in one of the three aws-chunked modes, optionally spoiled by `tamper`:
    "data" (a byte of chunk 2 flipped after signing), "final" (bad final chunk signature),
    "seed" (chunk signatures chained from another seed), "trailer-signature"."""
    signer = Signer.now()
    path = f"/{bucket}/{key}"
    payload = b"".join(chunks)
    headers = {"host": f"127.0.0.1:{server.port}", "content-encoding": content_encoding,
               "x-amz-decoded-content-length": str(len(payload) if decoded_length is None else decoded_length)}
    trailers = [trailer] if trailer else []
    if trailer:
        headers["x-amz-trailer"] = trailer[0]
    signed = mode != UNSIGNED_TRAILER
    # the signature covers content-length: compute the framing size first (signatures are fixed-width)
    dummy = ["0" * 64] * (len(chunks) + 1) if signed else None
    dummy_trailer_sig = "0" * 64 if mode == SIGNED_TRAILER else None
    headers["content-length"] = str(len(frame(chunks, trailers, dummy, dummy_trailer_sig)))
    seed = signer.sign_request("PUT", path, headers, mode)
    signatures = trailer_sig = None
    if signed:
        signatures = chain(signer, "f" * 64 if tamper == "seed" else seed, chunks)
        if tamper == "final":
            signatures[-1] = signer.chunk_signature(signatures[-2], b"x")
        if mode == SIGNED_TRAILER:
            trailer_sig = signer.trailer_signature(signatures[-1], trailers)
            if tamper == "trailer-signature":
                trailer_sig = signer.trailer_signature(signatures[-1], [("x-amz-checksum-crc32", "AAAAAA==")])
    sent = [bytearray(c) for c in chunks]
    if tamper == "data":
        sent[1][100] ^= 0x01
    body = frame([bytes(c) for c in sent], trailers, signatures, trailer_sig)
    assert len(body) == int(headers["content-length"])
    return send(server, "PUT", quote(path, safe="/~"), headers, body)


def signed_put(server: Server, bucket: str, key: str, body: bytes, **extra: str) -> Reply:
    signer = Signer.now()
    path = f"/{bucket}/{key}"
    headers = {"host": f"127.0.0.1:{server.port}", "content-length": str(len(body)), **extra}
    signer.sign_request("PUT", path, headers, hashlib.sha256(body).hexdigest())
    return send(server, "PUT", quote(path, safe="/~"), headers, body)


def signed_get(server: Server, bucket: str, key: str, **extra: str) -> Reply:
    signer = Signer.now()
    path = f"/{bucket}/{key}"
    headers = {"host": f"127.0.0.1:{server.port}", **extra}
    signer.sign_request("GET", path, headers, EMPTY_SHA256)
    return send(server, "GET", quote(path, safe="/~"), headers)


def exists(s3: object, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def get(s3: object, bucket: str, key: str, **kwargs: object) -> tuple[dict[str, object], bytes]:
    response = s3.get_object(Bucket=bucket, Key=key, **kwargs)  # type: ignore[attr-defined]
    body = response.pop("Body")
    try:
        return response, body.read()
    finally:
        body.close()


@pytest.fixture
def chunks() -> list[bytes]:
    return [os.urandom(8192), os.urandom(8192), os.urandom(8192), os.urandom(1234)]


@pytest.fixture
def names() -> Iterator[str]:
    yield from (f"obj-{i}" for i in range(1000))


# -- (a) unsigned payload with a trailing checksum ----------------------------------


def test_unsigned_trailer_put_stores_the_payload(server: Server, s3: object, bucket: str,
                                                chunks: list[bytes]) -> None:
    payload = b"".join(chunks)
    crc = checksum("CRC32", payload)
    reply = put_streaming(server, bucket, "trailer.bin", UNSIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", crc))
    assert reply.status == 200, reply.body
    assert reply.headers["etag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    assert reply.headers.get("x-amz-checksum-crc32") == crc

    plain = signed_get(server, bucket, "trailer.bin")
    assert plain.status == 200
    assert plain.body == payload, "the stored object is not the decoded payload"
    assert plain.headers["content-length"] == str(len(payload))
    assert "content-encoding" not in plain.headers
    assert "x-amz-checksum-crc32" not in plain.headers  # only with x-amz-checksum-mode: ENABLED
    enabled = signed_get(server, bucket, "trailer.bin", **{"x-amz-checksum-mode": "ENABLED"})
    assert enabled.headers["x-amz-checksum-crc32"] == crc
    assert enabled.headers.get("x-amz-checksum-type") == "FULL_OBJECT"
    meta, body = get(s3, bucket, "trailer.bin", ChecksumMode="ENABLED")  # botocore validates it too
    assert body == payload
    assert meta["ChecksumCRC32"] == crc
    head = s3.head_object(Bucket=bucket, Key="trailer.bin", ChecksumMode="ENABLED")  # type: ignore[attr-defined]
    assert head["ChecksumCRC32"] == crc and head["ContentLength"] == len(payload)


def test_unsigned_trailer_with_a_wrong_crc_is_bad_digest(server: Server, s3: object, bucket: str,
                                                        chunks: list[bytes]) -> None:
    wrong = checksum("CRC32", b"something else")
    reply = put_streaming(server, bucket, "bad-crc.bin", UNSIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", wrong))
    assert (reply.status, reply.code) == (400, "BadDigest")
    assert not exists(s3, bucket, "bad-crc.bin")


def test_a_failed_put_leaves_the_previous_version(server: Server, s3: object, bucket: str,
                                                 chunks: list[bytes]) -> None:
    s3.put_object(Bucket=bucket, Key="keep.bin", Body=b"version one")  # type: ignore[attr-defined]
    reply = put_streaming(server, bucket, "keep.bin", UNSIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", checksum("CRC32", b"nope")))
    assert reply.code == "BadDigest"
    assert get(s3, bucket, "keep.bin")[1] == b"version one"


@pytest.mark.parametrize("delta", [-1, 1])
def test_decoded_length_must_match(server: Server, s3: object, bucket: str, chunks: list[bytes],
                                   delta: int) -> None:
    payload = b"".join(chunks)
    reply = put_streaming(server, bucket, "len.bin", UNSIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", checksum("CRC32", payload)),
                          decoded_length=len(payload) + delta)
    assert reply.status == 400 and reply.code in ("IncompleteBody", "InvalidRequest"), reply.body
    assert not exists(s3, bucket, "len.bin")


def test_body_cut_before_the_final_chunk(server: Server, s3: object, bucket: str,
                                         chunks: list[bytes]) -> None:
    signer = Signer.now()
    payload = b"".join(chunks)
    body = frame(chunks, [("x-amz-checksum-crc32", checksum("CRC32", payload))])
    body = body[: body.rindex(b"0\r\n")]  # everything up to the last chunk
    headers = {"host": f"127.0.0.1:{server.port}", "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(payload)), "content-length": str(len(body)),
               "x-amz-trailer": "x-amz-checksum-crc32"}
    signer.sign_request("PUT", f"/{bucket}/cut.bin", headers, UNSIGNED_TRAILER)
    reply = send(server, "PUT", f"/{bucket}/cut.bin", headers, body)
    assert (reply.status, reply.code) == (400, "IncompleteBody")
    assert not exists(s3, bucket, "cut.bin")


# -- (b) signed chunks ----------------------------------------------------------------


def test_signed_chunks_are_stored(server: Server, s3: object, bucket: str, chunks: list[bytes]) -> None:
    reply = put_streaming(server, bucket, "signed.bin", SIGNED, chunks)
    assert reply.status == 200, reply.body
    payload = b"".join(chunks)
    assert reply.headers["etag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    meta, body = get(s3, bucket, "signed.bin")
    assert body == payload
    assert "ContentEncoding" not in meta


def test_signed_single_chunk_and_empty_body(server: Server, s3: object, bucket: str) -> None:
    assert put_streaming(server, bucket, "one.bin", SIGNED, [b"just one chunk"]).status == 200
    assert get(s3, bucket, "one.bin")[1] == b"just one chunk"
    assert put_streaming(server, bucket, "empty.bin", SIGNED, []).status == 200
    assert get(s3, bucket, "empty.bin")[1] == b""


@pytest.mark.parametrize("tamper", ["data", "final", "seed"])
def test_tampered_signed_chunks_are_rejected(server: Server, s3: object, bucket: str,
                                             chunks: list[bytes], tamper: str) -> None:
    reply = put_streaming(server, bucket, "tampered.bin", SIGNED, chunks, tamper=tamper)
    assert (reply.status, reply.code) == (403, "SignatureDoesNotMatch"), reply.body
    assert not exists(s3, bucket, "tampered.bin")


# -- (c) signed chunks with a signed trailer ------------------------------------------


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_signed_trailer_put(server: Server, s3: object, bucket: str, chunks: list[bytes],
                            algorithm: str) -> None:
    payload = b"".join(chunks)
    value = checksum(algorithm, payload)
    name = f"x-amz-checksum-{algorithm.lower()}"
    reply = put_streaming(server, bucket, "st.bin", SIGNED_TRAILER, chunks, trailer=(name, value))
    assert reply.status == 200, reply.body
    assert reply.headers.get(name) == value
    meta, body = get(s3, bucket, "st.bin", ChecksumMode="ENABLED")
    assert body == payload
    assert meta[f"Checksum{algorithm}"] == value


@pytest.mark.parametrize(("tamper", "trailer_value", "code", "status"), [
    ("trailer-signature", None, "SignatureDoesNotMatch", 403),
    ("data", None, "SignatureDoesNotMatch", 403),
    ("", "AAAAAA==", "BadDigest", 400),
])
def test_signed_trailer_rejections(server: Server, s3: object, bucket: str, chunks: list[bytes],
                                   tamper: str, trailer_value: str | None, code: str, status: int) -> None:
    value = trailer_value or checksum("CRC32", b"".join(chunks))
    reply = put_streaming(server, bucket, "st-bad.bin", SIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", value), tamper=tamper)
    assert (reply.status, reply.code) == (status, code), reply.body
    assert not exists(s3, bucket, "st-bad.bin")


# -- (d) flexible checksums from headers ---------------------------------------------

ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_flexible_checksum_stored_and_echoed(s3: object, bucket: str, algorithm: str) -> None:
    data = os.urandom(100_000)
    expected = checksum(algorithm, data)
    field = f"Checksum{algorithm}"
    put = s3.put_object(Bucket=bucket, Key="sum.bin", Body=data, ChecksumAlgorithm=algorithm)  # type: ignore[attr-defined]
    assert put[field] == expected
    meta, body = get(s3, bucket, "sum.bin", ChecksumMode="ENABLED")
    assert body == data
    assert meta[field] == expected
    assert meta.get("ChecksumType") == "FULL_OBJECT"
    head = s3.head_object(Bucket=bucket, Key="sum.bin", ChecksumMode="ENABLED")  # type: ignore[attr-defined]
    assert head[field] == expected
    ranged, part = get(s3, bucket, "sum.bin", ChecksumMode="ENABLED", Range="bytes=10-99")
    assert part == data[10:100]
    assert field not in ranged, "a ranged GET must not carry the whole object's checksum"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_flexible_checksum_is_bad_digest(s3: object, s3_once: object, bucket: str, algorithm: str) -> None:
    wrong = checksum(algorithm, b"not the body")
    with pytest.raises(ClientError) as caught:
        s3_once.put_object(Bucket=bucket, Key="wrong-sum.bin", Body=b"the body",  # type: ignore[attr-defined]
                      **{f"Checksum{algorithm}": wrong})
    assert caught.value.response["Error"]["Code"] == "BadDigest"
    assert not exists(s3, bucket, "wrong-sum.bin")


@pytest.mark.parametrize("value", ["not base64!", "AAAA", b64(b"\0" * 5)])
def test_malformed_flexible_checksum_is_bad_digest(server: Server, s3: object, bucket: str,
                                                   value: str) -> None:
    reply = signed_put(server, bucket, "malformed-sum.bin", b"the body", **{"x-amz-checksum-crc32": value})
    assert (reply.status, reply.code) == (400, "BadDigest"), reply.body
    assert not exists(s3, bucket, "malformed-sum.bin")


@pytest.mark.parametrize(("md5", "status", "code"), [
    ("right", 200, None),
    ("wrong", 400, "BadDigest"),
    ("not base64!", 400, "InvalidDigest"),
    (b64(b"\0" * 15), 400, "InvalidDigest"),
    ("", 400, "InvalidDigest"),
])
def test_content_md5(server: Server, s3: object, bucket: str, md5: str, status: int,
                     code: str | None) -> None:
    body = os.urandom(5000)
    value = {"right": b64(hashlib.md5(body).digest()),
             "wrong": b64(hashlib.md5(b"other").digest())}.get(md5, md5)
    reply = signed_put(server, bucket, "md5.bin", body, **{"content-md5": value})
    assert (reply.status, reply.code) == (status, code), reply.body
    assert exists(s3, bucket, "md5.bin") == (status == 200)
    if status == 200:
        assert reply.headers["etag"] == f'"{hashlib.md5(body).hexdigest()}"'


@pytest.mark.parametrize(("sent", "stored"), [
    ("aws-chunked", None),
    ("aws-chunked,gzip", "gzip"),
    ("gzip, aws-chunked", "gzip"),
    ("AWS-Chunked,br", "br"),
])
def test_aws_chunked_is_stripped_from_content_encoding(server: Server, s3: object, bucket: str,
                                                       chunks: list[bytes], sent: str,
                                                       stored: str | None) -> None:
    payload = b"".join(chunks)
    reply = put_streaming(server, bucket, "enc.bin", UNSIGNED_TRAILER, chunks,
                          trailer=("x-amz-checksum-crc32", checksum("CRC32", payload)),
                          content_encoding=sent)
    assert reply.status == 200, reply.body
    meta, body = get(s3, bucket, "enc.bin")
    assert body == payload
    assert meta.get("ContentEncoding") == stored


def test_other_content_encodings_are_kept(server: Server, s3: object, bucket: str) -> None:
    data = zlib.compress(b"x" * 1000)
    reply = signed_put(server, bucket, "plain-gzip.bin", data, **{"content-encoding": "gzip"})
    assert reply.status == 200, reply.body
    meta, body = get(s3, bucket, "plain-gzip.bin")
    assert meta.get("ContentEncoding") == "gzip"
    assert body == data


BIG = os.urandom(3 * 1024 * 1024 + 7)  # above body.HANDOFF: hashed on the worker thread with its writes
BIG_CASES = {"right": (200, None), "payload-hash": (400, "XAmzContentSHA256Mismatch"),
             "crc32": (400, "BadDigest"), "content-md5": (400, "BadDigest")}


@pytest.mark.parametrize("case", list(BIG_CASES))
def test_a_big_bodys_payload_hash_and_checksums_are_checked(server: Server, s3: object, bucket: str,
                                                            case: str) -> None:
    """A body handed to the worker thread 1 MiB at a time has its payload SHA-256 and its
    flexible checksum computed there, beside its MD5: the right ones store it (and its
    CRC32 is answered), and a payload hash, CRC32 or Content-MD5 of other bytes refuses it
    with nothing stored."""
    other = b"other bytes"
    crc = checksum("CRC32", other if case == "crc32" else BIG)
    md5 = b64(hashlib.md5(other if case == "content-md5" else BIG).digest())
    path = f"/{bucket}/big-{case}"
    headers = {"host": f"127.0.0.1:{server.port}", "content-length": str(len(BIG)),
               "x-amz-checksum-crc32": crc, "content-md5": md5}
    Signer.now().sign_request("PUT", path, headers, hashlib.sha256(other if case == "payload-hash" else BIG).hexdigest())
    reply = send(server, "PUT", path, headers, BIG)
    assert (reply.status, reply.code) == BIG_CASES[case], reply.body
    assert exists(s3, bucket, f"big-{case}") == (case == "right")
    if case == "right":
        meta, data = get(s3, bucket, "big-right", ChecksumMode="ENABLED")
        assert data == BIG and meta["ChecksumCRC32"] == crc
        assert reply.headers["etag"] == f'"{hashlib.md5(BIG).hexdigest()}"'
