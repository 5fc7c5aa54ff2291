"""`manta login` as a user runs it: the CLI in a real PTY (pexpect) against a real server,
a shell in a real bubblewrap sandbox next to the object; and once with the object on a
`manta node` host, the session relayed to it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pexpect
import pytest

from tests.conftest import (
    NO_USER_CONFIG,
    REPO,
    ROOT_AK,
    ROOT_SK,
    Server,
    require_root_sandbox,
    running_server,
    traversable_dir,
)
from tests.e2e.test_cli_objects import manta
from tests.storage.test_node_contract import NodeProcess

pytestmark = pytest.mark.sandbox

PROMPT = r"manta:~\$ "
CAP = 4
DATA = b"".join(b"line %d of the object\n" % i for i in range(1000))


@pytest.fixture(scope="module", autouse=True)
def sandbox_usable() -> None:
    require_root_sandbox("sessions run as the unprivileged task user: the server must be root")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # a low connection cap: sessions that stayed in the HTTP connection table would fill it
    with running_server("manta-login-", env={"MANTA_LOGIN_IDLE_S": "60", "MANTA_MAX_CONNECTIONS": str(CAP)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def obj(server: Server) -> str:
    s3: Any = server.client()
    s3.create_bucket(Bucket="sessions")
    s3.put_object(Bucket="sessions", Key="data/big.txt", Body=DATA)
    return "sessions/data/big.txt"


def env_for(server: Server, access_key: str = ROOT_AK, secret_key: str = ROOT_SK) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=server.url, MANTA_ACCESS_KEY=access_key, MANTA_SECRET_KEY=secret_key, TERM="xterm",
               **NO_USER_CONFIG)
    return env


def login(server: Server, *args: str, **env: str) -> pexpect.spawn:
    """`manta login ARGS` in a fresh PTY of 30x100."""
    return pexpect.spawn(sys.executable, ["-m", "manta", "login", *args], cwd=REPO, env={**env_for(server), **env},
                         timeout=30, dimensions=(30, 100))


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, f"killed by signal {child.signalstatus}"
    return int(child.exitstatus)


def pids_of(argv: list[str]) -> list[int]:
    """Host pids whose command line is exactly `argv`."""
    want = "\0".join(argv).encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if fh.read() == want:
                        found.append(int(name))
            except OSError:
                pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of any of its threads)."""
    out: list[int] = []
    children: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children += [int(p) for p in fh.read().split()]
    except OSError:
        return out
    for child in children:
        out += [child, *descendants(child)]
    return out


def sandboxes_of(server: Server) -> list[int]:
    """The bwrap processes under the server (its workers included): its task containers."""
    assert server.proc is not None
    found = []
    for pid in descendants(server.proc.pid):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "bwrap":
                    found.append(pid)
        except OSError:
            pass
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start_marker(child: pexpect.spawn) -> tuple[list[str], int]:
    """A background `sleep` in the session, unique to it, and its host pid."""
    argv = ["sleep", f"{random.randint(10**6, 10**7)}.5"]
    child.sendline(" ".join(argv) + " &")
    child.expect(PROMPT)
    wait_for(lambda: len(pids_of(argv)) == 1, 10, "the session's background process")
    return argv, pids_of(argv)[0]


def test_a_shell_beside_the_object_without_network_ends_with_exit(server: Server, obj: str) -> None:
    child = login(server, obj)
    child.expect(PROMPT)
    child.sendline("wc -c /manta/input")
    child.expect(rf"{len(DATA)} /manta/input")
    child.expect(PROMPT)
    child.sendline("echo $MANTA_INPUT_OBJECT $(id -un) $(stty size)")
    child.expect(rf"{obj} manta 30 100")
    child.expect(PROMPT)
    child.sendline("touch /manta/input || echo READ""ONLY")
    child.expect("READONLY")
    child.expect(PROMPT)
    connect = f"import socket; socket.create_connection(('127.0.0.1', {server.port}), timeout=3)"
    child.sendline(f'python3 -c "{connect}" 2>/dev/null && echo CONN""ECTED || echo NO""NETWORK')
    assert child.expect(["NONETWORK", "CONNECTED"]) == 0
    child.expect(PROMPT)
    child.setwinsize(40, 120)  # SIGWINCH -> a resize frame -> TIOCSWINSZ on the session's PTY
    time.sleep(0.5)
    child.sendline("stty size")
    child.expect("40 120")
    child.expect(PROMPT)
    marker, pid = start_marker(child)
    assert sandboxes_of(server)
    child.sendline("exit")
    assert ended(child) == 0
    wait_for(lambda: not pids_of(marker) and not sandboxes_of(server), 10, "the container to go")
    assert not os.path.exists(f"/proc/{pid}")


def test_ctrl_d_ends_the_session_and_a_failing_last_command_sets_the_status(server: Server, obj: str) -> None:
    child = login(server, obj)
    child.expect(PROMPT)
    child.sendline("false")
    child.expect(PROMPT)
    child.sendcontrol("d")
    assert ended(child) == 1  # bash exits with the last command's status
    wait_for(lambda: not sandboxes_of(server), 10, "the container to go")


