"""Jobs end to end: a real server, real bubblewrap containers, the `manta` CLI as a subprocess."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from manta.cli import parser
from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, free_port, require
from tests.e2e.test_cli_find import manta
from tests.e2e.test_nodes import MiB, blob_files, flip, node_roots

pytestmark = pytest.mark.sandbox

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
         "sigma tau upsilon phi chi psi omega red green blue cyan magenta yellow").split()
MAP_WC = "tr -s ' ' '\\n' | sort | uniq -c"
REDUCE_WC = "awk '{c[$2]+=$1} END {for (w in c) print w, c[w]}' | sort"
MAP_WC_KEYED = MAP_WC + " | awk '{print $2 \"\\t\" $1}'"
REDUCE_WC_KEYED = "awk -F'\\t' '{c[$1]+=$2} END {for (w in c) print w, c[w]}' | sort"
JOBS_BUCKET = "_jobs_root"


@pytest.fixture(scope="module", autouse=True)
def sandbox_usable() -> None:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    from jobs.sandbox import Sandbox

    reason = Sandbox().check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")


_buckets = iter(range(1, 10**6))


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"jobs-{os.getpid()}-{next(_buckets)}"
    s3.create_bucket(Bucket=name)
    return name


def texts(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(5, 25))]
        lines.append(f"only{i}")  # a word that one object alone has
        out.append(("\n".join(lines) + "\n").encode())
    return out


def local_pipeline(datas: list[bytes], *phases: tuple[str, str]) -> bytes:
    """What the job should print: map phases per object, reduce phases over everything."""
    env = {**os.environ, "LC_ALL": "C"}
    current = datas
    for kind, command in phases:
        if kind == "map":
            current = [subprocess.run(["bash", "-c", command], input=d, capture_output=True, env=env,
                                      check=True).stdout for d in current]
        else:
            current = [subprocess.run(["bash", "-c", command], input=b"".join(current), capture_output=True,
                                      env=env, check=True).stdout]
    return b"".join(current)


def upload(client: Any, bucket: str, prefix: str, datas: list[bytes]) -> list[str]:
    names = []
    for i, data in enumerate(datas):
        client.put_object(Bucket=bucket, Key=f"{prefix}{i:04d}.txt", Body=data)
        names.append(f"{bucket}/{prefix}{i:04d}.txt")
    return names


def job_json(url: str, job_id: str) -> dict[str, Any]:
    result = manta(url, "job", "get", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def marked_processes(marker: str, exclude: tuple[int, ...] = ()) -> dict[int, tuple[list[bytes], int]]:
    """pid -> (argv, host uid) of every process whose command line contains `marker`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            if not any(marker.encode() in arg for arg in argv):
                continue
            with open(f"/proc/{entry}/status") as fh:
                uid = next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        found[int(entry)] = (argv, uid)
    return found


def sleepers(marker: str) -> dict[int, int]:
    """pid -> host uid of the `sleep MARKER` processes."""
    return {pid: uid for pid, (argv, uid) in marked_processes(marker).items() if argv[:2] == [b"sleep", marker.encode()]}


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def cli_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=url, MANTA_ACCESS_KEY=ROOT_AK, MANTA_SECRET_KEY=ROOT_SK)
    return env


def popen(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "manta", *args], env=cli_env(url), cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_id_of(stderr_or_stdout: str) -> str:
    first = stderr_or_stdout.splitlines()[0]
    assert re.fullmatch(r"[0-9a-f]{16}", first), stderr_or_stdout
    return first


# -- 1. word count ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(server: Server, s3: Any) -> Iterator[tuple[str, list[bytes]]]:
    bucket = f"wc-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    datas = texts(55, seed=1)
    upload(s3, bucket, "texts/", datas)
    s3.put_object(Bucket=bucket, Key="textsbut-not-these", Body=b"never counted\n")
    yield bucket, datas


def test_word_count_matches_the_local_pipeline(server: Server, corpus: tuple[str, list[bytes]]) -> None:
    bucket, datas = corpus
    expected = local_pipeline(datas, ("map", MAP_WC), ("reduce", REDUCE_WC)).decode()
    result = manta(server.url, "job", "create", "-o", "--name", "wordcount", "-m", MAP_WC, "-r", REDUCE_WC,
                   f"{bucket}/texts/")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(expected.splitlines())
    assert "only54 1" in result.stdout.splitlines()
    job_id = job_id_of(result.stderr)

    job = job_json(server.url, job_id)
    assert job["state"] == "done" and job["name"] == "wordcount" and job["input_count"] == len(datas)
    assert [(p["type"], p["tasks"], p["done"]) for p in job["phases"]] == [("map", 55, 55), ("reduce", 1, 1)]
    outputs = manta(server.url, "job", "outputs", job_id)
    assert outputs.stdout.splitlines() == [f"{JOBS_BUCKET}/{job_id}/p1/p1-r0000"]
    listed = json.loads(manta(server.url, "job", "list", "--json").stdout)
    assert any(j["id"] == job_id and j["name"] == "wordcount" and j["state"] == "done" for j in listed)


