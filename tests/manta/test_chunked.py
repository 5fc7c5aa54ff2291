from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import zlib
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from manta.server.s3 import checksums, sigv4
from manta.server.s3 import errors as s3e
from manta.server.s3.body import chunked_decoder
from manta.server.s3.chunked import AwsChunkedDecoder, decoder_for
from manta.server.s3.context import S3Request

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
KEY = sigv4.signing_key(SECRET_KEY, "20130524", "us-east-1", "s3")

# AWS "Example: PUT Object" of the chunked upload docs: 66560 bytes of "a".
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
# The same upload with a trailing CRC32C, from the trailing-headers docs.
TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
TRAILER_CHUNK_SIGNATURES = [
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
]
TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
PAYLOAD = b"a" * 66560


def aws_example_body(signatures=CHUNK_SIGNATURES, trailer: bytes = b"\r\n") -> bytes:
    pieces = []
    for size, signature in zip((65536, 1024, 0), signatures, strict=True):
        pieces.append(f"{size:x};chunk-signature={signature}\r\n".encode())
        if size:
            pieces.append(b"a" * size + b"\r\n")
    return b"".join(pieces) + trailer


def signed_decoder(seed: str = SEED, **kwargs) -> AwsChunkedDecoder:
    return AwsChunkedDecoder(
        signing_key=KEY, amz_date_raw=DATE, scope=SCOPE, seed_signature=seed, **kwargs
    )


def decode(decoder: AwsChunkedDecoder, body: bytes, step: int | None = None) -> bytes:
    step = step or len(body) or 1
    out = b"".join(decoder.feed(body[i : i + step]) for i in range(0, len(body), step))
    decoder.finish()
    return out


def sign(data: bytes, previous: str) -> str:
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            DATE,
            SCOPE,
            previous,
            sigv4.EMPTY_SHA256,
            hashlib.sha256(data).hexdigest(),
        ]
    )
    return hmac.new(KEY, to_sign.encode(), hashlib.sha256).hexdigest()


def test_our_chunk_signer_matches_the_aws_example():
    assert sign(b"a" * 65536, SEED) == CHUNK_SIGNATURES[0]


@pytest.mark.parametrize("step", [None, 1, 7, 4096, 65537])
def test_aws_signed_example(step):
    decoder = signed_decoder(decoded_content_length=66560)
    assert decode(decoder, aws_example_body(), step) == PAYLOAD
    assert decoder.done and decoder.decoded_length == 66560 and decoder.trailers == {}


@pytest.mark.parametrize("step", [None, 1, 1000])
def test_aws_signed_trailer_example(step):
    trailer = (
        f"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:{TRAILER_SIGNATURE}\r\n\r\n"
    )
    body = aws_example_body(TRAILER_CHUNK_SIGNATURES, trailer.encode())
    decoder = signed_decoder(
        TRAILER_SEED, trailer_names=["x-amz-checksum-crc32c"], signed_trailer=True
    )
    assert decode(decoder, body, step) == PAYLOAD
    assert decoder.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
    crc = checksums.new("CRC32C")
    crc.update(PAYLOAD)
    assert crc.b64() == "sOO8/Q=="


def test_aws_trailer_example_with_blank_line_before_trailers():
    trailer = (
        f"\r\nx-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:{TRAILER_SIGNATURE}\r\n"
    )
    body = aws_example_body(TRAILER_CHUNK_SIGNATURES, trailer.encode())
    decoder = signed_decoder(
        TRAILER_SEED, trailer_names=["x-amz-checksum-crc32c"], signed_trailer=True
    )
    assert decode(decoder, body) == PAYLOAD


def test_tampered_trailer_is_rejected():
    trailer = (
        f"x-amz-checksum-crc32c:AAAAAA==\r\nx-amz-trailer-signature:{TRAILER_SIGNATURE}\r\n\r\n"
    )
    body = aws_example_body(TRAILER_CHUNK_SIGNATURES, trailer.encode())
    decoder = signed_decoder(
        TRAILER_SEED, trailer_names=["x-amz-checksum-crc32c"], signed_trailer=True
    )
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(decoder, body)


