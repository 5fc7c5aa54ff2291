"""Shared pieces of the benchmark scripts: SigV4 signer, raw HTTP client, load drivers, servers.

- `Target` signs requests (SigV4 header auth, UNSIGNED-PAYLOAD) for one server;
- `Client` is a minimal HTTP/1.1 keep-alive client on raw sockets, far cheaper per request
  than http.client (on 2 cores the client's CPU is taken from the server under test);
- `large_put` / `large_get` / `run_small` measure one sample each, checking every answer;
- `Server` runs a server subprocess in its own process group (`Server.manta` starts manta).
Method: benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
BUCKET, REGION = "bench", "us-east-1"
LARGE_TAIL = random.Random(1).randbytes(MiB - 8)  # large chunk i: 8-byte big-endian i + this
SMALL_FILL = random.Random(2).randbytes(4096 - 16)  # small key i: 16-byte index + this
SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"
FAILURES = (OSError, ValueError, IndexError)  # I/O errors and unparsable answers


class BenchError(Exception):
    """A server answered wrongly (status, size, content) or could not be started."""


@functools.lru_cache(maxsize=8)
def signing_key(secret_key: str, day: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


@dataclass(frozen=True)
class Target:
    """Where requests go; keys are URL-safe, so paths need no escaping."""

    name: str
    port: int
    access_key: str = ""  # empty: send unsigned (nginx)
    secret_key: str = ""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def path(self, key: str = "") -> str:
        return f"/{BUCKET}/{key}" if key else f"/{BUCKET}"

    def auth_headers(self, method: str, path: str) -> str:
        """SigV4 header auth with UNSIGNED-PAYLOAD, as CRLF-terminated header lines."""
        if not self.access_key:
            return ""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
        canonical = (f"{method}\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD"
                     f"\nx-amz-date:{amz_date}\n\n{SIGNED_HEADERS}\nUNSIGNED-PAYLOAD")
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(signing_key(self.secret_key, amz_date[:8]), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return (f"x-amz-date: {amz_date}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
                f"Authorization: AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}\r\n")


class Client:
    """A minimal HTTP/1.1 keep-alive client on one connection (Content-Length or chunked).

    http.client spends ~4x more CPU per 4 KiB request (~125 vs ~30 us), and on 2 cores the
    client's CPU is taken from the server under test.
    """

    def __init__(self, target: Target, timeout_s: float = 120.0) -> None:
        self.target, self.timeout_s = target, timeout_s
        self.sock: socket.socket | None = None
        self.buf = bytearray()  # received, not yet consumed

    def connect(self) -> socket.socket:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.target.port), self.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def connected(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionError("connection closed")
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, bytearray()

    def send(self, method: str, path: str, body=b"", length: int | None = None) -> None:
        """Send one request; `body` is bytes, or an iterable of chunks totalling `length`."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.target.host}\r\n"
                + self.target.auth_headers(method, path))
        if method == "PUT":
            head += f"Content-Length: {len(body) if length is None else length}\r\n"
        sock = self.sock or self.connect()
        if isinstance(body, bytes):
            sock.sendall(head.encode() + b"\r\n" + body)  # small requests: one segment
            return
        sock.sendall(head.encode() + b"\r\n")
        for chunk in body:
            sock.sendall(chunk)

    def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        status_line, *lines = self.buf[:end].decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        fields = (line.partition(":") for line in lines)
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        return int(status_line.split(" ", 2)[1]), headers

    def read_body(self, status: int, headers: dict[str, str]) -> bytes:
        if status in (204, 304):
            data = b""
        elif "content-length" in headers:
            data = self._take(int(headers["content-length"]))
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                self._take(2)
            while self._line():  # trailers
                pass
            data = b"".join(parts)
        else:
            raise BenchError(f"HTTP {status} answer without Content-Length or chunked body")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return data

    def readinto(self, view: memoryview) -> int:
        """Read body bytes straight into `view` (large GETs); returns the count."""
        if self.buf:
            n = min(len(view), len(self.buf))
            view[:n] = self.buf[:n]
            del self.buf[:n]
            return n
        if not (n := self.connected().recv_into(view)):
            raise ConnectionError("server closed the connection")
        return n

    def call(self, method: str, key: str = "", body: bytes = b"") -> tuple[int, bytes]:
        """One request; retried once on a fresh connection if a kept-alive one was closed."""
        path, reused = self.target.path(key), self.sock is not None
        try:
            self.send(method, path, body)
            status, headers = self.read_head()
        except ConnectionError:
            if not reused:
                raise
            self.connect()
            self.send(method, path, body)
            status, headers = self.read_head()
        return status, self.read_body(status, headers)

    def expect(self, method: str, key: str = "", body: bytes = b"", ok=(200, 201, 204)) -> None:
        status, data = self.call(method, key, body)
        if status not in ok:
            raise BenchError(f"{method} {self.target.path(key)}: HTTP {status} {data[:300]!r}")

    def _fill(self) -> None:
        if not (data := self.connected().recv(256 * 1024)):
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _line(self) -> bytes:
        while (eol := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:eol])
        del self.buf[:eol + 2]
        return line


