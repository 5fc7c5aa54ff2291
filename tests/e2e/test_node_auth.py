"""A `manta node` refuses unsigned, forged, wrong-node (signed for another node, or unbound
beyond GET /v1/health), expired, replayed and body-mismatched requests with 403 and the
reason, and says so in its log."""

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

from storage.clusterauth import EMPTY_SHA256, NODE, STREAMING, UNBOUND, sign
from storage.remote import RemoteNode
from tests.conftest import REPO
from tests.storage.test_node_contract import NodeProcess

SECRET = "auth-test-cluster-secret-000001"
OTHER_NODE = "node-0badc0de"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(str(tmp_path_factory.mktemp("auth") / "node"), SECRET)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def node_id(node: NodeProcess) -> str:
    status, body = send(node, "GET", "/v1/health", sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=UNBOUND))
    assert status == 200
    return str(body["id"])


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


def refusal(method: str, why: str) -> tuple[int, dict[str, object]]:
    return 403, {} if method == "HEAD" else {"error": why}  # a HEAD answer has no body


def blob_path(node: NodeProcess, blob_id: str) -> str:
    return os.path.join(node.root, "blobs", blob_id[:2], blob_id)


def put_unsynced(node: NodeProcess, node_id: str, data: bytes) -> str:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=unsynced"
    headers = sign(SECRET, "PUT", path, hashlib.sha256(data).hexdigest(), node=node_id)
    assert send(node, "PUT", path, headers, data) == (200, {})
    return blob_id


def test_a_signed_request_is_served(node: NodeProcess, node_id: str) -> None:
    status, body = send(node, "GET", "/v1/health", sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=node_id))
    assert status == 200
    assert body["id"] == node_id and node_id.startswith("node-")


def test_a_bound_request_is_served(node: NodeProcess, node_id: str) -> None:
    blob_id = put_unsynced(node, node_id, b"bound bytes")
    path = f"/v1/blobs/{blob_id}"
    assert send(node, "HEAD", path, sign(SECRET, "HEAD", path, EMPTY_SHA256, node=node_id))[0] == 200
    assert send(node, "DELETE", path, sign(SECRET, "DELETE", path, EMPTY_SHA256, node=node_id)) == (
        200, {"deleted": True})
    assert not os.path.exists(blob_path(node, blob_id))


@pytest.mark.parametrize("method", ["DELETE", "HEAD", "GET"])
def test_a_request_signed_for_another_node_is_refused(node: NodeProcess, node_id: str, method: str) -> None:
    """A request captured on its way to another node and replayed here (within the skew, with
    a nonce this node never saw) is refused, and the blob is untouched."""
    blob_id = put_unsynced(node, node_id, b"a copy that must stay")
    path = f"/v1/blobs/{blob_id}"
    headers = sign(SECRET, method, path, EMPTY_SHA256, node=OTHER_NODE)
    assert send(node, method, path, headers) == refusal(method, "wrong node")
    assert logged(node, method, path, "wrong node")
    with open(blob_path(node, blob_id), "rb") as fh:
        assert fh.read() == b"a copy that must stay"


def test_a_staged_put_signed_for_another_node_is_refused(node: NodeProcess, node_id: str) -> None:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=staged"
    headers = sign(SECRET, "PUT", path, STREAMING, node=OTHER_NODE)
    assert send(node, "PUT", path, headers, b"unhashed body") == (403, {"error": "wrong node"})
    assert logged(node, "PUT", f"/v1/blobs/{blob_id}", "wrong node")
    assert os.listdir(os.path.join(node.root, "tmp")) == []
    assert not os.path.exists(blob_path(node, blob_id))


def test_health_signed_for_another_node_is_refused(node: NodeProcess) -> None:
    headers = sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=OTHER_NODE)
    assert send(node, "GET", "/v1/health", headers) == (403, {"error": "wrong node"})


