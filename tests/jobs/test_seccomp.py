"""The seccomp filter of task containers, for real: every refused system call, called from a
task through ctypes, gets EPERM from the filter; what data tasks do still works.

Three proofs per refused call: under the filter it fails with EPERM and the task's
/proc/self/status says `Seccomp: 2`; under a filter built to refuse with another errno
(ENOTRECOVERABLE) it fails with that one, so the filter and not a missing capability refuses it;
and the calls an unprivileged task could make without a filter are shown to succeed there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

import jobs.sandbox
from jobs.sandbox import Sandbox, SandboxConfig, SandboxError, TaskResult, TaskSpec
from jobs.seccomp import CLONE_NEW_FLAGS, REFUSED, SeccompError, compile_filter
from tests.conftest import require

pytestmark = pytest.mark.sandbox

# name -> (x86_64, aarch64) system call numbers
NR = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "ptrace": (101, 117),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "unshare": (272, 97), "setns": (308, 268),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "acct": (163, 89), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "mq_open": (240, 180), "personality": (135, 92), "clone": (56, 220), "clone3": (435, 435),
    "getpid": (39, 172),
}
SIGCHLD = 17
# test id -> (system call, its arguments as the probe's Python): harmless ones, so that a
# call the kernel would allow without the filter does nothing lasting (reboot has no magic)
CALLS = {
    "keyctl": ("keyctl", "L(0), L(-4), L(1)"),  # KEYCTL_GET_KEYRING_ID of the user keyring
    "add_key": ("add_key", "b'user', b'manta-probe', b'x', L(1), L(-2)"),  # to the process keyring
    "request_key": ("request_key", "b'user', b'manta-probe-missing', None, L(0)"),
    "bpf": ("bpf", "L(0), None, L(0)"),
    "perf_event_open": ("perf_event_open", "perf_attr(), L(0), L(-1), L(-1), L(0)"),
    "userfaultfd": ("userfaultfd", "L(1)"),  # UFFD_USER_MODE_ONLY
    "io_uring_setup": ("io_uring_setup", "L(1), B(120)"),
    "io_uring_enter": ("io_uring_enter", "L(-1), L(0), L(0), L(0), None, L(0)"),
    "io_uring_register": ("io_uring_register", "L(-1), L(0), None, L(0)"),
    "ptrace": ("ptrace", "L(0), L(0), None, None"),  # PTRACE_TRACEME
    "mount": ("mount", "b'none', b'/tmp', b'tmpfs', L(0), None"),
    "umount2": ("umount2", "b'/tmp', L(0)"),
    "pivot_root": ("pivot_root", "b'/tmp', b'/tmp'"),
    "open_tree": ("open_tree", "L(-100), b'/tmp', L(0)"),
    "move_mount": ("move_mount", "L(-100), b'/tmp', L(-100), b'/tmp', L(0)"),
    "fsopen": ("fsopen", "b'tmpfs', L(0)"),
    "fsconfig": ("fsconfig", "L(-1), L(0), None, None, L(0)"),
    "fsmount": ("fsmount", "L(-1), L(0), L(0)"),
    "fspick": ("fspick", "L(-100), b'/tmp', L(0)"),
    "mount_setattr": ("mount_setattr", "L(-100), b'/tmp', L(0), None, L(0)"),
    "unshare": ("unshare", f"L({CLONE_NEW_FLAGS['CLONE_NEWUSER']})"),
    "setns": ("setns", "L(-1), L(0)"),
    "kexec_load": ("kexec_load", "L(0), L(0), None, L(0)"),
    "kexec_file_load": ("kexec_file_load", "L(-1), L(-1), L(0), None, L(0)"),
    "init_module": ("init_module", "None, L(0), b''"),
    "finit_module": ("finit_module", "L(-1), b'', L(0)"),
    "delete_module": ("delete_module", "b'manta_probe', L(0)"),
    "acct": ("acct", "None"),
    "swapon": ("swapon", "b'/tmp/swap', L(0)"),
    "swapoff": ("swapoff", "b'/tmp/swap'"),
    "reboot": ("reboot", "L(0), L(0), L(0), None"),
    "settimeofday": ("settimeofday", "None, None"),
    "clock_settime": ("clock_settime", "L(0), None"),
    "mq_open": ("mq_open", "b'manta-probe', L(0o102), L(0o600), None"),  # O_CREAT | O_RDWR
    "personality-ADDR_NO_RANDOMIZE": ("personality", "L(0x0040000)"),
    "personality-all-but-query": ("personality", "L(0xfffffffe)"),  # sets ADDR_NO_RANDOMIZE too
    **{f"clone-{name}": ("clone", f"L({flag | SIGCHLD}), None, None, None, None")
       for name, flag in CLONE_NEW_FLAGS.items()},
}
# what an unprivileged task could do without the filter: each succeeds there (rc >= 0)
ALLOWED_WITHOUT_FILTER = ["keyctl", "add_key", "perf_event_open", "userfaultfd", "io_uring_setup",
                          "ptrace", "open_tree", "personality-ADDR_NO_RANDOMIZE", "mq_open"]

# prints "<return value> <errno>" for the system call NR(ARGS) given as argv[1] and argv[2]
PROBE = """
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L, B = ctypes.c_long, ctypes.create_string_buffer
def perf_attr():  # PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK; disabled, exclude_kernel, exclude_hv
    attr = B(64)
    struct.pack_into("IIQ", attr, 0, 1, 64, 0)
    struct.pack_into("Q", attr, 40, 0x61)
    return attr
