"""Network namespaces for the cluster tests, scripts/cluster.sh and benchmarks/cluster.py.

    with Network() as net:                   # bridge mb<pid>-<n> in the root namespace, 10.213.X.1/24
        a, b = net.add_host("a"), net.add_host("b")  # a namespace each, a veth on the bridge, 10.213.X.k
        proc = a.popen([...])                # runs in a's network namespace
        b.cut(); b.restore()                 # b's root-side veth down / up
        a.shape("1gbit"); a.unshape()        # tc tbf on both ends of a's link

    with Cluster(nodes=3, zfs=False) as c:   # N `manta node` hosts and a front door
        s3 = c.client(); c.kill_node(1); c.start_node(1); c.cut(2); c.restore(2)

Hosts have an address on the bridge and no default route: nothing they send leaves the
bridge (a connect elsewhere fails at once with "network unreachable"). The root namespace
has the bridge's address, so a front door there reaches every node, and test code there
reaches every host. Names carry the creating pid (bridge `mb<pid>-<n>`, namespaces
`mn<pid>-<n>-<host>`, root-side veths `mv<pid>-<n>-<i>`), so concurrent runs never collide
and `sweep_stale()` removes what a dead run left. The /24 is picked from 10.213.0.0/16 by
pid, skipping any 10.213.X already on an address or route of the root namespace.

Processes enter only the network namespace (`nsenter --net=/run/netns/NAME`), never a new
mount namespace as `ip netns exec` does. Found with zfs-fuse: its control socket is a path
(/var/run/zfs/zfs_socket), not an abstract socket, so `zfs`/`zpool` work from any network
namespace, and a dataset mounted in the root namespace is readable and writable from one.
But under `ip netns exec` a `zfs umount` only unmounts in that private mount namespace
(the root namespace keeps the mount, and a later `zfs mount` says "already mounted"),
while mounts are made by the daemon in the root namespace: the two views drift apart.
With `nsenter --net` only, mount and umount act on the one root mount namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from tests.ports import free_port
from tests.zfs_pools import PoolFactory, pid_alive, zfs_unavailable

__all__ = ["NODE_PORT", "Cluster", "Host", "Network", "NetnsError", "cluster_fixture",
           "netns_unavailable", "sweep_stale", "wait_http"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_PORT = 9100
SUBNET_PREFIX = "10.213"
_STALE = re.compile(r"m[bnv](\d+)-")
_networks = itertools.count(1)


class NetnsError(RuntimeError):
    """An ip/tc command failed, or a process did not become ready."""


def _run(*argv: str, check: bool = True, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def netns_unavailable() -> str | None:
    """None when namespaces, veths and bridges can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 util-linux)"
    return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    listed = _run("ip", "-o", "link", "show").stdout.splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in listed if ":" in line]


def _kill_namespace_processes(ns: str) -> None:
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep_stale() -> list[str]:
    """Remove namespaces, veths and bridges whose creating process is gone; what was removed."""
    removed = []
    for ns in _namespaces():
        if (m := _STALE.match(ns)) and ns.startswith("mn") and not pid_alive(int(m.group(1))):
            _kill_namespace_processes(ns)
            _run("ip", "netns", "del", ns, check=False)
            removed.append(ns)
    for link in _links():
        if (m := _STALE.match(link)) and link[:2] in ("mb", "mv") and not pid_alive(int(m.group(1))):
            _run("ip", "link", "del", link, check=False)
            removed.append(link)
    return removed


def _rate_bps(rate: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)bit", rate.strip().lower())
    if not m:
        raise ValueError(f"rate {rate!r}: expected a number and kbit, mbit or gbit")
    return int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2)])


def _tbf(rate: str) -> list[str]:
    """tbf arguments: a bucket of 4 ms at the rate (at least 64 KiB, so one GSO packet fits
    and a 250 Hz timer can keep up) and 50 ms of queue."""
    burst = max(_rate_bps(rate) // 8 * 4 // 1000, 64 * 1024)
    return ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]


