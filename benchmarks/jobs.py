"""Jobs benchmark: container start overhead, and a map job against the same work on the host.

1. Start-to-exit of `true` through jobs.sandbox.Sandbox().run (a fresh container), through
   jobs.warm.WarmPool.run (a container reused from the task before, as a job phase's tasks
   on one node do), a bare `bwrap ... true` and a plain `subprocess.run(["true"])`, interleaved.
2. A map job over N objects of generated text on a fresh `manta serve`, create (inputs given,
   end=true) to done, against (a) the limit: the same pipeline over the same blob files on
   the host with `xargs -P <cores>`, (b) boto3: download every object, then the pipeline,
   and (c) the same files through reused containers alone (WarmPool, no server).
3. The same four with a light pipeline (`wc -l`), where per-task costs dominate.
Where the job's time goes comes from its task records and CPU accounting; the per-task
budget that (b) / job >= 3 leaves shows whether any job could meet it on this machine.
Usage and method: benchmarks/README.md. Server start-up and the raw client: _common.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import botocore.exceptions
from _common import (
    BUCKET,
    FAILURES,
    HERE,
    REGION,
    BenchError,
    Client,
    MiB,
    Server,
    begin_run,
    file_create_us,
    fill_defaults,
    machine_info,
    write_json,
)
from botocore.config import Config

sys.path.insert(0, str(HERE.parent))  # so that `jobs` is the package, not this script

from jobs.admission import default_slots  # noqa: E402
from jobs.sandbox import Sandbox, TaskSpec  # noqa: E402
from jobs.warm import WarmPool  # noqa: E402
from manta.client import Client as MantaClient  # noqa: E402
from manta.client import MantaError  # noqa: E402
from storage.catalog import Catalog  # noqa: E402

PIPELINE = "tr -s ' ' '\\n' | sort | uniq -c | sort -rn | head -20"
LIGHT_PIPELINE = "wc -l"
CORES = len(os.sched_getaffinity(0))
SLOTS = int(os.environ.get("MANTA_TASK_SLOTS") or 0) or default_slots()  # the server's containers per node
HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # as inside the sandbox
FULL_DEFAULTS = {"objects": 1000, "repeat": 3, "runs": 50}
QUICK_DEFAULTS = {"objects": 200, "repeat": 1, "runs": 20}
OVERHEAD_MAX_MS, JOB_MAX_VS_LIMIT, JOB_MIN_VS_BOTO3, LIGHT_MAX_VS_LIMIT = 25.0, 1.5, 3.0, 2.0
WAIT_S, SAMPLE_CHECKS, ORDER = 0.5, 5, ("job", "limit", "boto3", "containers")
CPUACCT = Path(f"/sys/fs/cgroup/cpuacct/manta-bench-{os.getpid()}")  # cgroup v1 only
ERRORS = (BenchError, MantaError, subprocess.SubprocessError, botocore.exceptions.BotoCoreError,
          botocore.exceptions.ClientError, *FAILURES)


def make_corpus(size: int) -> bytes:
    """Zipf-distributed words from a fixed random vocabulary, 12 to a line (deterministic)."""
    rng = random.Random(7)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10)))
             for _ in range(20_000)]
    weights = [1 / rank for rank in range(1, len(vocab) + 1)]
    corpus = b""
    while len(corpus) < size:
        words = rng.choices(vocab, weights, k=size // 5)
        corpus += "\n".join(" ".join(words[i:i + 12]) for i in range(0, len(words), 12)).encode()
    return corpus


def object_body(corpus: bytes, index: int, size: int) -> bytes:
    head = b"object %d\n" % index
    offset = index * 1_000_003 % (len(corpus) - size)
    return head + corpus[offset:offset + size - len(head)]


def bare_bwrap() -> list[str]:
    argv = ["/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    for link in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]


def reused_pool(sandbox: Sandbox) -> WarmPool:
    """A pool of reused containers that keeps them for the whole measurement."""
    pool = WarmPool(sandbox, idle_s=60)
    if not pool.usable():
        raise BenchError("reused containers are not usable here (root, bash, python3 in /usr)")
    return pool


def measure_overhead(runs: int) -> dict[str, list[float]]:
    """Milliseconds per start-to-exit of `true`, four ways, interleaved so drift hits all."""
    sandbox = Sandbox()
    if problem := sandbox.check():  # also the warm-up
        raise BenchError(f"the sandbox cannot run tasks here: {problem}")
    spec, bwrap, pool = TaskSpec("true", {}), bare_bwrap(), reused_pool(sandbox)

    def in_sandbox() -> None:
        if not (result := sandbox.run(spec, lambda _: None)).ok:
            raise BenchError(f"`true` in the sandbox failed: {result}")

    def reused() -> None:
        if not (result := pool.run("bench", spec, lambda _: None)).ok:
            raise BenchError(f"`true` in a reused container failed: {result}")

    kinds = {"sandbox": in_sandbox, "reused": reused, "bwrap": lambda: subprocess.run(bwrap, check=True),
             "plain": lambda: subprocess.run(["true"], check=True)}
    samples: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        reused()  # its container's start is the fresh case, measured above
        for _ in range(runs):
            for name, run in kinds.items():
                start = time.perf_counter()
                run()
                samples[name].append((time.perf_counter() - start) * 1000)
        if pool.started != 1:
            raise BenchError(f"the reused-container runs started {pool.started} containers, not 1")
    finally:
        pool.close()
    return samples


def upload(target, keys: list[str], corpus: bytes, size: int) -> None:
    def put(indexes: range) -> None:
        client = Client(target)
        for i in indexes:
            client.expect("PUT", keys[i], object_body(corpus, i, size))
        client.close()

    with cf.ThreadPoolExecutor(CORES) as pool:
        list(pool.map(put, [range(w, len(keys), CORES) for w in range(CORES)]))


def blob_paths(data: Path, keys: list[str]) -> list[str]:
    """Each object's blob file on its first node, from the catalog opened read-only."""
    catalog = Catalog(str(data / "catalog"), readonly=True)
    try:
        nodes = catalog.nodes.all()
        with catalog.read() as txn:
            paths = []
            for key in keys:
                (blob_id, *_), = catalog.get(txn, "objects", f"{BUCKET}\0{key}".encode())["segments"]  # one blob
                blob = catalog.blobrefs.get(txn, blob_id)
                assert blob is not None, blob_id
                node = blob.nodes[0]
                backend, _, root = nodes[node].spec.partition(":")
                if backend != "dir":
                    raise BenchError(f"node {node} is {backend}; only dir nodes have blob paths here")
                paths.append(os.path.join(root, "blobs", blob_id[:2], blob_id))
            return paths
    finally:
        catalog.close()


