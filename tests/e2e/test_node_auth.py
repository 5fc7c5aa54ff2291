"""A `manta node` refuses unsigned, forged, expired, replayed and body-mismatched requests with
403 and the reason, and says so in its log."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pathlib
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from storage.clusterauth import EMPTY_SHA256, STREAMING, sign
from tests.conftest import REPO
from tests.storage.test_node_contract import NodeProcess

SECRET = "auth-test-cluster-secret-000001"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(str(tmp_path_factory.mktemp("auth") / "node"), SECRET)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def send(node: NodeProcess, method: str, path: str, headers: dict[str, str],
         body: bytes = b"") -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def logged(node: NodeProcess, method: str, path: str, why: str) -> bool:
    pattern = re.compile(rf"WARNING .*refused {method} {re.escape(path)} from 127\.0\.0\.1:\d+: {re.escape(why)}$",
                         re.MULTILINE)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pattern.search(node.log()):
            return True
        time.sleep(0.05)
    return False


def test_a_signed_request_is_served(node: NodeProcess) -> None:
    status, body = send(node, "GET", "/v1/health", sign(SECRET, "GET", "/v1/health", EMPTY_SHA256))
    assert status == 200
    assert str(body["id"]).startswith("node-")


@pytest.mark.parametrize(("case", "why"), [
    ("unsigned", "unsigned"),
    ("forged", "forged"),
    ("expired", "expired"),
])
def test_refused_signatures(node: NodeProcess, case: str, why: str) -> None:
    path = "/v1/blobs"
    if case == "unsigned":
        headers: dict[str, str] = {}
    elif case == "forged":
        headers = sign("some-other-cluster-secret-00001", "GET", path, EMPTY_SHA256)
    else:
        headers = sign(SECRET, "GET", path, EMPTY_SHA256, now=time.time() - 400)
    assert send(node, "GET", path, headers) == (403, {"error": why})
    assert logged(node, "GET", path, why)


def test_a_signature_for_another_path_is_forged(node: NodeProcess) -> None:
    headers = sign(SECRET, "GET", "/v1/health", EMPTY_SHA256)
    assert send(node, "GET", "/v1/blobs", headers) == (403, {"error": "forged"})


def test_a_replayed_request_is_refused(node: NodeProcess) -> None:
    body = json.dumps({"ids": []}).encode()
    headers = sign(SECRET, "POST", "/v1/sync", hashlib.sha256(body).hexdigest())
    assert send(node, "POST", "/v1/sync", headers, body) == (200, {})
    assert send(node, "POST", "/v1/sync", headers, body) == (403, {"error": "replayed"})
    assert logged(node, "POST", "/v1/sync", "replayed")


def test_a_body_that_does_not_match_its_digest_is_refused(node: NodeProcess) -> None:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=unsynced"
    headers = sign(SECRET, "PUT", path, hashlib.sha256(b"signed bytes").hexdigest())
    assert send(node, "PUT", path, headers, b"other bytes!") == (403, {"error": "body digest mismatch"})
    assert logged(node, "PUT", f"/v1/blobs/{blob_id}", "body digest mismatch")
    assert not os.path.exists(os.path.join(node.root, "blobs", blob_id[:2], blob_id))


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/sync"),
    ("PUT", "/v1/blobs/{id}?mode=unsynced"),
])
def test_streaming_is_only_for_staged_puts(node: NodeProcess, method: str, path: str) -> None:
    path = path.format(id=secrets.token_hex(16))
    headers = sign(SECRET, method, path, STREAMING)
    assert send(node, method, path, headers, b'{"ids": []}') == (403, {"error": "body digest mismatch"})
    assert logged(node, method, path.split("?")[0], "body digest mismatch")


def test_a_staged_put_with_a_wrong_signed_digest_is_refused_and_dropped(node: NodeProcess) -> None:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=staged"
    headers = sign(SECRET, "PUT", path, hashlib.sha256(b"a").hexdigest())
    assert send(node, "PUT", path, headers, b"b") == (403, {"error": "body digest mismatch"})
    assert os.listdir(os.path.join(node.root, "tmp")) == []


@pytest.mark.parametrize(("content", "message"), [
    ("", "no cluster secret"),
    ("short", "shorter than 16 bytes"),
])
def test_a_node_without_a_usable_secret_refuses_to_start(tmp_path: pathlib.Path, content: str,
                                                         message: str) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content + "\n")
    env = {k: v for k, v in os.environ.items() if k != "MANTA_CLUSTER_SECRET"}
    done = subprocess.run([sys.executable, "-m", "manta", "node", "--storage", f"dir:{tmp_path}/n",
                           "--listen", "127.0.0.1:1", "--cluster-secret-file", str(secret_file)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=30)
    assert done.returncode == 1
    assert message in done.stderr