def test_word_count_with_three_reducers(server: Server, corpus: tuple[str, list[bytes]]) -> None:
    bucket, datas = corpus
    expected = local_pipeline(datas, ("map", MAP_WC_KEYED), ("reduce", REDUCE_WC_KEYED)).decode()
    result = manta(server.url, "job", "create", "-o", "--count", "3", "-m", MAP_WC_KEYED, "-r", REDUCE_WC_KEYED,
                   f"{bucket}/texts/")
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result.stderr)
    # every word lands in exactly one reducer: the union has no duplicate words
    assert sorted(result.stdout.splitlines()) == sorted(expected.splitlines())
    outputs = manta(server.url, "job", "outputs", job_id).stdout.splitlines()
    assert outputs == [f"{JOBS_BUCKET}/{job_id}/p1/p1-r{r:04d}" for r in range(3)]
    job = job_json(server.url, job_id)
    reducers = [t for t in job["tasks"] if t["type"] == "reduce"]
    assert len(reducers) == 3 and all(t["state"] == "done" for t in reducers)


def test_word_count_over_inputs_piped_from_find(server: Server, corpus: tuple[str, list[bytes]]) -> None:
    bucket, datas = corpus
    expected = local_pipeline(datas, ("map", MAP_WC), ("reduce", REDUCE_WC)).decode()
    cli = f"{shlex.quote(sys.executable)} -m manta"
    pipeline = (f"{cli} find {bucket}/texts/ | "
                f"{cli} job create -o -m {shlex.quote(MAP_WC)} -r {shlex.quote(REDUCE_WC)}")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=cli_env(server.url), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(expected.splitlines())
    assert job_json(server.url, job_id_of(result.stderr))["input_count"] == len(datas)


# -- 2. locality --------------------------------------------------------------------------------

def test_map_tasks_run_on_the_node_holding_their_input(fresh_server: Server) -> None:
    fresh_server.extra_args = ["--nodes", "3", "--copies", "1"]
    fresh_server.start()
    client = fresh_server.client()
    client.create_bucket(Bucket="local")  # type: ignore[attr-defined]
    datas = [os.urandom(1000 * (i + 1)) for i in range(12)]
    names = upload(client, "local", "blob/", datas)
    result = manta(fresh_server.url, "job", "create", "-w", "-m", "wc -c", *names)
    assert result.returncode == 0, result.stderr
    job = job_json(fresh_server.url, job_id_of(result.stdout))
    maps = sorted((t for t in job["tasks"] if t["type"] == "map"), key=lambda t: t["input"])
    assert [t["input"] for t in maps] == names
    for task, data in zip(maps, datas, strict=True):
        assert task["state"] == "done", task
        assert (task["bytes_local"], task["bytes_remote"]) == (len(data), 0), task
    assert job["bytes_remote"] == 0 and job["bytes_local"] == sum(map(len, datas))
    assert len({t["node"] for t in maps}) >= 2  # the inputs are spread over the nodes, and so are the tasks
    sizes = manta(fresh_server.url, "job", "outputs", job["id"], "--cat").stdout.split()
    assert sorted(map(int, sizes)) == sorted(map(len, datas))


def test_a_node_runs_at_most_its_slots_of_containers_at_once(fresh_server: Server) -> None:
    """MANTA_TASK_SLOTS bounds the containers running on a node at once; a slot is given
    back when a container ends (before its outputs are committed), and both slots are used."""
    fresh_server.env = {"MANTA_TASK_SLOTS": "2"}
    fresh_server.extra_args = ["--nodes", "1", "--copies", "1"]
    fresh_server.start()
    client = fresh_server.client()
    client.create_bucket(Bucket="slots")  # type: ignore[attr-defined]
    names = upload(client, "slots", "in/", [f"{i}\n".encode() for i in range(7)])
    marker = f"0.3{random.randrange(10**6):06d}"
    waiting = popen(fresh_server.url, "job", "create", "-o", "-m", f"sleep {marker}; cat", *names)
    seen = []
    while waiting.poll() is None:
        seen.append(len(sleepers(marker)))
        time.sleep(0.01)
    out, err = waiting.communicate()
    assert waiting.returncode == 0, err
    assert sorted(out.split()) == [str(i) for i in range(7)]
    assert max(seen) == 2, seen


def alias_mounts(server_pids: list[int], base: str = "/run/manta") -> list[str]:
    """The node-root aliases that these processes (a server and its workers) mounted."""
    with open("/proc/mounts") as fh:
        return [line.split()[1] for line in fh if any(f" {base}/{pid}-" in line for pid in server_pids)]


def server_pids(srv: Server) -> list[int]:
    return ([srv.proc.pid] if srv.proc else []) + srv.worker_pids()


