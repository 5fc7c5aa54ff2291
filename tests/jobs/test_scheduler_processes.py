"""The job scheduler across processes: one catalog, a leader whose scheduler is started and
followers whose schedulers never are (tests/jobs/scheduler_proc.py is one such process;
LMDB allows one env per process, so each is a real process). Followers create jobs, add
inputs and cancel; the leader runs them in real bubblewrap containers; a leader killed
mid-job is taken over by a new one."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.errors import JOB_CANCELLED_ERROR
from tests.conftest import require, traversable_dir

pytestmark = pytest.mark.sandbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPLY_TIMEOUT_S = 60.0


class ProcError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class Proc:
    """A scheduler process over `data_dir`, driven by JSON lines."""

    def __init__(self, data_dir: str, log_path: str, catalog: str | None) -> None:
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "tests.jobs.scheduler_proc", data_dir,
                                           *([catalog] if catalog else [])],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          cwd=REPO, text=True)
        assert self.reply() == "ready"

    def send(self, op: str, **fields: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.popen.stdin.flush()

    def reply(self) -> Any:
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], REPLY_TIMEOUT_S)
        assert ready, "the scheduler process did not answer"
        line = self.popen.stdout.readline()
        assert line, f"the scheduler process ended (exit {self.popen.wait()})"
        answer = json.loads(line)
        if "error" in answer:
            raise ProcError(answer["error"], answer["message"])
        return answer["ok"]

    def call(self, op: str, **fields: Any) -> Any:
        self.send(op, **fields)
        return self.reply()

    def close(self) -> None:
        if self.popen.poll() is None:
            assert self.popen.stdin is not None
            self.popen.stdin.close()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None and not stream.closed:
                stream.close()


class Cluster:
    def __init__(self, base: str, catalog: str | None = None) -> None:
        self.base = base
        self.catalog = catalog
        self.data_dir = os.path.join(base, "data")
        self.procs: list[Proc] = []

    def proc(self) -> Proc:
        self.procs.append(Proc(self.data_dir, os.path.join(self.base, f"proc{len(self.procs)}.log"),
                               self.catalog))
        return self.procs[-1]

    def close(self) -> None:
        for proc in self.procs:
            proc.close()

    def logs(self) -> str:
        out = []
        for i in range(len(self.procs)):
            with open(os.path.join(self.base, f"proc{i}.log"), errors="replace") as f:
                out.append(f"--- proc{i}\n{f.read()[-4000:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def sandbox_ok() -> None:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    from jobs.sandbox import Sandbox
    reason = Sandbox().check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")


@pytest.fixture(params=["lmdb", "postgresql"])
def cluster(sandbox_ok: None, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Processes over one data dir, their catalog in its LMDB or in one PostgreSQL database."""
    base = traversable_dir("manta-jobsync-")
    made = Cluster(base, request.getfixturevalue("pg_url") if request.param == "postgresql" else None)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(base, ignore_errors=True)


def wait_until(check: Any, timeout_s: float = 60.0, interval_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval_s)
    raise AssertionError(f"not within {timeout_s} s")


def spec(exec_: str, inputs: list[str], *more: dict[str, Any]) -> dict[str, Any]:
    return {"phases": [{"type": "map", "exec": exec_}, *more], "inputs": inputs}


def test_a_job_a_follower_creates_and_ends_is_run_by_the_leader(cluster: Cluster) -> None:
    """Create, then add inputs and end, all from a follower: the leader (tick 1 s) makes the
    job's first task within about FOLLOW_S and runs every input."""
    leader, follower = cluster.proc(), cluster.proc()
    follower.call("put", bucket="in", key="a", data="one\n")
    follower.call("put", bucket="in", key="b", data="three\n")
    leader.call("start")
    job = follower.call("create", owner="root", spec=spec("wc -c", ["in/a"]))
    created = time.monotonic()
    wait_until(lambda: follower.call("tasks", id=job["id"]), timeout_s=10, interval_s=0.01)
    picked_up_s = time.monotonic() - created
    follower.call("add_inputs", id=job["id"], owner="root", inputs=["in/b"], end=True)
    wait_until(lambda: follower.call("settled", id=job["id"]))
    record = follower.call("job", id=job["id"], owner="root")
    tasks = follower.call("tasks", id=job["id"])
    assert record["state"] == "done", cluster.logs()
    assert sorted(t["input"] for t in tasks) == ["in/a", "in/b"] and {t["state"] for t in tasks} == {"done"}
    assert sorted(follower.call("get", name=t["outputs"][0]).strip() for t in tasks) == ["4", "6"]
    assert leader.call("settled", id=job["id"]) is True
    print(f"leader picked up a follower's job in {picked_up_s:.3f} s")
    assert picked_up_s < 1.0  # the acceptance line: within about 0.2 s (FOLLOW_S 0.1 + a tick)


