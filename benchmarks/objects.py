"""Object PUT/GET benchmark: manta vs nginx (static GET + WebDAV PUT) vs moto (S3, in memory).

Metrics, for every server, in one run:
  * PUT and GET throughput (MB/s, 10^6 bytes) of one large object streamed in 1 MiB chunks;
  * 4 KiB PUT and GET operations per second at concurrency 1 and 16.

Method:
  * All servers are started up front on loopback and stay idle while another one is measured.
    Each round measures every metric on every server in turn, so drift hits all servers alike;
    the table quotes the median of --repeat rounds.
  * One client for everyone: a minimal HTTP/1.1 keep-alive client (one connection per thread),
    threads spread over --client-procs processes so the GIL does not cap the servers. S3
    requests carry a hand-rolled SigV4 header signature (UNSIGNED-PAYLOAD); nginx receives the
    very same requests unsigned.
  * Answers are checked so a broken server cannot look fast: status, exact size, and content
    (every 4 KiB GET in full; the 8-byte index of every large chunk, three chunks in full).
  * manta's and nginx's data live under one temp dir (same filesystem); moto keeps objects in
    memory. Everything the script starts is stopped, and the temp dir removed, on exit.

Usage: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
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
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NGINX = "/usr/sbin/nginx"
SERVERS = ("manta", "nginx", "moto")
MiB = 1 << 20
SMALL = 4096
BUCKET = "bench"
REGION = "us-east-1"
LARGE_TAIL = random.Random(1).randbytes(MiB - 8)  # chunk i = 8-byte big-endian i + LARGE_TAIL
SMALL_FILL = random.Random(2).randbytes(SMALL - 16)  # small key i = 16-byte index + SMALL_FILL
SIGNED_HEADERS = "host;x-amz-content-sha256;x-amz-date"


class BenchError(Exception):
    """A server answered wrongly (status, size, content) or could not be started."""


# ---------------------------------------------------------------------------------- client


class Signer:
    """AWS SigV4 header signing for S3 with UNSIGNED-PAYLOAD; signing key cached per day."""

    def __init__(self, access_key: str, secret_key: str, region: str = REGION) -> None:
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self._day_keys: dict[str, bytes] = {}

    def _day_key(self, day: str) -> bytes:
        if day not in self._day_keys:
            key = ("AWS4" + self.secret_key).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day_keys[day] = key
        return self._day_keys[day]

    def headers(self, method: str, host: str, path: str) -> dict[str, str]:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        canonical = (f"{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\n"
                     f"x-amz-date:{amz_date}\n\n{SIGNED_HEADERS}\nUNSIGNED-PAYLOAD")
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self._day_key(amz_date[:8]), to_sign.encode(), hashlib.sha256)
        return {"x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                "Authorization": f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                 f"SignedHeaders={SIGNED_HEADERS}, Signature={signature.hexdigest()}"}


@dataclass(frozen=True)
class Target:
    """Where to send requests; keys are URL-safe so a path needs no escaping."""

    name: str
    port: int
    signer: Signer | None  # None: unsigned (nginx)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def path(self, key: str = "") -> str:
        return f"/{BUCKET}/{key}" if key else f"/{BUCKET}"

    def headers(self, method: str, path: str) -> dict[str, str]:
        return self.signer.headers(method, self.host, path) if self.signer else {}


class Client:
    """A minimal HTTP/1.1 keep-alive client on one connection.

    http.client spends ~4x more CPU per 4 KiB request (~125 us vs ~30 us), and on 2 cores that
    CPU is taken from the server under test. Bodies: Content-Length, chunked, or until close.
    """

    def __init__(self, target: Target, timeout_s: float = 120.0) -> None:
        self.target, self.timeout_s = target, timeout_s
        self.sock: socket.socket | None = None
        self.buf = bytearray()  # received, not yet consumed

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.target.port), self.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf.clear()

    def send(self, method: str, path: str, body=b"", length: int | None = None) -> None:
        """Send one request; `body` is bytes, or an iterable of chunks totalling `length`."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.target.host}"]
        lines += [f"{k}: {v}" for k, v in self.target.headers(method, path).items()]
        if method == "PUT":
            lines.append(f"Content-Length: {len(body) if length is None else length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if self.sock is None:
            self.connect()
        if isinstance(body, bytes):
            self.sock.sendall(head + body)  # one segment for small requests
            return
        self.sock.sendall(head)
        for chunk in body:
            self.sock.sendall(chunk)

    def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        status_line, *lines = self.buf[:end].decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
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
            with contextlib.suppress(ConnectionError):
                while True:
                    self._fill()
            data = bytes(self.buf)
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return data

    def readinto(self, view: memoryview) -> int:
        """Read Content-Length body bytes straight into `view`; returns the count."""
        if self.buf:
            n = min(len(view), len(self.buf))
            view[:n] = self.buf[:n]
            del self.buf[:n]
            return n
        n = self.sock.recv_into(view)
        if not n:
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
        data = self.sock.recv(262144)
        if not data:
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
    """One 4 KiB PUT (of a fresh key) or GET (of pre-created key `index`, content checked)."""
    try:
        if op == "put":
            return client.call("PUT", fresh_key, small_body(index))[0] in (200, 201, 204)
        status, data = client.call("GET", f"small/{index}")
        return status == 200 and data == small_body(index)
    except (OSError, ValueError, IndexError):  # IndexError, ValueError: unparsable answer
        client.close()
        return False


def large_put(target: Target, key: str, size_mib: int) -> float:
    block = bytearray(8) + LARGE_TAIL

    def chunks():
        for i in range(size_mib):
            block[:8] = i.to_bytes(8, "big")  # sent before the generator resumes
            yield block

    client = Client(target)
    start = time.monotonic()
    client.send("PUT", target.path(key), chunks(), size_mib * MiB)
    status, headers = client.read_head()
    answer = client.read_body(status, headers)
    seconds = time.monotonic() - start
    client.close()
    if status not in (200, 201, 204):
        raise BenchError(f"large PUT: HTTP {status} {answer[:300]!r}")
    return size_mib * MiB / seconds / 1e6


def large_get(target: Target, key: str, size_mib: int) -> float:
    buf = bytearray(MiB)
    view = memoryview(buf)
    full_check = {0, size_mib // 2, size_mib - 1}
    client = Client(target)
    start = time.monotonic()
    client.send("GET", target.path(key))
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
        if buf[:8] != i.to_bytes(8, "big") or (i in full_check and buf[8:] != LARGE_TAIL):
            raise BenchError(f"large GET: wrong content in MiB #{i}")
    seconds = time.monotonic() - start
    client.close()
    return size_mib * MiB / seconds / 1e6


# ------------------------------------------------------------------------- load generator


def _load_proc(target: Target, op: str, worker_ids: range, concurrency: int, seconds: float,
               nkeys: int, tag: str, barrier, results) -> None:
    """Client process: one thread per worker id; reports (ops, failed ops, elapsed_s)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    connected, go = threading.Barrier(len(worker_ids) + 1), threading.Event()
    deadline: list[float] = []
    tallies: list[tuple[int, int, float]] = []

    def worker(wid: int) -> None:
        client = Client(target)
        with contextlib.suppress(OSError):
            client.connect()
        connected.wait()
        go.wait()
        ok = failed = n = 0
        now = time.monotonic()
        while now < deadline[0]:
            if small_op(client, op, (wid + n * concurrency) % nkeys, f"fresh/{tag}/{wid}-{n}"):
                ok += 1
            else:
                failed += 1
            n, now = n + 1, time.monotonic()
        client.close()
        tallies.append((ok, failed, now))

    threads = [threading.Thread(target=worker, args=(w,)) for w in worker_ids]
    for t in threads:
        t.start()
    connected.wait(timeout=60)
    barrier.wait(timeout=60)  # all client processes start together
    start = time.monotonic()
    deadline.append(start + seconds)
    go.set()
    for t in threads:
        t.join()
    results.put((sum(t[0] for t in tallies), sum(t[1] for t in tallies),
                 max(t[2] for t in tallies) - start))


def run_load(target: Target, op: str, concurrency: int, seconds: float, nkeys: int,
             client_procs: int, tag: str) -> tuple[float, int]:
    """Ops/s of 4 KiB `op` ("put" or "get") at `concurrency`, and the number of failed ops."""
    ctx = mp.get_context("fork")
    nprocs = min(concurrency, client_procs)
    barrier, results, procs, first = ctx.Barrier(nprocs + 1), ctx.Queue(), [], 0
    for p in range(nprocs):
        share = concurrency // nprocs + (p < concurrency % nprocs)
        args = (target, op, range(first, first + share), concurrency, seconds, nkeys, tag,
                barrier, results)
        procs.append(ctx.Process(target=_load_proc, args=args, daemon=True))
        first += share
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=60)
        tallies = [results.get(timeout=seconds + 120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return sum(t[0] for t in tallies) / max(t[2] for t in tallies), sum(t[1] for t in tallies)


# -------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess in its own session (process group), logging to a file."""

    def __init__(self, target: Target, argv: list[str], log: Path, env: dict | None = None):
        self.target, self.log = target, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()[-lines:]
        return "\n".join("    | " + line for line in text) or "    | (empty log)"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"exited with code {self.proc.returncode}:\n{self.log_tail()}")
            client = Client(self.target, timeout_s=2)
            try:
                client.call("GET")
                return  # any HTTP answer will do
            except (OSError, ValueError, IndexError):
                time.sleep(0.2)
            finally:
                client.close()
        raise BenchError(f"no HTTP answer on {self.target.host} after {timeout_s:.0f} s:\n"
                         f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_manta(work: Path) -> Server:
    access_key, secret_key = "benchroot", secrets.token_hex(20)
    port, data = free_port(), work / "manta-data"
    data.mkdir()
    env = dict(os.environ, MANTA_ROOT_ACCESS_KEY=access_key, MANTA_ROOT_SECRET_KEY=secret_key)
    argv = [sys.executable, "-m", "manta", "serve", "--data", str(data),
            "--listen", f"127.0.0.1:{port}"]
    return Server(Target("manta", port, Signer(access_key, secret_key)), argv,
                  work / "manta.log", env)


NGINX_CONF = """\
{user}worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 300s; keepalive_requests 10000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 0; }}
    }}
}}
"""


def start_nginx(work: Path) -> Server:
    if not os.path.exists(NGINX):
        raise BenchError(f"{NGINX} not found; install it with "
                         "`apt-get install -y nginx libnginx-mod-http-dav-ext`")
    port, tmp, root = free_port(), work / "nginx", work / "nginx-data"
    tmp.mkdir()
    (root / BUCKET).mkdir(parents=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must write into our dirs
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, root=root))
    argv = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf),
            "-g", "daemon off;"]
    return Server(Target("nginx", port, None), argv, work / "nginx.log")


