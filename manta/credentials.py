"""Credentials: root keys in the data dir (server side) and client-side resolution.

Every `manta` command and `manta.Client` resolve, in order: MANTA_ACCESS_KEY and
MANTA_SECRET_KEY; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the root credentials
file in the local data dir (MANTA_DATA, default ./manta-data). The server URL is
MANTA_URL (default http://127.0.0.1:9000).
"""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass

from manta.config import DEFAULT_DATA_DIR

CREDENTIALS_FILE = "root-credentials.json"
DEFAULT_URL = "http://127.0.0.1:9000"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def new_access_key() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "MK" + "".join(secrets.choice(alphabet) for _ in range(18))


def new_secret_key() -> str:
    return secrets.token_urlsafe(30)[:40]


def credentials_path(data_dir: str) -> str:
    return os.path.join(data_dir, CREDENTIALS_FILE)


def write_root_credentials(data_dir: str, creds: Credentials) -> str:
    path = credentials_path(data_dir)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path + ".tmp", 0o600)
    os.rename(path + ".tmp", path)
    return path


def read_root_credentials(data_dir: str) -> Credentials | None:
    try:
        with open(credentials_path(data_dir)) as fh:
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
    return read_root_credentials(os.environ.get("MANTA_DATA") or DEFAULT_DATA_DIR)
