"""Cluster benchmark: a grep job next to the data against downloading it through a 1 Gbit/s link.

Three `manta node`s and the front door each in a network namespace (tests/netns.py), the
client in its own namespace whose link is shaped with tc tbf. Log-like text (a fixed random
1 MiB block of log lines repeated, so the ERROR count is known) in N objects, then side by side:
  (a) the manta job `grep -c ERROR` map + sum reduce, `manta job create` run in the client's namespace;
  (b) boto3 parallel download through the shaped link into the client's files, then the same grep;
  (c) the grep straight on the blob files on the nodes (the limit).
For (a) the bytes over the client's link come from its veth's counters. The same for each
dataset (default 48 x 32 MiB and 1,000 x 1 MiB), each link rate (1gbit, 10gbit), and for (a)
and (b) each server mode: `cluster` (remote nodes) and `single` (`manta serve --nodes 3`,
one process, in a namespace of its own). Usage: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HERE, MiB, begin_run, fill_defaults, machine_info, write_json
from botocore.exceptions import BotoCoreError, ClientError

sys.path.insert(0, str(HERE.parent))  # so that `tests` is the repository's package

from tests.netns import Cluster, Host, NetnsError, Network, wait_http  # noqa: E402

CORES = len(os.sched_getaffinity(0))
PORT = 9000
MAP, REDUCE = "grep -c ERROR || true", "awk '{s += $1} END {print s}'"
GREP_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
FULL_DEFAULTS = {"datasets": "48x32,1000x1", "rates": "1gbit,10gbit", "repeat": 1}
QUICK_DEFAULTS = {"datasets": "8x8,64x1", "rates": "1gbit", "repeat": 1}
MIN_B_OVER_A, MAX_A_OVER_C, MAX_A_LINK_BYTES = 3.0, 1.5, 1_000_000


def log_block() -> tuple[bytes, int]:
    """1 MiB of log lines (about 2% ERROR) ending in a newline, and its ERROR line count."""
    rng = random.Random(11)
    words = ["request", "cache", "session", "upstream", "disk", "queue", "retry", "user", "token"]
    lines, size, errors = [], 0, 0
    while size < MiB - 200:
        level = "ERROR" if rng.random() < 0.02 else rng.choice(("INFO", "INFO", "DEBUG", "WARN"))
        errors += level == "ERROR"
        line = (f"2026-11-29T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}."
                f"{rng.randrange(1000):03d}Z host-{rng.randrange(64):02d} app[{rng.randrange(99999)}]: "
                f"{level} {' '.join(rng.choices(words, k=rng.randint(3, 9)))} id={rng.getrandbits(48):012x} "
                f"took={rng.randrange(2000)}ms\n")
        lines.append(line)
        size += len(line)
    lines.append("#" * (MiB - size - 1) + "\n")
    block = "".join(lines).encode()
    assert len(block) == MiB
    return block, errors


class Server:
    """One S3 endpoint under test and where its nodes keep blob files."""

    def __init__(self, mode: str, url: str, access_key: str, secret_key: str, data_dirs: list[Path]) -> None:
        self.mode, self.url, self.access_key, self.secret_key, self.data_dirs = (
            mode, url, access_key, secret_key, data_dirs)

    def s3(self) -> Any:
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))

    def env(self) -> dict[str, str]:
        return {**os.environ, "MANTA_URL": self.url, "MANTA_ACCESS_KEY": self.access_key,
                "MANTA_SECRET_KEY": self.secret_key}


def start_single(net: Network, work: Path, timeout_s: float) -> Server:
    """`manta serve --nodes 3` in a namespace of its own, on its address."""
    host = net.add_host("single")
    keys = {"MANTA_ROOT_ACCESS_KEY": "benchroot", "MANTA_ROOT_SECRET_KEY": os.urandom(20).hex()}
    data = work / "single"
    data.mkdir()
    with open(work / "single.log", "ab") as log:
        proc = host.popen([sys.executable, "-m", "manta", "serve", "--nodes", "3", "--data", str(data),
                           "--listen", f"{host.address}:{PORT}"], env={**os.environ, **keys}, stdout=log)
    try:
        wait_http(host.address, PORT, timeout_s, proc, what="manta serve --nodes 3")
    except NetnsError as exc:
        raise NetnsError(f"{exc}\n{(work / 'single.log').read_text(errors='replace')[-3000:]}") from None
    return Server("single", f"http://{host.address}:{PORT}", *keys.values(), [data])


def upload(server: Server, bucket: str, count: int, body: bytes) -> None:
    s3 = server.s3()
    s3.create_bucket(Bucket=bucket)
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"log/{i:05d}", Body=body), range(count)))


def blob_files(server: Server, size: int, count: int) -> list[str]:
    """One file per blob of exactly `size` bytes under the nodes' blobs/ dirs (replicas skipped)."""
    found: dict[str, str] = {}
    for root in server.data_dirs:
        for folder, _, files in os.walk(root):
            if f"{os.sep}blobs" not in folder:
                continue
            for name in files:
                path = os.path.join(folder, name)
                if os.path.getsize(path) == size:
                    found.setdefault(name, path)
    if len(found) != count:
        raise RuntimeError(f"{server.mode}: found {len(found)} blob files of {size} bytes, expected {count}")
    return sorted(found.values())