def start_moto(work: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Server(Target("moto", port, Signer("benchkey", "benchsecret")), argv,
                  work / "moto.log")


STARTERS: dict[str, Callable[[Path], Server]] = {
    "manta": start_manta, "nginx": start_nginx, "moto": start_moto}


def prepare(target: Target, nkeys: int) -> None:
    """Create the bucket (S3 servers) and the 4 KiB keys that GETs read."""
    client = Client(target)
    if target.signer:
        client.expect("PUT", ok=(200, 409))
    for i in range(nkeys):
        client.expect("PUT", f"small/{i}", small_body(i))
    client.close()


# --------------------------------------------------------------------------- measurements


def metric_labels(args: argparse.Namespace) -> dict[str, str]:
    labels = {"large_put": f"PUT {args.large_mib} MiB (MB/s)",
              "large_get": f"GET {args.large_mib} MiB (MB/s)"}
    for c in args.concurrency:
        for op in ("put", "get"):
            labels[f"small_{op}_c{c}"] = f"4 KiB {op.upper()} c={c} (ops/s)"
    return labels


def measure(metric: str, target: Target, args: argparse.Namespace, tag: str) -> tuple[float, int]:
    """One sample of `metric` (a metric_labels key) and its number of failed operations."""
    if metric == "large_put":
        return large_put(target, "large", args.large_mib), 0
    if metric == "large_get":
        try:
            return large_get(target, "large", args.large_mib), 0
        finally:
            Client(target).expect("DELETE", "large", ok=(200, 204, 404))  # frees moto's memory
    _, op, level = metric.split("_")
    return run_load(target, op, int(level[1:]), args.seconds, args.small_keys,
                    args.client_procs, tag)


def measure_all(args: argparse.Namespace, servers: dict[str, Server], labels: dict) -> dict:
    """Every round measures every metric on every server in turn; returns raw samples."""
    samples = {m: {name: [] for name in servers} for m in labels}
    failed_ops = {m: {name: [] for name in servers} for m in labels}
    failures = []
    for rnd in range(args.repeat):
        for metric, label in labels.items():
            for name, server in servers.items():
                prefix = f"round {rnd + 1}/{args.repeat}  {label:<28} {name:<6}"
                try:
                    value, failed = measure(metric, server.target, args, f"r{rnd}-{metric}")
                except (BenchError, OSError, ValueError, IndexError) as exc:
                    failures.append({"round": rnd, "metric": metric, "server": name,
                                     "error": str(exc)})
                    print(f"{prefix} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                samples[metric][name].append(value)
                failed_ops[metric][name].append(failed)
                note = f"  ({failed} failed ops)" if failed else ""
                print(f"{prefix} {fmt(value):>10}{note}", file=sys.stderr, flush=True)
    return {"samples": samples, "failed_ops": failed_ops, "failures": failures}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


TARGETS = (("large_get", "nginx", 0.7), ("small_put", "moto", 3.0), ("small_get", "moto", 3.0))


def report(args: argparse.Namespace, labels: dict, raw: dict, skipped: dict) -> dict:
    """Print the table of medians and the targets; return the JSON document."""
    medians = {m: {s: statistics.median(v) if v else None for s, v in per.items()}
               for m, per in raw["samples"].items()}
    ratios = {}
    width = max(map(len, labels.values())) + 2
    head = f"{'metric':<{width}}" + "".join(
        f"{c:>12}" for c in (*SERVERS, "manta/nginx", "manta/moto"))
    print("\n" + head + "\n" + "-" * len(head))
    for metric, label in labels.items():
        med = {s: medians[metric].get(s) for s in SERVERS}
        ratios[metric] = {f"manta/{b}": med["manta"] / med[b] if med["manta"] and med[b] else None
                          for b in ("nginx", "moto")}
        cells = [fmt(med[s]) + ("!" if sum(raw["failed_ops"][metric].get(s, [])) else "")
                 for s in SERVERS]
        cells += ["-" if r is None else f"{r:.2f}x" for r in ratios[metric].values()]
        print(f"{label:<{width}}" + "".join(f"{c:>12}" for c in cells))
    if any(sum(v) for per in raw["failed_ops"].values() for v in per.values()):
        print("! some operations failed; only successful ones are counted (JSON: failed_ops)")
    for name, why in skipped.items():
        print(f"{name}: not measured: {why.splitlines()[0]}")
    print("\ntargets:")
    targets = []
    for metric in labels:
        for prefix, base, minimum in TARGETS:
            if not metric.startswith(prefix):
                continue
            r = ratios[metric][f"manta/{base}"]
            met = None if r is None else r >= minimum
            shown = "-" if r is None else f"{r:.2f}x"
            verdict = {None: "not evaluated", True: "met", False: "NOT met"}[met]
            print(f"  {labels[metric]:<{width}} manta >= {minimum} x {base:<6}{shown:>8}  {verdict}")
            targets.append({"metric": metric, "baseline": base, "min_ratio": minimum,
                            "ratio": r, "met": met})
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
                        "python": platform.python_version(), "platform": platform.platform()},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "skipped": skipped, "labels": labels, **raw, "medians": medians,
            "ratios": ratios, "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="manta,nginx,moto",
                   help="comma-separated subset of manta,nginx,moto (default: all)")
    p.add_argument("--large-mib", type=int, default=1024, help="large object size, MiB")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each 4 KiB run")
    p.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians")
    p.add_argument("--concurrency", default="1,16", help="4 KiB concurrency levels")
    p.add_argument("--small-keys", type=int, default=1000, help="4 KiB keys the GETs cycle over")
    p.add_argument("--client-procs", type=int, default=len(os.sched_getaffinity(0)),
                   help="client processes the workers are spread over (default: nproc)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for a server")
    p.add_argument("--workdir", type=Path, default=HERE,
                   help="manta's and nginx's data go in a fresh temp dir under here")
    p.add_argument("--json", type=Path, default=HERE / "results" / "objects.json")
    p.add_argument("--quick", action="store_true",
                   help="short run: 64 MiB large object, 2 s runs, 1 round, 200 keys")
    args = p.parse_args(argv)
    if args.quick:
        args.large_mib, args.seconds, args.repeat, args.small_keys = 64, 2.0, 1, 200
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if unknown := set(args.servers) - set(SERVERS):
        p.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    if min(args.large_mib, args.repeat, args.small_keys, args.client_procs, *args.concurrency) < 1:
        p.error("sizes, counts and concurrency levels must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup on SIGTERM too
    labels, servers, skipped = metric_labels(args), {}, {}
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="objects-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        if (free := shutil.disk_usage(work).free) < 3 * args.large_mib * MiB:
            print(f"error: only {free / 2**30:.1f} GiB free under {args.workdir}", file=sys.stderr)
            return 2
        for name in args.servers:
            try:
                server = STARTERS[name](work)
                cleanup.callback(server.stop)
                server.wait_ready(args.start_timeout)
                prepare(server.target, args.small_keys)
                servers[name] = server
            except (BenchError, OSError, ValueError, IndexError) as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", file=sys.stderr)
        if not servers:
            print("error: no server could be started", file=sys.stderr)
            return 1
        print(f"measuring {', '.join(servers)}: {args.large_mib} MiB object; 4 KiB for "
              f"{args.seconds:g} s at c={args.concurrency}; {args.repeat} round(s)",
              file=sys.stderr)
        raw = measure_all(args, servers, labels)
    doc = report(args, labels, raw, skipped)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
