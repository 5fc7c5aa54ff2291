"""Where a client finds its server and keys.

Every `manta` command, `manta.Client` and the `manta://` filesystem resolve, in order:
MANTA_ACCESS_KEY and MANTA_SECRET_KEY; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the
root credentials file in the local data dir (MANTA_DATA, default ./manta-data). The server
URL is MANTA_URL (default http://127.0.0.1:9000; https:// for a server started with
--tls-cert). An https server's certificate is checked against MANTA_CA_BUNDLE, else
AWS_CA_BUNDLE (a PEM file of CA certificates), else the default CAs; `tls_failure` words
the error when it does not verify.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass

DEFAULT_URL = "http://127.0.0.1:9000"
DEFAULT_DATA_DIR = "./manta-data"
ROOT_CREDENTIALS_FILE = "root-credentials.json"  # written by the server (manta.server.keys)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def _root_credentials(data_dir: str) -> Credentials | None:
    try:
        with open(os.path.join(data_dir, ROOT_CREDENTIALS_FILE)) as fh:
            data = json.load(fh)
    except (FileNotFoundError, PermissionError, ValueError):
        return None
    return Credentials(data["access_key"], data["secret_key"])


def client_url() -> str:
    return os.environ.get("MANTA_URL") or DEFAULT_URL


def client_credentials() -> Credentials | None:
    for ak, sk in (("MANTA_ACCESS_KEY", "MANTA_SECRET_KEY"),
                   ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
        if os.environ.get(ak) and os.environ.get(sk):
            return Credentials(os.environ[ak], os.environ[sk])
    return _root_credentials(os.environ.get("MANTA_DATA") or DEFAULT_DATA_DIR)


def client_ca_bundle() -> str | None:
    return os.environ.get("MANTA_CA_BUNDLE") or os.environ.get("AWS_CA_BUNDLE") or None


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The context for https requests: the default CAs, or only those in `ca_bundle`.
    A bundle that cannot be read is a ValueError naming it."""
    if ca_bundle is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"CA bundle {ca_bundle}: {getattr(exc, 'strerror', None) or exc}") from None


def tls_failure(url: str, exc: BaseException) -> str | None:
    """A message for an https connection that failed in TLS (somewhere in `exc`'s chain),
    or None when the failure was something else."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLCertVerificationError):
            return (f"the TLS certificate of {url} does not verify ({item.verify_message or item.reason}): "
                    "set MANTA_CA_BUNDLE to the CA certificate (PEM) that signed it")
        if isinstance(item, ssl.SSLError):
            return f"TLS with {url} failed ({item.reason or item}): is it an https server?"
        kwargs = getattr(item, "kwargs", None)  # botocore's exceptions keep their cause there
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args,
                 *(kwargs.values() if isinstance(kwargs, dict) else ())]
    return None
