"""Replication benchmark: manta with 1 or 2 copies, on directory nodes and on ZFS nodes.

Four manta servers with 3 storage nodes each run at once on loopback: dir-c1 and dir-c2
(directory nodes under --data, copies=1 and 2), zfs-c1 and zfs-c2 (one zfs-fuse pool per node
on a file vdev; manta creates the `POOL/node` datasets with checksum=sha256 and compression).
Each round measures PUT and GET of one large object (MB/s = 10^6 bytes/s) and 4 KiB PUTs
(ops/s, concurrency 1 and 16) on every server in turn; the table quotes medians over rounds
and the ratios copies=2 / copies=1 and zfs / dir. Client, signer and load drivers are those of
objects.py (benchmarks/_common.py). Usage and method: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    FAILURES,
    HERE,
    BenchError,
    Client,
    MiB,
    Server,
    begin_run,
    fill_defaults,
    fmt,
    large_get,
    large_put,
    machine_info,
    run_small,
    write_json,
)

NODES = 3
CONFIGS = {"dir-c1": ("dir", 1), "dir-c2": ("dir", 2), "zfs-c1": ("zfs", 1), "zfs-c2": ("zfs", 2)}
RATIOS = {"dir c2/c1": ("dir-c2", "dir-c1"), "zfs c2/c1": ("zfs-c2", "zfs-c1"),
          "zfs/dir c1": ("zfs-c1", "dir-c1"), "zfs/dir c2": ("zfs-c2", "dir-c2")}
FULL_DEFAULTS = {"large_mib": 256, "seconds": 5.0, "repeat": 3}
QUICK_DEFAULTS = {"large_mib": 64, "seconds": 2.0, "repeat": 1}
ZPOOL, ZFS = shutil.which("zpool") or "/usr/sbin/zpool", shutil.which("zfs") or "/usr/sbin/zfs"


def zfs_unavailable() -> str | None:
    """Why the zfs configurations cannot run here, or None."""
    if not (os.path.exists(ZPOOL) and os.path.exists(ZFS)):
        return f"{ZPOOL} / {ZFS} not found (Debian: apt-get install zfs-fuse)"
    if subprocess.run(["pgrep", "-x", "zfs-fuse"], capture_output=True).returncode != 0:
        return "the zfs-fuse daemon is not running (pgrep -x zfs-fuse); start it as root " \
               "with `/usr/sbin/zfs-fuse`"
    return None


class Pools:
    """File-backed pools made for this run; `destroy_all` retries while a pool is busy."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self, name: str, vdev: Path, mountpoint: Path, size_gib: int) -> None:
        with open(vdev, "wb") as f:
            f.truncate(size_gib << 30)  # sparse, like `truncate -s`
        self.names.append(name)  # before `zpool create`: an interrupted create is cleaned too
        done = subprocess.run([ZPOOL, "create", "-m", str(mountpoint), name, str(vdev)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"zpool create {name}: exit {done.returncode}: "
                             f"{(done.stderr or done.stdout).strip()}")

    def destroy_all(self, timeout_s: float = 60.0) -> list[str]:
        """Destroy every pool; returns those still there after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for name in list(self.names):
            while self.exists(name):
                subprocess.run([ZPOOL, "destroy", "-f", name], capture_output=True, timeout=120)
                if self.exists(name) and time.monotonic() < deadline:
                    time.sleep(1)  # "pool is busy" right after use is common on zfs-fuse
                elif self.exists(name):
                    break
            if not self.exists(name):
                self.names.remove(name)
        return self.names

    @staticmethod
    def exists(name: str) -> bool:
        return subprocess.run([ZPOOL, "list", "-H", "-o", "name", name],
                              capture_output=True, timeout=120).returncode == 0


def start_config(config: str, work: Path, pools: Pools, vdev_gib: int) -> Server:
    backend, copies = CONFIGS[config]
    base = work / config
    base.mkdir()
    extra = ["--nodes", str(NODES), "--copies", str(copies)]
    if backend == "zfs":
        specs = []
        for i in range(NODES):
            pool = f"manta-bench-{os.getpid()}-{config}-{i}"
            pools.create(pool, base / f"vdev{i}", base / f"pool{i}", vdev_gib)
            specs.append(f"zfs:{pool}/node")
        extra += ["--storage", ",".join(specs)]
    return Server.manta(config, work, base / "data", *extra)


def stored_copies(root: Path, size: int) -> int:
    """Files of exactly `size` bytes under `root`: the large object's replicas on the nodes."""
    found = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # a file may vanish meanwhile
                found += os.path.getsize(os.path.join(folder, name)) == size
    return found


def compress_ratios(config: str, pools: Pools) -> list[str]:
    datasets = [f"{p}/node" for p in pools.names if f"-{config}-" in p]
    return [subprocess.run([ZFS, "get", "-H", "-o", "value", "compressratio", d],
                           capture_output=True, text=True, timeout=120).stdout.strip()
            for d in datasets]


def metric_labels(args: argparse.Namespace) -> dict[str, str]:
    labels = {"large_put": f"PUT {args.large_mib} MiB (MB/s)",
              "large_get": f"GET {args.large_mib} MiB (MB/s)"}
    for c in args.concurrency:
        labels[f"small_put_c{c}"] = f"4 KiB PUT c={c} (ops/s)"
    return labels


def measure(metric: str, server: Server, args: argparse.Namespace, tag: str) -> tuple[float, int]:
    """One sample of `metric` and its number of failed operations."""
    if metric == "large_put":
        return large_put(server.target, args.large_mib), 0
    if metric == "large_get":
        try:
            return large_get(server.target, args.large_mib), 0
        finally:
            Client(server.target).expect("DELETE", "large", ok=(200, 204, 404))
    return run_small(server.target, "put", int(metric.split("_c")[1]), args.seconds, 1000, tag)


def measure_all(args: argparse.Namespace, servers: dict[str, Server], labels: dict,
                work: Path, pools: Pools) -> dict:
    raw: dict = {"samples": {m: {s: [] for s in servers} for m in labels},
                 "failed_ops": {m: {s: [] for s in servers} for m in labels},
                 "failures": [], "checks": {}}
    for rnd in range(args.repeat):
        for metric, label in labels.items():
            for name, server in servers.items():
                prefix = f"round {rnd + 1}/{args.repeat}  {label:<26} {name:<7}"
                try:
                    value, failed = measure(metric, server, args, f"r{rnd}-{metric}")
                except (BenchError, *FAILURES) as exc:
                    raw["failures"].append({"round": rnd, "metric": metric, "server": name,
                                            "error": str(exc)})
                    print(f"{prefix} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                raw["samples"][metric][name].append(value)
                raw["failed_ops"][metric][name].append(failed)
                note = f"  ({failed} failed ops)" if failed else ""
                print(f"{prefix} {fmt(value):>10}{note}", file=sys.stderr, flush=True)
                if rnd == 0 and metric == "large_put":  # the object is on the nodes now
                    raw["checks"][name] = {
                        "copies_expected": CONFIGS[name][1],
                        "copies_found": stored_copies(work / name, args.large_mib * MiB),
                        "compressratio": compress_ratios(name, pools)}
    return raw


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def report(args: argparse.Namespace, labels: dict, raw: dict, skipped: dict,
           load_start: tuple[float, ...]) -> dict:
    """Print the table of medians, ratios and checks; return the JSON document."""
    medians = {m: {s: statistics.median(v) if v else None for s, v in per.items()}
               for m, per in raw["samples"].items()}
    ratios: dict = {}
    width = max(map(len, labels.values())) + 2
    head = f"{'metric':<{width}}" + "".join(f"{c:>11}" for c in (*CONFIGS, *RATIOS))
    print("\n" + head + "\n" + "-" * len(head))
    for metric, label in labels.items():
        med = {c: medians[metric].get(c) for c in CONFIGS}
        ratios[metric] = {r: ratio(med[a], med[b]) for r, (a, b) in RATIOS.items()}
        cells = [fmt(med[c]) + ("!" if sum(raw["failed_ops"][metric].get(c, [])) else "")
                 for c in CONFIGS]
        cells += ["-" if r is None else f"{r:.2f}x" for r in ratios[metric].values()]
        print(f"{label:<{width}}" + "".join(f"{c:>11}" for c in cells))
    if any(sum(v) for per in raw["failed_ops"].values() for v in per.values()):
        print("! some operations failed; only successful ones count (JSON: failed_ops)")
    for name, why in skipped.items():
        print(f"{name}: not measured: {why.splitlines()[0]}")
    for name, check in raw["checks"].items():
        found, expected = check["copies_found"], check["copies_expected"]
        line = f"check {name}: {found} copies of the large object on the nodes"
        line += "" if found == expected else f" (EXPECTED {expected})"
        if check["compressratio"]:
            line += f"; zfs compressratio {' '.join(check['compressratio'])}"
        print(line)
    load = (load_start, os.getloadavg())
    print(f"load average (1/5/15 min): start {' '.join(f'{x:.2f}' for x in load[0])}, "
          f"end {' '.join(f'{x:.2f}' for x in load[1])}")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "configs": {c: {"nodes": NODES, "backend": b, "copies": k}
                        for c, (b, k) in CONFIGS.items()},
            "skipped": skipped, "labels": labels, **raw, "medians": medians, "ratios": ratios}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)")
    p.add_argument("--large-mib", type=int, help="large object size, MiB (default 256)")
    p.add_argument("--seconds", type=float, help="length of each 4 KiB run (default 5)")
    p.add_argument("--repeat", type=int, help="rounds; the table shows medians (default 3)")
    p.add_argument("--concurrency", default="1,16", help="4 KiB PUT concurrency levels")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for a server")
    p.add_argument("--workdir", type=Path, default=HERE,
                   help="data dirs, vdevs and pool mounts go in a fresh temp dir under here")
    p.add_argument("--json", type=Path, default=HERE / "results" / "replication.json")
    p.add_argument("--quick", action="store_true",
                   help="defaults for a ~1 minute run: 64 MiB object, 2 s runs, 1 round")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if unknown := set(args.configs) - set(CONFIGS):
        p.error(f"unknown config(s) {', '.join(sorted(unknown))}; choose from {', '.join(CONFIGS)}")
    if min(args.large_mib, args.repeat, *args.concurrency) < 1:
        p.error("sizes, counts and concurrency levels must be >= 1")
    return args


