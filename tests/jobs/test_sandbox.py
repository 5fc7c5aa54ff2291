"""The bubblewrap sandbox, for real: isolation, limits, the init/exec split, start cost.

Needs bubblewrap, user namespaces and root (to start tasks as the `manta-task` user and to
make cgroups): skipped otherwise, required in CI. Host files handed to a task live in a
0711 dir with 0644 files, as the storage layer keeps them; pytest's tmp_path cannot be used
for them because /tmp/pytest-of-root is 0700, which the task user cannot traverse.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from jobs.imagetree import NodeImages, pack
from jobs.sandbox import Sandbox, SandboxConfig, SandboxError, TaskLimits, TaskResult, TaskSpec
from tests.conftest import require
from tests.zfs_pools import PoolFactory

pytestmark = pytest.mark.sandbox

ENV = {"MANTA_JOB_ID": "job-1", "MANTA_PHASE": "0", "MANTA_INPUT_OBJECT": "bkt/logs/a.txt",
       "MANTA_INPUT_FILE": "/manta/input", "MANTA_REDUCER": "0", "MANTA_OUTPUT_BASE": "jobs/job-1/p0"}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap is not installed")
    require(os.geteuid() == 0, "the sandbox tests start tasks as another user and need root")
    sb = Sandbox()
    reason = sb.check()
    require(reason is None, f"the sandbox cannot run here: {reason}")
    return sb


@pytest.fixture
def data_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="manta-sandbox-test-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def image_tree() -> Iterator[str]:
    """A small image as a node holds it: a venv over the host's python3 (it only links to
    /usr/bin/python3) plus a script, packed and unpacked into a node-like 0711 directory."""
    base = tempfile.mkdtemp(prefix="manta-sandbox-image-")
    os.chmod(base, 0o711)
    try:
        src = os.path.join(base, "src")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", src], check=True)
        put(os.path.join(src, "bin"), "image-probe", b"#!/bin/sh\necho from the image\n", mode=0o755)
        pack(src, os.path.join(base, "image.tar"))
        yield NodeImages(os.path.join(base, "node")).path("a1b2", lambda: os.path.join(base, "image.tar"))
    finally:
        shutil.rmtree(base)


@pytest.fixture(params=[False, True], ids=["no-image", "image"])
def image(request: pytest.FixtureRequest) -> str | None:
    """None, or an image tree bound at /opt/manta/image: isolation must not change with one."""
    return request.getfixturevalue("image_tree") if request.param else None


def test_an_image_is_bound_read_only_first_on_path(sandbox: Sandbox, image_tree: str) -> None:
    result, out = run(sandbox, "image-probe; command -v python3; python3 -c 'import sys; print(sys.prefix)';"
                      " echo $PATH; touch /opt/manta/image/x 2>/dev/null || echo ro", image=image_tree)
    assert result.ok, result
    assert out == (b"from the image\n/opt/manta/image/bin/python3\n/opt/manta/image\n"
                   b"/opt/manta/image/bin:/usr/local/bin:/usr/bin:/bin:/opt/manta/tools\nro\n")
    result, out = run(sandbox, "command -v image-probe || echo none; ls /opt 2>&1 | head -1")
    assert out.startswith(b"none\n") and b"manta" not in out


def put(directory: str, name: str, data: bytes, mode: int = 0o644) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)
    return path


def run(sb: Sandbox, exec: str, cancel: threading.Event | None = None,
        **spec: object) -> tuple[TaskResult, bytes]:
    out: list[bytes] = []
    spec.setdefault("env", dict(ENV))
    result = sb.run(TaskSpec(exec=exec, **spec), out.append, cancel)  # type: ignore[arg-type]
    return result, b"".join(out)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if _is_service(child):
            continue  # a server or zfs-fuse that other test modules started, not a task
        found.append(child)
        todo += children.get(child, [])
    return found


def _is_service(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return False
    return (b"manta" in argv and b"serve" in argv) or os.path.basename(argv[0]) == b"zfs-fuse"


def our_cgroups() -> list[str]:
    prefix = f"{os.getpid()}-"
    found = []
    for parent in ("/sys/fs/cgroup/manta", "/sys/fs/cgroup/memory/manta", "/sys/fs/cgroup/pids/manta"):
        if os.path.isdir(parent):
            found += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]
    return found


def assert_machine_fine(sb: Sandbox) -> None:
    result, out = run(sb, "echo fine")
    assert result.ok and out == b"fine\n", result
    assert our_cgroups() == []
    assert descendants(os.getpid()) == []


def start_in_thread(sb: Sandbox, exec: str, cancel: threading.Event,
                    image: str | None = None) -> tuple[threading.Thread, list[TaskResult]]:
    """Run `exec` in a thread; return once it has printed "started"."""
    started, results = threading.Event(), []

    def on_stdout(chunk: bytes) -> None:
        if b"started" in chunk:
            started.set()

    def target() -> None:
        results.append(sb.run(TaskSpec(exec, dict(ENV), image=image), on_stdout, cancel))

    thread = threading.Thread(target=target)
    thread.start()
    if not started.wait(10):
        cancel.set()
        thread.join()
        pytest.fail(f"the task did not start: {results}")
    return thread, results


def test_stdout_exit_code_and_stderr_are_captured(sandbox: Sandbox) -> None:
    result, out = run(sandbox, "echo hello; echo oops >&2; exit 7")
    assert (result.exit_code, result.signal, result.killed, result.init_failed) == (7, None, None, False)
    assert out == b"hello\n" and result.stdout_bytes == 6 and result.stderr == b"oops\n"
    assert not result.ok

    chunks: list[bytes] = []
    result = sandbox.run(TaskSpec("head -c 3000000 /dev/zero", {}), chunks.append)
    assert result.ok and result.stdout_bytes == 3_000_000 == sum(map(len, chunks))
    assert len(chunks) > 1

    small = Sandbox(SandboxConfig(stderr_cap_bytes=1000))
    result, _ = run(small, "head -c 5000 /dev/zero | tr '\\0' x >&2")
    assert result.ok and len(result.stderr) == 1000
    assert result.stderr.startswith(b"xxxx") and result.stderr.endswith(b"... truncated\n")


def test_environment_is_exactly_the_task_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANTA_HOST_SECRET", "host-secret-value")
    result, out = run(sandbox, "env -0; echo; cat /proc/[0-9]*/environ 2>/dev/null | grep -c host-secret")
    env_part, _, count = out.rstrip(b"\n").rpartition(b"\n")
    env = dict(item.split("=", 1) for item in env_part.decode().split("\0") if item)
    bash_own = {"PWD", "SHLVL", "_"}
    assert set(env) - bash_own == {*ENV, "PATH", "HOME", "LANG"}
    assert {k: env[k] for k in ENV} == ENV
    assert env["HOME"] == "/tmp" and env["LANG"] == "C.UTF-8" and env["PWD"] == "/tmp"
    assert count.strip() == b"0" and b"host-secret" not in env_part


def test_input_file_and_stdin(sandbox: Sandbox, data_dir: str) -> None:
    blob = put(data_dir, "blob-a", b"the input object\n")
    second = put(data_dir, "blob-b", b"second\n", mode=0o600)  # stdin needs no task-user access
    result, out = run(sandbox, 'cat "$MANTA_INPUT_FILE"; echo ---; cat; echo x >> /manta/input || echo ro',
                      input_file=blob, stdin_paths=[blob, second])
    assert result.ok, result
    assert out == b"the input object\n---\nthe input object\nsecond\nro\n"

    big = put(data_dir, "big", os.urandom(3 << 20))
    result, out = run(sandbox, "wc -c", stdin_paths=[big, big, blob])
    assert result.ok and out.strip() == str((6 << 20) + 17).encode()
    result, _ = run(sandbox, "exit 0", stdin_paths=[big])  # never reads stdin: EPIPE is fine
    assert result.ok, result

    # an input that cannot be read is the node's failure, never a short stdin
    with pytest.raises(SandboxError, match="cannot start"):
        run(sandbox, "cat", stdin_paths=[os.path.join(data_dir, "missing")])
    with pytest.raises(SandboxError, match="input"):
        run(sandbox, "cat", stdin_paths=[blob, "/proc/self/mem"])  # EIO at offset 0
    assert_machine_fine(sandbox)


def test_assets_are_mounted_read_only(sandbox: Sandbox, data_dir: str) -> None:
    tool = put(data_dir, "asset-1", b"echo tool ran with $1\n")
    words = put(data_dir, "asset-2", b"alpha\nbeta\n")
    result, out = run(sandbox, "ls /manta/assets; bash /manta/assets/tool.sh x; sort -r /manta/assets/words;"
                      " echo >> /manta/assets/words || echo ro", assets=[(tool, "tool.sh"), (words, "words")])
    assert result.ok, result
    assert out == b"tool.sh\nwords\ntool ran with x\nbeta\nalpha\nro\n"
    with pytest.raises(ValueError):
        run(sandbox, "true", assets=[(tool, "../etc")])


def test_no_network_not_even_host_loopback(sandbox: Sandbox, image: str | None) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        result, out = run(sandbox, f"""
            (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo bash-connected
            python3 -c 'import socket; socket.create_connection(("127.0.0.1", {port}), timeout=2)' \
                2>/dev/null && echo python-connected
            getent hosts example.com >/dev/null && echo resolved
            tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '""", image=image)
        assert result.ok, result
        assert out == b"lo\n"
        with pytest.raises(OSError):
            listener.accept()


def test_other_host_files_are_invisible(sandbox: Sandbox, data_dir: str, image: str | None) -> None:
    private = tempfile.mkdtemp(prefix="manta-private-")  # 0700, like the catalog or a home dir
    try:
        secret = put(private, "secret", b"private\n")
        blob = put(data_dir, "blob-mine", b"mine\n")
        sibling = put(data_dir, "blob-sibling", b"someone else's object\n")
        result, out = run(sandbox, f"""
            for p in {secret} {sibling} {private} {data_dir}; do ls -d $p 2>/dev/null && echo SEEN $p; done
            cat /proc/1/root{sibling} 2>/dev/null && echo SEEN-VIA-PROC
            ls /manta; cat /manta/input""", input_file=blob, image=image)
        assert result.ok, result
        assert out == b"input\nmine\n"
    finally:
        shutil.rmtree(private)


def mountinfo(sb: Sandbox, **spec: object) -> dict[str, tuple[str, str]]:
    """A task's /proc/self/mountinfo: mount point -> (root within its filesystem, source)."""
    result, out = run(sb, "cat /proc/self/mountinfo", **spec)
    assert result.ok, result
    mounts = {}
    for line in out.decode().splitlines():
        mount, _, fs = line.partition(" - ")
        mounts[mount.split()[4]] = (mount.split()[3], fs.split()[1])
    return mounts


def test_mountinfo_shows_the_bound_files_paths_and_nothing_else_of_the_host(
        sandbox: Sandbox, data_dir: str) -> None:
    """Bubblewrap cannot hide it: a bind mount's root field is its source's path within the
    source's filesystem, also through --ro-bind-fd; only a copy (--ro-bind-data) hides it."""
    blob = put(data_dir, "blob-input", b"x\n")
    asset = put(data_dir, "asset-tool", b"y\n")
    mounts = mountinfo(sandbox, input_file=blob, assets=[(asset, "tool")])
    assert mounts["/manta/input"][0] == blob and mounts["/manta/assets/tool"][0] == asset
    del mounts["/manta/input"], mounts["/manta/assets/tool"]
    assert not [m for m, (root, source) in mounts.items() if data_dir in root + source + m]
    for point, (root, _) in mounts.items():  # the rest: system dirs, tmpfs, proc, /dev, bwrap's own
        assert (root in ("/", point, point.removeprefix("/dev")) or root.startswith("/newroot")
                or root.endswith("//deleted") or point == "/etc/localtime"), (point, root)


def test_mountinfo_on_a_node_of_its_own_filesystem_hides_its_host_path(
        sandbox: Sandbox, zfs_pools: PoolFactory) -> None:
    pool = zfs_pools.create()
    blobs = os.path.join(pool.mountpoint, "blobs", "ab")
    os.makedirs(blobs)
    for path in (pool.mountpoint, os.path.dirname(blobs), blobs):
        os.chmod(path, 0o711)
    blob = put(blobs, "blob-input", b"x\n")
    mounts = mountinfo(sandbox, input_file=blob)
    assert mounts["/manta/input"] == ("/blobs/ab/blob-input", pool.name)
    assert not [m for m, (root, source) in mounts.items() if pool.mountpoint in root + source + m]


def test_nothing_outside_tmp_is_writable(sandbox: Sandbox, data_dir: str, image: str | None) -> None:
    blob = put(data_dir, "blob", b"x\n")
    asset = put(data_dir, "asset", b"y\n")
    result, out = run(sandbox, """
        for d in / /usr /usr/bin /etc /dev /dev/shm /manta /manta/assets /proc /bin /var /opt /opt/manta \\
                 /opt/manta/image /opt/manta/image/bin /tmp; do
            (echo x > $d/probe) 2>/dev/null && echo writable $d
            mkdir $d/probe-dir 2>/dev/null && echo mkdir $d
        done
        for f in /manta/input /manta/assets/a /etc/passwd /usr/bin/ls; do
            (echo x >> $f) 2>/dev/null && echo writable $f
        done
        for f in /opt/manta/image/pyvenv.cfg /opt/manta/image/bin/image-probe; do
            [ -e $f ] && { (echo x >> $f) 2>/dev/null && echo writable $f; }
        done
        echo > /dev/null && echo devnull""", input_file=blob, assets=[(asset, "a")], image=image)
    assert result.ok, result
    assert out == b"writable /tmp\nmkdir /tmp\ndevnull\n"


def test_tasks_are_not_root_inside_or_on_the_host(sandbox: Sandbox, image: str | None) -> None:
    cancel = threading.Event()
    thread, results = start_in_thread(
        sandbox, "id -u; id -g; grep CapEff /proc/self/status; echo started; exec sleep 60", cancel, image)
    try:
        task_uid = pwd.getpwnam(SandboxConfig().user).pw_uid
        deadline = time.monotonic() + 5
        while True:  # until `exec sleep` has happened
            names, uids = [], []
            for pid in descendants(os.getpid()):
                with open(f"/proc/{pid}/status") as fh:
                    status = dict(line.split(":", 1) for line in fh if ":" in line)
                names.append(status["Name"].strip())
                uids.append(status["Uid"].split())
            if "sleep" in names or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert names.count("bwrap") >= 2 and "sleep" in names, names
        assert all(uid == [str(task_uid)] * 4 for uid in uids), list(zip(names, uids, strict=True))
        assert task_uid != 0
    finally:
        cancel.set()
        thread.join(5)
    assert results and results[0].killed == "cancelled"


def test_fork_bomb_is_stopped(sandbox: Sandbox) -> None:
    limits = TaskLimits(max_procs=64, timeout_s=30)
    result, _ = run(sandbox, ":(){ :|:& };:; sleep 30", limits=limits)
    assert result.killed == "processes", result
    assert result.duration_s < 10
    assert_machine_fine(sandbox)


def test_memory_hog_is_killed(sandbox: Sandbox, image: str | None) -> None:
    limits = TaskLimits(memory_mb=64, timeout_s=30)
    result, _ = run(sandbox, "python3 -c 'b = b\"x\" * (512 << 20)'; sleep 30", limits=limits, image=image)
    assert result.killed == "memory", result
    assert result.duration_s < 10
    result, _ = run(sandbox, "awk 'BEGIN { s = \"x\"; while (1) s = s s }'", limits=limits)
    assert result.killed == "memory", result
    assert_machine_fine(sandbox)


def test_endless_loop_times_out(sandbox: Sandbox) -> None:
    result, _ = run(sandbox, "while :; do :; done", limits=TaskLimits(timeout_s=1, cpu_s=60))
    assert result.killed == "timeout" and result.signal == 9, result
    assert 1 <= result.duration_s < 3
    assert_machine_fine(sandbox)


def test_cpu_and_disk_limits(sandbox: Sandbox, image: str | None) -> None:
    result, _ = run(sandbox, "while :; do :; done", limits=TaskLimits(cpu_s=1, timeout_s=20), image=image)
    assert result.killed == "cpu", result
    assert result.duration_s < 5
    result, _ = run(sandbox, "head -c 100M /dev/zero > /tmp/big",
                    limits=TaskLimits(disk_mb=16, timeout_s=20))
    assert result.killed == "disk", result
    result, _ = run(sandbox, "for i in 1 2 3; do head -c 10M /dev/zero > /tmp/f$i; done",
                    limits=TaskLimits(disk_mb=16, timeout_s=20))
    assert result.killed == "disk" and b"No space left" in result.stderr, result
    assert_machine_fine(sandbox)


def test_huge_output_is_cut_off(sandbox: Sandbox) -> None:
    result, out = run(sandbox, "yes | head -c 10G", limits=TaskLimits(max_output_bytes=1 << 20))
    assert result.killed == "output", result
    assert result.stdout_bytes == len(out) == 1 << 20
    result, out = run(sandbox, "cat /dev/zero", limits=TaskLimits(max_output_bytes=5 << 20))
    assert result.killed == "output" and len(out) == 5 << 20
    assert_machine_fine(sandbox)


def test_cancel_stops_a_running_container(sandbox: Sandbox) -> None:
    cancel = threading.Event()
    thread, results = start_in_thread(sandbox, "echo started; sleep 60 & sleep 60", cancel)
    cancel.set()
    thread.join(30)
    assert not thread.is_alive(), "the cancel did not end the run (its sleeps last 60 s)"
    assert results and results[0].killed == "cancelled" and not results[0].ok
    assert_machine_fine(sandbox)


def test_init_failure_is_not_a_user_failure(sandbox: Sandbox, data_dir: str) -> None:
    result, out = run(sandbox, "echo ran", init="echo preparing; exit 3")
    assert result.init_failed and result.killed is None and not result.ok and out == b""
    assert b"preparing" in result.stderr
    result, out = run(sandbox, "echo ran; exit 3", init="touch /tmp/ready")
    assert not result.init_failed and result.exit_code == 3 and out == b"ran\n"
    result, out = run(sandbox, "test -e /tmp/ready && echo same-container", init="touch /tmp/ready")
    assert result.ok and out == b"same-container\n"
    result, _ = run(sandbox, "echo ran", init="echo ok >&3; exit 1")  # cannot fake the status
    assert result.init_failed
    result, _ = run(sandbox, "echo ran", assets=[(os.path.join(data_dir, "missing"), "gone")])
    assert result.init_failed and b"missing" in result.stderr


def test_the_command_is_the_task_shells_own_last_line(sandbox: Sandbox) -> None:
    """The user's command is not eval'd but is the task bash's script itself: its last
    simple command replaces the bash (no fork for it), positional parameters are empty,
    and a syntax error reads as the command's failure (exit 2), never as init's."""
    result, out = run(sandbox, "sh -c 'echo $PPID'")
    assert result.ok and out == b"1\n", (result, out)  # the container's init, not a bash in between
    result, out = run(sandbox, 'echo "[$#][$1][$2]"\nprintf "%s\\n" two-lines', init="true")
    assert result.ok and out == b"[0][][]\ntwo-lines\n", (result, out)
    for init in (None, "touch /tmp/ready"):
        result, out = run(sandbox, "echo before; ( echo never", init=init)
        assert (result.exit_code, result.init_failed, out) == (2, False, b""), result
        assert b"syntax error" in result.stderr
    result, out = run(sandbox, "sleep 30 & kill -TERM $!; wait $!; echo $?; kill -KILL $$")
    assert out == b"143\n" and result.signal == 9, (result, out)


def test_rlimit_fallback_without_cgroups(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    # `ulimit -u` counts every process of the host user, so this test has a user of its own:
    # its fork bomb must not starve tasks that other tests or servers run as manta-task.
    caplog.set_level(logging.WARNING, logger="jobs")
    sb = Sandbox(SandboxConfig(user="manta-task-fallback-test", cgroup_root="/nonexistent"))
    require(sb.check() is None, "the sandbox cannot run here")
    assert "falling back to rlimits" in caplog.text
    result, _ = run(sb, "python3 -c 'b = b\"x\" * (512 << 20)'", limits=TaskLimits(memory_mb=128))
    assert result.killed == "memory", result
    # (`wait` can return 0 as soon as the bomb's first pipeline gives up on EAGAIN, so the
    # task outlives the bomb instead: only a limit can end it)
    result, _ = run(sb, ":(){ :|:& };:; sleep 10", limits=TaskLimits(max_procs=32, timeout_s=3))
    assert result.killed in ("processes", "timeout"), result
    assert_machine_fine(sb)


def test_start_overhead(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = [], []
    for _ in range(20):
        began = time.monotonic()
        result = sandbox.run(TaskSpec("true", {}), lambda _: None)
        outside.append(time.monotonic() - began)
        inside.append(result.duration_s)
        assert result.ok
    with capsys.disabled():
        print(f"\nsandbox `true`: median start-to-exit {statistics.median(inside) * 1000:.1f} ms, "
              f"whole run() incl. cgroups {statistics.median(outside) * 1000:.1f} ms (20 runs)")