def test_jobs_work_with_a_data_dir_the_task_user_cannot_reach() -> None:
    """Root's home is 0700 on Debian, so a data dir under it cannot be bound by the task
    user: the server binds the node's root at /run/manta/<pid>-<node> (here in a
    MANTA_ALIAS_DIR of its own) and tasks read their input (stdin and $MANTA_INPUT_FILE)
    and assets in place through it; the alias goes away with the server, or at the next
    start after a kill."""
    require(os.geteuid() == 0, "binding a node root needs root")
    base = tempfile.mkdtemp(prefix="manta-0700-")  # mode 0700: like /root
    srv = Server(os.path.join(base, "data"), free_port())
    # an alias directory of its own: a server starting meanwhile in another test process
    # sweeps the aliases of dead servers in /run/manta, this one's too once it is killed
    alias_base = f"/run/manta-test-{os.getpid()}-{random.randrange(10**6)}"
    srv.env = {"MANTA_ALIAS_DIR": alias_base}
    try:
        srv.start()
        client = srv.client()
        client.create_bucket(Bucket="hidden")  # type: ignore[attr-defined]
        datas = [os.urandom(100_000 + i) for i in range(4)]
        names = upload(client, "hidden", "in/", datas)
        client.put_object(Bucket="hidden", Key="tool.sh", Body=b"echo asset ran\n")  # type: ignore[attr-defined]
        result = manta(srv.url, "job", "create", "-o", "--asset", "hidden/tool.sh", "-m",
                       'md5sum; md5sum < "$MANTA_INPUT_FILE"; bash /manta/assets/tool.sh', *names)
        assert result.returncode == 0, result.stderr
        want = sorted(f"{hashlib.md5(d).hexdigest()}  -" for d in datas for _ in range(2))
        lines = result.stdout.splitlines()
        assert sorted(x for x in lines if x != "asset ran") == want and lines.count("asset ran") == len(datas)
        job = job_json(srv.url, job_id_of(result.stderr))
        # the input bytes only: an asset is fetched like an input but is not one
        assert job["bytes_local"] == sum(map(len, datas)) and job["bytes_remote"] == 0
        pids = server_pids(srv)
        aliases = alias_mounts(pids, alias_base)
        assert aliases, "no alias was mounted"
        srv.kill()  # a killed server leaves its alias mounted...
        assert alias_mounts(pids, alias_base) == aliases
        srv.start()  # ...until the next start sweeps it (with workers: once the leader is chosen)
        # the sweep unmounts, then removes the directory: wait for both (a look between the
        # two once saw the directory still there)
        wait_for(lambda: alias_mounts(pids, alias_base) == [] and not any(os.path.exists(a) for a in aliases), 10,
                 "the dead server's alias to be unmounted and removed")
        pids = server_pids(srv)
        result = manta(srv.url, "job", "create", "-o", "-m", "wc -c", names[0])
        assert result.returncode == 0 and result.stdout.strip() == str(len(datas[0])), result.stderr
        aliases = alias_mounts(pids, alias_base)
        srv.stop()  # a stopped one unmounts its own
        assert aliases and alias_mounts(pids, alias_base) == []
        assert not any(os.path.exists(a) for a in aliases)
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):  # never rmtree: an alias left mounted is a node's data
            os.rmdir(alias_base)


def test_cancel_reaches_tasks_waiting_for_a_slot(fresh_server: Server) -> None:
    """One slot, three tasks: one runs, one waits in flight for the slot, one is queued.
    Cancel ends all three JobCancelledError at once; the waiting one never starts a container."""
    fresh_server.env = {"MANTA_TASK_SLOTS": "1"}
    fresh_server.extra_args = ["--nodes", "1", "--copies", "1"]
    fresh_server.start()
    client = fresh_server.client()
    client.create_bucket(Bucket="waiting")  # type: ignore[attr-defined]
    names = upload(client, "waiting", "in/", [b"a\n", b"b\n", b"c\n"])
    marker = f"60.{random.randrange(10**6):06d}"
    created = manta(fresh_server.url, "job", "create", "--timeout", "120", "-m", f"sleep {marker}", *names)
    assert created.returncode == 0, created.stderr
    job_id = job_id_of(created.stdout)
    wait_for(lambda: len(sleepers(marker)) == 1, 20, "the first task to run")
    time.sleep(0.3)
    assert len(sleepers(marker)) == 1  # the slot holds one container, whatever is in flight
    assert manta(fresh_server.url, "job", "cancel", job_id).returncode == 0
    job = wait_for(lambda: (j := job_json(fresh_server.url, job_id)) and
                   all(t["state"] == "cancelled" for t in j["tasks"]) and j, 30, "every task to be cancelled")
    wait_for(lambda: not sleepers(marker), 30, "the running container to go")
    assert [t["error"]["code"] for t in job["tasks"]] == ["JobCancelledError"] * 3
    assert sum(1 for t in job["tasks"] if t.get("duration_s") is not None) == 1  # one container ran


