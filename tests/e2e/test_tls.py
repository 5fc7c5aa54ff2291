"""HTTPS: `manta serve --tls-cert FILE --tls-key FILE` with a throwaway test CA, driven by
boto3, the aws CLI, the manta CLI, `manta.Client` and `manta://`; clients without the CA
fail with a clear message, and plain HTTP to the TLS port fails at once."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import fsspec
import pytest
from botocore.config import Config

from manta.client import Client, Unreachable
from tests.conftest import (
    REPO,
    ROOT_AK,
    ROOT_SK,
    Server,
    free_port,
    require_tool,
    running_server,
)

MiB = 1024 * 1024


@dataclass(frozen=True)
class CaFiles:
    ca: str  # the CA certificate clients trust
    cert: str  # the server's certificate, for 127.0.0.1 and localhost, signed by the CA
    key: str
    other_key: str  # a key that does not match `cert`


def make_ca(openssl: str, where: Path) -> CaFiles:
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=manta test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (where / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem")
    return CaFiles(str(where / "ca.pem"), str(where / "server.pem"), str(where / "server.key"),
                  str(where / "ca.key"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CaFiles:
    return make_ca(require_tool("openssl"), tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(pki: CaFiles) -> Iterator[Server]:
    with running_server("manta-tls-", scheme="https",
                        extra_args=["--tls-cert", pki.cert, "--tls-key", pki.key]) as srv:
        yield srv


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    return {**env, **extra}


def boto(server: Server, ca: str) -> Any:
    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", verify=ca,
                        aws_access_key_id=ROOT_AK, aws_secret_access_key=ROOT_SK,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def test_banner_says_https(tls_server: Server) -> None:
    # the banner follows the listening socket by a moment (it is printed once uvicorn says started)
    deadline = time.monotonic() + 10
    while f"S3 endpoint https://127.0.0.1:{tls_server.port}" not in tls_server.log():
        assert time.monotonic() < deadline, tls_server.log()
        time.sleep(0.05)


def test_boto3_with_the_test_ca(tls_server: Server, pki: CaFiles) -> None:
    s3 = boto(tls_server, pki.ca)
    s3.create_bucket(Bucket="tls-boto")
    s3.put_object(Bucket="tls-boto", Key="small.txt", Body=b"over TLS")
    assert s3.get_object(Bucket="tls-boto", Key="small.txt")["Body"].read() == b"over TLS"

    parts = [os.urandom(5 * MiB), os.urandom(MiB)]
    upload = s3.create_multipart_upload(Bucket="tls-boto", Key="big.bin")["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket="tls-boto", Key="big.bin", UploadId=upload,
                                                      PartNumber=n, Body=body)["ETag"]}
            for n, body in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket="tls-boto", Key="big.bin", UploadId=upload,
                                 MultipartUpload={"Parts": done})
    assert s3.get_object(Bucket="tls-boto", Key="big.bin")["Body"].read() == b"".join(parts)

    url = s3.generate_presigned_url("get_object", Params={"Bucket": "tls-boto", "Key": "small.txt"},
                                    ExpiresIn=300)
    assert url.startswith("https://")
    with urllib.request.urlopen(url, timeout=30, context=ssl.create_default_context(cafile=pki.ca)) as resp:
        assert resp.read() == b"over TLS"


def test_aws_cli_with_the_test_ca(tls_server: Server, pki: CaFiles, tmp_path: Path) -> None:
    aws = require_tool("aws")
    env = clean_env(AWS_ACCESS_KEY_ID=ROOT_AK, AWS_SECRET_ACCESS_KEY=ROOT_SK, AWS_DEFAULT_REGION="us-east-1",
                    AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
                    AWS_EC2_METADATA_DISABLED="true")
    boto(tls_server, pki.ca).create_bucket(Bucket="tls-aws")
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 * MiB + 5))

    def run(*args: str, ca: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [aws, "--endpoint-url", tls_server.url, *(["--ca-bundle", pki.ca] if ca else []), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    up = run("s3", "cp", str(src), "s3://tls-aws/dir/up.bin")
    assert up.returncode == 0, up.stderr
    listed = run("s3", "ls", "s3://tls-aws/dir/")
    assert listed.returncode == 0 and "up.bin" in listed.stdout, listed.stderr
    down = run("s3", "cp", "s3://tls-aws/dir/up.bin", str(tmp_path / "down.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == src.read_bytes()

    untrusted = run("s3", "ls", "s3://tls-aws/", ca=False)
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


def manta_cli(server: Server, *args: str, ca: str | None, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(MANTA_URL=url or server.url, MANTA_ACCESS_KEY=ROOT_AK, MANTA_SECRET_KEY=ROOT_SK,
                    **({"MANTA_CA_BUNDLE": ca} if ca else {}))
    return subprocess.run([sys.executable, "-m", "manta", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_manta_cli_with_and_without_the_ca(tls_server: Server, pki: CaFiles, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("hello over https\n")
    for args in (["mb", "tls-cli"], ["put", str(src), "tls-cli/notes.txt"],
                 ["get", "tls-cli/notes.txt", str(tmp_path / "back.txt")]):
        result = manta_cli(tls_server, *args, ca=pki.ca)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.txt").read_text() == "hello over https\n"
    listed = manta_cli(tls_server, "ls", "tls-cli", ca=pki.ca)
    assert listed.returncode == 0 and "tls-cli/notes.txt" in listed.stdout, listed.stderr
    found = manta_cli(tls_server, "find", "tls-cli", ca=pki.ca)  # boto3 client of cli_find
    assert found.stdout.split() == ["tls-cli/notes.txt"], found.stderr
    nodes = manta_cli(tls_server, "admin", "nodes", "--json", ca=pki.ca)  # the signed JSON API
    assert nodes.returncode == 0 and '"id"' in nodes.stdout, nodes.stderr

    for args in (["ls", "tls-cli"], ["find", "tls-cli"], ["admin", "nodes"]):
        untrusted = manta_cli(tls_server, *args, ca=None)
        assert untrusted.returncode == 1, untrusted
        assert untrusted.stderr.startswith(f"manta: the TLS certificate of {tls_server.url} does not verify"), \
            untrusted.stderr
        assert "MANTA_CA_BUNDLE" in untrusted.stderr and "Traceback" not in untrusted.stderr

    missing = manta_cli(tls_server, "ls", ca=str(tmp_path / "nope.pem"))
    assert missing.returncode == 1 and missing.stderr.startswith("manta: CA bundle "), missing.stderr
    plain = manta_cli(tls_server, "ls", ca=None, url=f"http://127.0.0.1:{tls_server.port}")
    assert plain.returncode == 1 and plain.stderr.startswith("manta: "), plain.stderr
    assert "Traceback" not in plain.stderr


def test_client_and_fsspec_with_ca_bundle(tls_server: Server, pki: CaFiles,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MANTA_CA_BUNDLE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    client = Client(tls_server.url, ROOT_AK, ROOT_SK, ca_bundle=pki.ca, progress=False)
    client.mb("tls-client", exist_ok=True)
    client.put("tls-client/a.csv", b"x,y\n1,2\n")
    assert client.get("tls-client/a.csv") == b"x,y\n1,2\n"
    assert client.ls("tls-client") == ["tls-client/a.csv"]
    assert isinstance(client.jobs(), list)  # the signed jobs API over https

    fs = fsspec.filesystem("manta", url=tls_server.url, access_key=ROOT_AK, secret_key=ROOT_SK,
                           ca_bundle=pki.ca, skip_instance_cache=True)
    assert fs.cat("manta://tls-client/a.csv") == b"x,y\n1,2\n"

    monkeypatch.setenv("MANTA_CA_BUNDLE", pki.ca)
    assert Client(tls_server.url, ROOT_AK, ROOT_SK).get("tls-client/a.csv") == b"x,y\n1,2\n"
    monkeypatch.delenv("MANTA_CA_BUNDLE")
    monkeypatch.setenv("AWS_CA_BUNDLE", pki.ca)
    assert Client(tls_server.url, ROOT_AK, ROOT_SK).get("tls-client/a.csv") == b"x,y\n1,2\n"
    monkeypatch.delenv("AWS_CA_BUNDLE")

    untrusted = Client(tls_server.url, ROOT_AK, ROOT_SK)
    with pytest.raises(Unreachable, match="does not verify.*MANTA_CA_BUNDLE"):
        untrusted.get("tls-client/a.csv")
    with pytest.raises(Unreachable, match="does not verify"):
        untrusted.jobs()


def test_plain_http_to_the_tls_port_fails_at_once(tls_server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", tls_server.port, timeout=20)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)) as caught:
            conn.request("GET", "/")
            conn.getresponse().read()
        assert not isinstance(caught.value, socket.timeout)
    finally:
        conn.close()


def test_serve_checks_the_tls_files(pki: CaFiles, tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "manta", "serve", "--data", str(tmp_path / "data"),
                               "--listen", f"127.0.0.1:{free_port()}", *args],
                              env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=60)

    for args, message in (
            (["--tls-cert", pki.cert], "--tls-cert and --tls-key go together"),
            (["--tls-cert", pki.cert, "--tls-key", str(tmp_path / "none.key")], "no such file"),
            (["--tls-cert", pki.cert, "--tls-key", pki.other_key], "matching private key")):
        result = serve(*args)
        assert result.returncode == 1, result
        assert result.stderr.startswith("manta: --tls-") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