class Host:
    """One network namespace on a Network's bridge: `ns`, `address`, `veth` (root side)."""

    def __init__(self, network: Network, name: str, ns: str, address: str, veth: str) -> None:
        self.network, self.name, self.ns, self.address, self.veth = network, name, ns, address, veth

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address}, ns={self.ns}, veth={self.veth})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in this network namespace (and the root mount namespace)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--", *argv]

    def popen(self, argv: Sequence[str], env: dict[str, str] | None = None,
              stdout: int | IO[Any] | None = subprocess.DEVNULL,
              stderr: int | IO[Any] | None = subprocess.STDOUT, cwd: str | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in this namespace, in its own process group; the Network stops it on exit."""
        return self.network.track(subprocess.Popen(
            self.command(argv), env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            cwd=cwd or REPO, start_new_session=True))

    def run(self, argv: Sequence[str], timeout_s: float = 60.0, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout_s,
                              env=env, cwd=REPO)

    def cut(self) -> None:
        _run("ip", "link", "set", self.veth, "down")

    def restore(self) -> None:
        _run("ip", "link", "set", self.veth, "up")

    def shape(self, rate: str = "1gbit") -> None:
        """Limit both directions of this host's link to `rate` (tc tbf, e.g. "100mbit")."""
        _run("tc", "qdisc", "replace", "dev", self.veth, "root", *_tbf(rate))
        _run(*self.command(["tc", "qdisc", "replace", "dev", "eth0", "root", *_tbf(rate)]))

    def unshape(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.veth, "root", check=False)
        _run(*self.command(["tc", "qdisc", "del", "dev", "eth0", "root"]), check=False)

    def link_bytes(self) -> tuple[int, int]:
        """(bytes into the host, bytes out of it) so far: the root-side veth's tx and rx."""
        stats = f"/sys/class/net/{self.veth}/statistics"
        with open(f"{stats}/tx_bytes") as tx, open(f"{stats}/rx_bytes") as rx:
            return int(tx.read()), int(rx.read())


class Network:
    """A bridge in the root namespace and the hosts on it; leaving the `with` (or `close()`)
    stops every process started through it and removes the namespaces, veths and bridge."""

    def __init__(self) -> None:
        if problem := netns_unavailable():
            raise NetnsError(problem)
        sweep_stale()
        self.index = next(_networks)
        self.bridge = f"mb{os.getpid()}-{self.index}"
        self.subnet = self._free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def _free_subnet(self) -> str:
        seen = _run("ip", "-4", "addr").stdout + _run("ip", "-4", "route").stdout
        used = {int(x) for x in re.findall(rf"{re.escape(SUBNET_PREFIX)}\.(\d+)\.", seen)}
        start = (os.getpid() * 7 + self.index * 37) % 254
        for step in range(254):
            octet = (start + step) % 254 + 1
            if octet not in used:
                return f"{SUBNET_PREFIX}.{octet}"
        raise NetnsError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        if not re.fullmatch(r"[a-z0-9]{1,16}", name) or any(h.name == name for h in self.hosts):
            raise ValueError(f"host name {name!r}: lower-case letters and digits, unique")
        i = len(self.hosts)
        host = Host(self, name, f"mn{os.getpid()}-{self.index}-{name}",
                    f"{self.subnet}.{i + 2}", f"mv{os.getpid()}-{self.index}-{i}")
        self.hosts.append(host)
        _run("ip", "netns", "add", host.ns)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "addr", "add", f"{host.address}/24", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"]):
            _run(*host.command(argv))
        return host

    def track(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        problems = []
        for proc in self.procs:
            stop(proc)
        self.procs.clear()
        for host in self.hosts:
            if host.ns in _namespaces():
                _kill_namespace_processes(host.ns)
                if (done := _run("ip", "netns", "del", host.ns, check=False)).returncode:
                    problems.append(done.stderr.strip())
            _run("ip", "link", "del", host.veth, check=False)  # gone with its peer's namespace
        self.hosts.clear()
        if self.bridge in _links():
            if (done := _run("ip", "link", "del", self.bridge, check=False)).returncode:
                problems.append(done.stderr.strip())
        if problems:
            raise NetnsError("could not remove: " + "; ".join(problems))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal `proc`'s process group, then SIGKILL it if it has not exited in `timeout_s`."""
    for signum in (sig, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):  # what it started and left behind
        os.killpg(proc.pid, signal.SIGKILL)


def wait_http(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
              path: str = "/", what: str = "server") -> None:
    """Until any HTTP answer comes from host:port (a 403 to an unsigned request will do)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NetnsError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                if sock.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise NetnsError(f"{what} on {host}:{port} gave no HTTP answer in {timeout_s:g} s")


class Cluster:
    """A front door and `nodes` `manta node` hosts, each in its own namespace on one Network.

    Nodes listen on <address>:NODE_PORT with dir storage under base_dir/node-I/, or a
    file-backed zfs-fuse pool each (zfs=True). The front door runs in the root namespace on
    127.0.0.1 (front_in_namespace=False) or in a host of its own ("front") on its address.
    Logs go to base_dir/logs/*.log (appended across restarts); `logs()` gives their tails.
    """

    def __init__(self, nodes: int = 3, zfs: bool = False, base_dir: str | None = None,
                 front_in_namespace: bool = False, front_args: Sequence[str] = (),
                 node_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 zfs_size_mb: int = 1024, start_timeout_s: float = 60.0) -> None:
        self.nodes, self.zfs, self.zfs_size_mb = nodes, zfs, zfs_size_mb
        self.front_in_namespace, self.front_args, self.node_args = front_in_namespace, front_args, node_args
        self.start_timeout_s = start_timeout_s
        self.own_base = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="manta-cluster-")
        os.makedirs(self.base_dir, exist_ok=True)
        os.chmod(self.base_dir, 0o711)  # the task sandbox user binds blob files by path
        os.makedirs(os.path.join(self.base_dir, "logs"), exist_ok=True)
        self.secret = secrets.token_hex(32)
        self.access_key = "MANTAROOT" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_hex(20)
        self.env = {**os.environ, "MANTA_CLUSTER_SECRET": self.secret, "MANTA_ROOT_ACCESS_KEY":
                    self.access_key, "MANTA_ROOT_SECRET_KEY": self.secret_key, **(env or {})}
        self.network: Network | None = None
        self.hosts: list[Host] = []
        self.front_host: Host | None = None
        self.front: subprocess.Popen[bytes] | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.storage: list[str] = []
        self.pools: Any = None  # tests.zfs_pools.PoolFactory when zfs
        self.front_port = NODE_PORT - 100 if front_in_namespace else free_port()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close(print_logs=True)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(print_logs=exc is not None)

    @property
    def node_urls(self) -> list[str]:
        return [f"http://{host.address}:{NODE_PORT}" for host in self.hosts]

    @property
    def front_address(self) -> str:
        return self.front_host.address if self.front_host else "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"http://{self.front_address}:{self.front_port}"

    def start(self) -> None:
        self.network = Network()
        self.hosts = [self.network.add_host(f"node{i}") for i in range(self.nodes)]
        if self.front_in_namespace:
            self.front_host = self.network.add_host("front")
        if self.zfs:
            self.pools = PoolFactory(os.path.join(self.base_dir, "zfs"), size_mb=self.zfs_size_mb)
            self.storage = [f"zfs:{self.pools.create().dataset('node')}" for _ in self.hosts]
        else:
            self.storage = [f"dir:{os.path.join(self.base_dir, f'node-{i}', 'storage')}" for i in range(self.nodes)]
        for i in range(self.nodes):
            self.start_node(i, wait=False)
        for i in range(self.nodes):
            self.wait_node(i)
        self.start_front()

    def node_argv(self, i: int) -> list[str]:
        return [sys.executable, "-m", "manta", "node", "--storage", self.storage[i], "--listen",
                f"{self.hosts[i].address}:{NODE_PORT}", "--data",
                os.path.join(self.base_dir, f"node-{i}"), *self.node_args]

    def front_argv(self, name: str = "front", port: int | None = None) -> list[str]:
        nodes = [arg for url in self.node_urls for arg in ("--node", url)]
        return [sys.executable, "-m", "manta", "serve", *nodes, "--listen",
                f"{self.front_address}:{port or self.front_port}", "--data",
                os.path.join(self.base_dir, name), *self.front_args]

    def start_another_front(self, name: str) -> str:
        """One more front door in the root namespace, on a port and data dir of its own (as
        on another host) with the same nodes and arguments (a shared `--catalog`); its URL."""
        assert self.network is not None and not self.front_host
        port = free_port()
        os.makedirs(os.path.join(self.base_dir, name), exist_ok=True)
        with self._log(name) as log:
            proc = self.network.track(subprocess.Popen(
                self.front_argv(name, port), env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True))
        try:
            wait_http("127.0.0.1", port, self.start_timeout_s, proc, what=name)
        except NetnsError as exc:
            raise NetnsError(f"{exc}\n{self.logs(name)}") from None
        return f"http://127.0.0.1:{port}"

    def _log(self, name: str) -> IO[bytes]:
        return open(os.path.join(self.base_dir, "logs", f"{name}.log"), "ab")  # noqa: SIM115

    def start_node(self, i: int, wait: bool = True) -> None:
        """Start node `i` (again: same address, storage and data dir)."""
        if i in self.procs and self.procs[i].poll() is None:
            raise NetnsError(f"node {i} is running")
        os.makedirs(os.path.join(self.base_dir, f"node-{i}"), exist_ok=True)
        with self._log(f"node-{i}") as log:
            self.procs[i] = self.hosts[i].popen(self.node_argv(i), env=self.env, stdout=log)
        if wait:
            self.wait_node(i)

    def wait_node(self, i: int, timeout_s: float | None = None) -> None:
        try:
            wait_http(self.hosts[i].address, NODE_PORT, timeout_s or self.start_timeout_s,
                      self.procs[i], "/v1/health", f"node {i}")
        except NetnsError as exc:
            raise NetnsError(f"{exc}\n{self.logs(f'node-{i}')}") from None

    def kill_node(self, i: int) -> None:
        """SIGKILL node `i` and everything in its process group (as if its host died)."""
        stop(self.procs[i], signal.SIGKILL)

    def stop_node(self, i: int) -> None:
        stop(self.procs[i])

    def cut(self, i: int) -> None:
        self.hosts[i].cut()

    def restore(self, i: int) -> None:
        self.hosts[i].restore()

    def start_front(self) -> None:
        assert self.network is not None
        os.makedirs(os.path.join(self.base_dir, "front"), exist_ok=True)
        with self._log("front") as log:
            if self.front_host:
                self.front = self.front_host.popen(self.front_argv(), env=self.env, stdout=log)
            else:
                self.front = self.network.track(subprocess.Popen(
                    self.front_argv(), env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True))
        try:
            wait_http(self.front_address, self.front_port, self.start_timeout_s, self.front,
                      what="front door")
        except NetnsError as exc:
            raise NetnsError(f"{exc}\n{self.logs('front')}") from None

    def stop_front(self) -> None:
        if self.front is not None:
            stop(self.front)

    def cli_env(self) -> dict[str, str]:
        """Environment for the manta CLI / manta.Client against this cluster."""
        return {**os.environ, "MANTA_URL": self.endpoint, "MANTA_ACCESS_KEY": self.access_key,
                "MANTA_SECRET_KEY": self.secret_key}

    def client(self, **config: Any) -> Any:
        import boto3  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(**config) if config else None)

    def logs(self, *names: str, lines: int = 40) -> str:
        """The last `lines` of each log (all of them by default), headed by its name."""
        folder = os.path.join(self.base_dir, "logs")
        chosen = names or tuple(sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".log")))
        parts = []
        for name in chosen:
            with contextlib.suppress(OSError), open(os.path.join(folder, f"{name}.log"), errors="replace") as fh:
                parts.append(f"--- {name}.log\n" + "".join(fh.readlines()[-lines:]))
        return "\n".join(parts)

    def close(self, print_logs: bool = False) -> None:
        if print_logs:
            print(self.logs(), file=sys.stderr)
        problems = []
        try:
            if self.network is not None:
                self.network.close()
        except NetnsError as exc:
            problems.append(str(exc))
        try:
            if self.pools is not None:
                self.pools.close()
        except RuntimeError as exc:
            problems.append(str(exc))
        if self.own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if problems:
            raise NetnsError("; ".join(problems))


def cluster_fixture(request: Any, nodes: int = 3, zfs: bool = False, **options: Any) -> Cluster:
    """A started Cluster for one test, closed after it (logs printed to the test's stderr,
    which pytest shows when it fails). Skips, or fails in CI, without root, ip or zfs:

        @pytest.fixture
        def cluster(request): return cluster_fixture(request, nodes=3)
    """
    from tests.conftest import require  # noqa: PLC0415

    problem = netns_unavailable() or (zfs_unavailable() if zfs else None)
    require(problem is None, problem or "")
    cluster = Cluster(nodes=nodes, zfs=zfs, **options)
    request.addfinalizer(lambda: cluster.close(print_logs=True))
    cluster.start()
    return cluster