def test_map_tasks_never_compute_on_a_damaged_replica(fresh_server: Server) -> None:
    """A task reads its local replica raw, so the replica is checked first. Here every copy of
    every input is damaged, each in a different 1 MiB block: in-place use would give a wrong
    digest; verified reads around the damage give the right one."""
    fresh_server.extra_args = ["--nodes", "2", "--copies", "2"]
    fresh_server.start()
    client = fresh_server.client()
    client.create_bucket(Bucket="rot")  # type: ignore[attr-defined]
    rng = random.Random(7)
    datas = [rng.randbytes(3 * MiB + 1000 * i) for i in range(4)]
    names = upload(client, "rot", "in/", datas)
    roots = sorted(node_roots(fresh_server).values())
    files = [blob_files(root) for root in roots]
    assert len(files[0]) == len(files[1]) == len(datas) and files[0].keys() == files[1].keys()
    for blob_id in files[0]:
        flip(files[0][blob_id], [100])
        flip(files[1][blob_id], [2 * MiB + 100])
    result = manta(fresh_server.url, "job", "create", "-o", "-m", "md5sum | cut -d' ' -f1", *names)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(hashlib.md5(d).hexdigest() for d in datas)
    for name, data in zip(names, datas, strict=True):  # and the store still serves them right
        body = client.get_object(Bucket="rot", Key=name.split("/", 1)[1])["Body"].read()  # type: ignore[attr-defined]
        assert body == data


# -- 3. errors, cancel, restart ------------------------------------------------------------------

def test_failing_task_reports_user_task_error_with_stderr(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="ok.txt", Body=b"fine\n")
    s3.put_object(Bucket=bucket, Key="bad.txt", Body=b"fail\n")
    command = ('if grep -q fail; then echo "bad thing in $MANTA_INPUT_OBJECT" >&2; exit 3; fi; '
               'cat "$MANTA_INPUT_FILE"')
    result = manta(server.url, "job", "create", "-o", "-m", command, f"{bucket}/ok.txt", f"{bucket}/bad.txt",
                   f"{bucket}/missing.txt")
    assert result.returncode == 1
    assert result.stdout == "fine\n"
    assert "UserTaskError" in result.stderr and f"bad thing in {bucket}/bad.txt" in result.stderr
    assert f"ResourceNotFoundError  {bucket}/missing.txt: no such object" in result.stderr
    job_id = job_id_of(result.stderr)

    errors = json.loads(manta(server.url, "job", "errors", job_id, "--json").stdout)
    assert [e["code"] for e in errors] == ["UserTaskError", "ResourceNotFoundError"]
    error = errors[0]
    assert error["code"] == "UserTaskError" and error["input"] == f"{bucket}/bad.txt"
    assert "exit status 3" in error["message"]
    assert error["excerpt"] == f"bad thing in {bucket}/bad.txt\n"
    stderr_bucket, _, stderr_key = error["stderr"].partition("/")
    assert stderr_bucket == JOBS_BUCKET
    assert s3.get_object(Bucket=stderr_bucket, Key=stderr_key)["Body"].read() == error["excerpt"].encode()
    human = manta(server.url, "job", "errors", job_id)
    assert "UserTaskError" in human.stdout and "    bad thing in" in human.stdout


def test_assets_init_and_limits(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="in.txt", Body=b"hello\n")
    s3.put_object(Bucket=bucket, Key="tools/shout.sh", Body=b"tr a-z A-Z\n")
    ok = manta(server.url, "job", "create", "-o", "--asset", f"{bucket}/tools/shout.sh",
               "--init", "echo prepared > /tmp/ready", "-m", "bash /manta/assets/shout.sh; cat /tmp/ready",
               f"{bucket}/in.txt")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "HELLO\nprepared\n"

    missing = manta(server.url, "job", "create", "-o", "--asset", f"{bucket}/tools/nope.sh", "-m", "cat",
                    f"{bucket}/in.txt")
    assert missing.returncode == 1 and missing.stdout == ""
    errors = json.loads(manta(server.url, "job", "errors", job_id_of(missing.stderr), "--json").stdout)
    assert [e["code"] for e in errors] == ["TaskInitError"]
    assert "nope.sh" in errors[0]["message"]

    failed_init = manta(server.url, "job", "create", "-o", "--init", "echo no setup >&2; exit 1", "-m", "cat",
                        f"{bucket}/in.txt")
    assert failed_init.returncode == 1
    errors = json.loads(manta(server.url, "job", "errors", job_id_of(failed_init.stderr), "--json").stdout)
    assert [e["code"] for e in errors] == ["TaskInitError"]

    slow = manta(server.url, "job", "create", "-o", "--timeout", "1", "-m", "sleep 30", f"{bucket}/in.txt")
    assert slow.returncode == 1 and "TaskKilledError" in slow.stderr and "timeout" in slow.stderr

    opened = manta(server.url, "job", "create", "--open", "--memory", "64", "--disk", "32", "--timeout", "30",
                   "--count", "2", "-m", "cat", "-r", "sort")
    job = job_json(server.url, job_id_of(opened.stdout))
    assert [(p["type"], p["count"], p["memory_mb"], p["disk_mb"], p["timeout_s"]) for p in job["phases"]] == [
        ("map", 1, 64, 32, 30.0), ("reduce", 2, 64, 32, 30.0)]
    assert manta(server.url, "job", "cancel", job["id"]).returncode == 0
    assert job_json(server.url, job["id"])["state"] == "cancelled"