def grep_files(paths: list[str], list_file: Path) -> tuple[float, int]:
    """`grep -c ERROR` over every file, <cores> at a time: seconds and the summed count."""
    list_file.write_text("".join(p + "\n" for p in paths))
    start = time.monotonic()
    done = subprocess.run(["xargs", "-P", str(CORES), "-n", "16", "-a", str(list_file), "grep", "-c",
                           "-H", "ERROR"], capture_output=True, text=True, env=GREP_ENV)
    seconds = time.monotonic() - start
    if done.returncode not in (0, 123):  # 123: some file had no match
        raise RuntimeError(f"grep: exit {done.returncode}: {done.stderr[-300:]}")
    return seconds, sum(int(line.rpartition(":")[2]) for line in done.stdout.split())


def run_job(client: Host, server: Server, bucket: str) -> dict:
    """(a): `manta job create -o -m MAP -r REDUCE bucket/log/` from the client's namespace."""
    before = client.link_bytes()
    start = time.monotonic()
    done = client.run([sys.executable, "-m", "manta", "job", "create", "-o", "-m", MAP, "-r", REDUCE,
                       f"{bucket}/log/"], timeout_s=3600, env=server.env())
    seconds = time.monotonic() - start
    after = client.link_bytes()
    if done.returncode != 0:
        raise RuntimeError(f"manta job create: exit {done.returncode}: {done.stderr[-1000:]}")
    return {"seconds": seconds, "count": int(done.stdout.split()[-1]), "link_bytes_in": after[0] - before[0],
            "link_bytes_out": after[1] - before[1], "job": done.stderr.strip().splitlines()[0]}


def download_and_grep(client: Host, server: Server, bucket: str, count: int, work: Path, threads: int) -> dict:
    """(b): this script's --download mode, run in the client's namespace."""
    dest = Path(tempfile.mkdtemp(prefix="download-", dir=work))
    try:
        before = client.link_bytes()
        done = client.run([sys.executable, __file__, "--download", server.url, server.access_key,
                           server.secret_key, bucket, str(count), str(dest), str(threads)], timeout_s=3600)
        after = client.link_bytes()
        if done.returncode != 0:
            raise RuntimeError(f"download: exit {done.returncode}: {done.stderr[-1000:]}")
        return {**json.loads(done.stdout), "link_bytes_in": after[0] - before[0]}
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def download_main(url: str, access_key: str, secret_key: str, bucket: str, count: str, dest: str,
                  threads: str) -> None:
    """In the client's namespace: download every object in parallel, then grep the files."""
    server = Server("client", url, access_key, secret_key, [])
    s3 = server.s3()

    def fetch(i: int) -> str:
        path = os.path.join(dest, f"{i:05d}")
        with open(path, "wb") as out:
            for chunk in s3.get_object(Bucket=bucket, Key=f"log/{i:05d}")["Body"].iter_chunks(MiB):
                out.write(chunk)
        return path

    start = time.monotonic()
    with cf.ThreadPoolExecutor(int(threads)) as pool:
        paths = list(pool.map(fetch, range(int(count))))
    downloaded = time.monotonic() - start
    grep_s, errors = grep_files(paths, Path(dest) / "list")
    print(json.dumps({"seconds": time.monotonic() - start, "download_s": downloaded, "grep_s": grep_s,
                      "count": errors}))