def api(method: str, path: str, payload: dict | None = None):
    return MantaClient().api(method, path, payload)


def _process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:  # gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float | None]:
    """CPU seconds of the server's Python processes alone (with `--workers N`, the supervisor
    and its worker processes, its direct children; the tasks are the workers' children), and
    of them plus their tasks (cgroup v1 cpuacct, None elsewhere). Reaped children's CPU does
    not count tasks': bwrap exits without reaping the container's pid 1, whose CPU then
    counts for nobody."""
    try:
        workers = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        workers = []
    own = sum(_process_cpu_s(p) for p in [pid, *workers])
    try:
        return own, int((CPUACCT / "cpuacct.usage").read_text()) / 1e9
    except OSError:
        return own, None


def remove_cpuacct() -> None:
    for _ in range(50):  # EBUSY until the last task process is gone
        try:
            return CPUACCT.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def run_job(server: Server, keys: list[str], pipeline: str, slots: int) -> tuple[dict, list]:
    """One map job, create to done: its time, where that went (per task, in ms of one of
    `slots` task slots: inside Sandbox.run, in the runner around it, idle), CPU; its tasks."""
    (cpu0, all0), start = cpu_s(server.proc.pid), time.monotonic()
    job = api("POST", "/_manta/jobs", {"name": "bench", "phases": [{"type": "map", "exec": pipeline}],
                                        "inputs": [f"{BUCKET}/{k}" for k in keys], "end": True})
    # as `manta job create -w` waits (manta.client.jobs.Job.wait): the server answers as soon
    # as the job is over (it looks every 20 ms), or after WAIT_S
    while (state := api("GET", f"/_manta/jobs/{job['id']}?wait={WAIT_S:g}"))["state"] == "running":
        pass
    seconds, (cpu1, all1) = time.monotonic() - start, cpu_s(server.proc.pid)
    detail = api("GET", f"/_manta/jobs/{job['id']}?tasks=1")
    tasks, ms = detail["tasks"], 1000 / len(keys)
    if state["state"] != "done" or detail["errors"] or len(tasks) != len(keys):
        errors = api("GET", f"/_manta/jobs/{job['id']}/errors")["errors"]
        raise BenchError(f"job {job['id']} ended {state['state']} with {detail['errors']} errors "
                         f"and {len(tasks)} tasks; first errors: {errors[:3]}")
    spans = sum(t["finished"] - t["started"] for t in tasks)
    inside = sum(t["duration_s"] for t in tasks)
    return {"seconds": seconds, "id": job["id"], "bytes_local": detail["bytes_local"],
            "bytes_remote": detail["bytes_remote"], "slot_ms_per_task": seconds * slots * ms,
            "sandbox_run_ms": inside * ms, "runner_outside_sandbox_ms": (spans - inside) * ms,
            "slot_idle_ms": (seconds * slots - spans) * ms,
            "create_to_first_start_s": min(t["started"] for t in tasks) - detail["created"],
            "last_finish_to_done_s": detail["finished"] - max(t["finished"] for t in tasks),
            "server_cpu_ms_per_task": (cpu1 - cpu0) * ms, "task_cpu_ms_per_task":
            None if all0 is None or all1 is None else (all1 - all0 - (cpu1 - cpu0)) * ms}, tasks


