"""`manta job ...`: run map/reduce jobs from the shell (`manta find` lists their inputs).

    manta find logs/2024/ --name '\\.gz$' | manta job create -o -m 'zcat | grep -c ERROR' \\
        -r 'awk "{s+=\\$1} END {print s}"'

Jobs go through the jobs HTTP API (`manta.server.jobs_api`, SigV4-signed by `manta.cli.http`);
listings and output contents through the S3 API with boto3, with the same URL and
credentials (`manta.credentials`). Inputs are streamed: the job is created first, its
inputs are added in batches as they are read (arguments, listed prefixes or stdin lines),
then its inputs are ended.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from manta.cli.common import CliError, stdout_pipe, subcommand
from manta.cli.find import list_objects, s3_client, s3_errors

__all__ = ["register"]

BATCH = 1000
BATCH_S = 1.0
WAIT_S = 0.5  # the longest a job-status request waits for the job to end


# -- clients -------------------------------------------------------------------------------

def _job(job_id: str, action: str = "") -> str:
    path = "/_manta/jobs/" + urllib.parse.quote(job_id, safe="")
    return f"{path}/{action}" if action else path


def _api(method: str, path: str, payload: Any = None) -> Any:
    from manta.cli.http import signed_request

    return signed_request(method, path, json.dumps(payload).encode() if payload is not None else b"")


def _split(name: str) -> tuple[str, str]:
    bucket, sep, key = name.strip().lstrip("/").partition("/")
    if not bucket or not sep:
        raise CliError(f"{name!r} is not bucket/key (or bucket/prefix/ for every object under a prefix)")
    return bucket, key


def _copy_object(s3: Any, name: str, out: Any) -> None:
    bucket, key = _split(name)
    with s3_errors(bucket):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(256 * 1024):
            out.write(chunk)


# -- inputs --------------------------------------------------------------------------------

def _expand(items: Iterable[str]) -> Iterator[str]:
    """`bucket/key` as is; `bucket/prefix/` -> every object under it. Blank lines are skipped."""
    for raw in items:
        item = raw.strip().lstrip("/")
        if not item:
            continue
        bucket, key = _split(item)
        if key and not key.endswith("/"):
            yield item
            continue
        for obj in list_objects(bucket, key):
            yield f"{bucket}/{obj['Key']}"


def _stdin_lines() -> Iterator[str]:
    if sys.stdin is None:
        return
    if sys.stdin.isatty():
        print("manta: reading inputs from stdin, one bucket/key per line (end with ^D)", file=sys.stderr)
    yield from sys.stdin


def _send_inputs(job_id: str, inputs: Iterable[str], end: bool) -> int:
    """Add inputs in batches (of BATCH, or what arrived in BATCH_S); returns how many."""
    batch: list[str] = []
    sent = 0
    last = time.monotonic()
    for item in inputs:
        batch.append(item)
        if len(batch) >= BATCH or time.monotonic() - last >= BATCH_S:
            _api("POST", _job(job_id, "inputs"), {"inputs": batch, "end": False})
            sent += len(batch)
            batch = []
            last = time.monotonic()
    if batch or end:
        _api("POST", _job(job_id, "inputs"), {"inputs": batch, "end": end})
    return sent + len(batch)


# -- waiting and progress -----------------------------------------------------------------

class _Progress:
    """Tasks finished per phase, on stderr: tqdm bars when tqdm is installed, else one line."""

    def __init__(self, job_id: str, enabled: bool = True) -> None:
        self.job_id = job_id
        self.enabled = enabled
        self.bars: list[Any] = []
        self.last = ""
        self.tqdm: Any = None
        if enabled and sys.stderr.isatty():  # bars for people; plain lines for logs and pipes
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.tqdm = tqdm

    def update(self, job: dict[str, Any]) -> None:
        if not self.enabled:
            return
        counts = [(p["type"], p["done"] + p["failed"] + p["cancelled"], p["tasks"]) for p in job["phases"]]
        if self.tqdm is not None:
            while len(self.bars) < len(counts):
                kind, done, total = counts[len(self.bars)]
                self.bars.append(self.tqdm(total=total, initial=done, desc=f"phase {len(self.bars)} {kind:<6}",
                                           unit="task", file=sys.stderr, position=len(self.bars), leave=True,
                                           dynamic_ncols=True))
            for bar, (_, done, total) in zip(self.bars, counts, strict=True):
                if bar.total != total or bar.n != done:
                    bar.total = total
                    bar.n = done
                    bar.refresh()
            return
        line = f"job {self.job_id}: " + ", ".join(
            f"phase {i} {kind} {done}/{total}" for i, (kind, done, total) in enumerate(counts))
        if job["errors"]:
            line += f", {job['errors']} errors"
        if line != self.last:
            ending = "\r" if sys.stderr.isatty() else "\n"
            print(line, end=ending, file=sys.stderr, flush=True)
            self.last = line

    def close(self, job: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for bar in self.bars:
            bar.close()
        if self.tqdm is None and self.last and sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"job {self.job_id} {job['state']}: {job['errors']} errors", file=sys.stderr, flush=True)


def _wait(job_id: str, progress: bool) -> dict[str, Any]:
    """Poll until the job is done or cancelled and none of its tasks runs any more."""
    bar = _Progress(job_id, progress)
    settle_deadline: float | None = None
    try:
        while True:  # the server answers when the job is over, or after WAIT_S (the bar moves)
            job = _api("GET", _job(job_id) + f"?wait={WAIT_S:g}")
            bar.update(job)
            if job["state"] != "running":
                running = sum(p["running"] for p in job["phases"])
                settle_deadline = settle_deadline or time.monotonic() + 10
                if not running or time.monotonic() > settle_deadline:
                    break
    except KeyboardInterrupt:
        print(f"\nmanta: job {job_id} goes on; stop it with: manta job cancel {job_id}", file=sys.stderr)
        raise
    bar.close(job)
    return job  # type: ignore[no-any-return]


def _print_errors(errors: list[dict[str, Any]], out: Any) -> None:
    for e in errors:
        where, message = e.get("input") or "-", e.get("message", "")
        message = message.removeprefix(f"{where}: ")
        print(f"{e['task']}  {e['code']}  {where}: {message}", file=out)
        excerpt = (e.get("excerpt") or "").rstrip("\n")
        for line in excerpt.splitlines()[-20:]:
            print(f"    {line}", file=out)
        if e.get("stderr"):
            print(f"    (stderr: {e['stderr']})", file=out)


# -- manta job ... -------------------------------------------------------------------------

def _phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not args.phases:
        raise CliError("a job needs at least one phase: -m CMD (map) or -r CMD (reduce)")
    if args.count is not None and not any(kind == "reduce" for kind, _ in args.phases):
        raise CliError("--count applies to reduce phases, and this job has none")
    shared: dict[str, Any] = {"memory_mb": args.memory, "disk_mb": args.disk, "timeout_s": args.timeout,
                              "assets": args.asset or None, "init": args.init}
    phases = []
    for kind, command in args.phases:
        phase = {"type": kind, "exec": command, **{k: v for k, v in shared.items() if v is not None}}
        if kind == "reduce" and args.count is not None:
            phase["count"] = args.count
        phases.append(phase)
    return phases


def _job_create(args: argparse.Namespace) -> int:
    phases = _phases(args)
    for name in [*(args.asset or []), *args.inputs]:
        _split(name)
    if args.open and args.inputs:
        raise CliError("--open takes no INPUT (add them later with manta job addinputs)")
    job = _api("POST", "/_manta/jobs", {"name": args.name or "", "phases": phases, "inputs": [], "end": False})
    job_id = job["id"]
    print(job_id, file=sys.stderr if args.output else sys.stdout, flush=True)
    if args.open:
        return 0
    try:
        _send_inputs(job_id, _expand(args.inputs or _stdin_lines()), end=True)
    except (CliError, KeyboardInterrupt):
        _api("POST", _job(job_id, "cancel"))
        print(f"manta: job {job_id} cancelled: its inputs could not all be added", file=sys.stderr)
        raise
    if not (args.output or args.wait):
        return 0
    job = _wait(job_id, progress=args.wait)
    if args.output:
        _print_outputs(job_id)
    errors = _api("GET", _job(job_id, "errors"))["errors"]
    if args.output:
        _print_errors(errors, sys.stderr)
    return 1 if errors or job["state"] != "done" else 0


def _print_outputs(job_id: str) -> None:
    outputs = _api("GET", _job(job_id, "outputs"))["outputs"]
    s3 = s3_client() if outputs else None
    with stdout_pipe():
        sys.stdout.flush()
        for name in outputs:
            _copy_object(s3, name, sys.stdout.buffer)
        sys.stdout.buffer.flush()


def _job_addinputs(args: argparse.Namespace) -> int:
    _send_inputs(args.job, _expand(args.inputs or _stdin_lines()), end=args.end)
    return 0


def _job_end(args: argparse.Namespace) -> int:
    _api("POST", _job(args.job, "end"))
    return 0


def _job_watch(args: argparse.Namespace) -> int:
    job = _wait(args.job, progress=True)
    return 1 if job["errors"] or job["state"] != "done" else 0


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _job_get(args: argparse.Namespace) -> int:
    job = _api("GET", _job(args.job) + "?tasks=1" if args.json else _job(args.job))
    if args.json:
        print(json.dumps(job))
        return 0
    ended = "ended" if job["inputs_ended"] else "open"
    print(f"id:       {job['id']}\nname:     {job['name'] or '-'}\nstate:    {job['state']}\n"
          f"inputs:   {job['input_count']} ({ended})\ncreated:  {_when(job['created'])}\n"
          f"finished: {_when(job['finished'])}")
    for i, p in enumerate(job["phases"]):
        count = f" x{p['count']}" if p["type"] == "reduce" else ""
        print(f"phase {i}:  {p['type']}{count}: {p['exec']}\n"
              f"          {p['tasks']} tasks: {p['done']} done, {p['running']} running, {p['queued']} queued, "
              f"{p['failed']} failed, {p['cancelled']} cancelled")
    print(f"errors:   {job['errors']}\nbytes:    {job['bytes_local']} read locally, "
          f"{job['bytes_remote']} from other nodes")
    return 0


def _job_outputs(args: argparse.Namespace) -> int:
    if args.cat:
        _print_outputs(args.job)
        return 0
    outputs = _api("GET", _job(args.job, "outputs"))["outputs"]
    with stdout_pipe():
        for name in outputs:
            print(name)
    return 0


def _job_errors(args: argparse.Namespace) -> int:
    errors = _api("GET", _job(args.job, "errors"))["errors"]
    if args.json:
        print(json.dumps(errors))
    else:
        with stdout_pipe():
            _print_errors(errors, sys.stdout)
    return 0


def _job_cancel(args: argparse.Namespace) -> int:
    job = _api("POST", _job(args.job, "cancel"))
    if job["state"] != "cancelled":
        print(f"manta: job {args.job} was already {job['state']}", file=sys.stderr)
    return 0


def _job_list(args: argparse.Namespace) -> int:
    jobs = sorted(_api("GET", "/_manta/jobs")["jobs"], key=lambda j: j["created"])
    if args.json:
        print(json.dumps(jobs))
        return 0
    with stdout_pipe():
        print(f"{'ID':<18} {'STATE':<10} {'CREATED':<19} {'INPUTS':>7}  NAME")
        for j in jobs:
            print(f"{j['id']:<18} {j['state']:<10} {_when(j['created']):<19} {j['input_count']:>7}  {j['name']}")
    return 0


# -- argparse ----------------------------------------------------------------------------------

class _PhaseAction(argparse.Action):
    """-m/-r share one dest: a list of (type, command) in command-line order."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        phases = list(getattr(namespace, self.dest, None) or [])
        phases.append((self.const, values))
        setattr(namespace, self.dest, phases)


