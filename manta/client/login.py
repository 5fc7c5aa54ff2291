"""The client end of `manta login`: a websocket to /_manta/login/BUCKET/KEY, its upgrade
request SigV4-signed as `Client.api` signs its calls (frames: manta/server/login.py).

    sock = LoginSocket.open(client, "logs/big.csv", rows=50, cols=120)
    sock.send_keys(b"wc -l /manta/input\\r"); sock.resize(60, 200)
    while (frame := sock.receive()) is not None: ...   # bytes, then the end (a dict)

A refusal (another account's object, a missing one, bad keys) raises the client's
MantaError for the server's code, as every other call does.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from manta.client.client import REGION, Client
from manta.client.errors import MantaError, Unreachable, error_for
from manta.client.settings import ssl_context

__all__ = ["LoginSocket"]

CONNECT_TIMEOUT_S = 15.0


class LoginSocket:
    def __init__(self, client: Client, conn: Any, bucket: str, key: str) -> None:
        self.client = client
        self.conn = conn
        self.bucket = bucket
        self.key = key

    @classmethod
    def open(cls, client: Client, name: str, *, command: str | None = None, rows: int = 24, cols: int = 80,
             term: str = "xterm", idle_s: float | None = None) -> LoginSocket:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        from websockets.exceptions import InvalidHandshake, WebSocketException
        from websockets.sync.client import connect

        bucket, _, key = name.strip().lstrip("/").partition("/")
        if not bucket or not key:
            raise ValueError(f"{name!r} is not bucket/key")
        query: dict[str, str] = {"rows": str(rows), "cols": str(cols), "term": term}
        if command is not None:
            query["command"] = command
        if idle_s is not None:
            query["idle_s"] = f"{idle_s:g}"
        path = "/_manta/login/" + urllib.parse.quote(f"{bucket}/{key}", safe="/~")
        url = f"{client.url}{path}?{urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote)}"
        request = AWSRequest(method="GET", url=url, data=b"")
        S3SigV4Auth(Credentials(client.access_key, client._secret_key), "s3", REGION).add_auth(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        secure = url.startswith("https://")
        ws_url = ("wss://" if secure else "ws://") + url.split("://", 1)[1]
        try:
            conn = connect(ws_url, additional_headers=headers, proxy=None, compression=None, max_size=None,
                           ssl=ssl_context(client.ca_bundle) if secure else None,
                           open_timeout=CONNECT_TIMEOUT_S, ping_interval=20, ping_timeout=60)
        except (OSError, InvalidHandshake, WebSocketException, TimeoutError) as exc:
            raise Unreachable(f"cannot open a session at {client.url}: {exc}") from None
        return cls(client, conn, bucket, key)

    def send_keys(self, data: bytes) -> None:
        self.conn.send(data)

    def resize(self, rows: int, cols: int) -> None:
        self.conn.send(json.dumps({"resize": [rows, cols]}))

    def receive(self) -> bytes | dict[str, Any]:
        """The next terminal output, or the session's end: {"end": reason, "exit_code",
        "signal", "message"}. Raises the MantaError of a refusal, Unreachable when the
        connection is lost without an end."""
        from websockets.exceptions import ConnectionClosed

        try:
            frame = self.conn.recv()
        except ConnectionClosed:
            raise Unreachable("the connection to the session was lost") from None
        if isinstance(frame, bytes):
            return frame
        message = json.loads(frame)
        if "error" in message:
            raise error_for(str(message["error"]), str(message.get("message") or ""), self.bucket, self.key,
                            self.client.url, self.client.settings.sources.get("access_key", ""))
        if "end" not in message:
            raise MantaError(f"unexpected message from the server: {frame[:200]}")
        return dict(message)

    def close(self) -> None:
        self.conn.close()