def xargs(list_file: Path, pipeline: str) -> dict:
    """Seconds and CPU seconds for the pipeline over every file listed, <cores> at a time."""
    argv = ["xargs", "-P", str(CORES), "-n", "1", "-a", str(list_file),
            "bash", "-c", f'{{ {pipeline}\n}} < "$0" > /dev/null']  # the braces take the redirect
    before, start = os.times(), time.monotonic()
    proc = subprocess.run(argv, env=HOST_ENV, capture_output=True)
    seconds, after = time.monotonic() - start, os.times()
    if proc.returncode:
        raise BenchError(f"xargs exited {proc.returncode}: {proc.stderr[-500:]!r}")
    return {"seconds": seconds, "cpu_s": after.children_user + after.children_system
            - before.children_user - before.children_system}


def containers_alone(list_file: Path, pipeline: str) -> dict:
    """(c): the pipeline over every file listed, through reused containers alone, as a job
    phase's tasks run on a node (`WarmPool.run`, <cores> threads with a container each,
    the file as stdin and $MANTA_INPUT_FILE), but without the server: no catalog, no input
    check, the output thrown away. What the job's containers cost by themselves."""
    paths = list_file.read_text().split()
    pool = reused_pool(Sandbox())
    todo = iter(paths)
    lock, failures = threading.Lock(), []

    def run(slot: int, path: str) -> None:
        spec = TaskSpec(pipeline, {})
        spec.stdin_paths, spec.input_file = [path], path
        if not (result := pool.run(("bench", slot), spec, lambda _: None)).ok:
            failures.append(f"{path}: {result}")

    def slot_loop(slot: int) -> None:
        while not failures:
            with lock:
                path = next(todo, None)
            if path is None:
                return
            run(slot, path)

    try:
        for slot in range(CORES):  # each slot's container started before the clock, untimed
            run(slot, paths[0])
        if pool.started != CORES:  # an input the task user cannot reach: fresh containers
            raise BenchError(f"{CORES} reused containers expected, {pool.started} started")
        threads = [threading.Thread(target=slot_loop, args=(slot,)) for slot in range(CORES)]
        before, start = time.process_time(), time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds, cpu_s = time.monotonic() - start, time.process_time() - before
    finally:
        pool.close()
    if failures:
        raise BenchError(f"a task in a reused container failed: {failures[0]}")
    return {"seconds": seconds, "host_cpu_ms_per_task": cpu_s * 1000 / len(paths)}


