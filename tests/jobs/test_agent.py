"""The task agent in-process: real LocalNodes in directories, real bubblewrap containers.

The agent gets the same request a `manta node` gets over HTTP; its peers are the other
LocalNodes (in a node process they are RemoteNodes), so what is shown here is the node side
of a task without the catalog: inputs in place or fetched, byte counts, output copies,
replication failures and cancel.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from jobs.agent import TaskAgent
from jobs.records import TABLES as JOB_TABLES
from jobs.sandbox import Sandbox
from storage import LocalNode, Node
from storage.node import NodeSpec
from storage.replicas import BlobMeta, ReplicatedWriter
from tests.conftest import require, traversable_dir

pytestmark = pytest.mark.sandbox

MiB = 1 << 20


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap (bwrap) is not installed")
    sb = Sandbox()
    reason = sb.check()
    require(reason is None, f"bubblewrap sandbox cannot run tasks here: {reason}")
    return sb


class FailingCopies(LocalNode):
    """A peer whose link goes down when a blob is copied onto it."""

    def copy_from(self, peer: Node, blob_id: str) -> None:
        raise ConnectionError(f"node {self.id}: connection reset")


@pytest.fixture
def nodes() -> Iterator[list[LocalNode]]:
    base = traversable_dir("manta-agent-")
    out = []
    for i in range(3):
        spec = NodeSpec("dir", os.path.join(base, f"n{i}"))
        root, _ = LocalNode.prepare(spec)
        os.chmod(root, 0o711)
        LocalNode.write_marker(root, f"n{i}")
        out.append((FailingCopies if i == 2 else LocalNode)(f"n{i}", spec, root))
    yield out
    shutil.rmtree(base, ignore_errors=True)


_AGENTS: list[TaskAgent] = []


@pytest.fixture(autouse=True)
def _close_agents() -> Iterator[None]:
    yield
    while _AGENTS:
        _AGENTS.pop().close()  # and their idle reusable containers


def agent_for(node: LocalNode, nodes: list[LocalNode], sandbox: Sandbox, **options: Any) -> TaskAgent:
    by_id = {n.id: n for n in nodes}
    agent = TaskAgent(node, sandbox, None, slots=2, memory_budget_mb=1024,
                      peer=lambda node_id, url: by_id[node_id], **options)
    _AGENTS.append(agent)
    return agent


def put_blob(data: bytes, *holders: LocalNode) -> BlobMeta:
    writer = ReplicatedWriter(list(holders), len(holders), first=holders[0])
    writer.write(data)
    return writer.commit()


def entry(name: str, meta: BlobMeta, nodes: list[LocalNode]) -> dict[str, Any]:
    where = [{"id": n.id, "url": n.address} for n in nodes if n.id in meta.nodes]
    return {"name": name, "size": meta.size,
            "segments": [{"blob": meta.blob_id, "size": meta.size, "crcs": meta.blocks.hex(), "nodes": where}]}


_tasks = iter(range(1, 10**6))


def request(exec: str, inputs: list[dict[str, Any]], kind: str = "map", copies: int = 1,
            peers: list[LocalNode] = (), **fields: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {"job": "job1", "task": f"p0-m{next(_tasks):07d}", "owner": "root", "phase": 0, "type": kind,
            "exec": exec, "init": None, "env": {"MANTA_JOB_ID": "job1", "MANTA_PHASE": "0"},
            "limits": {"memory_mb": 128, "disk_mb": 64, "timeout_s": 60}, "inputs": inputs,
            "partition": None, "assets": [], "partitions": 0, "copies": copies,
            "peers": [{"id": n.id, "url": n.address} for n in peers], **fields}


def blob_bytes(node: LocalNode, output: dict[str, Any]) -> bytes:
    return node.read(output["blob"], 0, output["size"], bytes.fromhex(output["crcs"]))


def scratch(node: LocalNode) -> list[str]:
    """The tasks' scratch dirs left on `node` (an idle reused container's /manta/out aside)."""
    return [n for n in os.listdir(node.scratch_root()) if not n.startswith(".warm-out-")]


def test_a_map_input_held_here_is_used_in_place(nodes: list[LocalNode], sandbox: Sandbox) -> None:
    n0, n1, _ = nodes
    data = random.Random(1).randbytes(3 * MiB + 17)
    meta = put_blob(data, n0, n1)
    outcome = agent_for(n0, nodes, sandbox).run(
        request('md5sum | cut -d" " -f1; md5sum < "$MANTA_INPUT_FILE" | cut -d" " -f1', [entry("b/k", meta, nodes)]))
    assert outcome["node_failure"] is None and outcome["exit_code"] == 0, outcome
    assert (outcome["bytes_local"], outcome["bytes_remote"]) == (len(data), 0)
    assert not os.path.exists(n0.scratch_root()) or scratch(n0) == []  # nothing was copied
    [output] = outcome["outputs"]
    assert blob_bytes(n0, output).split() == [hashlib.md5(data).hexdigest().encode()] * 2


def test_tasks_of_one_job_phase_share_a_container_and_jobs_do_not(nodes: list[LocalNode], sandbox: Sandbox) -> None:
    """Inputs in place (blobs) and fetched (scratch files) alike; each task's outputs are
    its own input's, and a task of another job or phase starts a container of its own."""
    n0, n1, _ = nodes
    agent = agent_for(n0, nodes, sandbox)
    if agent.warm is None or not agent.warm.usable():
        pytest.skip("reused containers are not usable here")
    datas = [f"object {i}\n".encode() * (i + 1) for i in range(4)]
    metas = [put_blob(data, n0 if i % 2 else n1) for i, data in enumerate(datas)]
    for i, meta in enumerate(metas):
        outcome = agent.run(request('cat; cat "$MANTA_INPUT_FILE"; ls -A /tmp; touch /tmp/mine',
                                    [entry(f"b/k{i}", meta, nodes)]))
        assert outcome["exit_code"] == 0, outcome
        assert blob_bytes(n0, outcome["outputs"][0]) == datas[i] * 2
    assert agent.warm.started == 1
    for n, fields in enumerate([{"job": "job2"}, {"phase": 1}], start=2):
        outcome = agent.run(request("ls -A /tmp; echo done", [entry("b/k0", metas[0], nodes)], **fields))
        assert blob_bytes(n0, outcome["outputs"][0]) == b"done\n" and agent.warm.started == n