def test_missing_trailer_signature_is_rejected():
    body = aws_example_body(TRAILER_CHUNK_SIGNATURES, b"x-amz-checksum-crc32c:sOO8/Q==\r\n\r\n")
    decoder = signed_decoder(
        TRAILER_SEED, trailer_names=["x-amz-checksum-crc32c"], signed_trailer=True
    )
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(decoder, body)


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize("where", [100, 66000])  # inside the first, the second chunk
def test_tampered_chunk_is_rejected(step, where):
    body = bytearray(aws_example_body())
    body[where] = ord("b")
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(signed_decoder(), bytes(body), step)


def test_wrong_seed_or_reordered_signatures_are_rejected():
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(signed_decoder(seed="0" * 64), aws_example_body())
    swapped = [CHUNK_SIGNATURES[1], CHUNK_SIGNATURES[0], CHUNK_SIGNATURES[2]]
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(signed_decoder(), aws_example_body(swapped))


def test_missing_chunk_signature_is_rejected():
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(signed_decoder(), b"3\r\nabc\r\n0\r\n\r\n")


def test_truncated_final_signature_chunk_is_incomplete():
    body = aws_example_body()
    decoder = signed_decoder()
    decoder.feed(body[: 65536 + 200])
    with pytest.raises(s3e.IncompleteBody):
        decoder.finish()


def unsigned_body(payload: bytes, chunk: int, trailer: str = "", final: bytes = b"\r\n") -> bytes:
    pieces = [
        f"{len(payload[i : i + chunk]):x}\r\n".encode() + payload[i : i + chunk] + b"\r\n"
        for i in range(0, len(payload), chunk)
    ]
    return b"".join(pieces) + b"0\r\n" + trailer.encode() + final


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("step", [None, 1, 3, 8192])
def test_unsigned_with_crc32_trailer(step):
    payload = os.urandom(20000)
    trailer = f"x-amz-checksum-crc32:{crc32_b64(payload)}\r\n"
    decoder = AwsChunkedDecoder(trailer_names=["x-amz-checksum-crc32"])
    assert decode(decoder, unsigned_body(payload, 8192, trailer), step) == payload
    assert decoder.trailers == {"x-amz-checksum-crc32": crc32_b64(payload)}
    assert decoder.done


def test_end_of_stream_after_last_trailer_line_is_accepted():
    payload = b"hello"
    trailer = f"x-amz-checksum-crc32:{crc32_b64(payload)}\r\n"
    decoder = AwsChunkedDecoder(trailer_names=["x-amz-checksum-crc32"])
    assert decoder.feed(unsigned_body(payload, 5, trailer, final=b"")) == payload
    assert not decoder.done
    decoder.finish()
    assert decoder.done and decoder.trailers["x-amz-checksum-crc32"] == crc32_b64(payload)


def test_empty_body():
    decoder = AwsChunkedDecoder()
    assert decode(decoder, b"0\r\n\r\n") == b""
    assert decoder.done and decoder.decoded_length == 0


@pytest.mark.parametrize(
    "cut",
    [0, 1, 3, 5, 6, 8, 9],  # inside the size line, the data, the CRLFs, the final chunk
)
def test_truncated_body_is_incomplete(cut):
    body = unsigned_body(b"hello", 5)[:cut]
    decoder = AwsChunkedDecoder()
    decoder.feed(body)
    with pytest.raises(s3e.IncompleteBody):
        decoder.finish()


def test_truncated_trailer_line_is_incomplete():
    decoder = AwsChunkedDecoder(trailer_names=["x-amz-checksum-crc32"])
    decoder.feed(b"0\r\nx-amz-checksum-crc32:AAAA")
    with pytest.raises(s3e.IncompleteBody):
        decoder.finish()


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\r\nhelloXX\r\n0\r\n\r\n",  # chunk longer than declared
        b"5\r\nhello0\r\n\r\n",  # missing CRLF after data
        b"11111111111111111\r\n",  # more than 16 hex digits
        b"5" * 5000,  # endless size line
        b"0\r\nnot-a-trailer\r\n\r\n",
        b"0\r\nx-amz-checksum-sha1:abc\r\n\r\n",  # undeclared trailer
        b"0\r\n\r\nmore",  # data after the end
    ],
)
def test_garbage_framing_is_invalid(body):
    decoder = AwsChunkedDecoder()
    with pytest.raises(s3e.InvalidRequest):
        decode(decoder, body)