def download_then_compute(s3, keys: list[str], work: Path, pipeline: str) -> dict:
    """(b): every object downloaded into `work`/downloads, then xargs over the files. Each
    round overwrites the same files, which are removed only with `work`: thousands of
    files deleted mid-run would make every file created in the next minutes, the job's
    outputs included, pay for them on a journal-less ext4 (the kernel skips the inodes
    freed in the last 60 to 360 s, reading each one's table block: benchmarks/README.md,
    "what a deleted file costs the next one")."""
    dest = work / "downloads"
    dest.mkdir(exist_ok=True)
    start = time.monotonic()

    def fetch(i: int) -> None:
        (dest / f"{i:05d}").write_bytes(s3.get_object(Bucket=BUCKET, Key=keys[i])["Body"].read())

    with cf.ThreadPoolExecutor(CORES) as pool:
        list(pool.map(fetch, range(len(keys))))
    downloaded = time.monotonic() - start
    (dest / "list").write_text("".join(f"{dest / f'{i:05d}'}\n" for i in range(len(keys))))
    compute = xargs(dest / "list", pipeline)
    return {"seconds": time.monotonic() - start, "download_s": downloaded,
            "compute_s": compute["seconds"], "compute_cpu_s": compute["cpu_s"]}


def check_outputs(s3, tasks: list, corpus: bytes, size: int, pipeline: str) -> list[dict]:
    """Compare a few tasks' outputs with the pipeline run on the host over the same bytes."""
    tasks = sorted(tasks, key=lambda t: t["input"])
    picks = sorted({round(j * (len(tasks) - 1) / max(1, SAMPLE_CHECKS - 1)) for j in range(SAMPLE_CHECKS)})
    checks = []
    for task in (tasks[p] for p in picks):
        bucket, _, key = task["outputs"][0].partition("/")
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        body = object_body(corpus, int(task["input"].rsplit("/", 1)[1]), size)
        want = subprocess.run(["bash", "-c", pipeline], input=body, capture_output=True,
                              env=HOST_ENV, check=True).stdout
        checks.append({"input": task["input"], "output": task["outputs"][0], "bytes": len(got),
                       "match": got == want})
    return checks


def comparison(args: argparse.Namespace, raw: dict, prefix: str, pipeline: str) -> tuple[dict, dict, list]:
    """Medians, the job's breakdown and the table rows of one pipeline's three measurements."""
    med = {k: statistics.median(r["seconds"] for r in raw[prefix + k]) for k in ORDER}
    med["download"] = statistics.median(r["download_s"] for r in raw[prefix + "boto3"])
    where = {k: None if v is None else statistics.median(r[k] for r in raw[prefix + "job"])
             for k, v in raw[prefix + "job"][0].items() if k != "id"}
    slots, per_task = SLOTS * args.nodes, 1000 / args.objects
    host_cpu_ms = statistics.median(r["cpu_s"] for r in raw[prefix + "limit"]) * per_task
    rows = [(f"pipeline: {pipeline}", None, ""),
            (f"map job over {args.objects} x {args.object_mib:g} MiB, create -> done", med["job"], "s"),
            (f"(a) limit: xargs -P {CORES} on the blob files", med["limit"], "s"),
            (f"(c) the same through {CORES} reused containers alone (no server)", med["containers"], "s"),
            ("      host Python CPU per task of (c)", statistics.median(
                r["host_cpu_ms_per_task"] for r in raw[prefix + "containers"]), "ms"),
            (f"(b) boto3 download ({CORES} threads), then xargs -P {CORES}", med["boto3"], "s"),
            ("      of which the download", med["download"], "s"),
            (f"job, per task of one of {slots} slots (wall x slots / tasks)", where["slot_ms_per_task"], "ms"),
            ("  inside Sandbox.run (mean task duration_s)", where["sandbox_run_ms"], "ms"),
            ("  task span outside it (input, slot wait, outputs)", where["runner_outside_sandbox_ms"], "ms"),
            ("  slot time outside containers (dispatch, input, gaps)",
             where["slot_ms_per_task"] - where["sandbox_run_ms"], "ms"),
            ("  server CPU (Python) per task", where["server_cpu_ms_per_task"], "ms"),
            ("  task processes' CPU per task", where["task_cpu_ms_per_task"], "ms"),
            ("(a) per object (wall x cores / objects)", med["limit"] * CORES * per_task, "ms"),
            ("(a) CPU per object", host_cpu_ms, "ms"),
            ("job time / (c) time: what the server adds to the containers", med["job"] / med["containers"], "x"),
            ("(c) time / (a) time: what the containers add to the pipeline", med["containers"] / med["limit"], "x"),
            ("job CPU per task (server + task) / (a) CPU per object", None if where["task_cpu_ms_per_task"]
             is None else (where["server_cpu_ms_per_task"] + where["task_cpu_ms_per_task"]) / host_cpu_ms, "x"),
            (f"slot time per task that (b) / job >= {JOB_MIN_VS_BOTO3:g} allows",
             med["boto3"] / JOB_MIN_VS_BOTO3 * slots * per_task, "ms")]
    return med, where, rows