def _register_job(sub: Any) -> None:
    job = sub.add_parser("job", help="run map/reduce jobs next to the data",
                         description="Run map/reduce jobs next to the data (Manta semantics).",
                         epilog="example:\n  manta find logs/ | manta job create -o -m 'grep -c ERROR' "
                                "-r 'awk \"{s+=\\$1} END {print s}\"'",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    jsub = job.add_subparsers(dest="job_command", required=True)

    c = subcommand(jsub, "create", _job_create, "create a job, add its inputs, end them; print the job id",
                 "manta job create -o -m 'wc -l' -r 'awk \"{s+=\\$1} END {print s}\"' logs/2024/")
    c.add_argument("-m", "--map", dest="phases", action=_PhaseAction, const="map", metavar="CMD",
                   help="add a map phase: CMD runs once per input object (stdin = the object)")
    c.add_argument("-r", "--reduce", dest="phases", action=_PhaseAction, const="reduce", metavar="CMD",
                   help="add a reduce phase: CMD reads all of the phase's inputs on stdin")
    c.add_argument("--count", type=int, metavar="N", help="reducers per reduce phase (lines go by the key before the "
                                             "first tab; default 1)")
    c.add_argument("--memory", type=int, metavar="MB", help="memory limit of every task (default 1024)")
    c.add_argument("--disk", type=int, metavar="MB", help="/tmp size of every task (default 256)")
    c.add_argument("--timeout", type=float, metavar="S", help="wall-clock limit of every task (default 300)")
    c.add_argument("--asset", action="append", metavar="BUCKET/KEY",
                   help="object mounted read-only at /manta/assets/<name> in every task (repeatable)")
    c.add_argument("--init", metavar="CMD", help="command run in each task's container before the phase's CMD")
    c.add_argument("--name", help="a name for the job")
    wait = c.add_mutually_exclusive_group()
    wait.add_argument("-o", "--output", action="store_true",
                      help="wait, then print the last phase's outputs (errors on stderr; exit 1 on any)")
    wait.add_argument("-w", "--wait", action="store_true",
                      help="wait for the job to finish, with progress on stderr (exit 1 on any error)")
    c.add_argument("--open", action="store_true",
                   help="leave the inputs open for manta job addinputs (reads no stdin)")
    c.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="bucket/key, or bucket/prefix/ for every object under it (default: stdin lines)")

    a = subcommand(jsub, "addinputs", _job_addinputs, "add inputs to a job whose inputs are open",
                 "manta find logs/2024-06/ | manta job addinputs 5f0c2a9e11d3b7a4 --end")
    a.add_argument("job", metavar="JOB")
    a.add_argument("inputs", nargs="*", metavar="INPUT", help="bucket/key or bucket/prefix/ (default: stdin)")
    a.add_argument("--end", action="store_true", help="also end the job's inputs")

    e = subcommand(jsub, "end", _job_end, "end a job's inputs (it finishes once they are processed)",
                 "manta job end 5f0c2a9e11d3b7a4")
    e.add_argument("job", metavar="JOB")

    w = subcommand(jsub, "watch", _job_watch, "show tasks done per phase until the job is finished",
                 "manta job watch 5f0c2a9e11d3b7a4")
    w.add_argument("job", metavar="JOB")

    g = subcommand(jsub, "get", _job_get, "show a job: state, phases, task counts, bytes read",
                 "manta job get 5f0c2a9e11d3b7a4 --json | jq '.tasks[] | {id, node, bytes_local}'")
    g.add_argument("job", metavar="JOB")
    g.add_argument("--json", action="store_true", help="print the job with every task as JSON")

    o = subcommand(jsub, "outputs", _job_outputs, "list the outputs of a job's last phase",
                 "manta job outputs 5f0c2a9e11d3b7a4 --cat")
    o.add_argument("job", metavar="JOB")
    o.add_argument("--cat", action="store_true", help="print their contents, in task order")

    r = subcommand(jsub, "errors", _job_errors, "list a job's task errors (code, input, stderr excerpt)",
                 "manta job errors 5f0c2a9e11d3b7a4 --json")
    r.add_argument("job", metavar="JOB")
    r.add_argument("--json", action="store_true", help="print a JSON array")

    x = subcommand(jsub, "cancel", _job_cancel, "cancel a job: its running tasks are killed",
                 "manta job cancel 5f0c2a9e11d3b7a4")
    x.add_argument("job", metavar="JOB")

    lst = subcommand(jsub, "list", _job_list, "list your jobs", "manta job list --json")
    lst.add_argument("--json", action="store_true", help="print a JSON array")


def register(sub: Any) -> None:
    """Add `job` to the `manta` command's subparsers."""
    _register_job(sub)
