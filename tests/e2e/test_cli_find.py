"""`manta find` against a real server, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, free_port


def manta(server_url: str, *args: str, access_key: str = ROOT_AK, secret_key: str = ROOT_SK,
          input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=server_url, MANTA_ACCESS_KEY=access_key, MANTA_SECRET_KEY=secret_key)
    return subprocess.run([sys.executable, "-m", "manta", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=60, input=input.decode() if input is not None else "")


def test_find_lists_prefixes_names_and_json(server: Server, s3: object, bucket: str) -> None:
    keys = ["a/1.txt", "a/2.log", "a/b/3.txt", "b/4.txt", "top.txt", "a-sibling.txt"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())  # type: ignore[attr-defined]

    everything = manta(server.url, "find", bucket)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines() == [f"{bucket}/{k}" for k in sorted(keys)]

    under_a = manta(server.url, "find", f"{bucket}/a/")
    assert under_a.stdout.splitlines() == [f"{bucket}/a/1.txt", f"{bucket}/a/2.log", f"{bucket}/a/b/3.txt"]

    # a prefix is a plain string prefix, as in S3
    assert manta(server.url, "find", f"{bucket}/a").stdout.splitlines() == [
        f"{bucket}/a-sibling.txt", f"{bucket}/a/1.txt", f"{bucket}/a/2.log", f"{bucket}/a/b/3.txt"]

    # --name matches the name after the last slash
    txt = manta(server.url, "find", bucket, "--name", r"^\d\.txt$")
    assert txt.stdout.splitlines() == [f"{bucket}/a/1.txt", f"{bucket}/a/b/3.txt", f"{bucket}/b/4.txt"]
    assert manta(server.url, "find", bucket, "--name", "^a").stdout.splitlines() == [f"{bucket}/a-sibling.txt"]

    rows = [json.loads(line) for line in manta(server.url, "find", f"{bucket}/b/", "--json").stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["bucket"] == bucket and rows[0]["key"] == "b/4.txt" and rows[0]["size"] == len("b/4.txt")
    assert len(rows[0]["etag"]) == 32 and rows[0]["last_modified"]

    nothing = manta(server.url, "find", f"{bucket}/zzz/")
    assert nothing.returncode == 0 and nothing.stdout == ""


def test_find_by_size(server: Server, s3: object, bucket: str) -> None:
    sizes = {"s/zero": 0, "s/small": 100, "s/kib": 1024, "s/big": 3 * 1024 * 1024}
    for key, size in sizes.items():
        s3.put_object(Bucket=bucket, Key=key, Body=b"z" * size)  # type: ignore[attr-defined]
    def found(*args: str) -> list[str]:
        result = manta(server.url, "find", f"{bucket}/s/", *args)
        assert result.returncode == 0, result.stderr
        return [line.split("/", 1)[1] for line in result.stdout.splitlines()]
    assert found("--size", "+100") == ["s/big", "s/kib"]
    assert found("--size=-1k") == ["s/small", "s/zero"]
    assert found("--size", "+1M") == ["s/big"]
    assert found("--size=-1", "--name", "zero") == ["s/zero"]
    bad = manta(server.url, "find", bucket, "--size", "10")
    assert bad.returncode != 0 and "+N or -N" in bad.stderr


def test_find_paginates(server: Server, s3: object, bucket: str) -> None:
    keys = [f"many/{i:05d}" for i in range(1105)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))  # type: ignore[attr-defined]
    result = manta(server.url, "find", f"{bucket}/many/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{bucket}/{k}" for k in keys]


def test_find_errors(server: Server, bucket: str) -> None:
    missing = manta(server.url, "find", "no-such-bucket-here/x/")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "manta: no such bucket: no-such-bucket-here"

    bad_key = manta(server.url, "find", bucket, access_key="MKNOSUCHKEY000000000")
    assert bad_key.returncode == 1
    assert bad_key.stderr.startswith("manta: bad credentials (InvalidAccessKeyId)")

    bad_secret = manta(server.url, "find", bucket, secret_key="wrong-secret")
    assert bad_secret.returncode == 1
    assert bad_secret.stderr.startswith("manta: bad credentials (SignatureDoesNotMatch)")

    bad_regex = manta(server.url, "find", bucket, "--name", "(")
    assert bad_regex.returncode == 1 and "bad regular expression" in bad_regex.stderr

    down = manta(f"http://127.0.0.1:{free_port()}", "find", bucket)
    assert down.returncode == 1 and down.stderr.startswith("manta: cannot reach http://127.0.0.1:")
    assert "Traceback" not in missing.stderr + bad_key.stderr + bad_secret.stderr + down.stderr


def test_find_help_has_an_example(server: Server) -> None:
    out = manta(server.url, "find", "--help")
    assert out.returncode == 0
    assert "list the objects under" in out.stdout and "example:\n  manta find " in out.stdout
