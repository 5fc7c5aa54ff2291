"""Reused containers (jobs/warm.py; the runners jobs/taskrunner.c and .py, each test with
both): tasks of one job phase share a container, and still none sees another's input,
files, processes, IPC objects or env; limits hold per task, and anything abnormal costs
only a fresh container.

`pool.started` counts containers started: unchanged across two tasks means the second ran
in the first's container.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest

from jobs import runnerbin
from jobs.runnerbin import runner_binary
from jobs.sandbox import Sandbox, TaskLimits, TaskResult, TaskSpec
from jobs.warm import RUNNER_PATH, WarmPool
from tests.conftest import require
from tests.jobs.test_sandbox import assert_machine_fine, put

pytestmark = pytest.mark.sandbox

PHASE = ("job-1", 0)
ENV = {"MANTA_JOB_ID": "job-1", "MANTA_PHASE": "0", "MANTA_INPUT_FILE": "/manta/input"}
PROCS = 'for p in /proc/[0-9]*; do [ "${p#/proc/}" = "$BASHPID" ] || tr "\\0" " " < $p/cmdline; echo; done'


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap is not installed")
    require(os.geteuid() == 0, "reused containers need root (tasks run as another user)")
    sb = Sandbox()
    reason = sb.check()
    require(reason is None, f"the sandbox cannot run here: {reason}")
    return sb


@pytest.fixture(params=["c", "python"])
def pool(sandbox: Sandbox, request: pytest.FixtureRequest) -> Iterator[WarmPool]:
    """A pool with each runner: every isolation test holds for both."""
    warm = WarmPool(sandbox, idle_s=60, runner=request.param)
    require(warm.usable(), "reused containers are not usable here (python3 in /usr, bash, root)")
    if request.param == "c":
        require(runner_binary() is not None, "the C task runner cannot be built here (no cc)")
    yield warm
    warm.close()
    assert_machine_fine(sandbox)


@pytest.fixture
def data_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="manta-warm-test-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


def run(pool: WarmPool, exec: str, phase: Hashable = PHASE, input: str | None = None,
        cancel: threading.Event | None = None, **spec: object) -> tuple[TaskResult, str]:
    out: list[bytes] = []
    spec.setdefault("env", dict(ENV))
    stdin = [input] if input else []
    task = TaskSpec(exec=exec, stdin_paths=stdin, input_file=input, **spec)  # type: ignore[arg-type]
    result = pool.run(phase, task, out.append, cancel)
    return result, b"".join(out).decode(errors="replace")


def test_tasks_of_a_phase_share_one_container_each_with_its_own_input(pool: WarmPool, data_dir: str) -> None:
    for i in range(3):
        path = put(data_dir, f"in{i}", f"input {i}\n".encode())
        result, out = run(pool, 'cat; cat "$MANTA_INPUT_FILE"; cat /manta/input; echo "$MANTA_JOB_ID"', input=path)
        assert result.ok, result
        assert out == f"input {i}\n" * 3 + "job-1\n"
    assert pool.started == 1


def test_a_task_cannot_reach_an_earlier_tasks_input(pool: WarmPool, data_dir: str) -> None:
    """Task 1 even keeps its input open in a process it leaves behind."""
    first = put(data_dir, "first", b"SECRET-ONE\n")
    result, _ = run(pool, '(exec 7<"$MANTA_INPUT_FILE"; exec sleep 100) & cat >/dev/null', input=first)
    assert result.ok, result
    second = put(data_dir, "second", b"two\n")
    look = f"""cat; cat "$MANTA_INPUT_FILE"
        for f in /proc/[0-9]*/fd/*; do readlink "$f"; [ -f "$f" ] && cat "$f" 2>/dev/null; done
        cat {first} 2>/dev/null || echo no-path; grep -rs SECRET-ONE /tmp /manta /dev/shm || echo no-grep"""
    result, out = run(pool, look, input=second)
    assert result.ok and pool.started == 1, result
    assert "SECRET-ONE" not in out and first not in out and "first" not in out, out
    assert out.startswith("two\ntwo\n") and "no-path" in out and "no-grep" in out, out


def test_files_left_in_tmp_and_home_are_gone(pool: WarmPool) -> None:
    _, mode = run(pool, "stat -c %a /tmp")
    left = """echo x > /tmp/a; echo y > "$HOME/.hidden"; mkdir -p /tmp/.d/e; echo z > /tmp/.d/e/f
              mkfifo /tmp/fifo; ln -s /etc/passwd /tmp/link; chmod 000 /tmp/.d/e /tmp/.d; chmod 500 /tmp"""
    assert run(pool, left)[0].ok
    result, out = run(pool, 'ls -A /tmp; ls -A "$HOME"; stat -c %a /tmp; pwd')
    assert result.ok and pool.started == 1, result
    assert out == mode + "/tmp\n", out  # nothing listed, /tmp's mode as before


MARK_DIRS = """python3 - <<'EOF'
import os
for d in ("/tmp", "/manta/out"):
    os.setxattr(d, "user.prev", open("/manta/input", "rb").read()[:40])
    os.chmod(d, 0o705)
    os.utime(d, (1e9, 1e9))
    print(d, sorted(os.listxattr(d)))
for d in ("/dev/pts", "/dev/pts/ptmx"):  # the task user's too (no user xattrs there)
    os.chmod(d, 0o700)
    os.utime(d, (1e9, 1e9))
EOF"""
SHOW_DIRS = """python3 - <<'EOF'
import json, os
print(json.dumps({d: [os.listxattr(d), oct(os.stat(d).st_mode & 0o7777), os.stat(d).st_mtime, os.stat(d).st_atime]
                  for d in ("/tmp", "/manta/out", "/dev/pts", "/dev/pts/ptmx")}))
EOF"""


def task_out_dirs(sandbox: Sandbox, data_dir: str, count: int) -> list[str]:
    """`count` tasks' own /manta/out directories, made as the agent makes them."""
    ids = sandbox.task_ids()
    dirs = []
    for i in range(count):
        path = os.path.join(data_dir, "tasks", f"t{i}", "out")
        os.makedirs(path, mode=0o700)
        os.chmod(os.path.dirname(path), 0o711)
        os.chmod(os.path.dirname(os.path.dirname(path)), 0o711)
        if ids is not None:
            os.chown(path, *ids)
        dirs.append(path)
    return dirs


def test_tmp_output_dir_and_pts_carry_no_xattr_mode_or_time_to_the_next_task(pool: WarmPool, sandbox: Sandbox,
                                                                             data_dir: str) -> None:
    """A task can set user xattrs, the mode and the times of /tmp and /manta/out, and the
    mode and times of /dev/pts and its ptmx (all the task user's, and they outlive it); the
    runner resets them: no xattr, the fresh mode, and atime and mtime the time of the reset
    (after the task ended)."""
    dirs = task_out_dirs(sandbox, data_dir, 3)
    result, fresh = run(pool, SHOW_DIRS, input=put(data_dir, "zero", b"0\n"), output_dir=dirs[0])
    assert result.ok, result
    before = time.time()
    result, out = run(pool, MARK_DIRS, input=put(data_dir, "first", b"SECRET-ONE\n"), output_dir=dirs[1])
    assert result.ok and out == "/tmp ['user.prev']\n/manta/out ['user.prev']\n", (result, out)
    result, out = run(pool, SHOW_DIRS, input=put(data_dir, "second", b"two\n"), output_dir=dirs[2])
    assert result.ok and pool.started == 1, result
    assert "SECRET" not in out, out
    seen, first = json.loads(out), json.loads(fresh)
    for d, (xattrs, mode, mtime, atime) in seen.items():
        assert xattrs == [] and mode == first[d][1], (d, seen, first)
        assert mtime >= before - 1 and atime >= before - 1, (d, seen, before)


@pytest.mark.parametrize("leave", [
    "(sleep 100 &)",
    "nohup sleep 100 >/dev/null 2>&1 &",
    "setsid sleep 100 &",
    "( (sleep 100 & ) & ); sleep 0.1",
    "trap '' TERM HUP; (trap '' TERM HUP INT; exec sleep 100) &",
])
def test_processes_left_behind_are_gone_before_the_next_task(pool: WarmPool, leave: str) -> None:
    assert run(pool, leave)[0].ok
    result, out = run(pool, PROCS)
    assert result.ok and pool.started == 1, result
    assert "sleep" not in out, out


def test_a_process_left_behind_cannot_write_into_the_next_tasks_output(pool: WarmPool) -> None:
    writer = "(while :; do for f in /proc/[0-9]*/fd/1; do echo LEAK > $f; done 2>/dev/null; sleep 0.01; done) &"
    assert run(pool, writer + " sleep 0.2")[0].ok
    result, out = run(pool, "sleep 0.5; echo clean")
    assert result.ok and pool.started == 1, result
    assert out == "clean\n"