def test_cancel_kills_running_containers_within_two_seconds(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"a\n")
    s3.put_object(Bucket=bucket, Key="b", Body=b"b\n")
    marker = f"60.{random.randrange(10**6):06d}"
    waiting = popen(server.url, "job", "create", "-w", "--timeout", "120", "-m", f"sleep {marker}",
                    f"{bucket}/a", f"{bucket}/b")
    try:
        assert waiting.stdout is not None
        job_id = job_id_of(waiting.stdout.readline())
        running = wait_for(lambda: len(sleepers(marker)) == 2 and sleepers(marker), 20, "both tasks to run")
        assert all(uid != 0 for uid in running.values())  # containers run as an unprivileged host user

        cancel = popen(server.url, "job", "cancel", job_id)
        wait_for(lambda: not marked_processes(marker, exclude=(waiting.pid, cancel.pid)), 30, "the containers to go")
        gone_at = time.time()
        _, cancel_err = cancel.communicate(timeout=30)
        assert cancel.returncode == 0, cancel_err

        assert waiting.wait(timeout=10) == 1  # -w ends with the job, non-zero: it did not finish
        job = wait_for(lambda: (j := job_json(server.url, job_id)) and
                       all(t["state"] == "cancelled" for t in j["tasks"]) and j, 30, "tasks to be cancelled")
        assert job["state"] == "cancelled"
        # timed from the cancel the server recorded, not from the CLI's start-up (the machine's speed)
        latency = gone_at - job["finished"]
        print(f"\ncancel: containers gone {latency:.2f}s after the server recorded it")
        assert 0 <= latency < 2.0
        assert len(job["tasks"]) == 2
        assert {t["error"]["code"] for t in job["tasks"]} == {"JobCancelledError"}
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.communicate()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_restart_mid_job_resumes_to_the_right_output(fresh_server: Server, how: str) -> None:
    """A crash (SIGKILL) or a stop with ^C (SIGINT) mid-job, then a start on the same data
    dir: the tasks that were running run again and the job's output is complete."""
    fresh_server.start()
    client = fresh_server.client()
    client.create_bucket(Bucket="resume")  # type: ignore[attr-defined]
    datas = [f"line {i:02d}\n".encode() for i in range(8)]
    names = upload(client, "resume", "in/", datas)
    marker = f"2.{random.randrange(10**6):06d}"
    created = manta(fresh_server.url, "job", "create", "-m", f"sleep {marker}; cat", "-r", "sort", *names)
    assert created.returncode == 0, created.stderr
    job_id = job_id_of(created.stdout)

    def midway() -> bool:
        phase = job_json(fresh_server.url, job_id)["phases"][0]
        return 2 <= phase["done"] < len(datas) - 2 and phase["running"] > 0

    roots = list(node_roots(fresh_server).values())
    wait_for(midway, 30, "the job to be mid-way", interval_s=0.1)
    fresh_server.stop(getattr(signal, how))
    # the containers die with the server
    wait_for(lambda: not marked_processes(marker), 3, "the containers to die with the server")
    # what a task killed while assembling its input leaves on its node: swept at start
    for root in roots:
        os.makedirs(os.path.join(root, "tasks", f"{job_id}-p1-r0000"), exist_ok=True)
        with open(os.path.join(root, "tasks", f"{job_id}-p1-r0000", "in1"), "wb") as fh:
            fh.write(b"half an input")

    fresh_server.start()
    watch = manta(fresh_server.url, "job", "watch", job_id)
    assert watch.returncode == 0, watch.stderr
    for root in roots:  # and the reducer's own scratch dir went when it finished (an idle
        # reused container keeps its own output dir there until it is closed)
        assert [n for n in os.listdir(os.path.join(root, "tasks")) if not n.startswith(".warm-out-")] == []
    assert f"job {job_id} done: 0 errors" in watch.stderr
    output = manta(fresh_server.url, "job", "outputs", job_id, "--cat")
    assert output.stdout == "".join(sorted(d.decode() for d in datas))
    job = job_json(fresh_server.url, job_id)
    maps = [t for t in job["tasks"] if t["type"] == "map"]
    assert len(maps) == len(datas) and all(t["state"] == "done" for t in maps)
    assert any(t["attempts"] >= 2 for t in maps)  # some were interrupted and ran again
    from manta.client import Client

    # the job's counts (its interrupted tasks requeued, and recounted at the start) agree
    status = Client(url=fresh_server.url, access_key=ROOT_AK, secret_key=ROOT_SK).api("GET", f"/_manta/jobs/{job_id}")
    assert status == {k: v for k, v in job.items() if k != "tasks"}