def test_a_follower_nudges_the_leader_which_does_not_wait_for_its_poll(cluster: Cluster) -> None:
    """The leader looks at the catalog only every 30 s here (its tick and FOLLOW_S): a job a
    follower creates, ends and then cancels is still picked up, run and cancelled at once,
    because each of those writes nudges it (jobs/follow.py, Nudge)."""
    leader, follower = cluster.proc(), cluster.proc()
    for key in ("a", "b"):
        follower.call("put", bucket="in", key=key, data=f"{key}\n")
    assert leader.call("start", poll_s=30.0) is True, cluster.logs()
    job = follower.call("create", owner="root", spec=spec("wc -c", ["in/a"]))
    follower.call("add_inputs", id=job["id"], owner="root", inputs=["in/b"], end=True)
    wait_until(lambda: follower.call("settled", id=job["id"]), timeout_s=20)
    tasks = follower.call("tasks", id=job["id"])
    assert follower.call("job", id=job["id"], owner="root")["state"] == "done", cluster.logs()
    assert sorted(follower.call("get", name=t["outputs"][0]).strip() for t in tasks) == ["2", "2"]
    sleeping = follower.call("create", owner="root", spec=spec("sleep 60", ["in/a"]))
    wait_until(lambda: any(t["state"] == "running" for t in leader.call("tasks", id=sleeping["id"])), timeout_s=20)
    follower.call("cancel", id=sleeping["id"], owner="root")
    wait_until(lambda: leader.call("settled", id=sleeping["id"]), timeout_s=20)  # its container stopped
    assert [t["state"] for t in leader.call("tasks", id=sleeping["id"])] == ["cancelled"], cluster.logs()


def sleeping_job(leader: Proc, follower: Proc, count: int) -> dict[str, Any]:
    """A job of `count` `sleep 30` tasks, made and ended by `follower`, run by `leader`."""
    inputs = []
    for i in range(count):
        follower.call("put", bucket="in", key=f"k{i}", data=f"{i}\n")
        inputs.append(f"in/k{i}")
    leader.call("start")
    job: dict[str, Any] = follower.call("create", owner="root", spec=spec("sleep 30", inputs))
    follower.call("add_inputs", id=job["id"], owner="root", inputs=[], end=True)
    return job


def test_a_cancel_from_a_follower_stops_the_leaders_running_tasks(cluster: Cluster) -> None:
    """Ten `sleep 30` tasks: some run in containers, the rest wait; a follower's cancel ends
    every one of them as cancelled within seconds."""
    leader, follower = cluster.proc(), cluster.proc()
    job = sleeping_job(leader, follower, 10)
    wait_until(lambda: any(t["state"] == "running" for t in follower.call("tasks", id=job["id"])))
    time.sleep(1.0)  # the containers are up
    asked = time.monotonic()
    assert follower.call("cancel", id=job["id"], owner="root")["state"] == "cancelled"
    wait_until(lambda: follower.call("settled", id=job["id"]), timeout_s=30)
    stopped_s = time.monotonic() - asked
    tasks = follower.call("tasks", id=job["id"])
    assert len(tasks) == 10 and {t["state"] for t in tasks} == {"cancelled"}, cluster.logs()
    assert {t["error"]["code"] for t in tasks} == {JOB_CANCELLED_ERROR}
    assert any(t["started"] for t in tasks)  # some were running when cancelled
    assert leader.call("settled", id=job["id"]) is True
    print(f"a follower's cancel stopped the leader's tasks in {stopped_s:.3f} s")
    assert stopped_s < 10.0  # the acceptance line: it ends quickly (not after sleep 30)


