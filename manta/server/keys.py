"""Access keys: new key pairs, and the root credentials file in the data dir (written
once, 0600, when a server first starts; clients on the same host may read it)."""

from __future__ import annotations

import json
import os
import secrets
import string
from dataclasses import dataclass

CREDENTIALS_FILE = "root-credentials.json"


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