def report(args: argparse.Namespace, raw: dict, load_start: tuple[float, ...]) -> dict:
    """Print medians, targets and the job's time breakdown; return the JSON document."""
    over = {k: statistics.median(v) for k, v in raw["overhead_ms"].items()}
    med, where, rows = comparison(args, raw, "", args.pipeline)
    rows = [("container start-to-exit of `true`, Sandbox().run (fresh)", over["sandbox"], "ms"),
            ("  in a reused container, WarmPool.run", over.get("reused"), "ms"),
            ("  bare `bwrap ... true`", over["bwrap"], "ms"),
            ("  plain subprocess.run(['true'])", over["plain"], "ms"),
            ("a new small file in the data directory, CPU (before the rounds)", raw["file_create_us"][0], "us"),
            ("  the same after the rounds", raw["file_create_us"][-1], "us"), *rows]
    light: dict = {}
    targets = [("container overhead", over["sandbox"], "ms", "<=", OVERHEAD_MAX_MS),
               ("job time / (a) limit", med["job"] / med["limit"], "x", "<=", JOB_MAX_VS_LIMIT),
               ("(b) boto3 time / job time", med["boto3"] / med["job"], "x", ">=", JOB_MIN_VS_BOTO3)]
    if args.light_pipeline:
        lm, light["job_breakdown"], light_rows = comparison(args, raw, "light_", args.light_pipeline)
        light["medians"] = {f"{k}_s": v for k, v in lm.items()}  # named as the main run's
        light["targets"] = {"job_vs_limit": lm["job"] / lm["limit"], "boto3_vs_job": lm["boto3"] / lm["job"]}
        light["medians"]["job_again_s"] = statistics.median(r["seconds"] for r in raw["light_job_again"])
        light_rows.insert(2, ("  the same job again at once (the last job's containers idle)",
                              light["medians"]["job_again_s"], "s"))
        rows += light_rows
        targets.append(("light job time / (a) limit", lm["job"] / lm["limit"], "x", "<=", LIGHT_MAX_VS_LIMIT))
    print(f"\n{'metric (median over rounds)':<62}{'value':>10}\n" + "-" * 72)
    for label, value, unit in rows:
        print(f"{label:<62}{'' if unit == '' else '-' if value is None else f'{value:.2f}':>10} {unit}")
    print("\ntargets:")
    for label, value, unit, op, goal in targets:
        met = value <= goal if op == "<=" else value >= goal
        print(f"  {label:<28}{value:>8.2f} {unit:<4}{f'{op} {goal:g} {unit}':<10}{'met' if met else 'NOT met'}")
    if light:
        print(f"  (light pipeline, for context: job / (a) {light['targets']['job_vs_limit']:.2f} x, "
              f"(b) / job {light['targets']['boto3_vs_job']:.2f} x)")
    checks = raw["checks"]
    print(f"\noutput check: {sum(c['match'] for c in checks)}/{len(checks)} sampled outputs match "
          f"the pipeline run on the host; bytes_remote {sum(r['bytes_remote'] for r in raw['job'])}; "
          f"create -> first task {where['create_to_first_start_s']:.3f} s, last task -> done "
          f"{where['last_finish_to_done_s']:.3f} s\nload average: start {load_start[0]:.2f}, "
          f"end {os.getloadavg()[0]:.2f}")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(load_start),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "samples": raw, "medians": {"overhead_ms": over, **{f"{k}_s": v for k, v in med.items()}},
            "job_breakdown": where, "light": light,
            "targets": [{"metric": t[0], "value": t[1], "unit": t[2], "goal": f"{t[3]} {t[4]:g}",
                         "met": t[1] <= t[4] if t[3] == "<=" else t[1] >= t[4]} for t in targets]}