# -- 4. phases --------------------------------------------------------------------------------

def test_map_map_reduce(server: Server, s3: Any, bucket: str) -> None:
    datas = texts(6, seed=2)
    names = upload(s3, bucket, "t/", datas)
    phases = [("map", "tr a-z A-Z"), ("map", "grep -o '[A-Z][A-Z]*' | wc -l"),
              ("reduce", "awk '{s+=$1} END {print s}'")]
    expected = local_pipeline(datas, *phases)
    result = manta(server.url, "job", "create", "-o", "-m", phases[0][1], "-m", phases[1][1], "-r", phases[2][1],
                   *names)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == expected
    assert int(result.stdout) == sum(len(d.split()) for d in datas)  # only upper-case words were counted
    job = job_json(server.url, job_id_of(result.stderr))
    assert [(p["type"], p["done"]) for p in job["phases"]] == [("map", 6), ("map", 6), ("reduce", 1)]


def test_reduce_only_over_200_inputs(server: Server, s3: Any, bucket: str) -> None:
    datas = [b"".join(f"{i} {j}\n".encode() for j in range(i % 7 + 1)) for i in range(200)]
    upload(s3, bucket, "many/", datas)
    total = sum(d.count(b"\n") for d in datas)
    one = manta(server.url, "job", "create", "-o", "-r", "wc -l", f"{bucket}/many/")
    assert one.returncode == 0, one.stderr
    assert int(one.stdout) == total
    job = job_json(server.url, job_id_of(one.stderr))
    assert job["input_count"] == 200 and len(job["tasks"]) == 1

    three = manta(server.url, "job", "create", "-o", "--count", "3", "-r", "wc -l", f"{bucket}/many/")
    assert three.returncode == 0, three.stderr
    counts = [int(n) for n in three.stdout.split()]
    assert len(counts) == 3 and sum(counts) == total


# -- 5. isolation -----------------------------------------------------------------------------

def test_task_has_no_network_and_is_not_root(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="x", Body=b"x\n")
    marker = f"1.{random.randrange(10**6):06d}"
    probe = (f"if (exec 3<>/dev/tcp/127.0.0.1/{server.port}) 2>/dev/null; then echo tcp-open; else echo tcp-closed; fi; "
             f"if ! command -v curl >/dev/null; then echo curl-missing; "
             f"elif curl -sS -m 3 -o /dev/null http://127.0.0.1:{server.port}/ 2>/dev/null; then echo curl-ok; "
             f"else echo curl-failed; fi")
    # the probe works: from the host, the server answers both
    host = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=10)
    assert host.stdout.splitlines() == ["tcp-open", "curl-ok"], host
    script = f"id -u; {probe}; sleep {marker}"
    job = popen(server.url, "job", "create", "-o", "-m", script, f"{bucket}/x")
    try:
        host_uids = wait_for(lambda: sleepers(marker), 20, "the task to run")
        stdout, stderr = job.communicate(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 0, stderr
    uid, tcp, curl = stdout.splitlines()
    assert int(uid) != 0
    assert list(host_uids.values()) != [0] and all(u != 0 for u in host_uids.values())
    assert (tcp, curl) == ("tcp-closed", "curl-failed")


# -- the CLI itself -----------------------------------------------------------------------------

def test_every_job_command_has_a_description_and_an_example() -> None:
    def commands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next(a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction))

    top = commands(parser())
    jobs = commands(top["job"])
    assert set(jobs) == {"create", "addinputs", "end", "watch", "get", "outputs", "errors", "cancel", "list"}
    for name, sub in [("job", top["job"]), ("find", top["find"]), *jobs.items()]:
        text = sub.format_help()
        assert sub.description, name
        assert "example:\n  manta " in text, name


def test_create_checks_its_arguments(server: Server) -> None:
    none = manta(server.url, "job", "create", "x/y")
    assert none.returncode == 1 and "at least one phase" in none.stderr
    bad = manta(server.url, "job", "create", "-m", "cat", "no-key-here")
    assert bad.returncode == 1 and "is not bucket/key" in bad.stderr
    count = manta(server.url, "job", "create", "--count", "2", "-m", "cat", "x/y")
    assert count.returncode == 1 and "--count applies to reduce phases" in count.stderr
    limit = manta(server.url, "job", "create", "--memory", "1", "-m", "cat", "x/y")
    assert limit.returncode == 1 and "memory_mb must be between" in limit.stderr
    missing = manta(server.url, "job", "get", "0123456789abcdef")
    assert missing.returncode == 1 and missing.stderr.startswith("manta: NoSuchJob")
    assert "Traceback" not in none.stderr + bad.stderr + count.stderr + limit.stderr + missing.stderr


