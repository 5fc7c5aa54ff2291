"""The S3 front door in this process: a temporary Store (directory nodes under a temp dir),
the real ASGI app from `manta.server.frontdoor.build_app` (the jobs sandbox left out), and
a client that sends SigV4-signed requests to it through httpx's ASGI transport, on an event
loop of its own (an anyio blocking portal) so that tests stay synchronous. No port, no
subprocess: a handler test costs milliseconds.

    with InProcessS3(tmp_path) as s3:
        r = s3.request("PUT", "/bucket")
        assert r.status_code == 200
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from manta.server.config import ServerConfig
from manta.server.frontdoor import build_app
from tests.conftest import ROOT_AK, ROOT_SK

BASE_URL = "http://127.0.0.1:9000"  # what the requests are signed for; nothing listens there
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class _SigV4(S3SigV4Auth):
    """botocore's S3 signer, with the x-amz-content-sha256 the caller chose (a streaming
    mode, UNSIGNED-PAYLOAD, or a hash that is not the body's) where it chose one."""

    def __init__(self, credentials: Credentials, region: str, payload_hash: str | None) -> None:
        super().__init__(credentials, "s3", region)
        self.payload_hash = payload_hash

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash or str(super().payload(request))


class InProcessS3:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.config = ServerConfig(data_dir=str(tmp_path / "data"), **config)
        self.app, self.store, self.scheduler = build_app(self.config, jobs=False)
        self.store.catalog.accounts.add("root", ROOT_AK, ROOT_SK, root=True)
        self.access_key, self.secret_key = ROOT_AK, ROOT_SK
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE_URL)

    def __enter__(self) -> InProcessS3:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._portal.call(self.http.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self.store.close()

    def add_account(self, name: str, access_key: str, secret_key: str) -> None:
        self.store.catalog.accounts.add(name, access_key, secret_key, root=False)

    def request(self, method: str, path: str, *, body: bytes = b"", query: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, access_key: str | None = None,
                secret_key: str | None = None, sign: bool = True, quoted: bool = False) -> httpx.Response:
        """`path` is "/bucket/key" (percent-encoded here unless `quoted`); `query` values ""
        for bare sub-resources (?uploads). Signed as botocore signs (payload hash in
        x-amz-content-sha256, or the one in `headers`) with the root keys unless others are given."""
        url = BASE_URL + (path if quoted else urllib.parse.quote(path, safe="/~"))
        if query:
            url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="~")
        sent = dict(headers or {})
        if sign:
            request = AWSRequest(method=method, url=url, data=body, headers=sent)
            credentials = Credentials(access_key or self.access_key, secret_key or self.secret_key)
            chosen = {k.lower(): v for k, v in sent.items()}.get("x-amz-content-sha256")
            _SigV4(credentials, self.config.region, chosen).add_auth(request)
            sent = dict(request.headers.items())
        return self._portal.call(lambda: self.http.request(method, url, content=body, headers=sent))

    # -- shortcuts used by every handler test -----------------------------------------

    def create_bucket(self, bucket: str) -> None:
        response = self.request("PUT", f"/{bucket}")
        assert response.status_code == 200, response.text

    def put(self, bucket: str, key: str, body: bytes, **headers: str) -> httpx.Response:
        response = self.request("PUT", f"/{bucket}/{key}", body=body, headers=headers)
        assert response.status_code == 200, response.text
        return response


def error_code(response: httpx.Response) -> str:
    """The <Code> of an S3 error body (asserting it is one, with a request id)."""
    root = ET.fromstring(response.content)
    assert root.tag == "Error", response.text
    assert root.findtext("RequestId") == response.headers["x-amz-request-id"]
    return root.findtext("Code") or ""


def xml(response: httpx.Response) -> ET.Element:
    return ET.fromstring(response.content)


def texts(element: ET.Element, path: str) -> list[str]:
    """Texts of the namespaced elements at `path` ("Contents/Key")."""
    ns_path = "/".join(NS + part for part in path.split("/"))
    return [e.text or "" for e in element.findall(ns_path)]


def inprocess_s3(tmp_path: Path, **config: Any) -> Iterator[InProcessS3]:
    """A fixture body: `yield from inprocess_s3(tmp_path)`."""
    with InProcessS3(tmp_path, **config) as s3:
        yield s3