def test_an_input_held_only_elsewhere_is_fetched_and_counted_remote(nodes: list[LocalNode],
                                                                    sandbox: Sandbox) -> None:
    n0, n1, _ = nodes
    data = random.Random(2).randbytes(2 * MiB + 5)
    meta = put_blob(data, n1)
    outcome = agent_for(n0, nodes, sandbox).run(request("md5sum", [entry("b/far", meta, nodes)]))
    assert outcome["exit_code"] == 0, outcome
    assert (outcome["bytes_local"], outcome["bytes_remote"]) == (0, len(data))
    assert blob_bytes(n0, outcome["outputs"][0]).startswith(hashlib.md5(data).hexdigest().encode())
    assert scratch(n0) == []  # the fetched copy is gone with the task


def test_a_damaged_local_replica_is_reported_and_read_around(nodes: list[LocalNode], sandbox: Sandbox) -> None:
    n0, n1, _ = nodes
    data = random.Random(3).randbytes(MiB + 100)
    meta = put_blob(data, n0, n1)
    path = n0.blobs.path(meta.blob_id)
    with open(path, "r+b") as fh:
        fh.seek(10)
        fh.write(bytes([data[10] ^ 0xFF]))
    outcome = agent_for(n0, nodes, sandbox).run(request("md5sum", [entry("b/rot", meta, nodes)]))
    assert outcome["exit_code"] == 0, outcome
    assert blob_bytes(n0, outcome["outputs"][0]).startswith(hashlib.md5(data).hexdigest().encode())
    assert [d[:2] for d in outcome["damaged"]] == [[meta.blob_id, "n0"]]
    assert outcome["bytes_remote"] == MiB and outcome["bytes_local"] == 100  # only the bad block came from afar


@pytest.mark.parametrize("stream", [False, True], ids=["copied-after", "streamed"])
def test_outputs_get_k_copies_the_first_on_the_agents_node(nodes: list[LocalNode], sandbox: Sandbox,
                                                           stream: bool) -> None:
    n0, n1, _ = nodes
    meta = put_blob(b"one\ntwo\nthree\n", n1)
    outcome = agent_for(n1, nodes, sandbox, stream_copies=stream).run(
        request("wc -l", [entry("b/k", meta, nodes)], copies=2, peers=[n0]))
    assert outcome["exit_code"] == 0, outcome
    [output] = outcome["outputs"]
    assert output["nodes"][0] == "n1" and sorted(output["nodes"]) == ["n0", "n1"]
    for node in (n0, n1):
        assert blob_bytes(node, output).strip() == b"3"
    assert hashlib.sha256(b"3\n").hexdigest() == output["sha256"] and output["md5"] == hashlib.md5(b"3\n").hexdigest()


def test_a_peer_failing_during_replication_is_skipped(nodes: list[LocalNode], sandbox: Sandbox) -> None:
    n0, n1, n2 = nodes  # n2's copies fail
    meta = put_blob(b"x\n" * 1000, n0)
    agent = agent_for(n0, nodes, sandbox)
    outcome = agent.run(request("cat", [entry("b/k", meta, nodes)], copies=2, peers=[n2, n1]))
    assert outcome["node_failure"] is None, outcome
    [output] = outcome["outputs"]
    assert output["nodes"] == ["n0", "n1"] and blob_bytes(n1, output) == b"x\n" * 1000
    # K = 3 with one of the two peers failing: a node failure, and no copy is left behind
    outcome = agent.run(request("cat", [entry("b/k", meta, nodes)], copies=3, peers=[n1, n2]))
    assert outcome["node_failure"] == "only 2 of 3 copies of an output could be made", outcome
    assert outcome["outputs"] == []
    assert {b for b, _ in n0.list_blobs()} == {meta.blob_id, output["blob"]}
    assert {b for b, _ in n1.list_blobs()} == {output["blob"]}


