"""`manta job ...`: run map/reduce jobs from the shell (`manta find` lists their inputs).

    manta find logs/2024/ --name '\\.gz$' | manta job create -o -m 'zcat | grep -c ERROR' \\
        -r 'awk "{s+=\\$1} END {print s}"'

Every command is a call on `manta.Client` and its `Job` (the jobs API; output contents
through S3). Inputs are streamed: the job is created and its id printed first, then its
inputs are added in batches as they are read (arguments, listed prefixes or stdin lines,
`Job.add_inputs`), then ended. Waiting (`-w`, `-o`, `watch`) is `Job.wait`, whose progress
on stderr is bars in a terminal and one plain line per change elsewhere
(`manta.client.progress`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from manta.cli.common import CliError, client, subcommand

if TYPE_CHECKING:
    from manta.client import Client, Job

__all__ = ["register"]


def _job(job_id: str, mc: Client | None = None) -> Job:
    from manta.client import Job

    return Job(mc or client(), job_id)


def _split(name: str) -> tuple[str, str]:
    bucket, sep, key = name.strip().lstrip("/").partition("/")
    if not bucket or not sep:
        raise CliError(f"{name!r} is not bucket/key (or bucket/prefix/ for every object under a prefix)")
    return bucket, key


def _inputs(items: Iterable[str]) -> Iterator[str]:
    """Each `bucket/key` or `bucket/prefix/`, checked; blank lines are skipped."""
    for raw in items:
        item = raw.strip().lstrip("/")
        if item:
            _split(item)
            yield item


def _stdin_lines() -> Iterator[str]:
    if sys.stdin is None:
        return
    if sys.stdin.isatty():
        print("manta: reading inputs from stdin, one bucket/key per line (end with ^D)", file=sys.stderr)
    yield from sys.stdin


def _follow(job: Job, progress: bool) -> dict[str, Any]:
    """`Job.wait`, then the job's status; ^C leaves the job running, and says so."""
    try:
        job.wait(progress=progress)
    except KeyboardInterrupt:
        print(f"manta: job {job.id} goes on; stop it with: manta job cancel {job.id}", file=sys.stderr)
        raise
    return job.status


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


def _print_outputs(mc: Client, job: Job) -> None:
    sys.stdout.flush()
    for name in job.outputs():
        mc.get(name, sys.stdout.buffer, progress=False)
    sys.stdout.buffer.flush()


# -- manta job ... -------------------------------------------------------------------------

def _phases(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not args.phases:
        raise CliError("a job needs at least one phase: -m CMD (map) or -r CMD (reduce)")
    if args.count is not None and not any(kind == "reduce" for kind, _ in args.phases):
        raise CliError("--count applies to reduce phases, and this job has none")
    shared: dict[str, Any] = {"memory_mb": args.memory, "disk_mb": args.disk, "timeout_s": args.timeout,
                              "assets": args.asset or None, "init": args.init, "image": args.image}
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
    mc = client()
    job = mc.job(phases=phases, name=args.name or "", end=False)
    print(job.id, file=sys.stderr if args.output else sys.stdout, flush=True)
    if args.open:
        return 0
    try:
        job.add_inputs(_inputs(args.inputs or _stdin_lines()), end=True)
    except BaseException:
        job.cancel()
        print(f"manta: job {job.id} cancelled: its inputs could not all be added", file=sys.stderr)
        raise
    if not (args.output or args.wait):
        return 0
    status = _follow(job, progress=args.wait)
    if args.output:
        _print_outputs(mc, job)
    errors = job.errors()
    if args.output:
        _print_errors(errors, sys.stderr)
    return 1 if errors or status["state"] != "done" else 0


def _job_addinputs(args: argparse.Namespace) -> int:
    _job(args.job).add_inputs(_inputs(args.inputs or _stdin_lines()), end=args.end)
    return 0


def _job_end(args: argparse.Namespace) -> int:
    _job(args.job).end_inputs()
    return 0


def _job_watch(args: argparse.Namespace) -> int:
    status = _follow(_job(args.job), progress=True)
    return 1 if status["errors"] or status["state"] != "done" else 0


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _job_get(args: argparse.Namespace) -> int:
    job = _job(args.job).fetch(tasks=args.json)
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
    mc = client()
    if args.cat:
        _print_outputs(mc, _job(args.job, mc))
        return 0
    for name in _job(args.job, mc).outputs():
        print(name)
    return 0


def _job_errors(args: argparse.Namespace) -> int:
    errors = _job(args.job).errors()
    if args.json:
        print(json.dumps(errors))
    else:
        _print_errors(errors, sys.stdout)
    return 0


def _job_cancel(args: argparse.Namespace) -> int:
    status = _job(args.job).cancel()
    if status["state"] != "cancelled":
        print(f"manta: job {args.job} was already {status['state']}", file=sys.stderr)
    return 0


def _job_list(args: argparse.Namespace) -> int:
    jobs = client().jobs(args.state)  # oldest first
    if args.json:
        print(json.dumps(jobs))
        return 0
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
    c.add_argument("--image", metavar="NAME", help="task image of every phase, bound at /opt/manta/image with its "
                   "bin first on PATH (e.g. python-data: pandas, pyarrow, numpy, duckdb; manta admin image ls)")
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
    lst.add_argument("--state", choices=("running", "done", "cancelled"), help="only the jobs in this state")


def register(sub: Any) -> None:
    """Add `job` to the `manta` command's subparsers."""
    _register_job(sub)