def measure(args: argparse.Namespace, client: Host, servers: dict[str, Server], work: Path) -> list[dict]:
    block, block_errors = log_block()
    rows = []
    for spec in args.datasets.split(","):
        count, mib = (int(x) for x in spec.split("x"))
        bucket, expected = f"logs-{count}x{mib}", count * mib * block_errors
        for server in servers.values():
            print(f"{server.mode}: uploading {count} x {mib} MiB...", file=sys.stderr, flush=True)
            upload(server, bucket, count, block * mib)
        main = servers.get("cluster") or next(iter(servers.values()))
        limit = [grep_files(blob_files(main, mib * MiB, count), work / "blobs.list") for _ in range(args.repeat)]
        for rate in args.rates.split(","):
            client.shape(rate)
            row: dict = {"dataset": spec, "objects": count, "object_mib": mib, "rate": rate,
                         "expected": expected, "limit": [{"seconds": s, "count": c} for s, c in limit]}
            for rnd in range(args.repeat):
                for mode, server in servers.items():
                    if not args.skip_jobs:
                        row.setdefault(f"job_{mode}", []).append(run_job(client, server, bucket))
                    if mode == main.mode:
                        row.setdefault("download", []).append(
                            download_and_grep(client, server, bucket, count, work, args.threads))
                print(f"{spec} at {rate}, round {rnd + 1}: " + ", ".join(
                    f"{k} {v[-1]['seconds']:.2f} s" for k, v in row.items() if isinstance(v, list)),
                    file=sys.stderr, flush=True)
            client.unshape()
            for key, samples in list(row.items()):
                if isinstance(samples, list):
                    wrong = [s["count"] for s in samples if s["count"] != expected]
                    row[f"{key}_s"] = statistics.median(s["seconds"] for s in samples)
                    row[f"{key}_correct"] = not wrong
            rows.append(row)
    return rows


def report(rows: list[dict], modes: list[str]) -> list[dict]:
    head = f"{'dataset':<10}{'link':>7}" + "".join(f"{'(a) ' + m:>14}" for m in modes) + \
        f"{'(b) boto3':>11}{'download':>10}{'(c) limit':>11}{'(b)/(a)':>9}{'(a)/(c)':>9}{'(a) link B':>12}"
    print("\nseconds (median over rounds); (a) uses the first mode\n" + head + "\n" + "-" * len(head))
    targets = []
    for row in rows:
        a = row.get(f"job_{modes[0]}_s")
        b, c = row["download_s"], row["limit_s"]
        link = statistics.median(s["link_bytes_in"] + s["link_bytes_out"] for s in row[f"job_{modes[0]}"]) \
            if a is not None else None
        cells = "".join(f"{row.get(f'job_{m}_s', float('nan')):>14.2f}" for m in modes)
        print(f"{row['dataset']:<10}{row['rate']:>7}{cells}{b:>11.2f}{row['download'][0]['download_s']:>10.2f}"
              f"{c:>11.2f}{(b / a if a else float('nan')):>9.2f}{(a / c if a else float('nan')):>9.2f}"
              f"{link if link is not None else '-':>12}")
        bad = [k[:-8] for k, v in row.items() if k.endswith("_correct") and not v]
        if bad:
            print(f"  WRONG ERROR COUNT in {', '.join(bad)} (expected {row['expected']})")
        if a is not None and row["rate"] == "1gbit":
            targets += [{"case": f"{row['dataset']} {row['rate']}", "metric": "(b)/(a)", "value": b / a,
                         "goal": f">= {MIN_B_OVER_A:g}", "met": b / a >= MIN_B_OVER_A},
                        {"case": f"{row['dataset']} {row['rate']}", "metric": "(a)/(c)", "value": a / c,
                         "goal": f"<= {MAX_A_OVER_C:g}", "met": a / c <= MAX_A_OVER_C},
                        {"case": f"{row['dataset']} {row['rate']}", "metric": "(a) link bytes", "value": link,
                         "goal": f"< {MAX_A_LINK_BYTES}", "met": link is not None and link < MAX_A_LINK_BYTES}]
    if targets:
        print("targets:")
        for t in targets:
            print(f"  {t['case']:<16}{t['metric']:<16}{t['value']:>12.2f}  {t['goal']:<10}"
                  f"{'met' if t['met'] else 'NOT met'}")
    return targets