def small_body(i: int) -> bytes:
    return b"%015d\n" % i + SMALL_FILL


def small_op(client: Client, op: str, index: int, fresh_key: str) -> bool:
    """One 4 KiB PUT of a fresh key, or GET of pre-created key `index` (content checked)."""
    try:
        if op == "put":
            return client.call("PUT", fresh_key, small_body(index))[0] in (200, 201, 204)
        status, data = client.call("GET", f"small/{index}")
        return status == 200 and data == small_body(index)
    except (BenchError, *FAILURES):
        client.close()
        return False


def large_put(target: Target, size_mib: int) -> float:
    block = bytearray(8) + LARGE_TAIL

    def chunks():
        for i in range(size_mib):
            block[:8] = i.to_bytes(8, "big")  # sent before the generator resumes
            yield block

    client = Client(target)
    start = time.monotonic()
    client.send("PUT", target.path("large"), chunks(), size_mib * MiB)
    status, headers = client.read_head()
    answer = client.read_body(status, headers)
    seconds = time.monotonic() - start
    client.close()
    if status not in (200, 201, 204):
        raise BenchError(f"large PUT: HTTP {status} {answer[:300]!r}")
    return size_mib * MiB / seconds / 1e6


def md5_mbs(size_mib: int) -> float:
    """MB/s of one core hashing large_put's body with MD5: the ETag of a single PUT is the
    MD5 of its whole body, a sequential hash, so no server can store the object faster
    than this (less what the client takes from the same cores)."""
    block, summer = bytearray(8) + LARGE_TAIL, hashlib.md5()
    start = time.monotonic()
    for i in range(size_mib):
        block[:8] = i.to_bytes(8, "big")
        summer.update(block)
    summer.digest()
    return size_mib * MiB / (time.monotonic() - start) / 1e6


