"""Large objects through real clients: boto3's transfer manager and Debian's aws-cli.

Both split uploads into 8 MiB parts sent by 10 threads and download with parallel
ranged GETs; the bytes must round-trip exactly, and the ETag must be the multipart
one (MD5 of the part MD5s, suffixed "-<parts>").
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.conftest import ROOT_AK, ROOT_SK, Server, require

MiB = 1024 * 1024
PART = 8 * MiB  # the default multipart chunk size of boto3 and aws-cli
DEBIAN_AWS = "/usr/bin/aws"  # the distribution's aws-cli, not a pyenv shim earlier on PATH

pytestmark = pytest.mark.slow


class Expected:
    def __init__(self, size: int, sha256: str, multipart_etag: str) -> None:
        self.size = size
        self.sha256 = sha256
        self.multipart_etag = multipart_etag


def write_random_file(path: Path, size: int, part_size: int = PART) -> Expected:
    """Random bytes written in chunks; returns the hashes a multipart upload must give."""
    whole = hashlib.sha256()
    part_md5s = []
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(part_size, left)
            block = os.urandom(n)
            fh.write(block)
            whole.update(block)
            part_md5s.append(hashlib.md5(block).digest())
            left -= n
    etag = f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
    return Expected(size, whole.hexdigest(), etag)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            h.update(block)
    return h.hexdigest()


def report(what: str, size: int, seconds: float) -> None:
    print(f"\n{what}: {size / MiB:.0f} MiB in {seconds:.2f} s ({size / MiB / seconds:.0f} MiB/s)",
          file=sys.stderr)


@pytest.fixture
def big_server(fresh_server: Server) -> Iterator[Server]:
    fresh_server.start()
    yield fresh_server


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for path in tmp_path.glob("*.bin"):
        path.unlink()


def test_boto3_upload_download_200_mib(big_server: Server, files: Path) -> None:
    s3: Any = big_server.client()
    s3.create_bucket(Bucket="large")
    src, dst = files / "src.bin", files / "dst.bin"
    expected = write_random_file(src, 200 * MiB)
    config = TransferConfig()
    assert (config.multipart_chunksize, config.max_concurrency) == (PART, 10)

    started = time.monotonic()
    s3.upload_file(str(src), "large", "big/object.bin", Config=config)
    report("boto3 upload_file", expected.size, time.monotonic() - started)

    head = s3.head_object(Bucket="large", Key="big/object.bin")
    assert head["ContentLength"] == expected.size
    assert head["ETag"] == f'"{expected.multipart_etag}"'
    assert head["ETag"].endswith('-25"')
    part = s3.head_object(Bucket="large", Key="big/object.bin", PartNumber=25)
    assert part["ContentLength"] == expected.size - 24 * PART

    started = time.monotonic()
    s3.download_file("large", "big/object.bin", str(dst), Config=config)
    report("boto3 download_file", expected.size, time.monotonic() - started)
    assert dst.stat().st_size == expected.size
    assert sha256_of(dst) == expected.sha256

    # a ranged read across a part boundary
    body = s3.get_object(Bucket="large", Key="big/object.bin",
                         Range=f"bytes={PART - 10}-{PART + 9}")["Body"]
    try:
        middle = body.read()
    finally:
        body.close()
    with open(src, "rb") as fh:
        fh.seek(PART - 10)
        assert middle == fh.read(20)

    s3.delete_object(Bucket="large", Key="big/object.bin")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="large", Key="big/object.bin")


def aws(server: Server, home: Path, *args: str, timeout_s: float = 120) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": ROOT_AK,
        "AWS_SECRET_ACCESS_KEY": ROOT_SK,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_PAGER": "",
    }
    proc = subprocess.run([DEBIAN_AWS, "--endpoint-url", server.url, *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    assert proc.returncode == 0, f"aws {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_awscli_cp_ls_rm(big_server: Server, files: Path) -> None:
    require(os.path.exists(DEBIAN_AWS), f"Debian's aws-cli ({DEBIAN_AWS}) is not installed")
    s3: Any = big_server.client()
    s3.create_bucket(Bucket="cli")
    home = files / "home"
    home.mkdir()
    src, dst = files / "src.bin", files / "dst.bin"
    expected = write_random_file(src, 72 * MiB + 4321)  # 10 parts, the last one short

    started = time.monotonic()
    out = aws(big_server, home, "s3", "cp", "--no-progress", str(src), "s3://cli/dir/big file.bin")
    report("aws s3 cp (upload)", expected.size, time.monotonic() - started)
    assert "upload:" in out

    head = s3.head_object(Bucket="cli", Key="dir/big file.bin")
    assert head["ContentLength"] == expected.size
    assert head["ETag"] == f'"{expected.multipart_etag}"'
    assert head["ETag"].endswith('-10"')

    started = time.monotonic()
    out = aws(big_server, home, "s3", "cp", "--no-progress", "s3://cli/dir/big file.bin", str(dst))
    report("aws s3 cp (download)", expected.size, time.monotonic() - started)
    assert "download:" in out
    assert dst.stat().st_size == expected.size
    assert sha256_of(dst) == expected.sha256

    top = aws(big_server, home, "s3", "ls", "s3://cli/")
    assert "PRE dir/" in top
    listing = aws(big_server, home, "s3", "ls", "s3://cli/dir/")
    line = next(ln for ln in listing.splitlines() if ln.endswith("big file.bin"))
    assert line.split()[2] == str(expected.size)
    buckets = aws(big_server, home, "s3", "ls")
    assert any(ln.split()[-1] == "cli" for ln in buckets.splitlines())

    out = aws(big_server, home, "s3", "rm", "s3://cli/dir/big file.bin")
    assert "delete: s3://cli/dir/big file.bin" in out
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket="cli", Key="dir/big file.bin")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert aws(big_server, home, "s3", "ls", "s3://cli/", "--recursive") == ""
