"""storage.clusterauth in process: a signature is bound to the node it is meant for."""

from __future__ import annotations

import pytest

from storage.clusterauth import EMPTY_SHA256, NODE, UNBOUND, Refused, Verifier, sign

SECRET = "clusterauth-test-secret-000001"
ME, OTHER = "node-aaaaaaaa", "node-bbbbbbbb"
# made before any request here is signed: a node refuses what is dated before it started
ME_NODE, OTHER_NODE = Verifier(SECRET, ME), Verifier(SECRET, OTHER)


def refusal(verifier: Verifier, method: str, path: str, headers: dict[str, str]) -> str | None:
    try:
        verifier.check(method, path, headers, EMPTY_SHA256)
    except Refused as exc:
        return exc.why
    return None


def test_a_request_bound_to_this_node_passes() -> None:
    headers = sign(SECRET, "DELETE", "/v1/blobs/x", EMPTY_SHA256, node=ME)
    assert refusal(ME_NODE, "DELETE", "/v1/blobs/x", headers) is None


def test_a_request_bound_to_another_node_is_refused_on_both() -> None:
    """The same captured request is good on the node it names and refused on any other."""
    headers = sign(SECRET, "DELETE", "/v1/blobs/x", EMPTY_SHA256, node=OTHER)
    assert refusal(ME_NODE, "DELETE", "/v1/blobs/x", headers) == "wrong node"
    assert refusal(OTHER_NODE, "DELETE", "/v1/blobs/x", headers) is None


@pytest.mark.parametrize(("method", "path", "why"), [
    ("GET", "/v1/health", None),
    ("GET", "/v1/health?x=1", "wrong node"),
    ("POST", "/v1/health", "wrong node"),
    ("GET", "/v1/blobs", "wrong node"),
    ("DELETE", "/v1/blobs/x", "wrong node"),
])
def test_only_a_health_request_may_go_unbound(method: str, path: str, why: str | None) -> None:
    headers = sign(SECRET, method, path, EMPTY_SHA256, node=UNBOUND)
    assert refusal(ME_NODE, method, path, headers) == why


def test_the_binding_is_part_of_the_signature() -> None:
    verifier = ME_NODE
    rebound = {**sign(SECRET, "GET", "/v1/blobs", EMPTY_SHA256, node=OTHER), NODE: ME}
    assert refusal(verifier, "GET", "/v1/blobs", rebound) == "forged"
    unbound = {**sign(SECRET, "GET", "/v1/blobs", EMPTY_SHA256, node=ME), NODE: UNBOUND}
    assert refusal(verifier, "GET", "/v1/blobs", unbound) == "forged"
    missing = {k: v for k, v in sign(SECRET, "GET", "/v1/blobs", EMPTY_SHA256, node=ME).items() if k != NODE}
    assert refusal(verifier, "GET", "/v1/blobs", missing) == "unsigned"


def test_a_verifier_needs_its_node_id() -> None:
    with pytest.raises(ValueError):
        Verifier(SECRET, "")


def test_a_request_dated_before_the_node_process_started_is_refused_as_replayed() -> None:
    """Nonces live in the node process's memory: a request its predecessor took, replayed
    after a restart within the skew, finds no nonce remembered, so a node refuses whatever
    is dated before it started; what is signed after passes, once."""
    headers = sign(SECRET, "DELETE", "/v1/blobs/x", EMPTY_SHA256, node=ME)
    before = ME_NODE
    assert refusal(before, "DELETE", "/v1/blobs/x", headers) is None
    assert refusal(before, "DELETE", "/v1/blobs/x", headers) == "replayed"
    restarted = Verifier(SECRET, ME)
    restarted.started = float(headers["x-manta-date"]) + 0.01  # started after the request was signed
    assert refusal(restarted, "DELETE", "/v1/blobs/x", headers) == "replayed"
    fresh = sign(SECRET, "DELETE", "/v1/blobs/x", EMPTY_SHA256, node=ME, now=restarted.started + 0.001)
    assert refusal(restarted, "DELETE", "/v1/blobs/x", fresh) is None
    assert refusal(restarted, "DELETE", "/v1/blobs/x", fresh) == "replayed"