def test_open_job_takes_inputs_later(server: Server, s3: Any, bucket: str) -> None:
    datas = [b"one\n", b"two\n", b"three\n"]
    names = upload(s3, bucket, "later/", datas)
    created = manta(server.url, "job", "create", "--open", "-m", "cat", "-r", "sort")
    job_id = job_id_of(created.stdout)
    assert manta(server.url, "job", "addinputs", job_id, names[0]).returncode == 0
    piped = manta(server.url, "job", "addinputs", job_id, input="\n".join(names[1:]).encode() + b"\n")
    assert piped.returncode == 0, piped.stderr
    assert job_json(server.url, job_id)["input_count"] == 3
    assert manta(server.url, "job", "end", job_id).returncode == 0
    late = manta(server.url, "job", "addinputs", job_id, names[0])
    assert late.returncode == 1 and "takes no more inputs" in late.stderr
    watch = manta(server.url, "job", "watch", job_id)
    assert watch.returncode == 0, watch.stderr
    assert manta(server.url, "job", "outputs", job_id, "--cat").stdout == "one\nthree\ntwo\n"
    # a map-only job prints its outputs in input order
    ordered = manta(server.url, "job", "create", "-o", "-m", "cat", names[2], names[0], names[1], names[0])
    assert ordered.stdout == "three\none\ntwo\none\n", ordered.stderr
    human = manta(server.url, "job", "get", job_id).stdout
    assert "state:    done" in human and "3 (ended)" in human


def test_accounts_see_only_their_own_jobs_and_objects(server: Server, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"root only\n")
    mine = manta(server.url, "job", "create", "-o", "-m", "cat", f"{bucket}/secret.txt")
    assert mine.stdout == "root only\n"
    root_job = job_id_of(mine.stderr)
    output = manta(server.url, "job", "outputs", root_job).stdout.strip()

    added = manta(server.url, "admin", "user", "add", f"eve{os.getpid()}", "--json")
    eve = json.loads(added.stdout)

    def as_eve(*args: str) -> subprocess.CompletedProcess[str]:
        return manta(server.url, *args, access_key=eve["access_key"], secret_key=eve["secret_key"])

    assert root_job not in as_eve("job", "list").stdout
    for command in (["get", root_job], ["outputs", root_job], ["cancel", root_job], ["errors", root_job]):
        denied = as_eve("job", *command)
        assert denied.returncode == 1 and denied.stderr.startswith("manta: NoSuchJob"), command
    stolen = as_eve("job", "create", "-o", "-m", "cat", f"{bucket}/secret.txt")
    assert stolen.returncode == 1 and stolen.stdout == ""
    assert "AccessDenied" in stolen.stderr and "root only" not in stolen.stderr  # refused when given
    via_asset = as_eve("job", "create", "-o", "--asset", f"{bucket}/secret.txt", "-r", "cat /manta/assets/*")
    assert via_asset.returncode == 1 and "TaskInitError" in via_asset.stderr and "root only" not in via_asset.stdout
    listing = as_eve("find", JOBS_BUCKET)
    assert listing.returncode == 1 and "AccessDenied" in listing.stderr
    eve_s3 = server.client(eve["access_key"], eve["secret_key"])
    out_bucket, _, out_key = output.partition("/")
    with pytest.raises(Exception, match="AccessDenied"):
        eve_s3.get_object(Bucket=out_bucket, Key=out_key)  # type: ignore[attr-defined]


def test_job_status_can_wait_for_the_end(server: Server, s3: Any, bucket: str) -> None:
    """GET /_manta/jobs/ID?wait=S answers as soon as the job is over (not after S), or
    after S while it runs; a bad S is InvalidArgument."""
    from manta.client import Client
    from manta.client.errors import MantaError

    client = Client(url=server.url, access_key=ROOT_AK, secret_key=ROOT_SK)
    s3.put_object(Bucket=bucket, Key="w", Body=b"w\n")
    job = client.job(map="sleep 1.5; cat", inputs=[f"{bucket}/w"])
    started = time.monotonic()
    running = client.api("GET", f"/_manta/jobs/{job.id}?wait=0.2")
    assert running["state"] == "running"
    done = client.api("GET", f"/_manta/jobs/{job.id}?wait=25")
    assert done["state"] == "done" and done["phases"][0]["running"] == 0, done
    assert time.monotonic() - started < 20, "the wait did not end with the job"
    for bad in ("-1", "31", "soon"):
        with pytest.raises(MantaError, match="InvalidArgument"):
            client.api("GET", f"/_manta/jobs/{job.id}?wait={bad}")