def test_sysv_ipc_and_abstract_sockets_do_not_survive(pool: WarmPool) -> None:
    make = """python3 - <<'EOF'
import ctypes, os, socket, time
libc = ctypes.CDLL(None)
assert libc.shmget(0x4D41, 4096, 0o1666) >= 0 and libc.msgget(0x4D42, 0o1666) >= 0
assert libc.semget(0x4D43, 1, 0o1666) >= 0
if os.fork() == 0:
    s = socket.socket(socket.AF_UNIX); s.bind(b"\\0manta-leak"); s.listen(); time.sleep(100)
time.sleep(0.2)
EOF
cat /proc/sysvipc/shm /proc/sysvipc/msg /proc/sysvipc/sem | wc -l; grep -c manta-leak /proc/net/unix"""
    result, out = run(pool, make)
    assert result.ok and out == "6\n1\n", (result, out)
    check = """cat /proc/sysvipc/shm /proc/sysvipc/msg /proc/sysvipc/sem | wc -l; grep -c manta-leak /proc/net/unix
               python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(b"\\0manta-leak")' 2>&1 | tail -1"""
    result, out = run(pool, check)
    assert pool.started == 1, result
    assert out.startswith("3\n0\n") and "ConnectionRefusedError" in out, out


def test_posix_message_queues_are_refused(pool: WarmPool) -> None:
    """They live in the IPC namespace and cannot be listed without mounting mqueue, so no
    runner could clear them between tasks: the seccomp filter refuses mq_open."""
    probe = "python3 -c 'import ctypes; print(ctypes.CDLL(None, use_errno=True).mq_open(b\"/q\", 0o102, 0o600, None), ctypes.get_errno())'"
    result, out = run(pool, probe)
    assert result.ok and out == "-1 1\n", out