def test_the_binding_is_signed(node: NodeProcess, node_id: str) -> None:
    """Rewriting the node header of a request signed for another node makes it a forgery."""
    blob_id = put_unsynced(node, node_id, b"still here")
    path = f"/v1/blobs/{blob_id}"
    headers = {**sign(SECRET, "DELETE", path, EMPTY_SHA256, node=OTHER_NODE), NODE: node_id}
    assert send(node, "DELETE", path, headers) == (403, {"error": "forged"})
    headers = {k: v for k, v in sign(SECRET, "DELETE", path, EMPTY_SHA256, node=node_id).items() if k != NODE}
    assert send(node, "DELETE", path, headers) == (403, {"error": "unsigned"})
    assert os.path.exists(blob_path(node, blob_id))


def test_an_unbound_health_request_is_served(node: NodeProcess, node_id: str) -> None:
    status, body = send(node, "GET", "/v1/health", sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=UNBOUND))
    assert status == 200 and body["id"] == node_id


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/blobs", b""),
    ("GET", "/v1/health?detail=1", b""),
    ("HEAD", "/v1/blobs/{id}", b""),
    ("DELETE", "/v1/blobs/{id}", b""),
    ("PUT", "/v1/blobs/{new}?mode=staged", b"unhashed body"),
    ("PUT", "/v1/blobs/{new}?mode=unsynced", b"small body"),
    ("POST", "/v1/sync", b'{"ids": []}'),
])
def test_an_unbound_request_is_refused_beyond_health(node: NodeProcess, node_id: str, method: str, path: str,
                                                     body: bytes) -> None:
    blob_id, new = put_unsynced(node, node_id, b"unbound"), secrets.token_hex(16)
    path = path.format(id=blob_id, new=new)
    digest = STREAMING if "staged" in path else hashlib.sha256(body).hexdigest()
    headers = sign(SECRET, method, path, digest, node=UNBOUND)
    assert send(node, method, path, headers, body) == refusal(method, "wrong node")
    assert logged(node, method, path.split("?")[0], "wrong node")
    assert os.path.exists(blob_path(node, blob_id))
    assert not os.path.exists(blob_path(node, new))


@pytest.mark.parametrize("binding", [OTHER_NODE, UNBOUND])
def test_a_login_not_bound_to_this_node_is_refused(node: NodeProcess, binding: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    body = json.dumps({"owner": "someone"})
    headers = sign(SECRET, "GET", "/v1/login", hashlib.sha256(body.encode()).hexdigest(), node=binding)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{node.port}/v1/login", additional_headers=headers, open_timeout=10)
    assert refused.value.response.status_code == 403
    assert logged(node, "GET", "/v1/login", "wrong node")


def test_a_login_bound_by_a_remote_node_is_accepted(node: NodeProcess) -> None:
    """The front door's relay signs the upgrade with RemoteNode.signed_headers: the node
    takes it (the session itself then fails on the bad request, or for want of a sandbox)."""
    from websockets.sync.client import connect

    body = json.dumps({"not": "a login request"})
    client = RemoteNode(node.url, SECRET).connect()
    try:
        headers = client.signed_headers("GET", "/v1/login", hashlib.sha256(body.encode()).hexdigest())
    finally:
        client.close()
    with connect(f"ws://127.0.0.1:{node.port}/v1/login", additional_headers=headers, open_timeout=10) as ws:
        ws.send(body)
        answer = json.loads(ws.recv(timeout=10))
    assert answer["error"] in ("InvalidArgument", "ServiceUnavailable")


def test_a_remote_node_learns_the_id_before_its_first_bound_request(node: NodeProcess, node_id: str) -> None:
    blob_id = put_unsynced(node, node_id, b"learnt")
    client = RemoteNode(node.url, SECRET)  # no connect(): its id is still the URL
    try:
        assert client.exists(blob_id)
        assert client.id == node_id
    finally:
        client.close()


@pytest.mark.parametrize(("case", "why"), [
    ("unsigned", "unsigned"),
    ("forged", "forged"),
    ("expired", "expired"),
])
def test_refused_signatures(node: NodeProcess, node_id: str, case: str, why: str) -> None:
    path = "/v1/blobs"
    if case == "unsigned":
        headers: dict[str, str] = {}
    elif case == "forged":
        headers = sign("some-other-cluster-secret-00001", "GET", path, EMPTY_SHA256, node=node_id)
    else:
        headers = sign(SECRET, "GET", path, EMPTY_SHA256, node=node_id, now=time.time() - 400)
    assert send(node, "GET", path, headers) == (403, {"error": why})
    assert logged(node, "GET", path, why)


def test_a_signature_for_another_path_is_forged(node: NodeProcess, node_id: str) -> None:
    headers = sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=node_id)
    assert send(node, "GET", "/v1/blobs", headers) == (403, {"error": "forged"})