def test_a_follower_cancel_stops_tasks_before_their_running_records(cluster: Cluster) -> None:
    """The leader writes a task's running record only after RUNNING_RECORD_S: a follower's
    cancel sooner finds its tasks queued in the catalog and cancels them there, and the
    leader still stops the ones it started (it follows the cancel within FOLLOW_S)."""
    leader, follower = cluster.proc(), cluster.proc()
    job = sleeping_job(leader, follower, 4)
    wait_until(lambda: any(t["state"] == "running" for t in leader.call("tasks", id=job["id"])))
    before = {t["state"] for t in follower.call("tasks", id=job["id"])}  # the catalog's view
    asked = time.monotonic()
    assert follower.call("cancel", id=job["id"], owner="root")["state"] == "cancelled"
    wait_until(lambda: leader.call("settled", id=job["id"]) and follower.call("settled", id=job["id"]),
               timeout_s=30)
    stopped_s = time.monotonic() - asked
    tasks = follower.call("tasks", id=job["id"])
    assert {t["state"] for t in tasks} == {"cancelled"}, cluster.logs()
    assert any(t["started"] for t in leader.call("tasks", id=job["id"]))  # some had started
    print(f"cancelled with the catalog's tasks {sorted(before)}; stopped in {stopped_s:.3f} s")
    assert stopped_s < 10.0  # not after sleep 30


def test_the_running_jobs_quota_holds_across_processes(cluster: Cluster) -> None:
    """An account allowed one running job: two processes creating at the same moment, round
    after round, never both succeed; the leader's create counts the followers' jobs too."""
    leader, one, two = cluster.proc(), cluster.proc(), cluster.proc()
    one.call("account", name="dora", quota={"jobs": 1})
    leader.call("start")
    for _ in range(5):
        one.send("create", owner="dora", spec=spec("true", []))
        two.send("create", owner="dora", spec=spec("true", []))
        made, refused = [], []
        for proc in (one, two):
            try:
                made.append(proc.reply())
            except ProcError as exc:
                refused.append(exc.name)
        assert len(made) == 1 and refused == ["QuotaExceeded"], (made, refused)
        with pytest.raises(ProcError, match="QuotaExceeded"):
            leader.call("create", owner="dora", spec=spec("true", []))
        two.call("cancel", id=made[0]["id"], owner="dora")  # room for the next round
    assert one.call("create", owner="dora", spec=spec("true", []))["state"] == "running"


def test_a_new_leader_finishes_a_job_whose_leader_was_killed(cluster: Cluster) -> None:
    """SIGKILL the leader while its map tasks sleep in their containers; a new process's
    started scheduler runs them again and the job ends with the right reduce output, each
    output counted once."""
    first, follower = cluster.proc(), cluster.proc()
    datas = {f"in/k{i}": "x" * (i + 1) * 10 for i in range(4)}
    for name, data in datas.items():
        follower.call("put", bucket="in", key=name.split("/")[1], data=data)
    first.call("start")
    reduce = {"type": "reduce", "exec": "awk '{s += $1} END {print s}'"}
    job = follower.call("create", owner="root", spec=spec("sleep 3; wc -c", list(datas), reduce))
    follower.call("add_inputs", id=job["id"], owner="root", inputs=[], end=True)
    wait_until(lambda: any(t["state"] == "running" for t in follower.call("tasks", id=job["id"])))
    time.sleep(1.0)  # inside their containers
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait()
    interrupted = {t["id"] for t in follower.call("tasks", id=job["id"]) if t["state"] == "running"}
    assert interrupted and follower.call("settled", id=job["id"]) is False
    second = cluster.proc()
    second.call("start")
    wait_until(lambda: follower.call("settled", id=job["id"]))
    record = follower.call("job", id=job["id"], owner="root")
    tasks = {t["id"]: t for t in follower.call("tasks", id=job["id"])}
    assert record["state"] == "done", cluster.logs()
    assert {t["state"] for t in tasks.values()} == {"done"} and len(tasks) == len(datas) + 1
    for task_id in interrupted:
        outcomes = [a["outcome"] for a in tasks[task_id]["attempts_log"]]
        assert outcomes[0].startswith("interrupted") and outcomes[-1] == "done", outcomes
    (reducer,) = [t for t in tasks.values() if t["type"] == "reduce"]
    assert follower.call("get", name=reducer["outputs"][0]).strip() == str(sum(map(len, datas.values())))
    assert record["output_count"] == len(datas) + 1  # the killed attempts' outputs were never counted
