"""tests/netns.py itself: namespaces on a bridge, cut links, shaping, cleanup, ZFS from a
namespace, and Cluster's process handling with a stand-in server (python -m http.server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import require
from tests.netns import (
    NODE_PORT,
    Cluster,
    Host,
    Network,
    cluster_fixture,
    netns_unavailable,
    wait_http,
)
from tests.zfs_pools import PoolFactory

TRANSFER_BYTES = 20_000_000


@pytest.fixture
def network() -> Iterator[Network]:
    problem = netns_unavailable()
    require(problem is None, problem or "")
    with Network() as net:
        yield net


def serve(host: Host, directory: str, port: int = 8000) -> None:
    proc = host.popen([sys.executable, "-m", "http.server", "--bind", host.address,
                       "--directory", directory, str(port)])
    wait_http(host.address, port, 15.0, proc)


def fetch(client: Host, url: str, timeout_s: float = 5.0) -> subprocess.CompletedProcess[str]:
    """curl from `client`: stdout is "HTTP-CODE BYTES SECONDS"."""
    return client.run(["curl", "-sS", "-o", "/dev/null", "-m", str(timeout_s), "-w",
                       "%{http_code} %{size_download} %{time_total}", url], timeout_s=timeout_s + 10)


def test_hosts_get_distinct_addresses_on_the_bridge(network: Network) -> None:
    hosts = [network.add_host(f"h{i}") for i in range(3)]
    addresses = {h.address for h in hosts}
    assert len(addresses) == 3
    assert all(a.startswith(network.subnet + ".") and a != network.gateway for a in addresses)
    inside = hosts[0].run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"{hosts[0].address}/24" in inside
    assert len({h.ns for h in hosts}) == len({h.veth for h in hosts}) == 3


def test_host_reaches_host_and_a_cut_link_fails_until_restored(network: Network, tmp_path) -> None:
    client, server = network.add_host("a"), network.add_host("b")
    (tmp_path / "hello").write_text("hello")
    serve(server, str(tmp_path))
    url = f"http://{server.address}:8000/hello"
    assert fetch(client, url).stdout.split()[:2] == ["200", "5"]
    server.cut()
    cut = fetch(client, url, timeout_s=2)
    assert cut.returncode != 0 and cut.stdout.split()[0] == "000"
    server.restore()
    assert fetch(client, url).stdout.split()[:2] == ["200", "5"]


def test_nothing_outside_the_bridge_is_routable(network: Network) -> None:
    host = network.add_host("a")
    assert "default" not in host.run(["ip", "route"]).stdout
    probe = ("import socket, errno\n"
             "try:\n    socket.create_connection(('192.0.2.2', 80), timeout=5)\n"
             "except OSError as e:\n    print(errno.errorcode.get(e.errno, e))\n")
    assert host.run([sys.executable, "-c", probe]).stdout.strip() == "ENETUNREACH"


def test_a_shaped_link_carries_no_more_than_its_rate(network: Network, tmp_path) -> None:
    client, server = network.add_host("a"), network.add_host("b")
    (tmp_path / "blob").write_bytes(os.urandom(TRANSFER_BYTES))
    serve(server, str(tmp_path))
    server.shape("100mbit")  # 20 MB at 100 Mbit/s is 1.6 s at best
    code, size, seconds = fetch(client, f"http://{server.address}:8000/blob", timeout_s=30).stdout.split()
    assert (code, int(size)) == ("200", TRANSFER_BYTES)
    assert float(seconds) >= 1.4
    into, _ = server.link_bytes()
    assert into < TRANSFER_BYTES  # the body went out of the server, not in
    server.unshape()
    assert "tbf" not in subprocess.run(["tc", "qdisc", "show", "dev", server.veth],
                                       capture_output=True, text=True).stdout


def test_everything_is_removed_on_exit_even_after_a_failure(tmp_path) -> None:
    problem = netns_unavailable()
    require(problem is None, problem or "")
    with pytest.raises(ZeroDivisionError), Network() as net:
        host = net.add_host("a")
        (tmp_path / "x").write_text("x")
        serve(host, str(tmp_path))
        names, proc = [host.ns, host.veth, net.bridge], net.procs[0]
        1 / 0  # noqa: B018
    assert proc.poll() is not None
    assert not any(name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                   for name in names)
    assert not any(name in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                   for name in names)


def test_zfs_datasets_and_commands_work_from_a_namespace(network: Network, zfs_pools: PoolFactory) -> None:
    host, pool = network.add_host("a"), zfs_pools.create()
    assert pool.name in host.run(["zpool", "list", "-H", "-o", "name"]).stdout
    assert host.run(["zfs", "create", pool.dataset("node")]).returncode == 0
    path = os.path.join(pool.mountpoint, "node", "f")
    assert host.run(["sh", "-c", f"echo written-inside > {path}"]).returncode == 0
    with open(path) as fh:
        assert fh.read() == "written-inside\n"
    assert host.run(["zfs", "umount", pool.dataset("node")]).returncode == 0
    assert not os.path.exists(path)  # unmounted in the root namespace too
    assert host.run(["zfs", "mount", pool.dataset("node")]).returncode == 0
    assert os.path.exists(path)


class StandInCluster(Cluster):
    """Cluster with http.server in place of `manta node` and `manta serve`."""

    def node_argv(self, i: int) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", self.hosts[i].address, str(NODE_PORT)]

    def front_argv(self) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", self.front_address, str(self.front_port)]


def test_cluster_kills_restarts_and_cuts_nodes() -> None:
    problem = netns_unavailable()
    require(problem is None, problem or "")
    with StandInCluster(nodes=3) as cluster:
        assert len(set(cluster.node_urls)) == 3
        client = cluster.network.add_host("client")  # type: ignore[union-attr]
        assert fetch(client, cluster.node_urls[1] + "/").stdout.startswith("200")
        cluster.kill_node(1)
        assert cluster.procs[1].returncode == -9
        assert fetch(client, cluster.node_urls[1] + "/", timeout_s=2).returncode != 0
        cluster.start_node(1)
        assert fetch(client, cluster.node_urls[1] + "/").stdout.startswith("200")
        cluster.cut(2)
        assert fetch(client, cluster.node_urls[2] + "/", timeout_s=2).returncode != 0
        cluster.restore(2)
        assert fetch(client, cluster.node_urls[2] + "/").stdout.startswith("200")
        procs, base = [*cluster.procs.values(), cluster.front], cluster.base_dir
        assert "node-0.log" in os.listdir(os.path.join(base, "logs"))
    assert all(p is not None and p.poll() is not None for p in procs)
    assert not os.path.exists(base)


def manta_node_missing() -> bool:
    done = subprocess.run([sys.executable, "-m", "manta", "node", "--help"], capture_output=True)
    return done.returncode != 0


def test_a_cluster_of_manta_nodes_stores_objects(request: pytest.FixtureRequest) -> None:
    if manta_node_missing():
        pytest.skip("`manta node` is not in this tree yet")
    cluster = cluster_fixture(request, nodes=3)
    s3 = cluster.client()
    s3.create_bucket(Bucket="netns")
    s3.put_object(Bucket="netns", Key="k", Body=b"over the bridge")
    assert s3.get_object(Bucket="netns", Key="k")["Body"].read() == b"over the bridge"
