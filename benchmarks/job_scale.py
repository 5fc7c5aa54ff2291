"""Job scale benchmark: does the scheduler's work per task, and a job status, stay flat as a
job grows?

For each size N (`--tasks`), a map -> reduce job over N inputs that name missing objects,
through a fresh `manta serve`: every map task fails at once (ResourceNotFoundError, no
container), so create -> done is the scheduler's own work per task (dispatch, the task's
records, phase chaining), then the reducer. Measured per size, medians over `--repeat`:
- create (inputs given, `end: true`) -> done, waited for as `manta job create -w` does;
  and per task;
- a job status, `GET /_manta/jobs/ID` (median of 20), beside `GET ...?tasks=1` (median of
  5), which reads every task record: what every status cost before the job kept its counts.
With `--baseline-rev REV` the same runs on that revision too (a worktree), side by side.
Usage and method: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import HERE, BenchError, Server, begin_run, machine_info, worktree, write_json

sys.path.insert(0, str(HERE.parent))

from manta.client import Client as MantaClient  # noqa: E402
from manta.client import MantaError  # noqa: E402

MAX_PER_TASK_GROWTH = 1.5  # ms per task at the largest size / at the smallest
STATUS_RUNS, LISTING_RUNS, WAIT_S = 20, 5, 5.0
INPUTS_PER_REQUEST = 10_000  # manta.server.jobs_api.MAX_INPUTS_PER_REQUEST


def client(server: Server) -> MantaClient:
    t = server.target
    return MantaClient(url=f"http://{t.host}", access_key=t.access_key, secret_key=t.secret_key)


def median_ms(fn: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def one_job(api: MantaClient, n: int, tag: str) -> dict[str, float]:
    start = time.monotonic()
    job = api.api("POST", "/_manta/jobs", {"name": f"scale-{n}",
                                            "phases": [{"type": "map", "exec": "true"},
                                                       {"type": "reduce", "exec": "wc -l"}]})
    path = f"/_manta/jobs/{job['id']}"
    inputs = [f"missing/{tag}-{i}" for i in range(n)]
    for at in range(0, n, INPUTS_PER_REQUEST):  # the API takes at most 10,000 a request
        api.api("POST", f"{path}/inputs", {"inputs": inputs[at:at + INPUTS_PER_REQUEST],
                                           "end": at + INPUTS_PER_REQUEST >= n})
    while (status := api.api("GET", f"{path}?wait={WAIT_S:g}"))["state"] == "running":
        pass
    seconds = time.monotonic() - start
    if status["state"] != "done" or status["phases"][0]["tasks"] != n or status["phases"][0]["failed"] != n:
        raise BenchError(f"job {job['id']}: expected {n} failed map tasks, got {status}")
    return {"seconds": seconds, "ms_per_task": seconds * 1000 / n,
            "status_ms": median_ms(lambda: api.api("GET", path), STATUS_RUNS),
            "listing_ms": median_ms(lambda: api.api("GET", f"{path}?tasks=1"), LISTING_RUNS)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="2000,8000,20000", help="comma-separated job sizes (map tasks)")
    p.add_argument("--repeat", type=int, default=3, help="jobs per size and server; the table shows medians")
    p.add_argument("--baseline-rev", help="also run this git revision's server (a worktree), side by side")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--workdir", type=Path, default=HERE, help="a fresh job-scale-tmp-* dir here holds the data")
    p.add_argument("--json", type=Path, default=HERE / "results" / "job_scale.json")
    args = p.parse_args(argv)
    args.tasks = [int(n) for n in args.tasks.split(",")]
    if min(args.tasks) < 1 or args.repeat < 1:
        p.error("sizes and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    raw: dict[str, dict[int, list[dict[str, float]]]] = {}
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="job-scale-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        servers = {"manta": Server.manta("manta", work, work / "data")}
        cleanup.callback(servers["manta"].stop)
        if args.baseline_rev:
            code = worktree(cleanup, args.baseline_rev, work / "base-checkout")
            servers["manta-base"] = Server.manta("manta-base", work, work / "base-data", code=code)
            cleanup.callback(servers["manta-base"].stop)
        try:
            apis = {}
            for name, server in servers.items():
                server.wait_ready(args.start_timeout)
                apis[name] = client(server)
                raw[name] = {n: [] for n in args.tasks}
            for rnd in range(args.repeat):
                for n in args.tasks:
                    for name in (list(apis) if rnd % 2 == 0 else list(reversed(apis))):
                        sample = one_job(apis[name], n, f"{rnd}")
                        raw[name][n].append(sample)
                        print(f"round {rnd + 1}/{args.repeat} {name} {n} tasks: {sample['seconds']:.2f} s, "
                              f"status {sample['status_ms']:.1f} ms", file=sys.stderr, flush=True)
        except (BenchError, MantaError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            for server in servers.values():
                print(server.log_tail(), file=sys.stderr)
            return 1
    medians = {name: {n: {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                      for n, samples in sizes.items()} for name, sizes in raw.items()}
    print(f"\n{'server':<12}{'tasks':>8}{'create->done s':>16}{'ms/task':>10}{'status ms':>11}{'?tasks=1 ms':>13}")
    print("-" * 70)
    for name, sizes in medians.items():
        for n, m in sizes.items():
            print(f"{name:<12}{n:>8}{m['seconds']:>16.2f}{m['ms_per_task']:>10.3f}{m['status_ms']:>11.1f}"
                  f"{m['listing_ms']:>13.1f}")
    small, large = min(args.tasks), max(args.tasks)
    growth = medians["manta"][large]["ms_per_task"] / medians["manta"][small]["ms_per_task"]
    met = growth <= MAX_PER_TASK_GROWTH
    print(f"\ntarget: ms per task at {large} tasks / at {small}: {growth:.2f} x  <= {MAX_PER_TASK_GROWTH:g} x  "
          f"{'met' if met else 'NOT met'}")
    write_json(args.json, {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(load_start), "config": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
        "samples": {name: {str(n): s for n, s in sizes.items()} for name, sizes in raw.items()},
        "medians": {name: {str(n): m for n, m in sizes.items()} for name, sizes in medians.items()},
        "target": {"metric": "ms per task, largest / smallest size", "value": growth,
                   "goal": f"<= {MAX_PER_TASK_GROWTH:g}", "met": met}})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")