def remove_work(work: Path, pools: Pools) -> None:
    if left := pools.destroy_all():
        print(f"error: could not destroy pool(s) {', '.join(left)}; kept {work}. Run "
              f"`zpool destroy -f NAME` for each, then remove the directory", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    labels, servers, skipped = metric_labels(args), {}, {}
    if (why := zfs_unavailable()) and any(c.startswith("zfs") for c in args.configs):
        print(f"skipping the zfs configurations: {why}", file=sys.stderr)
        skipped.update({c: why for c in args.configs if c.startswith("zfs")})
    vdev_gib = max(2, math.ceil(args.large_mib * 2 / 1024))  # a pool holds one copy at most
    pools = Pools()
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="replication-tmp-", dir=args.workdir))
        cleanup.callback(remove_work, work, pools)  # after the servers have stopped
        if (free := shutil.disk_usage(work).free) < 8 * args.large_mib * MiB:
            print(f"error: only {free / 2**30:.1f} GiB free under {args.workdir}", file=sys.stderr)
            return 2
        for name in (c for c in args.configs if c not in skipped):
            try:
                server = start_config(name, work, pools, vdev_gib)
                cleanup.callback(server.stop)
                server.wait_ready(args.start_timeout)
                server.prepare(0)  # the bucket
                servers[name] = server
            except (BenchError, *FAILURES, subprocess.SubprocessError) as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", file=sys.stderr)
        if not servers:
            print("error: no server could be started", file=sys.stderr)
            return 1
        print(f"measuring {', '.join(servers)} ({NODES} nodes each): {args.large_mib} MiB "
              f"object; 4 KiB PUTs for {args.seconds:g} s at c={args.concurrency}; "
              f"{args.repeat} round(s)", file=sys.stderr)
        raw = measure_all(args, servers, labels, work, pools)
    doc = report(args, labels, raw, skipped, load_start)
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers, the pools and the temp dir are gone already
        sys.exit("interrupted")
