"""CORS from a real browser (issue 17, acceptance 5): headless Chromium from Debian, driven
over the DevTools protocol, opens a page served from one loopback origin (a tiny HTTP server
on its own port), and the page's script uploads a file to manta (another origin: another
port) with a presigned PUT URL and reads it back with fetch and a presigned GET URL. The
page writes what it saw into the DOM and the title; the test reads both back.

With the bucket's CORS rule the page reads what it wrote and the ETag the rule exposes. On
a bucket without rules the browser itself refuses: the PUT's preflight is 403, so the PUT is
never sent (the object does not appear), and the GET of an object that exists is answered
200 without Access-Control-Allow-Origin, so fetch fails in the page.

Everything stays on loopback: Chromium's background services are off, its host resolver
maps every name but 127.0.0.1 to nothing, and any other request goes to a proxy that
does not exist. Chromium and its children run in their own process group, killed at the end.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server, require_tool

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>ready</title></head>
<body><pre id="result"></pre>
<script>
async function roundTrip(putUrl, getUrl, text) {
  let outcome;
  try {
    if (putUrl) {
      const put = await fetch(putUrl, {method: "PUT", body: new Blob([text], {type: "text/plain"})});
      if (!put.ok) throw new Error("PUT answered " + put.status);
      outcome = {etag: put.headers.get("ETag")};
    }
    const got = await fetch(getUrl);
    if (!got.ok) throw new Error("GET answered " + got.status);
    outcome = {...outcome, ok: true, body: await got.text()};
  } catch (err) {
    outcome = {ok: false, error: String(err)};
  }
  document.getElementById("result").textContent = JSON.stringify(outcome);
  document.title = outcome.ok ? "uploaded and read back" : "refused";
  return outcome;
}
</script></body></html>
"""

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--metrics-recording-only", "--mute-audio",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",  # nothing listens there; loopback is never proxied
    "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
]
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 60.0


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """The page's origin: http://127.0.0.1:<another port>."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


class Browser:
    """One headless Chromium and a DevTools connection to its page."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="manta-chromium-")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.ws: ClientConnection | None = None
        self._connection = contextlib.ExitStack()
        self._ids = 0

    def open(self) -> None:
        port = self._devtools_port()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert pages, "Chromium opened no page"
        self.ws = self._connection.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30))

    def _devtools_port(self) -> int:
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, ValueError):
                with open(path) as fh:
                    return int(fh.readline())
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A DevTools command's result (events that arrive meanwhile are skipped)."""
        assert self.ws is not None
        self._ids += 1
        self.ws.send(json.dumps({"id": self._ids, "method": method, "params": params}))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self._ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while self.evaluate(f"location.href === {json.dumps(url)} && document.readyState === 'complete' "
                            "&& typeof roundTrip === 'function'") is not True:
            assert time.monotonic() < deadline, f"the page at {url} did not load"
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid in self._leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while self._leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _leftovers(self) -> list[int]:
        """Processes of this browser still running (zombies are dead): its process group, or
        its profile dir in their command line (a child that left the group)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read()
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
                pgid = os.getpgid(int(entry))
            except (OSError, IndexError):
                continue
            if state == b"Z":
                continue
            if pgid == self.proc.pid or self.profile.encode() in cmdline:
                found.append(int(entry))
        return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = require_tool("chromium")
    chromium = Browser(binary)
    try:
        chromium.open()
        yield chromium
    finally:
        chromium.close()
        assert chromium._leftovers() == [], "chromium processes outlived the test"


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with page_server() as url:
        yield url


def _presigned(s3: Any, method: str, bucket: str, key: str) -> str:
    return str(s3.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=300))


def _round_trip(browser: Browser, origin: str, put_url: str | None, get_url: str, text: str) -> dict[str, Any]:
    browser.goto(origin + "/")
    outcome = browser.evaluate(f"roundTrip({json.dumps(put_url)}, {json.dumps(get_url)}, {json.dumps(text)})")
    shown = json.loads(browser.evaluate("document.getElementById('result').textContent"))
    assert shown == outcome  # what the page reported is what the script returned
    outcome["title"] = browser.evaluate("document.title")
    return dict(outcome)


def test_a_page_from_another_origin_uploads_and_reads_back(browser: Browser, origin: str, server: Server,
                                                          s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": [origin], "AllowedMethods": ["PUT", "GET"], "AllowedHeaders": ["*"],
         "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 60}]})
    text = "uploaded from a browser \u2713"
    signer = server.client(signature_version="s3v4")
    outcome = _round_trip(browser, origin, _presigned(signer, "put_object", bucket, "from-browser.txt"),
                          _presigned(signer, "get_object", bucket, "from-browser.txt"), text)
    assert outcome.get("ok") is True, outcome
    assert outcome["body"] == text
    assert outcome["title"] == "uploaded and read back"
    stored = s3.get_object(Bucket=bucket, Key="from-browser.txt")
    assert stored["Body"].read() == text.encode()
    assert outcome["etag"] == stored["ETag"]  # readable by the page: the rule exposes it
    assert stored["ContentType"] == "text/plain"


def test_without_a_rule_the_browser_refuses(browser: Browser, origin: str, server: Server, s3: Any,
                                            bucket: str) -> None:
    signer = server.client(signature_version="s3v4")
    put_url = _presigned(signer, "put_object", bucket, "never.txt")
    refused = _round_trip(browser, origin, put_url, _presigned(signer, "get_object", bucket, "never.txt"), "x")
    assert refused["ok"] is False and "Failed to fetch" in refused["error"], refused
    assert refused["title"] == "refused"
    with pytest.raises(ClientError) as caught:  # the preflight failed: the PUT was never sent
        s3.head_object(Bucket=bucket, Key="never.txt")
    assert caught.value.response["Error"]["Code"] == "404"

    s3.put_object(Bucket=bucket, Key="there.txt", Body=b"served, not shared")
    get_url = _presigned(signer, "get_object", bucket, "there.txt")
    with urllib.request.urlopen(get_url, timeout=10) as direct:  # outside a browser it is a 200
        assert direct.read() == b"served, not shared"
    read = _round_trip(browser, origin, None, get_url, "")
    assert read["ok"] is False and "Failed to fetch" in read["error"], read

    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["http://127.0.0.1:1"], "AllowedMethods": ["PUT", "GET"], "AllowedHeaders": ["*"]}]})
    other_origin = _round_trip(browser, origin, put_url, get_url, "x")
    assert other_origin["ok"] is False, other_origin