def test_env_of_one_task_is_not_in_the_next(pool: WarmPool) -> None:
    assert run(pool, "export LEAKED=1; echo $TASK_SECRET", env={**ENV, "TASK_SECRET": "s1"})[1] == "s1\n"
    result, out = run(pool, "env")
    assert result.ok and pool.started == 1, result
    assert "TASK_SECRET" not in out and "LEAKED" not in out and "MANTA_JOB_ID=job-1" in out, out


LIMITED = [
    ("timeout", "while :; do :; done", TaskLimits(timeout_s=1, cpu_s=60)),
    ("cpu", "while :; do :; done", TaskLimits(cpu_s=1, timeout_s=20)),
    ("memory", "python3 -c 'b = b\"x\" * (512 << 20)'; sleep 30", TaskLimits(memory_mb=64, timeout_s=30)),
    ("processes", ":(){ :|:& };:; sleep 30", TaskLimits(max_procs=64, timeout_s=30)),
    ("disk", "head -c 100M /dev/zero > /tmp/big", TaskLimits(disk_mb=16, timeout_s=20)),
    ("output", "yes", TaskLimits(max_output_bytes=1 << 20)),
]


@pytest.mark.parametrize(("limit", "exec", "limits"), LIMITED, ids=[x[0] for x in LIMITED])
def test_limits_hold_in_a_reused_container_and_cost_a_fresh_one(pool: WarmPool, limit: str, exec: str,
                                                                limits: TaskLimits) -> None:
    assert run(pool, "true", limits=limits)[0].ok
    result, _ = run(pool, exec, limits=limits)  # in the container `true` used
    assert result.killed == limit and pool.started == 1, result
    result, out = run(pool, "echo fine", limits=limits)
    assert result.ok and out == "fine\n" and pool.started == 2, result


def test_cancel_and_init_failure_cost_a_fresh_container(pool: WarmPool) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    result, _ = run(pool, "sleep 30", cancel=cancel)
    assert result.killed == "cancelled", result
    result, _ = run(pool, "echo never", init="false")
    assert result.init_failed and pool.started == 2, result
    result, out = run(pool, "echo fine", init="touch /tmp/init-ran")
    assert result.ok and out == "fine\n" and pool.started == 3, result