def plot(rows: list[dict], modes: list[str], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only for the picture)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    bars = [*(f"job_{m}" for m in modes), "download", "limit"]
    labels = [*(f"(a) job, {m}" for m in modes), "(b) boto3 + grep", "(c) grep on blobs"]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4.2))
    width = 0.8 / len(bars)
    for j, (key, label) in enumerate(zip(bars, labels, strict=True)):
        values = [row.get(f"{key}_s", 0.0) for row in rows]
        ax.bar([i + j * width for i in range(len(rows))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))],
                  [f"{r['dataset']} MiB\n{r['rate']}" for r in rows])
    ax.set_ylabel("seconds")
    ax.set_title("grep -c ERROR over the logs: job next to the data vs download through the link", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", help="COUNTxMIB,... (default 48x32,1000x1; quick: 8x8,64x1)")
    p.add_argument("--rates", help="client link rates (default 1gbit,10gbit; quick: 1gbit)")
    p.add_argument("--modes", default="cluster,single", help="servers for (a): cluster (3 remote nodes), "
                   "single (manta serve --nodes 3); (b) and (c) use the first")
    p.add_argument("--repeat", type=int, help="rounds (default 1)")
    p.add_argument("--threads", type=int, default=8, help="boto3 download threads for (b)")
    p.add_argument("--skip-jobs", action="store_true", help="measure (b) and (c) only")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--workdir", type=Path, default=HERE, help="a fresh cluster-tmp-* dir here holds the data")
    p.add_argument("--json", type=Path, default=HERE / "results" / "cluster.json")
    p.add_argument("--plot", default=str(HERE / "results" / "cluster.png"), help="a PNG of the times ('' skips it)")
    p.add_argument("--quick", action="store_true", help="small datasets, 1gbit only")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    if not set(args.modes.split(",")) <= {"cluster", "single"} or not args.modes:
        p.error("--modes: cluster and/or single")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    modes = args.modes.split(",")
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cluster-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        os.chmod(work, 0o711)  # the sandbox user must reach the blob files it binds
        servers: dict[str, Server] = {}
        try:
            if "cluster" in modes:
                cluster = cleanup.enter_context(Cluster(
                    nodes=3, base_dir=str(work / "cluster"), front_in_namespace=True,
                    start_timeout_s=args.start_timeout))
                assert cluster.network is not None
                net = cluster.network
                servers["cluster"] = Server("cluster", cluster.endpoint, cluster.access_key, cluster.secret_key,
                                            [work / "cluster" / f"node-{i}" for i in range(3)])
            else:
                net = cleanup.enter_context(Network())
            client = net.add_host("client")
            if "single" in modes:
                servers["single"] = start_single(net, work, args.start_timeout)
            servers = {m: servers[m] for m in modes}
            rows = measure(args, client, servers, work)
        except (NetnsError, RuntimeError, OSError, BotoCoreError, ClientError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    targets = report(rows, modes)
    write_json(args.json, {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                           "machine": machine_info(load_start),
                           "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "rows": rows, "targets": targets})
    if args.plot:
        plot(rows, modes, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 9 and sys.argv[1] == "--download":
        download_main(*sys.argv[2:])
        sys.exit(0)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