def test_a_replayed_request_is_refused(node: NodeProcess, node_id: str) -> None:
    body = json.dumps({"ids": []}).encode()
    headers = sign(SECRET, "POST", "/v1/sync", hashlib.sha256(body).hexdigest(), node=node_id)
    assert send(node, "POST", "/v1/sync", headers, body) == (200, {})
    assert send(node, "POST", "/v1/sync", headers, body) == (403, {"error": "replayed"})
    assert logged(node, "POST", "/v1/sync", "replayed")


def test_a_request_replayed_after_the_node_restarts_is_refused(tmp_path: pathlib.Path) -> None:
    """A node remembers nonces in memory: a request it took before a restart, replayed
    within the skew, is refused because it is dated before the new process started (a
    staged blob deleted by a captured DELETE would be one copy fewer)."""
    node = NodeProcess(str(tmp_path / "node"), SECRET)
    node.start()
    try:
        status, body = send(node, "GET", "/v1/health", sign(SECRET, "GET", "/v1/health", EMPTY_SHA256, node=UNBOUND))
        node_id = str(body["id"])
        blob_id = put_unsynced(node, node_id, b"kept across the restart")
        replay = sign(SECRET, "DELETE", f"/v1/blobs/{blob_id}", EMPTY_SHA256, node=node_id)  # captured
        node.stop()
        node.start()
        assert send(node, "DELETE", f"/v1/blobs/{blob_id}", replay) == (403, {"error": "replayed"})
        assert os.path.exists(blob_path(node, blob_id))
        fresh = sign(SECRET, "DELETE", f"/v1/blobs/{blob_id}", EMPTY_SHA256, node=node_id)
        assert send(node, "DELETE", f"/v1/blobs/{blob_id}", fresh)[0] == 200
    finally:
        node.stop()


def test_a_body_that_does_not_match_its_digest_is_refused(node: NodeProcess, node_id: str) -> None:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=unsynced"
    headers = sign(SECRET, "PUT", path, hashlib.sha256(b"signed bytes").hexdigest(), node=node_id)
    assert send(node, "PUT", path, headers, b"other bytes!") == (403, {"error": "body digest mismatch"})
    assert logged(node, "PUT", f"/v1/blobs/{blob_id}", "body digest mismatch")
    assert not os.path.exists(blob_path(node, blob_id))


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/sync"),
    ("PUT", "/v1/blobs/{id}?mode=unsynced"),
])
def test_streaming_is_only_for_staged_puts(node: NodeProcess, node_id: str, method: str, path: str) -> None:
    path = path.format(id=secrets.token_hex(16))
    headers = sign(SECRET, method, path, STREAMING, node=node_id)
    assert send(node, method, path, headers, b'{"ids": []}') == (403, {"error": "body digest mismatch"})
    assert logged(node, method, path.split("?")[0], "body digest mismatch")


def test_a_staged_put_with_a_wrong_signed_digest_is_refused_and_dropped(node: NodeProcess,
                                                                       node_id: str) -> None:
    blob_id = secrets.token_hex(16)
    path = f"/v1/blobs/{blob_id}?mode=staged"
    headers = sign(SECRET, "PUT", path, hashlib.sha256(b"a").hexdigest(), node=node_id)
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