rc = libc.syscall(L(int(sys.argv[1])), *eval("[" + sys.argv[2] + "]"))
print(rc, ctypes.get_errno() if rc == -1 else 0, flush=True)
"""


def nr(name: str) -> int:
    machine = platform.machine()
    require(machine in ("x86_64", "aarch64"), f"no system call numbers for {machine} in this test")
    return NR[name][machine == "aarch64"]


def require_sandbox(sb: Sandbox) -> Sandbox:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap is not installed")
    require(os.geteuid() == 0, "the sandbox tests start tasks as another user and need root")
    reason = sb.check()
    require(reason is None, f"the sandbox cannot run here: {reason}")
    return sb


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return require_sandbox(Sandbox())


@pytest.fixture(scope="module")
def unfiltered() -> Sandbox:
    return require_sandbox(Sandbox(SandboxConfig(seccomp=False)))


@pytest.fixture(scope="module")
def other_errno() -> Iterator[Sandbox]:
    """A sandbox whose filter refuses with ENOTRECOVERABLE, an errno no refused call has of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs.sandbox, "compile_filter", functools.partial(compile_filter, errno.ENOTRECOVERABLE))
        yield require_sandbox(Sandbox())  # check() built the filter, which the Sandbox keeps


def run(sb: Sandbox, exec: str, **spec: object) -> tuple[TaskResult, str]:
    out: list[bytes] = []
    spec.setdefault("env", {})
    result = sb.run(TaskSpec(exec=exec, **spec), out.append)  # type: ignore[arg-type]
    return result, b"".join(out).decode()


def call(sb: Sandbox, name: str, args: str) -> tuple[str, str]:
    """(the probe's "<rc> <errno>", the task's Seccomp: field) for the system call name(args)."""
    result, out = run(sb, f'python3 -c "$PROBE" {nr(name)} "$ARGS"; grep "^Seccomp:" /proc/self/status',
                      env={"PROBE": PROBE, "ARGS": args})
    assert result.ok, result
    probe, seccomp = out.splitlines()
    return probe, seccomp.split()[1]


def test_no_filter_no_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(refusal: int = errno.EPERM) -> bytes:
        raise SeccompError("libseccomp is not installed (Debian: libseccomp2)")

    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap is not installed")
    monkeypatch.setattr(jobs.sandbox, "compile_filter", missing)
    reason = Sandbox().check()
    assert reason is not None and "seccomp filter" in reason and "libseccomp2" in reason, reason
    with pytest.raises(SandboxError, match="seccomp"):
        Sandbox().run(TaskSpec("true", {}), lambda _: None)


def test_every_refused_call_has_its_test() -> None:
    assert set(REFUSED) | {"personality", "clone"} == {name for name, _ in CALLS.values()}


@pytest.mark.parametrize("call_id", CALLS)
def test_refused_call_gets_eperm(sandbox: Sandbox, call_id: str) -> None:
    assert call(sandbox, *CALLS[call_id]) == (f"-1 {errno.EPERM}", "2")


@pytest.mark.parametrize("call_id", CALLS)
def test_the_filter_is_what_refuses(other_errno: Sandbox, call_id: str) -> None:
    assert call(other_errno, *CALLS[call_id]) == (f"-1 {errno.ENOTRECOVERABLE}", "2")


@pytest.mark.parametrize("call_id", ALLOWED_WITHOUT_FILTER)
def test_without_the_filter_the_call_succeeds(unfiltered: Sandbox, call_id: str) -> None:
    probe, seccomp = call(unfiltered, *CALLS[call_id])
    assert int(probe.split()[0]) >= 0, probe
    assert seccomp == "0"


def test_clone3_is_enosys_so_glibc_falls_back_to_clone(sandbox: Sandbox) -> None:
    assert call(sandbox, "clone3", "None, L(0)") == (f"-1 {errno.ENOSYS}", "2")
    result, out = run(sandbox, "python3 -c 'import os, threading; t = threading.Thread(target=print,"
                      " args=(1,), kwargs={\"flush\": True}); t.start(); t.join();"
                      " os.waitpid(os.posix_spawn(\"/bin/echo\", [\"echo\", \"2\"], {}), 0)'")
    assert result.ok and out == "1\n2\n", result