def test_cancel_kills_the_container_or_the_wait(nodes: list[LocalNode], sandbox: Sandbox) -> None:
    n0 = nodes[0]
    meta = put_blob(b"in\n", n0)
    agent = agent_for(n0, nodes, sandbox)
    req = request("sleep 60", [entry("b/k", meta, nodes)])
    with ThreadPoolExecutor(1) as pool:
        running: Future[dict[str, Any]] = pool.submit(agent.run, req)
        deadline = time.monotonic() + 20
        while agent.busy() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.busy() == 1
        agent.cancel(req["job"], req["task"])
        outcome = running.result(timeout=30)  # long before `sleep 60` would end by itself
    assert outcome["killed"] == "cancelled" and outcome["outputs"] == [] and outcome["duration_s"] is not None
    assert agent.busy() == 0 and len(list(n0.list_blobs())) == 1  # the output blob was dropped
    # a cancel that arrives before its task: the task never starts a container
    early = request("sleep 60", [entry("b/k", meta, nodes)])
    agent.cancel(early["job"], early["task"])
    outcome = agent.run(early)
    assert outcome["killed"] == "cancelled" and outcome["duration_s"] is None


def test_a_cancel_event_from_the_caller_ends_the_wait_for_a_slot(nodes: list[LocalNode],
                                                                 sandbox: Sandbox) -> None:
    n0 = nodes[0]
    meta = put_blob(b"in\n", n0)
    agent = TaskAgent(n0, sandbox, None, slots=1, memory_budget_mb=1024, peer=lambda i, u: n0)
    first = request("sleep 60", [entry("b/k", meta, nodes)])
    waiting = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(agent.run, first)
        deadline = time.monotonic() + 20
        while agent.busy() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        two = pool.submit(agent.run, request("true", [entry("b/k", meta, nodes)]), waiting)
        time.sleep(0.3)
        assert not two.done()
        waiting.set()
        assert two.result(timeout=5)["duration_s"] is None
        agent.cancel(first["job"], first["task"])
        assert one.result(timeout=10)["killed"] == "cancelled"


def test_the_scheduler_retries_a_node_failure_on_another_holder(sandbox: Sandbox) -> None:
    """Every task's first attempt meets a node failure (as when its node dies): each runs
    again on the other node holding its input, reads nothing over the network, and its
    record keeps both attempts. Requests and outcomes go through JSON, as to a `manta node`."""
    from jobs.scheduler import JobScheduler, SchedulerConfig
    from jobs.spec import parse_spec
    from storage import Store, StoreConfig
    from tests.jobs.scheduler_proc import put

    base = traversable_dir("manta-agent-sched-")
    store = Store(StoreConfig(data_dir=os.path.join(base, "data"), node_count=3, copies=2, extra_tables=JOB_TABLES))
    scheduler = JobScheduler(store, sandbox, SchedulerConfig(slots_per_node=2, tick_s=0.05, memory_budget_mb=1024))
    try:
        datas = [f"{i}\n".encode() * (i + 1) for i in range(6)]
        for i, data in enumerate(datas):
            put(store, "in", f"k{i}", data)
        failed: set[str] = set()
        lock = threading.Lock()
        for agent in scheduler.agents.values():
            def flaky(req: dict[str, Any], cancel: threading.Event | None = None,
                      real: Any = agent.run) -> dict[str, Any]:
                with lock:
                    first = req["task"] not in failed
                    failed.add(req["task"])
                if first:
                    return {"node_failure": "connection reset"}
                return json.loads(json.dumps(real(json.loads(json.dumps(req)), cancel)))  # as over HTTP
            agent.run = flaky  # type: ignore[method-assign]
        scheduler.start()
        spec = parse_spec({"phases": [{"type": "map", "exec": "wc -c"}], "inputs": [f"in/k{i}" for i in range(6)]},
                          scheduler.phase_defaults())
        job = scheduler.add_inputs(scheduler.create("root", spec)["id"], "root", [], end=True)
        deadline = time.monotonic() + 60
        while scheduler.records.get(job["id"])["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        tasks = scheduler.records.tasks(job["id"])
        assert scheduler.records.get(job["id"])["state"] == "done" and len(tasks) == 6
        for task in tasks:
            first, second = task["attempts_log"]
            assert first["outcome"] == "node failure: connection reset" and second["outcome"] == "done", task
            assert first["node"] != second["node"] == task["node"] and task["excluded"] == [first["node"]]
            size = len(datas[int(task["input"].rsplit("k", 1)[1])])
            assert (task["bytes_local"], task["bytes_remote"]) == (size, 0), task
    finally:
        scheduler.stop()
        for agent in scheduler.agents.values():
            agent.close()
        store.close()
        shutil.rmtree(base, ignore_errors=True)