def test_a_command_runs_on_a_terminal_and_its_status_is_the_exit_status(server: Server, obj: str) -> None:
    child = login(server, obj, "--", "test -t 0 && wc -l < /manta/input; exit 3")
    child.expect(r"\b1000\b")
    assert ended(child) == 3
    done = subprocess.run([sys.executable, "-m", "manta", "login", obj, "--", "head", "-n", "2", "/manta/input"],
                          env=env_for(server), cwd=REPO, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace(b"\r\n", b"\n") == b"line 0 of the object\nline 1 of the object\n"


def test_an_idle_session_ends_at_its_timeout(server: Server, obj: str) -> None:
    child = login(server, "--idle", "2", obj)
    child.expect(PROMPT)
    marker, _ = start_marker(child)
    started = time.monotonic()
    child.expect("idle for 2 s")
    assert 1.5 < time.monotonic() - started < 10
    assert ended(child) == 1
    wait_for(lambda: not pids_of(marker) and not sandboxes_of(server), 10, "the container to go")


def test_a_client_that_goes_away_takes_its_container_along(server: Server, obj: str) -> None:
    child = login(server, obj)
    child.expect(PROMPT)
    marker, _ = start_marker(child)
    os.kill(child.pid, signal.SIGKILL)
    child.close(force=True)
    wait_for(lambda: not pids_of(marker) and not sandboxes_of(server), 15, "the container to go")


def test_another_accounts_object_and_a_missing_one_are_refused(server: Server, obj: str) -> None:
    out = manta(server, "admin", "user", "add", f"mallory-{os.getpid()}", "--json")
    assert out.returncode == 0, out.stderr
    user = json.loads(out.stdout)

    def as_user(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "manta", "login", *args, "--", "cat /manta/input"],
                              env=env_for(server, user["access_key"], user["secret_key"]), cwd=REPO,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=60)

    done = as_user(obj)
    assert done.returncode == 1
    assert b"access denied" in done.stderr and b"another account" in done.stderr, done.stderr
    assert b"line 0" not in done.stdout
    child = login(server, "sessions/data/nothing-here")
    child.expect("no such key: sessions/data/nothing-here")
    assert ended(child) == 1
    done = as_user("no-such-bucket-anywhere/x")
    assert done.returncode == 1 and b"no such bucket" in done.stderr, done.stderr
    assert not sandboxes_of(server)


def test_a_policy_condition_binds_a_session_as_it_binds_a_get(server: Server) -> None:
    """The owner's own object, under a policy that refuses plain HTTP: no session over it,
    as a GET over the same connection is refused (the check once had no request context)."""
    s3: Any = server.client()
    bucket = f"tls-only-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="doc", Body=b"only over TLS\n")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))
    try:
        done = subprocess.run([sys.executable, "-m", "manta", "login", f"{bucket}/doc", "--", "cat /manta/input"],
                              env=env_for(server), cwd=REPO, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 1
        assert b"access denied" in done.stderr.lower(), done.stderr
        assert b"only over TLS" not in done.stdout
        assert not sandboxes_of(server)
    finally:
        s3.delete_bucket_policy(Bucket=bucket)
    done = subprocess.run([sys.executable, "-m", "manta", "login", f"{bucket}/doc", "--", "cat /manta/input"],
                          env=env_for(server), cwd=REPO, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0 and b"only over TLS" in done.stdout, done.stderr


def test_an_unsigned_upgrade_gets_no_session_even_on_a_public_object(server: Server, obj: str) -> None:
    """Anonymous reads of a public-read bucket act as its owner for GET and HEAD; a login
    session is never granted that way, nor to a request signed with a wrong secret."""
    from websockets.sync.client import connect

    s3: Any = server.client()
    s3.put_bucket_acl(Bucket="sessions", ACL="public-read")
    try:
        url = server.url.replace("http://", "ws://") + "/_manta/login/" + obj
        with connect(url, open_timeout=10) as ws:
            answer = json.loads(ws.recv(timeout=10))
        assert answer["error"] == "AccessDenied", answer
        wrong = subprocess.run([sys.executable, "-m", "manta", "login", obj, "--", "cat /manta/input"],
                               env=env_for(server, ROOT_AK, "not-the-secret"), cwd=REPO, capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=60)
        assert wrong.returncode == 1 and b"line 0" not in wrong.stdout, wrong.stderr
        assert b"signature" in wrong.stderr.lower(), wrong.stderr
        assert not sandboxes_of(server)
    finally:
        s3.put_bucket_acl(Bucket="sessions", ACL="private")


def test_finished_sessions_leave_no_connection_behind(server: Server, obj: str) -> None:
    for _ in range(CAP + 2):
        done = subprocess.run([sys.executable, "-m", "manta", "login", obj, "--", "true"], env=env_for(server),
                              cwd=REPO, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 0, done.stderr
    s3: Any = server.client()
    assert s3.head_object(Bucket="sessions", Key="data/big.txt")["ContentLength"] == len(DATA)


def test_a_session_on_a_remote_node() -> None:
    base = traversable_dir("manta-login-node-")
    node = NodeProcess(os.path.join(base, "node"))
    try:
        node.start()
        with running_server("manta-login-front-", extra_args=["--node", node.url],
                            env={"MANTA_CLUSTER_SECRET": node.secret}) as srv:
            s3: Any = srv.client()
            s3.create_bucket(Bucket="far")
            s3.put_object(Bucket="far", Key="obj", Body=DATA)
            child = login(srv, "far/obj")
            child.expect(PROMPT)
            child.sendline("wc -c /manta/input")
            child.expect(rf"{len(DATA)} /manta/input")
            child.expect(PROMPT)
            marker, _ = start_marker(child)
            assert node.proc is not None and any(p in descendants(node.proc.pid) for p in pids_of(marker))
            child.sendline("exit 5")
            assert ended(child) == 5
            wait_for(lambda: not pids_of(marker), 10, "the node's container to go")
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