def test_the_tasks_last_command_replaces_its_shell(pool: WarmPool) -> None:
    """As in a fresh container: no bash waits between the runner (pid 1) and the command."""
    for _ in range(2):
        result, out = run(pool, "sh -c 'echo $PPID'")
        assert result.ok and out == "1\n", (result, out)
    result, out = run(pool, "echo before; ( echo never")
    assert (result.exit_code, result.init_failed, out) == (2, False, ""), result
    assert pool.started == 1


def test_a_task_cannot_kill_or_stop_the_runner(pool: WarmPool) -> None:
    result, out = run(pool, "kill -9 $PPID; kill -STOP $PPID; kill -SEGV 1; echo $PPID")
    assert result.ok and out == "1\n", (result, out)
    result, out = run(pool, "echo fine")
    assert result.ok and out == "fine\n" and pool.started == 1, result


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


def _ours(pid: int) -> bool:
    """Whether `pid` descends from this test process (not from another run on the machine)."""
    while pid > 1:
        pid = _parent(pid)
        if pid == os.getpid():
            return True
    return False


def runner_pids() -> list[int]:
    """This process's reused-container runners (never another test run's)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
                if (cmdline == RUNNER_PATH.encode() + b"\0" or b"The runner inside a reused container" in cmdline) \
                        and _ours(int(entry)):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_runner_gone_mid_task_costs_only_a_fresh_container(pool: WarmPool) -> None:
    assert run(pool, "true")[0].ok
    before = set(runner_pids())
    threading.Timer(0.3, lambda: [os.kill(pid, 9) for pid in before]).start()
    result, _ = run(pool, "sleep 5; echo never")
    assert not result.ok and result.signal == 9 and pool.started == 1, result
    result, out = run(pool, "echo fine")
    assert result.ok and out == "fine\n" and pool.started == 2, result


def runner_kinds() -> set[str]:
    """Which runners ("c", "python") this process's containers run."""
    kinds = set()
    for pid in runner_pids():
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            kinds.add("c" if fh.read() == RUNNER_PATH.encode() + b"\0" else "python")
    return kinds