def large_get(target: Target, size_mib: int) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    client = Client(target)
    start = time.monotonic()
    client.send("GET", target.path("large"))
    status, headers = client.read_head()
    if status != 200:
        raise BenchError(f"large GET: HTTP {status} {client.read_body(status, headers)[:300]!r}")
    if headers.get("content-length") != str(size_mib * MiB):
        raise BenchError(f"large GET: Content-Length {headers.get('content-length')}, "
                         f"expected {size_mib * MiB}")
    for i in range(size_mib):
        got = 0
        while got < MiB:
            got += client.readinto(view[got:])
        full_check = i in (0, size_mib // 2, size_mib - 1)
        if buf[:8] != i.to_bytes(8, "big") or (full_check and buf[8:] != LARGE_TAIL):
            raise BenchError(f"large GET: wrong content in MiB #{i}")
    seconds = time.monotonic() - start
    client.close()
    return size_mib * MiB / seconds / 1e6


def _small_worker(target: Target, op: str, wid: int, concurrency: int, seconds: float,
                  nkeys: int, tag: str, barrier, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    client = Client(target)
    with contextlib.suppress(OSError):
        client.connect()
    barrier.wait(timeout=60)
    ok = n = 0
    start = now = time.monotonic()
    while now < start + seconds:
        ok += small_op(client, op, (wid + n * concurrency) % nkeys, f"fresh/{tag}/{wid}-{n}")
        n, now = n + 1, time.monotonic()
    client.close()
    results.put((ok, n - ok, now - start))


def run_small(target: Target, op: str, concurrency: int, seconds: float, nkeys: int,
              tag: str) -> tuple[float, int]:
    """4 KiB `op` ("put"/"get") ops/s from `concurrency` client processes; and failed ops."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(concurrency + 1), ctx.Queue()
    procs = [ctx.Process(target=_small_worker, daemon=True, args=(
        target, op, wid, concurrency, seconds, nkeys, tag, barrier, results))
        for wid in range(concurrency)]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=60)
        tallies = [results.get(timeout=seconds + 150) for _ in procs]
    except (queue.Empty, threading.BrokenBarrierError) as exc:
        raise BenchError(f"client workers stalled ({type(exc).__name__})") from None
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.terminate()  # all results are in (or we are giving up)
                proc.join()
    return sum(t[0] for t in tallies) / max(t[2] for t in tallies), sum(t[1] for t in tallies)


def worktree(cleanup: contextlib.ExitStack, rev: str, dest: Path) -> Path:
    """A checkout of this repository at `rev` in `dest` (a git worktree), for a baseline
    server; on cleanup it is removed and its record pruned."""
    git = ["git", "-C", str(HERE.parent), "worktree"]
    subprocess.run([*git, "add", "--detach", "-q", str(dest), rev], check=True)
    cleanup.callback(subprocess.run, [*git, "prune"], check=False)
    cleanup.callback(subprocess.run, [*git, "remove", "--force", str(dest)], check=False)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess in its own session (process group), logging to WORK/NAME.log."""

    def __init__(self, target: Target, argv: list[str], work: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.target, self.log = target, work / f"{target.name}.log"
        self.helpers: list[subprocess.Popen] = []  # e.g. a cluster's storage nodes
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, cwd=cwd or HERE.parent,
                                         start_new_session=True)

    @classmethod
    def manta(cls, name: str, work: Path, data: Path, *extra: str, code: Path | None = None,
              env: dict | None = None) -> Server:
        """`python -m manta serve --data DATA` on a free loopback port, plus `extra` options;
        `code`: a checkout whose manta to run (another revision) instead of this one."""
        port = free_port()
        keys = {"MANTA_ROOT_ACCESS_KEY": "benchroot",
                "MANTA_ROOT_SECRET_KEY": secrets.token_hex(20)}
        data.mkdir(parents=True)
        argv = [sys.executable, "-m", "manta", "serve", "--data", str(data),
                "--listen", f"127.0.0.1:{port}", *extra]
        env = {**os.environ, **keys, **(env or {})}
        if code is not None:
            env["PYTHONPATH"] = str(code)
        return cls(Target(name, port, *keys.values()), argv, work, env, cwd=code)

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()[-15:]
        return "\n".join("    | " + line for line in lines)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"exited with code {self.proc.returncode}:\n{self.log_tail()}")
            client = Client(self.target, timeout_s=2)
            try:
                client.send("GET", "/")
                client.read_head()
                return  # any HTTP answer will do
            except FAILURES:
                time.sleep(0.2)
            finally:
                client.close()
        raise BenchError(f"no HTTP answer on {self.target.host} in {timeout_s:.0f} s:\n"
                         f"{self.log_tail()}")

    def prepare(self, nkeys: int) -> None:
        """Create the bucket (S3 servers) and the 4 KiB keys that GETs read."""
        client = Client(self.target)
        if self.target.access_key:
            client.expect("PUT", ok=(200, 409))
        for i in range(nkeys):
            client.expect("PUT", f"small/{i}", small_body(i))
        client.close()

    def stop(self) -> None:
        for proc in (self.proc, *self.helpers):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # the whole group: servers may fork workers
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)


def file_create_us(parent: Path, count: int = 100) -> float:
    """CPU microseconds to create one small file in a fresh directory under `parent` (the
    server's data directory), median of `count`. The files stay (deleting them would cost
    the next files made nearby): a machine fact for reading a job's time or a small PUT's,
    not manta's (benchmarks/README.md: "what a deleted file costs the next one")."""
    probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=parent))
    costs = []
    for i in range(count):
        before = time.thread_time()
        fd = os.open(probe / f"{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"12345\n")
        os.close(fd)
        costs.append((time.thread_time() - before) * 1e6)
    return statistics.median(costs)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def begin_run() -> tuple[float, ...]:
    """What every benchmark does first: SIGTERM runs its cleanup too (as SystemExit), and a
    busy machine is said to be busy. Returns the load average at the start."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before starting: other work is "
              "running, so numbers will be noisy", file=sys.stderr)
    return load_start


def machine_info(load_start: tuple[float, ...]) -> dict:
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg()}


def fill_defaults(args: Any, defaults: dict[str, Any]) -> None:
    """Options the user left unset take these values (the --quick or the full set)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {path}")