def test_chunk_size_limit():
    decoder = AwsChunkedDecoder(max_chunk_size=1024)
    with pytest.raises(s3e.InvalidRequest, match="exceeds"):
        decoder.feed(b"401\r\n")


def test_declared_trailer_missing():
    decoder = AwsChunkedDecoder(trailer_names=["x-amz-checksum-crc32"])
    with pytest.raises(s3e.InvalidRequest, match="not sent"):
        decode(decoder, b"0\r\n\r\n")


def test_duplicate_trailer():
    decoder = AwsChunkedDecoder(trailer_names=["x-amz-checksum-crc32"])
    with pytest.raises(s3e.InvalidRequest, match="twice"):
        decode(decoder, b"0\r\nx-amz-checksum-crc32:a\r\nx-amz-checksum-crc32:a\r\n\r\n")


def test_decoded_length_is_checked():
    with pytest.raises(s3e.IncompleteBody):
        decode(AwsChunkedDecoder(decoded_content_length=6), unsigned_body(b"hello", 5))
    with pytest.raises(s3e.InvalidRequest):
        decode(AwsChunkedDecoder(decoded_content_length=4), unsigned_body(b"hello", 5))


# -- decoder_for and a real boto3 upload ----------------------------------------


def test_decoder_for_modes():
    assert decoder_for({"x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD}) is None
    assert decoder_for({}) is None
    unsigned = decoder_for(
        {
            "x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
            "x-amz-trailer": "x-amz-checksum-crc32",
        }
    )
    assert unsigned is not None
    with pytest.raises(s3e.InvalidRequest):
        decoder_for({"x-amz-content-sha256": sigv4.STREAMING_PAYLOAD})  # anonymous
    with pytest.raises(s3e.NotImplemented_):
        decoder_for({"x-amz-content-sha256": "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"})
    with pytest.raises(s3e.InvalidArgument):
        decoder_for(
            {
                "x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
                "x-amz-decoded-content-length": "-1",
            }
        )


def test_decoder_for_aws_signed_example():
    req = sigv4.AuthRequest(
        method="PUT",
        raw_path="/examplebucket/chunkObject.txt",
        query=[],
        headers={
            "host": "s3.amazonaws.com",
            "x-amz-date": DATE,
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "x-amz-content-sha256": sigv4.STREAMING_PAYLOAD,
            "content-encoding": "aws-chunked",
            "x-amz-decoded-content-length": "66560",
            "content-length": "66824",
            "authorization": (
                f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{SCOPE},"
                "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
                f"x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}"
            ),
        },
    )
    auth = sigv4.parse(req)
    assert auth is not None
    key = sigv4.verify(auth, req, SECRET_KEY)
    decoder = decoder_for(req.headers, auth, key)
    assert decoder is not None
    body = aws_example_body()
    assert len(body) == 66824
    assert decode(decoder, body, 1000) == PAYLOAD


def test_boto3_streaming_upload_over_tls():
    sent = []

    class Empty:
        def stream(self, **_):
            yield b""

    def capture(request, **_):
        body = request.body.read() if hasattr(request.body, "read") else request.body
        headers = {
            k.lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
        }
        sent.append((request, headers, body))
        return AWSResponse(request.url, 200, {}, Empty())

    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example.com",
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    client.meta.events.register("before-send", capture)
    payload = os.urandom(3 * 2**20 + 17)
    client.put_object(Bucket="bkt", Key="big", Body=io.BytesIO(payload))
    request, headers, body = sent[0]
    assert headers["x-amz-content-sha256"] == sigv4.STREAMING_UNSIGNED_TRAILER
    parts = urlsplit(request.url)
    req = sigv4.AuthRequest(
        "PUT", parts.path, parse_qsl(parts.query, keep_blank_values=True), headers
    )
    auth = sigv4.parse(req)
    assert auth is not None
    key = sigv4.verify(auth, req, "SK")
    decoder = decoder_for(headers, auth, key)
    assert decoder is not None
    assert decode(decoder, body, 65536) == payload
    assert decoder.trailers == {"x-amz-checksum-crc32": crc32_b64(payload)}


# -- body.chunked_decoder: the one builder every request body path uses ----------------


def s3_request(headers: dict[str, str], auth: sigv4.SigV4Auth | None = None, key: bytes = b"") -> S3Request:
    async def never() -> dict[str, object]:
        raise AssertionError("the decoder builder reads no body")

    return S3Request(method="PUT", bucket="examplebucket", key="chunkObject.txt", query={}, headers=headers,
                     receive=never, request_id="R", resource="/examplebucket/chunkObject.txt",
                     store=None, auth=auth, signing_key=key)  # type: ignore[arg-type]


def aws_example_request(mode: str = sigv4.STREAMING_PAYLOAD,
                        seed: str = SEED) -> tuple[dict[str, str], sigv4.SigV4Auth, bytes]:
    headers = {"host": "s3.amazonaws.com", "x-amz-date": DATE, "x-amz-storage-class": "REDUCED_REDUNDANCY",
               "x-amz-content-sha256": mode, "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": "66560", "content-length": "66824",
               "authorization": (f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{SCOPE},"
                                 "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;"
                                 f"x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature={seed}")}
    req = sigv4.AuthRequest(method="PUT", raw_path="/examplebucket/chunkObject.txt", query=[], headers=headers)
    auth = sigv4.parse(req)
    assert auth is not None
    return headers, auth, sigv4.verify(auth, req, SECRET_KEY)


def test_chunked_decoder_of_a_signed_request_checks_the_chunk_signatures() -> None:
    headers, auth, key = aws_example_request()
    decoder = chunked_decoder(s3_request(headers, auth, key))
    assert decoder is not None
    assert decode(decoder, aws_example_body(), 777) == PAYLOAD
    forged = chunked_decoder(s3_request(headers, auth, key))
    assert forged is not None
    body = aws_example_body().replace(CHUNK_SIGNATURES[1].encode(), b"0" * 64)
    with pytest.raises(s3e.SignatureDoesNotMatch):
        decode(forged, body)


def test_chunked_decoder_modes_and_refusals() -> None:
    assert chunked_decoder(s3_request({"x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD})) is None
    assert chunked_decoder(s3_request({})) is None
    unsigned = chunked_decoder(s3_request({"x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
                                           "x-amz-trailer": "x-amz-checksum-crc32"}))
    assert unsigned is not None
    payload = b"trailing"
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big"))
    assert decode(unsigned, b"8\r\n" + payload + b"\r\n0\r\nx-amz-checksum-crc32:" + crc + b"\r\n\r\n") == payload
    assert unsigned.trailers == {"x-amz-checksum-crc32": crc.decode()}
    with pytest.raises(s3e.InvalidRequest):  # a signed stream without a signed request
        chunked_decoder(s3_request({"x-amz-content-sha256": sigv4.STREAMING_PAYLOAD}))
    with pytest.raises(s3e.InvalidArgument):
        chunked_decoder(s3_request({"x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
                                    "x-amz-decoded-content-length": "12a"}))
    headers, auth, key = aws_example_request()
    with pytest.raises(s3e.InvalidRequest):  # a trailer needs the -TRAILER signed mode
        chunked_decoder(s3_request({**headers, "x-amz-trailer": "x-amz-checksum-crc32"}, auth, key))


def test_chunked_decoder_enforces_the_decoded_length() -> None:
    decoder = chunked_decoder(s3_request({"x-amz-content-sha256": sigv4.STREAMING_UNSIGNED_TRAILER,
                                          "x-amz-decoded-content-length": "4"}))
    assert decoder is not None
    with pytest.raises(s3e.InvalidRequest):
        decode(decoder, b"5\r\nhello\r\n0\r\n\r\n")