@pytest.fixture
def runner_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache for the C runner; the binary is built (or not) afresh."""
    monkeypatch.setenv("MANTA_RUNNER_CACHE", str(tmp_path))
    runnerbin.forget()
    yield tmp_path
    runnerbin.forget()


def test_the_c_runner_is_built_once_and_then_read_from_the_cache(runner_cache: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    require(shutil.which("cc") is not None, "no C compiler")
    binary = runner_binary()
    assert binary is not None and binary.startswith(b"\x7fELF")
    cached = runner_cache / f"taskrunner-{runnerbin.cache_key()}"
    assert cached.read_bytes() == binary and cached.stat().st_mode & 0o777 == 0o500
    assert [p.name for p in runner_cache.iterdir()] == [cached.name]  # no build directory left

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(runnerbin.subprocess, "run", no_build)
    runnerbin.forget()
    assert runner_binary() == binary


def test_without_a_compiler_reused_containers_run_the_python_runner(sandbox: Sandbox, runner_cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runnerbin.shutil, "which", lambda name: None)
    warm = WarmPool(sandbox, idle_s=60, runner="c")
    try:
        for _ in range(2):
            result, out = run(warm, "echo fine")
            assert result.ok and out == "fine\n", result
        assert warm.started == 1 and runner_kinds() == {"python"}
    finally:
        warm.close()


def test_a_c_runner_that_never_starts_hands_over_to_the_python_one(sandbox: Sandbox, runner_cache: Path) -> None:
    from jobs.warm import C_START_TRIES

    (runner_cache / f"taskrunner-{runnerbin.cache_key()}").write_bytes(b"not a program")
    warm = WarmPool(sandbox, idle_s=60, runner="c")
    try:
        for _ in range(C_START_TRIES):  # each in a fresh container, as when any runner fails
            result, out = run(warm, "echo first")
            assert result.ok and out == "first\n" and warm.idle() == 0, result
        for _ in range(2):
            result, out = run(warm, "echo next")
            assert result.ok and out == "next\n", result
        assert runner_kinds() == {"python"} and warm.idle() == 1
    finally:
        warm.close()
    assert_machine_fine(sandbox)


def test_the_runner_pid_1_is_not_readable_or_writable_by_tasks(pool: WarmPool) -> None:
    read = "ls /proc/1/fd 2>&1 | head -1; head -c 1 /proc/1/mem 2>&1 | head -1; unshare -U true 2>&1; true"
    result, out = run(pool, read)
    assert result.ok and pool.started == 1, result
    assert out.count("Permission denied") == 2 and "Operation not permitted" in out, out  # and seccomp applies
    write = "python3 -c 'open(\"/proc/1/mem\", \"r+b\")' 2>&1 | tail -1"
    assert run(pool, write)[1] == "PermissionError: [Errno 13] Permission denied: '/proc/1/mem'\n"


def test_nothing_is_shared_between_jobs_phases_or_limits(pool: WarmPool) -> None:
    assert run(pool, "echo x > /tmp/keep")[0].ok
    for n, (phase, limits) in enumerate([(("job-2", 0), TaskLimits()), (("job-1", 1), TaskLimits()),
                                         (PHASE, TaskLimits(disk_mb=32))], start=2):
        result, out = run(pool, "ls /tmp", phase=phase, limits=limits)
        assert result.ok and out == "" and pool.started == n, (phase, limits)


def test_idle_containers_are_closed(sandbox: Sandbox) -> None:
    warm = WarmPool(sandbox, idle_s=0.2)
    try:
        assert run(warm, "true")[0].ok and warm.idle() == 1
        deadline = time.monotonic() + 10
        while warm.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert warm.idle() == 0
    finally:
        warm.close()
    assert_machine_fine(sandbox)


def test_a_full_pool_keeps_the_new_phases_container_not_a_finished_jobs(sandbox: Sandbox) -> None:
    """With max_idle kept (a node's slots), the container idle longest makes room: a job
    that follows another reuses its own containers from its second task on, rather than
    starting one per task until the first job's have aged out."""
    warm = WarmPool(sandbox, idle_s=60, max_idle=1)
    try:
        assert run(warm, "true", phase=("job-a", 0))[0].ok and warm.started == 1
        for _ in range(3):
            assert run(warm, "true", phase=("job-b", 0))[0].ok
        assert warm.started == 2 and warm.idle() == 1
        assert run(warm, "true", phase=("job-a", 0))[0].ok and warm.started == 3  # job-a's went
    finally:
        warm.close()
    assert_machine_fine(sandbox)


def test_an_input_the_task_user_cannot_reach_fails_as_in_a_fresh_container(pool: WarmPool, data_dir: str) -> None:
    """The input fd is opened as root; it must not reach what the task user could not bind."""
    hidden = os.path.join(data_dir, "hidden")
    os.mkdir(hidden, 0o700)
    path = put(hidden, "in", b"private\n")
    result, out = run(pool, 'cat "$MANTA_INPUT_FILE"', input=path)
    assert result.init_failed and result.stderr.startswith(b"bwrap: ") and out == "", result
    assert pool.started == 0


def test_a_tasks_tool_directory_is_made_only_when_it_left_something(pool: WarmPool, sandbox: Sandbox,
                                                                      data_dir: str) -> None:
    """A task that used no in-task tool costs no directory of its own; one that left files
    in /manta/out gets its directory made (by make_output_dir) and the files moved in."""
    ids = sandbox.task_ids()
    tasks = os.path.join(data_dir, "tasks")
    os.makedirs(tasks)
    os.chmod(tasks, 0o711)
    made: list[str] = []

    def maker(path: str):
        def make() -> None:
            made.append(path)
            os.makedirs(path, mode=0o700)
            if ids is not None:
                os.chown(path, *ids)
        return make

    dirs = [os.path.join(tasks, f"t{i}", "out") for i in range(3)]
    assert run(pool, "true", output_dir=dirs[0], make_output_dir=maker(dirs[0]))[0].ok
    result, _ = run(pool, "echo one | mpipe", output_dir=dirs[1], make_output_dir=maker(dirs[1]))
    assert result.ok and made == [dirs[1]] and pool.started == 1
    assert not os.path.exists(os.path.dirname(dirs[0])) and os.listdir(dirs[1])
    assert run(pool, "ls -A /manta/out | wc -l", output_dir=dirs[2], make_output_dir=maker(dirs[2]))[1] == "0\n"
    assert made == [dirs[1]] and pool.started == 1


def test_each_task_reads_only_its_own_tool_outputs(pool: WarmPool, sandbox: Sandbox, data_dir: str) -> None:
    """/manta/out (the in-task tools' directory) is the container's own, emptied into each
    task's directory after the task: the next task starts with it empty."""
    from jobs.tooloutputs import read_calls

    dirs = task_out_dirs(sandbox, data_dir, 2)
    result, out = run(pool, "ls -A /manta/out; echo one | mpipe; echo stray > /manta/out/stray.d",
                      output_dir=dirs[0])
    assert result.ok and out == "", (result, out)
    result, out = run(pool, "ls -A /manta/out; echo two | mpipe b/two", output_dir=dirs[1])
    assert result.ok and out == "" and pool.started == 1, (result, out)
    first, second = (read_calls(d, 1 << 20) for d in dirs)
    assert [(c.tool, c.name) for c in first] == [("mpipe", None)]
    assert [(c.tool, c.name) for c in second] == [("mpipe", "b/two")]
    assert "stray.d" in os.listdir(dirs[0]) and "stray.d" not in os.listdir(dirs[1])
    tasks = os.path.join(data_dir, "tasks")
    (mine,) = [n for n in os.listdir(tasks) if n.startswith(".warm-out-")]  # the container's own
    assert os.listdir(os.path.join(tasks, mine)) == []
    pool.close()
    assert sorted(os.listdir(tasks)) == ["t0", "t1"]  # removed with its container


def test_the_c_runner_is_given_up_only_after_it_fails_to_start_several_times_in_a_row(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C runner that does not start once (here: bytes that are no program) costs that
    task a fresh container and nothing more; a start counts the failures again from 0."""
    from jobs import warm

    require(runner_binary() is not None, "the C task runner cannot be built here (no cc)")
    good = runner_binary()
    answers = iter([b"not a program", good, b"not a program", b"not a program", b"not a program"])
    monkeypatch.setattr(warm, "runner_binary", lambda: next(answers, good))
    pool = WarmPool(sandbox, idle_s=60, runner="c")
    require(pool.usable(), "reused containers are not usable here (python3 in /usr, bash, root)")
    try:
        result, out = run(pool, "echo one", phase="p1")  # its container's runner fails: a fresh one
        assert result.ok and out == "one\n" and pool.started == 0 and pool._compiled
        result, out = run(pool, "echo two", phase="p2")  # the next one starts with C
        assert result.ok and out == "two\n" and pool.started == 1 and pool._c_failures == 0
        for i in range(warm.C_START_TRIES):
            assert pool._compiled
            result, out = run(pool, f"echo {i}", phase=f"q{i}")
            assert result.ok and out == f"{i}\n" and pool.started == 1
        assert not pool._compiled, "given up after the tries in a row"
        result, out = run(pool, "echo python", phase="p3")
        assert result.ok and out == "python\n" and pool.started == 2  # the Python runner's container
    finally:
        pool.close()
    assert_machine_fine(sandbox)


FILL_OUT = "for i in 1 2 3 4 5 6; do head -c 4M /dev/zero > /manta/out/f$i; done; sleep 30"


def test_a_task_filling_its_output_dir_past_its_disk_limit_is_stopped(pool: WarmPool, sandbox: Sandbox,
                                                                      data_dir: str) -> None:
    """/manta/out is on the node's disk, outside /tmp's tmpfs, and RLIMIT_FSIZE bounds each
    file only: a task writing six 4 MiB files with an 8 MiB disk limit is killed for "disk"
    while it runs (jobs/outwatch.py), in a reused container and in a fresh one alike, not
    30 s later when it ends."""
    dirs = task_out_dirs(sandbox, data_dir, 3)
    limits = TaskLimits(disk_mb=8, timeout_s=60)
    result, _ = run(pool, FILL_OUT, output_dir=dirs[0], limits=limits)
    assert result.killed == "disk" and result.duration_s < 10, result
    out: list[bytes] = []
    result = sandbox.run(TaskSpec(exec=FILL_OUT, env={"PATH": "/usr/bin:/bin"}, output_dir=dirs[1], limits=limits),
                         out.append)
    assert result.killed == "disk" and result.duration_s < 10, result
    result, _ = run(pool, "head -c 4M /dev/zero > /manta/out/f; sleep 1.2", output_dir=dirs[2], limits=limits)
    assert result.ok, result  # within the limit: measured, and let be