def test_job_status_counts_agree_with_its_task_records(server: Server, s3: Any, bucket: str) -> None:
    """A status reads the job's task counts (one catalog read); they agree with the task
    records `?tasks=1` lists, through done, failed and chained tasks, on every worker."""
    from manta.client import Client

    client = Client(url=server.url, access_key=ROOT_AK, secret_key=ROOT_SK)
    for i in range(6):
        s3.put_object(Bucket=bucket, Key=f"c/{i}", Body=f"line {i}\n".encode() * (i + 1))
    job = client.job(map="grep -q 'line [024]' && wc -l || exit 3", reduce="cat",
                     inputs=[f"{bucket}/c/{i}" for i in range(6)])
    job.wait(progress=False)
    listed = client.api("GET", f"/_manta/jobs/{job.id}?tasks=1")
    tasks = listed.pop("tasks")
    assert len(tasks) == 7  # 6 map tasks (3 done, 3 failed) and the reducer over the 3 outputs
    for _ in range(4):  # with `--workers 2` (MANTA_TEST_WORKERS), each process answers some
        status = client.api("GET", f"/_manta/jobs/{job.id}")
        assert status == listed
    assert [(p["tasks"], p["done"], p["failed"]) for p in status["phases"]] == [(6, 3, 3), (1, 1, 0)]
    assert status["errors"] == 3
    assert status["bytes_local"] == sum(t["bytes_local"] for t in tasks) > 0


def test_the_job_listing_pages_filters_and_holds_only_the_accounts_jobs(server: Server) -> None:
    """`GET /_manta/jobs` pages over the account's own jobs, oldest first (`limit`,
    `marker`, `state`); the client and `manta job list` follow the pages."""
    from manta.client import MantaError
    from tests.e2e.test_s3_access import new_account

    _, _, ann = new_account(server)
    _, _, bob = new_account(server)
    spec = {"phases": [{"type": "map", "exec": "wc -l"}], "inputs": []}
    ids = [ann.api("POST", "/_manta/jobs", {**spec, "name": f"j{i}", "end": i % 2 == 0})["id"] for i in range(5)]
    for job_id in ids[::2]:  # no inputs and ended: done at once
        assert ann.api("GET", f"/_manta/jobs/{job_id}?wait=30")["state"] == "done"
    try:
        page = ann.api("GET", "/_manta/jobs?limit=2")
        assert [j["id"] for j in page["jobs"]] == ids[:2]
        assert page["truncated"] is True and page["next_marker"] == ids[1]
        assert set(page["jobs"][0]) == {"id", "name", "state", "created", "finished", "input_count"}
        page = ann.api("GET", f"/_manta/jobs?limit=2&marker={ids[1]}")
        assert [j["id"] for j in page["jobs"]] == ids[2:4] and page["truncated"] is True
        page = ann.api("GET", f"/_manta/jobs?limit=2&marker={page['next_marker']}")
        assert [j["id"] for j in page["jobs"]] == ids[4:]
        assert page["truncated"] is False and "next_marker" not in page

        assert [j["id"] for j in ann.jobs(page_size=2)] == ids
        assert [j["id"] for j in ann.jobs("running", page_size=1)] == ids[1::2]
        assert [(j["id"], j["state"]) for j in ann.jobs("done")] == [(i, "done") for i in ids[::2]]
        assert bob.jobs() == []

        for query in ("limit=0", "limit=1001", "limit=ten", "state=failed", f"marker={ids[0]}"):
            with pytest.raises(MantaError) as refused:
                bob.api("GET", f"/_manta/jobs?{query}")  # the last: a marker of another account's job
            assert refused.value.code == "InvalidArgument", query

        listed = manta(server.url, "job", "list", "--state", "running", "--json",
                       access_key=ann.access_key, secret_key=ann._secret_key)
        assert listed.returncode == 0, listed.stderr
        assert [j["id"] for j in json.loads(listed.stdout)] == ids[1::2]
        table = manta(server.url, "job", "list", access_key=ann.access_key, secret_key=ann._secret_key)
        assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ids
    finally:
        for job_id in ids[1::2]:
            ann.api("POST", f"/_manta/jobs/{job_id}/cancel")


def test_one_request_adds_at_most_ten_thousand_inputs(server: Server, s3: Any, bucket: str) -> None:
    """A job's inputs are catalog work in one transaction per request, so one request may
    give at most 10,000 (manta.Client sends batches of 1,000); more is InvalidArgument,
    on create and on add-inputs alike, and nothing of it is added."""
    from manta import Client
    from manta.client.errors import MantaError

    name = upload(s3, bucket, "many/", [b"x\n"])[0]
    client = Client(server.url, ROOT_AK, ROOT_SK)
    too_many = [name] * 10_001
    with pytest.raises(MantaError) as refused:
        client.api("POST", "/_manta/jobs", {"phases": [{"type": "map", "exec": "cat"}], "inputs": too_many})
    assert refused.value.code == "InvalidArgument" and "At most 10000 inputs" in str(refused.value)
    job = client.api("POST", "/_manta/jobs", {"phases": [{"type": "map", "exec": "cat"}]})
    with pytest.raises(MantaError) as refused:
        client.api("POST", f"/_manta/jobs/{job['id']}/inputs", {"inputs": too_many})
    assert "At most 10000 inputs" in str(refused.value)
    assert client.api("GET", f"/_manta/jobs/{job['id']}")["input_count"] == 0
    client.api("POST", f"/_manta/jobs/{job['id']}/inputs", {"inputs": [name], "end": True})
    assert client.api("GET", f"/_manta/jobs/{job['id']}")["input_count"] == 1
