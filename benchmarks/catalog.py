"""Catalog benchmark: manta with its catalog in LMDB (the default) vs in PostgreSQL.

Two `manta serve --workers 2` run at once on loopback, one on LMDB in its data dir, one with
`--catalog postgresql://...` on a throwaway PostgreSQL 15 (tests/pgserver.py). Side by side
in one run, medians over rounds:
- 4 KiB PUT (fresh keys) and GET ops/s with p50/p99 latency, at concurrency 1 and 16;
- ListObjectsV2 pages of 1,000 over a bucket of --keys keys `dirDDDDD/fileFFF` (100 files a
  dir): without a delimiter (1,000 keys) and with `/` (1,000 common prefixes, each skipping
  100 keys), p50/p99 per page from random start-after points.
The listing bucket is loaded straight into each server's catalog through the real
repositories (storage.catalog.Catalog, --batch keys per engine write), not over HTTP: each
key a copy of the 4 KiB object small/0, as CopyObject makes one (the same blob, one more
reference), so every listed key can also be read.
`--profile` (automatic when a PostgreSQL delimiter page misses 50 ms) times where such a
page goes, in this process, on the same database. Usage and method: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import datetime
import functools
import hashlib
import hmac
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from _common import (
    BUCKET,
    FAILURES,
    HERE,
    REGION,
    SIGNED_HEADERS,
    BenchError,
    Client,
    Server,
    Target,
    begin_run,
    fill_defaults,
    fmt,
    machine_info,
    signing_key,
    small_body,
    small_op,
    write_json,
)

sys.path.insert(0, str(HERE.parent))  # this checkout's storage and tests, not an installed one

from storage.catalog import Catalog, object_key  # noqa: E402
from storage.objects import ObjectStore  # noqa: E402
from tests.pgserver import PgServer, pg_unavailable  # noqa: E402

ENGINES = ("lmdb", "postgresql")
LIST_BUCKET, PAGE = "listing", 1000
FILES_PER_DIR = 100
SMALL = ("put_c1", "get_c1", "put_c16", "get_c16")
LISTS = {"list_keys": "", "list_prefixes": "/"}  # metric -> delimiter
LABELS = {"put_c1": "4 KiB PUT c=1", "get_c1": "4 KiB GET c=1", "put_c16": "4 KiB PUT c=16",
          "get_c16": "4 KiB GET c=16", "list_keys": "list 1,000 keys",
          "list_prefixes": "list 1,000 prefixes (/)"}
PUT_RATIO_MIN, LIST_P50_MAX_MS = 0.5, 50.0
FULL_DEFAULTS = {"keys": 1_000_000, "pages": 50, "seconds": 5.0, "repeat": 3, "small_keys": 1000}
QUICK_DEFAULTS = {"keys": 20_000, "pages": 10, "seconds": 2.0, "repeat": 1, "small_keys": 200}


def list_key(i: int) -> str:
    return f"dir{i // FILES_PER_DIR:05d}/file{i % FILES_PER_DIR:03d}"


# -- loading the listing bucket ----------------------------------------------------------


def _copies(catalog: Catalog, template: dict[str, Any], owner: str, first: int, last: int,
            txn: Any) -> None:
    """Records of keys first..last-1 that share the template's blob, as CopyObject makes
    them: one record put per key, the blob's references and the owner's usage once a batch."""
    now = time.time()
    for i in range(first, last):
        key = list_key(i)  # short: its catalog key needs no overflow entry (storage.objects)
        catalog.put(txn, "objects", object_key(LIST_BUCKET, key), {**template, "v": 1, "key": key, "mtime": now})
    catalog.blobrefs.ref(txn, [template["segments"][0][0]], count=last - first)
    catalog.usage.charge(txn, owner, last - first, (last - first) * template["size"], check=False)


def _put_ins(objects: ObjectStore, template: dict[str, Any], first: int, last: int, txn: Any) -> None:
    for i in range(first, last):
        objects.put_in(txn, LIST_BUCKET, list_key(i), template)


def load_listing(location: str, args: argparse.Namespace, name: str) -> float:
    """Put --keys records in LIST_BUCKET of the catalog at `location`, each a copy of the
    4 KiB object small/0 (a real blob, so any of them can be read); the seconds it took.
    --load copies: one record put per key (as CopyObject writes it), the shared blob's
    references and the usage once per batch; --load put_in: ObjectStore.put_in per key
    (the bucket check, the old record, the usage and the blob, each per key)."""
    catalog = Catalog(location)
    objects = ObjectStore(catalog)
    template = {k: v for k, v in objects.get(BUCKET, "small/0").items() if k not in ("v", "key")}
    owner = catalog.buckets.get(LIST_BUCKET).owner
    start = last_note = time.monotonic()
    try:
        for first in range(0, args.keys, args.batch):
            last = min(args.keys, first + args.batch)
            if args.load == "copies":
                catalog.write(functools.partial(_copies, catalog, template, owner, first, last))
            else:
                catalog.write(functools.partial(_put_ins, objects, template, first, last))
            if time.monotonic() - last_note > 30:
                last_note = time.monotonic()
                print(f"  {name}: {last:,} keys in {last_note - start:.0f} s",
                      file=sys.stderr, flush=True)
        return time.monotonic() - start
    finally:
        catalog.close()


# -- requests ------------------------------------------------------------------------------


def signed_head(target: Target, method: str, path: str, query: dict[str, str]) -> bytes:
    """A request head with SigV4 header auth over `path` and its query (UNSIGNED-PAYLOAD)."""
    qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                  for k, v in sorted(query.items()))
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    canonical = (f"{method}\n{path}\n{qs}\nhost:{target.host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD"
                 f"\nx-amz-date:{amz_date}\n\n{SIGNED_HEADERS}\nUNSIGNED-PAYLOAD")
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(signing_key(target.secret_key, amz_date[:8]), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    return (f"{method} {path}{'?' + qs if qs else ''} HTTP/1.1\r\nHost: {target.host}\r\n"
            f"x-amz-date: {amz_date}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
            f"Authorization: AWS4-HMAC-SHA256 Credential={target.access_key}/{scope}, "
            f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}\r\n"
            + ("Content-Length: 0\r\n" if method == "PUT" else "") + "\r\n").encode()


def request(client: Client, method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
    sock = client.sock or client.connect()
    sock.sendall(signed_head(client.target, method, path, query or {}))
    status, headers = client.read_head()
    return status, client.read_body(status, headers)


def list_page(client: Client, start_after: str, delimiter: str, expect: int) -> float:
    """Seconds for one ListObjectsV2 page of LIST_BUCKET; checks it holds `expect` entries."""
    query = {"list-type": "2", "max-keys": str(PAGE), "start-after": start_after}
    if delimiter:
        query["delimiter"] = delimiter
    start = time.monotonic()
    status, body = request(client, "GET", f"/{LIST_BUCKET}", query)
    seconds = time.monotonic() - start
    if status != 200:
        raise BenchError(f"ListObjectsV2 {query}: HTTP {status} {body[:300]!r}")
    got = body.count(b"<Contents>") + body.count(b"<CommonPrefixes>")
    if got != expect or (delimiter and body.count(b"<Contents>")):
        raise BenchError(f"ListObjectsV2 {query}: {got} entries, expected {expect}")
    return seconds


def start_points(nkeys: int, delimiter: str, pages: int, seed: int) -> list[tuple[str, int]]:
    """(start-after, entries the page must hold) for `pages` random pages."""
    rng = random.Random(seed)
    out = []
    for _ in range(pages):
        if delimiter:  # a key in dir d: the page is dirs d.. (d's rest rolls up into its prefix)
            dirs = -(-nkeys // FILES_PER_DIR)
            d = rng.randrange(max(1, dirs - PAGE + 1))
            i = min(nkeys - 1, d * FILES_PER_DIR + rng.randrange(FILES_PER_DIR - 1))
            out.append((list_key(i), min(PAGE, dirs - d - (i == nkeys - 1))))
        else:
            i = rng.randrange(max(1, nkeys - PAGE))
            out.append((list_key(i), min(PAGE, nkeys - i - 1)))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 4 KiB load, with latencies --------------------------------------------------------------


def _timed_worker(target: Target, op: str, wid: int, concurrency: int, seconds: float,
                  nkeys: int, tag: str, barrier: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    client = Client(target)
    with contextlib.suppress(OSError):
        client.connect()
    barrier.wait(timeout=60)
    latencies = array.array("d")
    ok = n = 0
    start = now = time.monotonic()
    while now < start + seconds:
        began = now
        good = small_op(client, op, (wid + n * concurrency) % nkeys, f"fresh/{tag}/{wid}-{n}")
        now = time.monotonic()
        if good:
            ok += 1
            latencies.append(now - began)
        n += 1
    client.close()
    results.put((ok, n - ok, now - start, latencies.tobytes()))


def run_timed(target: Target, op: str, concurrency: int, seconds: float, nkeys: int,
              tag: str) -> dict[str, float]:
    """4 KiB `op` ("put"/"get") from `concurrency` client processes: ops/s, p50/p99 ms, failed."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(concurrency + 1), ctx.Queue()
    procs = [ctx.Process(target=_timed_worker, daemon=True, args=(
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
                proc.terminate()
                proc.join()
    latencies = array.array("d")
    for tally in tallies:
        latencies.frombytes(tally[3])
    if not latencies:
        raise BenchError(f"no 4 KiB {op} succeeded")
    lat = list(latencies)
    return {"ops_s": sum(t[0] for t in tallies) / max(t[2] for t in tallies),
            "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
            "failed": sum(t[1] for t in tallies)}


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of process `root` and its descendants alive now."""
    total, pending, tick = 0.0, [root], os.sysconf("SC_CLK_TCK")
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/task/{pid}/children") as fh:
                pending.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def postmaster_pid(pg: PgServer | None) -> int | None:
    try:
        with open(os.path.join(pg.data_dir, "postmaster.pid")) as fh:  # type: ignore[union-attr]
            return int(fh.readline())
    except (AttributeError, OSError, ValueError):
        return None


# -- servers -------------------------------------------------------------------------------


def start_servers(work: Path, args: argparse.Namespace, pg: PgServer | None,
                  cleanup: contextlib.ExitStack) -> tuple[dict[str, Server], dict[str, str]]:
    """Both servers, started and ready, with the 4 KiB keys and both buckets; their catalog locations."""
    servers, locations = {}, {}
    for engine in ENGINES:
        extra = ["--workers", str(args.workers)]
        if engine == "postgresql":
            if pg is None:
                continue
            locations[engine] = pg.new_database("manta_bench")
            extra += ["--catalog", locations[engine]]
        else:
            locations[engine] = str(work / f"{engine}-data" / "catalog")
        server = Server.manta(engine, work, work / f"{engine}-data", *extra)
        cleanup.callback(server.stop)
        server.wait_ready(args.start_timeout)
        server.prepare(args.small_keys)
        client = Client(server.target)
        status, body = request(client, "PUT", f"/{LIST_BUCKET}")
        client.close()
        if status != 200:
            raise BenchError(f"{engine}: creating bucket {LIST_BUCKET}: HTTP {status} {body[:300]!r}")
        servers[engine] = server
    return servers, locations


def check_loaded(target: Target, nkeys: int) -> None:
    """The server sees the loaded keys: the last one reads back as small/0's bytes."""
    client = Client(target)
    status, body = request(client, "GET", f"/{LIST_BUCKET}/{list_key(nkeys - 1)}")
    client.close()
    if status != 200 or body != small_body(0):
        raise BenchError(f"{target.name}: GET of loaded key {list_key(nkeys - 1)}: HTTP {status}")


# -- measuring -----------------------------------------------------------------------------


def measure(metric: str, server: Server, pg: PgServer | None, args: argparse.Namespace,
            rnd: int) -> dict[str, float]:
    """One sample of `metric`; for 4 KiB runs also the CPU per operation of the manta
    server (all its processes) and of PostgreSQL (all of it, idle or not)."""
    target = server.target
    stats = args.statements and pg is not None and server.target.name == "postgresql"
    if stats:
        pg_statements(args.pg_url, reset=True)
    if metric in LISTS:
        delimiter = LISTS[metric]
        client = Client(target)
        seconds = [list_page(client, start, delimiter, expect)
                   for start, expect in start_points(args.keys, delimiter, args.pages, seed=rnd)]
        client.close()
        return {"p50_ms": percentile(seconds, 0.5) * 1e3, "p99_ms": percentile(seconds, 0.99) * 1e3,
                "mean_ms": statistics.fmean(seconds) * 1e3}
    op, level = metric.split("_c")
    roots = {"manta": server.proc.pid, "postgres": postmaster_pid(pg)}
    before = {k: tree_cpu_s(pid) for k, pid in roots.items() if pid is not None}
    sample = run_timed(server.target, op, int(level), args.seconds, args.small_keys, f"r{rnd}-{metric}")
    ops = sample["ops_s"] * args.seconds
    for k, cpu in before.items():
        sample[f"{k}_cpu_us_per_op"] = (tree_cpu_s(roots[k]) - cpu) / ops * 1e6  # type: ignore[arg-type]
    if stats:
        sample["statements_per_op"] = pg_statements(args.pg_url) / ops
    return sample


def pg_statements(url: str, reset: bool = False) -> float:
    """Statements PostgreSQL ran on the benchmark's database since the last reset
    (pg_stat_statements, top level, utility statements included: BEGIN, SAVEPOINT...)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if reset:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
            return 0.0
        rows = conn.execute("SELECT calls, query FROM pg_stat_statements s JOIN pg_database d "
                            "ON d.oid = s.dbid WHERE d.datname = current_database() AND "
                            "s.query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC").fetchall()
        for calls, query in rows[:20]:
            print(f"    {calls:>7}  {' '.join(query.split())[:100]}", file=sys.stderr)
        return float(sum(calls for calls, _ in rows))


def enable_statements(pg: PgServer) -> None:
    """pg_stat_statements in the throwaway cluster (a restart loads it)."""
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    pg.restart()


def measure_all(args: argparse.Namespace, servers: dict[str, Server], pg: PgServer | None) -> dict[str, Any]:
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        m: {s: [] for s in servers} for m in LABELS}
    failures = []
    metrics = [m for m in LABELS if args.only == "all" or m in SMALL]
    for rnd in range(args.repeat):
        names = list(servers)
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for metric in metrics:
            label = LABELS[metric]
            for name in order:
                prefix = f"round {rnd + 1}/{args.repeat}  {label:<26} {name:<10}"
                try:
                    sample = measure(metric, servers[name], pg, args, rnd)
                except (BenchError, *FAILURES) as exc:
                    failures.append({"round": rnd, "metric": metric, "server": name, "error": str(exc)})
                    print(f"{prefix} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                samples[metric][name].append(sample)
                shown = "  ".join(f"{k} {fmt(v)}" for k, v in sample.items())
                print(f"{prefix} {shown}", file=sys.stderr, flush=True)
    return {"samples": samples, "failures": failures}


# -- profile of a PostgreSQL listing page ----------------------------------------------------

SKIP_SCAN = b"""
WITH RECURSIVE g(k, v) AS (
    (SELECT k, v FROM manta_objects WHERE k > %(start)s AND k < %(end)s ORDER BY k LIMIT 1)
  UNION ALL
    SELECT o.k, o.v FROM g CROSS JOIN LATERAL (
        SELECT k, v FROM manta_objects
        WHERE k >= CASE WHEN position('\\x2f'::bytea IN substring(g.k FROM %(skip)s)) > 0
                        THEN substring(g.k FROM 1 FOR %(skip)s - 1
                                       + position('\\x2f'::bytea IN substring(g.k FROM %(skip)s)))
                             || '\\xff'::bytea
                        ELSE g.k || '\\x00'::bytea END
          AND k < %(end)s
        ORDER BY k LIMIT 1) o
)
SELECT k, v FROM g LIMIT %(n)s
"""


def _page_times(store: ObjectStore, points: list[tuple[str, int]], delimiter: str) -> list[float]:
    times = []
    for start, expect in points:
        began = time.monotonic()
        listing = store.list(LIST_BUCKET, "", delimiter, start, PAGE)
        times.append(time.monotonic() - began)
        if len(listing.contents) + len(listing.common_prefixes) != expect:
            raise BenchError(f"in-process list after {start!r}: wrong number of entries")
    return times


def profile_pg(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where a PostgreSQL listing page's time goes, measured in this process on the
    benchmark's database: ObjectStore.list as it is (queries per page, time in them), the
    same with smaller scan pages (the engine's page size patched in this process only), and
    one skip-scan statement (a recursive CTE) that finds a page's 1,000 common prefixes in
    one round trip."""
    import psycopg

    import storage.engine_pg_schema as pg_schema
    import storage.engine_pg_txn as pg_txn

    points = {m: start_points(args.keys, d, args.profile_pages, seed=99) for m, d in LISTS.items()}
    out: dict[str, Any] = {"pages": args.profile_pages, "page_rows": {}}
    original = pg_schema.PAGE_ROWS
    calls = {"n": 0, "s": 0.0}
    for rows in (original, 32, 8, 1):
        pg_schema.PAGE_ROWS = pg_txn.PAGE_ROWS = rows  # type: ignore[misc]
        catalog = Catalog(url, readonly=True)
        run = pg_txn.ReadTxn.run

        def counted(self: Any, query: bytes, params: tuple[Any, ...], run: Any = run) -> Any:
            began = time.monotonic()
            try:
                return run(self, query, params)
            finally:
                calls["n"] += 1
                calls["s"] += time.monotonic() - began

        pg_txn.ReadTxn.run = counted  # type: ignore[method-assign]
        try:
            store = ObjectStore(catalog)
            result = {}
            for metric, delimiter in LISTS.items():
                calls.update(n=0, s=0.0)
                times = _page_times(store, points[metric], delimiter)
                result[metric] = {"p50_ms": percentile(times, 0.5) * 1e3,
                                  "queries_per_page": calls["n"] / len(times),
                                  "ms_in_queries_per_page": calls["s"] * 1e3 / len(times)}
            out["page_rows"][rows] = result
        finally:
            pg_txn.ReadTxn.run = run  # type: ignore[method-assign]
            pg_schema.PAGE_ROWS = pg_txn.PAGE_ROWS = original  # type: ignore[misc]
            catalog.close()
        print(f"  profile, scan pages of {rows} rows: " + "; ".join(
            f"{m} p50 {r['p50_ms']:.1f} ms, {r['queries_per_page']:.0f} queries "
            f"({r['ms_in_queries_per_page']:.1f} ms in them)" for m, r in result.items()),
            file=sys.stderr, flush=True)
    base = LIST_BUCKET.encode() + b"\0"
    times, found = [], 0
    with psycopg.connect(url, autocommit=True) as conn:
        for start, expect in points["list_prefixes"]:
            params = {"start": base + start.encode(), "end": LIST_BUCKET.encode() + b"\1",
                      "skip": len(base) + 1, "n": PAGE}
            began = time.monotonic()
            rows = conn.execute(SKIP_SCAN, params, binary=True).fetchall()
            times.append(time.monotonic() - began)
            first_dir = int(start[3:8])  # the groups are dirs first_dir, first_dir + 1, ...
            found += [bytes(k)[len(base):len(base) + 9] for k, _ in rows] == [
                f"dir{first_dir + j:05d}/".encode() for j in range(expect)]
    out["skip_scan"] = {"p50_ms": percentile(times, 0.5) * 1e3, "pages_with_expected_groups": found,
                        "pages": len(times)}
    print(f"  profile, one skip-scan statement per delimiter page: p50 "
          f"{out['skip_scan']['p50_ms']:.1f} ms ({found}/{len(times)} pages with the expected "
          f"groups)", file=sys.stderr, flush=True)
    return out


# -- report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, raw: dict[str, Any], loads: dict[str, float],
           profile: dict[str, Any] | None, load_start: tuple[float, ...]) -> dict[str, Any]:
    """Print the table of medians and the targets; return the JSON document."""
    medians: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric, per in raw["samples"].items():
        medians[metric] = {}
        for server, samples in per.items():
            fields = samples[0].keys() if samples else ()
            medians[metric][server] = {f: statistics.median(s[f] for s in samples) for f in fields}
    rows: list[tuple[str, dict[str, float | None]]] = []
    for metric, label in LABELS.items():
        fields = (("ops_s", "ops/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")) \
            if metric in SMALL else (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"))
        for field, unit in fields:
            rows.append((f"{label} ({unit})",
                         {e: medians[metric].get(e, {}).get(field) for e in ENGINES}))
        if metric in SMALL:  # the catalog's own CPU: postgres for one engine, none for the other
            rows.append((f"{label} (server CPU us/op)", {
                e: (medians[metric][e]["manta_cpu_us_per_op"]
                    + (medians[metric][e].get("postgres_cpu_us_per_op", 0) if e == "postgresql" else 0))
                if medians[metric].get(e) else None for e in ENGINES}))
            if args.statements:
                rows.append((f"{label} (statements/op)", {
                    e: medians[metric].get(e, {}).get("statements_per_op") for e in ENGINES}))
    rows.append((f"load {args.keys:,} keys (s)", {e: loads.get(e) for e in ENGINES}))
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'metric':<{width}}{'lmdb':>12}{'postgresql':>12}{'pg/lmdb':>10}"
    print("\n" + head + "\n" + "-" * len(head))
    ratios = {}
    for label, values in rows:
        lm, pg = values["lmdb"], values["postgresql"]
        ratio = pg / lm if lm and pg is not None else None
        ratios[label] = ratio
        print(f"{label:<{width}}{fmt(lm):>12}{fmt(pg):>12}"
              f"{'-' if ratio is None else f'{ratio:.2f}x':>10}")
    targets = []
    put = ratios[f"{LABELS['put_c16']} (ops/s)"]
    targets.append({"target": f"4 KiB PUT c=16 ops/s: postgresql >= {PUT_RATIO_MIN} x lmdb",
                    "value": put, "met": None if put is None else put >= PUT_RATIO_MIN})
    for metric in LISTS:
        p50 = medians[metric].get("postgresql", {}).get("p50_ms")
        targets.append({"target": f"{LABELS[metric]} p50 with postgresql <= {LIST_P50_MAX_MS:g} ms",
                        "value": p50, "met": None if p50 is None else p50 <= LIST_P50_MAX_MS})
    print("\ntargets:")
    for t in targets:
        verdict = {None: "not evaluated", True: "met", False: "NOT met"}[t["met"]]
        shown = "-" if t["value"] is None else (f"{t['value']:.2f}x" if "x lmdb" in t["target"]
                                                 else f"{t['value']:.1f} ms")
        print(f"  {t['target']:<52}{shown:>10}  {verdict}")
    if raw["failures"]:
        print(f"{len(raw['failures'])} measurement(s) failed (JSON: failures)")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "labels": LABELS, "load_s": loads, **raw, "medians": medians, "ratios": ratios,
            "targets": targets, "profile": profile}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, help="keys in the listing bucket (default 1,000,000)")
    p.add_argument("--pages", type=int, help="listing pages per kind per round (default 50)")
    p.add_argument("--seconds", type=float, help="length of each 4 KiB run (default 5)")
    p.add_argument("--repeat", type=int, help="rounds; the table shows medians (default 3)")
    p.add_argument("--small-keys", type=int, help="4 KiB keys the GETs cycle over (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of each server (default 2)")
    p.add_argument("--batch", type=int, default=1000, help="keys per engine write when loading")
    p.add_argument("--load", choices=("copies", "put_in"), default="copies",
                   help="how the listing bucket is loaded (README: Method)")
    p.add_argument("--profile", action="store_true",
                   help="profile PostgreSQL listing pages even when they meet the target")
    p.add_argument("--profile-pages", type=int, default=20, help="pages per profiled variant")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for a server")
    p.add_argument("--workdir", type=Path, default=HERE,
                   help="the servers' data go in a fresh temp dir under here")
    p.add_argument("--json", type=Path, default=HERE / "results" / "catalog.json")
    p.add_argument("--only", choices=("all", "small"), default="all",
                   help="small: only the 4 KiB PUT/GET runs (no listing bucket, no listing pages)")
    p.add_argument("--statements", action="store_true",
                   help="count PostgreSQL statements per 4 KiB operation (pg_stat_statements)")
    p.add_argument("--quick", action="store_true",
                   help="defaults for a short run: 20,000 keys, 10 pages, 2 s runs, 1 round")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    if min(args.keys, args.pages, args.repeat, args.small_keys, args.workers, args.batch,
           args.profile_pages) < 1:
        p.error("sizes and counts must be >= 1")
    if args.keys <= PAGE:
        p.error(f"--keys must be more than a page ({PAGE})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    if why := pg_unavailable():
        print(f"warning: {why}: measuring LMDB only", file=sys.stderr)
    pg = None if why else PgServer()
    loads: dict[str, float] = {}
    profile = None
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="catalog-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        if pg is not None:
            cleanup.callback(pg.stop)
            pg.start()
            if args.statements:
                enable_statements(pg)
        servers, locations = start_servers(work, args, pg, cleanup)
        args.pg_url = locations.get("postgresql")
        for engine, location in locations.items() if args.only == "all" else ():
            print(f"loading {args.keys:,} keys into the {engine} catalog, {args.batch} a write",
                  file=sys.stderr, flush=True)
            loads[engine] = load_listing(location, args, engine)
            print(f"  {engine}: {loads[engine]:.0f} s ({args.keys / loads[engine]:,.0f} keys/s)",
                  file=sys.stderr, flush=True)
            check_loaded(servers[engine].target, args.keys)
        print(f"measuring {', '.join(servers)} (--workers {args.workers}): 4 KiB for "
              f"{args.seconds:g} s at c=1,16; {args.pages} listing pages per kind; "
              f"{args.repeat} round(s)", file=sys.stderr, flush=True)
        raw = measure_all(args, servers, pg)
        pg_prefixes = [s["p50_ms"] for s in raw["samples"]["list_prefixes"].get("postgresql", [])]
        if "postgresql" in locations and (args.profile or (
                pg_prefixes and statistics.median(pg_prefixes) > LIST_P50_MAX_MS)):
            print("profiling PostgreSQL listing pages", file=sys.stderr, flush=True)
            profile = profile_pg(locations["postgresql"], args)
    doc = report(args, raw, loads, profile, load_start)
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers, PostgreSQL and the temp dir are gone already
        sys.exit("interrupted")