def test_personality_queries_and_per_linux_still_work(sandbox: Sandbox) -> None:
    assert call(sandbox, "personality", "L(0xffffffff)") == ("0 0", "2")
    assert call(sandbox, "personality", "L(0)") == ("0 0", "2")  # PER_LINUX
    result, out = run(sandbox, "setarch -R true 2>/dev/null || echo refused")
    assert result.ok and out == "refused\n", result


def test_other_system_call_tables_kill_the_task(sandbox: Sandbox) -> None:
    """x86_64's x32 table (numbers | 0x40000000) would be a second way in: SIGSYS instead."""
    if platform.machine() != "x86_64":
        pytest.skip("x32 is an x86_64 ABI")
    x32_getpid = 0x40000000 | NR["getpid"][0]
    result, out = run(sandbox, f'python3 -c "$PROBE" {x32_getpid} ""; echo "status $?"', env={"PROBE": PROBE})
    assert result.ok and out == "status 159\n", (result, out)  # 128 + SIGSYS
    probe, seccomp = call(sandbox, "getpid", "")  # the native table
    assert int(probe.split()[0]) > 1 and seccomp == "2", probe


def test_shell_pipelines_work_under_the_filter(sandbox: Sandbox) -> None:
    result, out = run(sandbox, """
        seq 1 2000 | awk '{ print $1 % 7, $1 }' | sort -k1,1n -k2,2nr | grep -c '^3 '
        (printf 'b\\na\\n'; (echo c | tr c C)) | sort | xargs -n 2 echo
        seq 1 100 | xargs -P 4 -n 10 sh -c 'echo $(( $# ))' sh | paste -sd+ | bc
        { sleep 0.01 & wait; } && echo waited""")
    assert result.ok, result
    assert out == "286\nC a\nb\n100\nwaited\n", out


def test_python_threads_and_processes_work_under_the_filter(sandbox: Sandbox) -> None:
    result, out = run(sandbox, """python3 -c '
import concurrent.futures as cf, hashlib, os, subprocess
def work(n):
    return hashlib.sha256(str(n).encode() * 10000).hexdigest()[:4]
with cf.ThreadPoolExecutor(8) as pool:
    threads = list(pool.map(work, range(64)))
read, write = os.pipe()
if os.fork() == 0:
    os.write(write, " ".join(map(work, range(64))).encode())
    os._exit(0)
os.close(write)
forked = os.read(read, 1 << 16).decode().split()
os.wait()
spawned = subprocess.run(["python3", "-c", "print(6 * 7)"], capture_output=True, text=True).stdout
print(threads == forked, len(set(threads)), spawned.strip())
'""")
    assert result.ok, result
    assert out == "True 64 42\n", out


def test_pandas_and_duckdb_work_under_the_filter(sandbox: Sandbox) -> None:
    """The host's python3 with this venv's pandas and duckdb (same CPython minor version),
    bound into the task as assets, as a user's job would bring its own."""
    specs = [importlib.util.find_spec(name) for name in ("pandas", "duckdb")]
    require(all(specs), "pandas and duckdb are not installed (pip install -e '.[test]')")
    sites = sorted({os.path.dirname(os.path.dirname(spec.origin)) for spec in specs if spec and spec.origin})
    with reachable(sites) as bound:
        _pandas_and_duckdb(sandbox, bound)


@contextlib.contextmanager
def reachable(paths: list[str]) -> Iterator[list[str]]:
    """`paths` bound read-only under a directory the task user can traverse (the venv may
    sit under a 0700 directory such as /root, which bwrap, run as that user, cannot reach)."""
    require(os.geteuid() == 0, "binding the venv's site-packages for the task needs root")
    base = tempfile.mkdtemp(prefix="manta-sites-")
    os.chmod(base, 0o711)
    bound: list[str] = []
    try:
        for i, path in enumerate(paths):
            alias = os.path.join(base, f"site{i}")
            os.mkdir(alias)
            subprocess.run(["mount", "--bind", path, alias], check=True)
            bound.append(alias)
            subprocess.run(["mount", "-o", "remount,bind,ro", alias], check=True)
        yield bound
    finally:
        for alias in bound:
            subprocess.run(["umount", alias], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _pandas_and_duckdb(sandbox: Sandbox, sites: list[str]) -> None:
    assets = [(site, f"site{i}") for i, site in enumerate(sites)]
    pythonpath = ":".join(f"/manta/assets/{name}" for _, name in assets)
    result, out = run(sandbox, """python3 -c '
import duckdb, pandas as pd
df = pd.DataFrame({"k": [i % 5 for i in range(10000)], "v": range(10000)})
by_pandas = df.groupby("k").v.sum().tolist()
con = duckdb.connect()
con.execute("SET threads TO 4")
by_duckdb = [v for _, v in con.execute("SELECT k, sum(v) FROM df GROUP BY k ORDER BY k").fetchall()]
print(by_pandas == by_duckdb, sum(by_duckdb))
'""", assets=assets, env={"PYTHONPATH": pythonpath})
    assert result.ok, result
    assert out == "True 49995000\n", out
