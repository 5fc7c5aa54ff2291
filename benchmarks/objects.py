"""Object PUT/GET benchmark: manta vs nginx (static GET + WebDAV PUT) vs moto (S3, in memory).

Measures large-object PUT/GET throughput (MB/s = 10^6 bytes/s) and 4 KiB PUT/GET ops/s at
concurrency 1 and 16. All servers run at once on loopback; each round measures every metric on
every server in turn, and the table quotes medians over rounds. One cheap client drives every
server: a minimal HTTP/1.1 keep-alive client, one process per concurrent worker, SigV4 header
auth (UNSIGNED-PAYLOAD) for the S3 servers and the same requests unsigned for nginx. Answers are
checked (status, size, content) so that a broken server cannot look fast.
Usage and method: benchmarks/README.md. Client, signer, load drivers, servers: _common.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    BUCKET,
    FAILURES,
    HERE,
    BenchError,
    Client,
    MiB,
    Server,
    Target,
    begin_run,
    file_create_us,
    fill_defaults,
    fmt,
    free_port,
    large_get,
    large_put,
    machine_info,
    md5_mbs,
    run_small,
    worktree,
    write_json,
)

NGINX = "/usr/sbin/nginx"
SERVERS = ("manta", "nginx", "moto", "manta-base", "manta-cluster", "asgi-floor")
CLUSTER_NODES = 3
# (metric prefix, baseline, least ratio): issue 1's against moto, issue 13's against nginx
TARGETS = (("small_put", "moto", 3.0), ("small_get", "moto", 3.0),
           ("large_put", "nginx", 1.0), ("large_get", "nginx", 1.0),
           ("small_put_c16", "nginx", 0.25), ("small_get_c16", "nginx", 0.25))
FULL_DEFAULTS = {"large_mib": 1024, "seconds": 5.0, "repeat": 3, "small_keys": 1000}
QUICK_DEFAULTS = {"large_mib": 64, "seconds": 2.0, "repeat": 1, "small_keys": 200}

NGINX_CONF = """\
{user}worker_processes 2; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; default_type application/octet-stream;
    keepalive_timeout 300s; keepalive_requests 10000000; client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port}; root {root};
        location / {{ dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 0; }}
    }}
}}
"""


def manta_variants(args: argparse.Namespace) -> dict[str, int]:
    """The manta servers measured, by name, with their worker processes: `manta` for a
    single --workers value, else `manta-wN` for each."""
    if len(args.workers) == 1:
        return {"manta": args.workers[0]}
    return {f"manta-w{n}": n for n in args.workers}


def start_server(name: str, work: Path, args: argparse.Namespace, cleanup: contextlib.ExitStack) -> Server:
    variants = manta_variants(args)
    if name in variants:
        # always the flag: a plain `manta serve` runs one worker per CPU
        return Server.manta(name, work, work / f"{name}-data", "--workers", str(variants[name]))
    if name == "manta-base":  # the same embedded server at another revision, for before/after
        code = worktree(cleanup, args.baseline_rev, work / "base-checkout")
        # as many workers as the (first) manta server, if the revision has --workers at all
        # (without the flag it would run one per CPU: not a like-for-like comparison)
        extra = ("--workers", str(args.workers[0])) if (code / "manta" / "server" / "workers.py").exists() else ()
        return Server.manta(name, work, work / "base-data", *extra, code=code)
    if name == "manta-cluster":
        return start_cluster(work)
    port = free_port()
    if name == "asgi-floor":  # the required HTTP stack doing only nginx's work (floor_server.py)
        (work / "floor-data").mkdir()
        argv = [sys.executable, str(HERE / "floor_server.py"), str(work / "floor-data"), str(port),
                str(args.workers[-1])]
        return Server(Target(name, port), argv, work)
    if name == "moto":
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return Server(Target(name, port, "benchkey", "benchsecret"), argv, work)
    if not os.path.exists(NGINX):
        raise BenchError(f"{NGINX} not found; install it with "
                         "`apt-get install -y nginx libnginx-mod-http-dav-ext`")
    tmp, root = work / "nginx", work / "nginx-data"
    tmp.mkdir()
    (root / BUCKET).mkdir(parents=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must write our dirs
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(user=user, tmp=tmp, port=port, root=root))
    argv = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"),
            "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
    return Server(Target(name, port), argv, work)


def start_cluster(work: Path) -> Server:
    """A front door over CLUSTER_NODES `manta node` processes on loopback (no namespaces, no
    shaped links: the protocol's cost, not a network's), with copies=2 as the embedded default."""
    secret = secrets.token_hex(32)
    env = {**os.environ, "MANTA_CLUSTER_SECRET": secret}
    urls, nodes = [], []
    for i in range(CLUSTER_NODES):
        port = free_port()
        (work / f"node{i}").mkdir()
        argv = [sys.executable, "-m", "manta", "node", "--storage", f"dir:{work / f'node{i}' / 'data'}",
                "--listen", f"127.0.0.1:{port}"]
        with open(work / f"node{i}.log", "wb") as out:
            nodes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, cwd=HERE.parent, start_new_session=True))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    for url in urls:
        host, port = url.removeprefix("http://").split(":")
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"storage node {url} did not start") from None
                time.sleep(0.1)
    extra = [a for url in urls for a in ("--node", url)]
    server = Server.manta("manta-cluster", work, work / "cluster-data", *extra,
                          env={"MANTA_CLUSTER_SECRET": secret})
    server.helpers = nodes
    return server


def metric_labels(args: argparse.Namespace) -> dict[str, str]:
    labels = {"large_put": f"PUT {args.large_mib} MiB (MB/s)",
              "large_get": f"GET {args.large_mib} MiB (MB/s)"} if "large" in args.metrics else {}
    for c in args.concurrency if "small" in args.metrics else ():
        for op in ("put", "get"):
            labels[f"small_{op}_c{c}"] = f"4 KiB {op.upper()} c={c} (ops/s)"
    return labels


def measure(metric: str, target: Target, args: argparse.Namespace, tag: str) -> tuple[float, int]:
    """One sample of `metric` (a metric_labels key) and its number of failed operations."""
    if metric == "large_put":
        value = large_put(target, args.large_mib)
        if args.settle:  # the GET that follows is not measured against this PUT's writeback
            os.sync()
        return value, 0
    if metric == "large_get":
        try:
            return large_get(target, args.large_mib), 0
        finally:
            Client(target).expect("DELETE", "large", ok=(200, 204, 404))  # frees moto's memory
    _, op, level = metric.split("_")
    return run_small(target, op, int(level[1:]), args.seconds, args.small_keys, tag)


def measure_all(args: argparse.Namespace, servers: dict[str, Server], labels: dict) -> dict:
    raw: dict = {"samples": {m: {s: [] for s in servers} for m in labels},
                 "failed_ops": {m: {s: [] for s in servers} for m in labels}, "failures": [],
                 "md5_mbs": []}
    for rnd in range(args.repeat):
        if "large" in args.metrics:  # the ETag's bound on a large PUT, measured beside it
            raw["md5_mbs"].append(md5_mbs(args.large_mib))
        # the servers' order turns by one each round: the one measured right after another
        # server's large write (its writeback still running) is not always the same
        names = list(servers)
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for metric, label in labels.items():
            for name in order:
                server = servers[name]
                prefix = f"round {rnd + 1}/{args.repeat}  {label:<28} {name:<6}"
                try:
                    value, failed = measure(metric, server.target, args, f"r{rnd}-{metric}")
                except (BenchError, *FAILURES) as exc:
                    raw["failures"].append({"round": rnd, "metric": metric, "server": name,
                                            "error": str(exc)})
                    print(f"{prefix} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                raw["samples"][metric][name].append(value)
                raw["failed_ops"][metric][name].append(failed)
                note = f"  ({failed} failed ops)" if failed else ""
                print(f"{prefix} {fmt(value):>10}{note}", file=sys.stderr, flush=True)
    return raw


def report(args: argparse.Namespace, labels: dict, raw: dict, skipped: dict,
           load_start: tuple[float, ...]) -> dict:
    """Print the table of medians and the targets; return the JSON document."""
    medians = {m: {s: statistics.median(v) if v else None for s, v in per.items()}
               for m, per in raw["samples"].items()}
    ratios, targets = {}, []
    width = max(map(len, labels.values())) + 2
    mantas = list(manta_variants(args)) if "manta" in args.servers else []
    shown_servers = [*mantas, *(s for s in SERVERS if s in args.servers and s != "manta")]
    # ratios against nginx and moto always (the targets), against the other manta servers when measured
    bases = [b for b in ("nginx", "moto", "manta-base", "manta-cluster", "asgi-floor") if b in args.servers or b in ("nginx", "moto")]
    pairs = [(m, b) for m in mantas or ["manta"] for b in bases]
    if "asgi-floor" in args.servers:  # how close the required HTTP stack alone comes to nginx
        pairs.append(("asgi-floor", "nginx"))
    names = (*shown_servers, *(f"{m}/{b}" for m, b in pairs))
    head = f"{'metric':<{width}}" + "".join(f"{c:>{max(14, len(c) + 2)}}" for c in names)
    print("\n" + head + "\n" + "-" * len(head))
    for metric, label in labels.items():
        med = {s: medians[metric].get(s) for s in shown_servers}
        ratios[metric] = {f"{m}/{b}": med[m] / med[b] if med.get(m) and med.get(b) else None
                          for m, b in pairs}
        cells = [fmt(med[s]) + ("!" if sum(raw["failed_ops"][metric].get(s, [])) else "")
                 for s in shown_servers]
        cells += ["-" if r is None else f"{r:.2f}x" for r in ratios[metric].values()]
        print(f"{label:<{width}}" + "".join(f"{c:>{max(14, len(n) + 2)}}" for c, n in zip(cells, names, strict=True)))
    if any(sum(v) for per in raw["failed_ops"].values() for v in per.values()):
        print("! some operations failed; only successful ones count (JSON: failed_ops)")
    for name, why in skipped.items():
        print(f"{name}: not measured: {why.splitlines()[0]}")
    before, after = raw["file_create_us"]
    print(f"a new small file in the work dir, CPU: {before:.0f} us before the rounds, {after:.0f} us after "
          "(what every small PUT pays: see \"what a deleted file costs the next one\" in benchmarks/README.md)")
    if raw["md5_mbs"]:
        md5 = statistics.median(raw["md5_mbs"])
        nginx_put = medians.get("large_put", {}).get("nginx")
        versus = f"; nginx's PUT: {fmt(nginx_put)} MB/s ({md5 / nginx_put:.2f}x)" if nginx_put else ""
        print(f"MD5 of the large object's bytes on one core: {fmt(md5)} MB/s (median of "
              f"{len(raw['md5_mbs'])}): a single PUT's ETag, so no S3 server here stores it faster{versus}")
    print("\ntargets:")
    for metric in labels:
        for prefix, base, minimum in TARGETS:
            if not metric.startswith(prefix):
                continue
            for m in mantas or ["manta"]:
                r = ratios[metric][f"{m}/{base}"]
                met = None if r is None else r >= minimum
                verdict = {None: "not evaluated", True: "met", False: "NOT met"}[met]
                shown = "-" if r is None else f"{r:.2f}x"
                print(f"  {labels[metric]:<{width}} {m} >= {minimum} x {base:<6}{shown:>8}  "
                      f"{verdict}")
                targets.append({"metric": metric, "server": m, "baseline": base,
                                "min_ratio": minimum, "ratio": r, "met": met})
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "skipped": skipped, "labels": labels, **raw, "medians": medians,
            "ratios": ratios, "targets": targets}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="manta,nginx,moto",
                   help="comma-separated subset of " + ",".join(SERVERS) + " (default: manta,nginx,moto)")
    p.add_argument("--large-mib", type=int, help="large object size, MiB (default 1024)")
    p.add_argument("--seconds", type=float, help="length of each 4 KiB run (default 5)")
    p.add_argument("--repeat", type=int, help="rounds; the table shows medians (default 3)")
    p.add_argument("--concurrency", default="1,16", help="4 KiB concurrency levels")
    p.add_argument("--small-keys", type=int, help="4 KiB keys the GETs cycle over (default 1000)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for a server")
    p.add_argument("--workdir", type=Path, default=HERE,
                   help="manta's and nginx's data go in a fresh temp dir under here")
    p.add_argument("--json", type=Path, default=HERE / "results" / "objects.json")
    p.add_argument("--workers", default="1",
                   help="comma-separated worker-process counts of the manta server (`manta serve "
                        "--workers N`); several give manta-wN columns")
    p.add_argument("--baseline-rev", default="HEAD~1",
                   help="git revision the manta-base server runs (a worktree in the temp dir)")
    p.add_argument("--metrics", default="large,small",
                   help="which rows: large (the large PUT, then GET), small (4 KiB runs), or both")
    p.add_argument("--settle", action="store_true",
                   help="sync(2) after each large PUT, so the GET after it does not run beside its writeback")
    p.add_argument("--quick", action="store_true",
                   help="defaults for a short run: 64 MiB object, 2 s runs, 1 round, 200 keys")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not args.metrics or set(args.metrics) - {"large", "small"}:
        p.error("--metrics: large, small or large,small")
    args.workers = sorted({int(w) for w in args.workers.split(",")})
    if unknown := set(args.servers) - set(SERVERS):
        p.error(f"unknown server(s) {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    if min(args.large_mib, args.repeat, args.small_keys, *args.concurrency, *args.workers) < 1:
        p.error("sizes, counts and concurrency levels must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    labels, servers, skipped = metric_labels(args), {}, {}
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="objects-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        if (free := shutil.disk_usage(work).free) < 3 * args.large_mib * MiB:
            print(f"error: only {free / 2**30:.1f} GiB free under {args.workdir}", file=sys.stderr)
            return 2
        names = [n for s in args.servers for n in (manta_variants(args) if s == "manta" else [s])]
        for name in names:
            try:
                server = start_server(name, work, args, cleanup)
                cleanup.callback(server.stop)
                server.wait_ready(args.start_timeout)
                server.prepare(args.small_keys)
                servers[name] = server
            except (BenchError, *FAILURES) as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", file=sys.stderr)
        if not servers:
            print("error: no server could be started", file=sys.stderr)
            return 1
        print(f"measuring {', '.join(servers)}: {args.large_mib} MiB object; 4 KiB for "
              f"{args.seconds:g} s at c={args.concurrency}; {args.repeat} round(s)",
              file=sys.stderr)
        created = file_create_us(work)  # the manta servers' data dirs are under `work`
        raw = measure_all(args, servers, labels)
        raw["file_create_us"] = [created, file_create_us(work)]
    doc = report(args, labels, raw, skipped, load_start)
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers and the temp dir are gone already
        sys.exit("interrupted")
