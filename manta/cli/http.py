"""A small SigV4-signed HTTP client for manta's own (non-S3) APIs, used by the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from manta.client.settings import (
    client_ca_bundle,
    client_credentials,
    client_url,
    ssl_context,
    tls_failure,
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code


def signed_request(method: str, path: str, body: bytes = b"", region: str = "us-east-1",
                   timeout_s: float = 60.0) -> Any:
    from manta.cli.common import CliError

    creds = client_credentials()
    if creds is None:
        raise CliError("no credentials: set MANTA_ACCESS_KEY and MANTA_SECRET_KEY (or run on the "
                       "server host, where the root credentials are read from the data dir)")
    url = client_url().rstrip("/") + path
    request = AWSRequest(method=method, url=url, data=body,
                         headers={"content-type": "application/json"} if body else {})
    S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key), "s3", region).add_auth(request)
    prepared = urllib.request.Request(url, data=body or None, method=method,
                                      headers=dict(request.headers.items()))
    try:
        context = ssl_context(client_ca_bundle()) if url.startswith("https://") else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        with urllib.request.urlopen(prepared, timeout=timeout_s, context=context) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        code, message = _error_fields(exc.read())
        raise CliError(f"{code or exc.code}: {message or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        base = client_url().rstrip("/")
        raise CliError(tls_failure(base, exc) or f"cannot reach {base}: {getattr(exc, 'reason', exc)}") from None


def _error_fields(body: bytes) -> tuple[str, str]:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body.decode(errors="replace")[:200]
    return root.findtext("Code") or "", root.findtext("Message") or ""