def plot(doc: dict, path: Path) -> None:
    """Per task, in ms of one slot: (a)'s time per object, the job's (inside and outside the
    container), and the line (b) / 3 draws: what the job may take for the 3 x target."""
    import matplotlib  # noqa: PLC0415 (only for the picture)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cfg, slots = doc["config"], SLOTS * doc["config"]["nodes"]
    runs = [(f"word count\n{cfg['pipeline'][:28]}...", doc["medians"], doc["job_breakdown"])]
    if doc.get("light"):
        runs.append((cfg["light_pipeline"], doc["light"]["medians"], doc["light"]["job_breakdown"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.2))
    for ax, (title, med, where) in zip(axes if len(runs) > 1 else [axes], runs, strict=True):
        per = slots * 1000 / cfg["objects"]
        inside, outside = where["sandbox_run_ms"], where["slot_ms_per_task"] - where["sandbox_run_ms"]
        ax.bar(0, med["limit_s"] * per, color="#777", label="(a) pipeline on the host")
        ax.bar(1, inside, color="#3a7", label="job: inside the container")
        ax.bar(1, outside, bottom=inside, color="#9d9", label="job: slot time outside it")
        ax.bar(2, (med["boto3_s"] - med["download_s"]) * per, color="#777")
        ax.bar(2, med["download_s"] * per, bottom=(med["boto3_s"] - med["download_s"]) * per,
               color="#bbb", label="(b) download")
        budget = med["boto3_s"] / JOB_MIN_VS_BOTO3 * per
        ax.axhline(budget, color="#c33", linestyle="--", label=f"(b) / {JOB_MIN_VS_BOTO3:g}: the job's budget")
        ax.set_xticks([0, 1, 2], ["(a) xargs", "job", "(b) boto3"])
        ax.set_ylabel(f"ms per object, per slot ({slots} slots)")
        ax.set_title(title, fontsize=10)
    axes_list = axes if len(runs) > 1 else [axes]
    axes_list[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"map job over {cfg['objects']} x {cfg['object_mib']:g} MiB on {CORES} cores: "
                 "below the red line the job would be 3 x faster than (b)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, help="input objects (default 1000; quick: 200)")
    p.add_argument("--object-mib", type=float, default=1.0, help="size of each object, MiB")
    p.add_argument("--pipeline", default=PIPELINE, help="the map phase's bash command")
    p.add_argument("--light-pipeline", default=LIGHT_PIPELINE,
                   help="a cheap command measured the same way, for context ('' skips it)")
    p.add_argument("--nodes", type=int, default=1, help="storage nodes of the server")
    p.add_argument("--repeat", type=int, help="rounds of the job comparisons (default 3; quick: 1)")
    p.add_argument("--runs", type=int, help="start-to-exit runs per way (default 50; quick: 20)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for the server")
    p.add_argument("--workdir", type=Path, default=HERE, help="a fresh jobs-tmp-* dir here holds the data")
    p.add_argument("--json", type=Path, default=HERE / "results" / "jobs.json")
    p.add_argument("--plot", default=str(HERE / "results" / "jobs.png"),
                   help="a PNG of the per-task times and the 3 x budget ('' skips it)")
    p.add_argument("--quick", action="store_true", help="200 objects, 1 round, 20 runs")
    args = p.parse_args(argv)
    fill_defaults(args, QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    if min(args.objects, args.repeat, args.runs, args.nodes) < 1 or args.object_mib <= 0:
        p.error("counts and sizes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = begin_run()
    size, keys = int(args.object_mib * MiB), [f"text/{i:05d}" for i in range(args.objects)]
    raw: dict = {"overhead_ms": {}, "checks": [], "light_job_again": [], "file_create_us": [],
                 **{p + k: [] for p in ("", "light_") for k in ORDER}}
    server: Server | None = None
    with contextlib.ExitStack() as cleanup:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="jobs-tmp-", dir=args.workdir))
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        os.chmod(work, 0o711)  # the sandbox user must reach the blob files it binds
        if (free := shutil.disk_usage(work).free) < 3 * args.objects * size + 256 * MiB:
            print(f"error: only {free / 2**30:.1f} GiB free under {args.workdir}", file=sys.stderr)
            return 2
        try:
            print(f"container start-to-exit of `true`, {args.runs} runs each...", file=sys.stderr)
            raw["overhead_ms"] = measure_overhead(args.runs)
            with contextlib.suppress(OSError):  # the server and its tasks in one cpuacct group
                CPUACCT.mkdir()
                cleanup.callback(remove_cpuacct)
            server = Server.manta("manta", work, work / "data", "--nodes", str(args.nodes))
            cleanup.callback(server.stop)
            with contextlib.suppress(OSError):
                (CPUACCT / "cgroup.procs").write_text(str(server.proc.pid))
            server.wait_ready(args.start_timeout)
            server.prepare(0)  # the bucket
            target = server.target
            os.environ.update(MANTA_URL=f"http://{target.host}", MANTA_ACCESS_KEY=target.access_key,
                              MANTA_SECRET_KEY=target.secret_key)
            corpus = make_corpus(max(16 * MiB, 2 * size))
            print(f"uploading {args.objects} x {args.object_mib:g} MiB of text...", file=sys.stderr)
            upload(target, keys, corpus, size)
            (work / "blob-paths").write_text("".join(p + "\n" for p in blob_paths(work / "data", keys)))
            s3 = boto3.client("s3", endpoint_url=f"http://{target.host}", region_name=REGION,
                              aws_access_key_id=target.access_key, aws_secret_access_key=target.secret_key,
                              config=Config(s3={"addressing_style": "path"}, max_pool_connections=2 * CORES))
            raw["file_create_us"].append(file_create_us(work / "data"))
            pipelines = [("", args.pipeline)] + ([("light_", args.light_pipeline)] if args.light_pipeline else [])
            for rnd in range(args.repeat):
                for prefix, pipeline in pipelines:
                    for what in ORDER[rnd % len(ORDER):] + ORDER[:rnd % len(ORDER)]:  # rotated: drift hits each alike
                        os.sync()  # untimed: no measurement pays for the writeback of the one before's files
                        if what == "job":
                            sample, tasks = run_job(server, keys, pipeline, SLOTS * args.nodes)
                            raw["checks"] += [] if rnd else check_outputs(s3, tasks, corpus, size, pipeline)
                            if prefix == "light_":  # at once, while the job before's containers idle
                                raw["light_job_again"].append(run_job(server, keys, pipeline, SLOTS * args.nodes)[0])
                        elif what == "limit":
                            sample = xargs(work / "blob-paths", pipeline)
                        elif what == "containers":
                            sample = containers_alone(work / "blob-paths", pipeline)
                        else:
                            sample = download_then_compute(s3, keys, work, pipeline)
                        raw[prefix + what].append(sample)
                print(f"round {rnd + 1}/{args.repeat}: " + ", ".join(
                    f"{p}{k} {raw[p + k][-1]['seconds']:.2f} s" for p, _ in pipelines for k in ORDER),
                    file=sys.stderr, flush=True)
            raw["file_create_us"].append(file_create_us(work / "data"))
            print(f"container start-to-exit of `true` again, {args.runs} runs each...", file=sys.stderr)
            for kind, samples in measure_overhead(args.runs).items():  # a slow spell at the start
                raw["overhead_ms"][kind] += samples                    # does not decide alone
        except ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            if server is not None:
                print(server.log_tail(), file=sys.stderr)
            return 1
    doc = report(args, raw, load_start)
    write_json(args.json, doc)
    if args.plot:
        plot(doc, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the server and the temp dir are gone already
        sys.exit("interrupted")
