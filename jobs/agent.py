"""The task agent: runs one task on its own storage node and returns the outcome.

The agent is the node side of a task (Marlin's agent); the front door (jobs/runner.py)
builds the request from the catalog and commits the outcome. The agent never touches the
catalog. The same code runs in-process for the embedded mode's local nodes (the scheduler
calls `run` directly, passing its cancel event) and in a `manta node` process, which serves
`run` as POST /v1/tasks and `cancel` as POST /v1/tasks/JOB/TASK/cancel.

    request --resolve inputs--> files on this node --admission (slot + memory)--> sandbox
        --stdout--> output blobs (first copy here) --copies to peers--> outcome

Inputs: a map input with a single segment and a good replica here is used in place
(`LocalNode.task_input` checks it first; `bytes_local`). Anything else is assembled in the
task's scratch dir on this node through verified block reads: this node's replica first
(last when it just failed its check), then the peers listed in the request; the bytes read
from peers count as `bytes_remote`. Assets and image tars are fetched the same way but
count as neither (they are not the task's input). A reducer over unpartitioned inputs (a reduce-only job
with count > 1) keeps only its key partition's lines. Bad replicas met on the way are
returned in `damaged` for the front door to queue for repair.

Image: a phase naming one gets its tree (unpacked once per node and image id into the
node's cache, jobs/imagetree.py, from its tar object fetched like an input) bound at
/opt/manta/image.

Containers: tasks of one job phase (same limits and assets) that run one after another
here share one (jobs/warm.py, `SandboxConfig.reuse_idle_s`); `close` ends the idle ones.

Outputs: stdout goes into a blob on this node (one per reducer of the next phase when
`partitions` > 1, split by a stable hash of the key); after the task, each is copied node
to node (`peer.copy_from(this node)`) onto `peers` until `copies` copies exist. A peer
that fails is skipped; fewer than `copies` copies is a node failure (the copies made are
deleted). In-process (`stream_copies`) the copies are streamed to the peers while the task
writes, as every embedded write does.

In-task tools (jobs/tooloutputs.py): every task gets `/manta/out`, a directory of its own
(in its scratch dir) for mpipe, mtee, mcat and msplit. After a task that succeeded, each
finished call's data becomes a blob like stdout's (always a file blob), listed in the
outcome with what the front door needs to name and check it: `tool`, `call` (its number in
the task), `name` (bucket/key, or None: generated), `headers`, `emit` (an output of the
task; mtee's objects are not), `ref` (mcat: an existing object, no blob). When a call
emits, stdout is not an output. A reducer number (-r, msplit's -n) that does not fit the
next phase, or a bad output directory, fails the task (UserTaskError) and stores nothing.

Outcome: {exit_code, signal, killed, init_failed, duration_s (None: never started),
stderr_b64, outputs: [{partition, blob, size, md5, sha256, crcs (hex), nodes, and for a
tool's: tool, call, name, headers, emit | partition, tool, call, ref, emit}],
bytes_local, bytes_remote, damaged: [[blob, node, why]], node_failure: str|None,
error: [code, message]|None (the agent cannot run tasks at all)}.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from jobs import errors as je
from jobs.admission import Admission, default_budget_mb
from jobs.imagetree import NodeImages
from jobs.outputs import TaskOutputs, partition_of
from jobs.reach import TaskRoots, unreachable
from jobs.sandbox import Sandbox, SandboxError, TaskLimits, TaskResult, TaskSpec
from jobs.tooloutputs import (
    TOOLS_DIR,
    ToolError,
    check_reducers,
    read_calls,
    references,
    store_calls,
)
from jobs.trees import remove_tree
from jobs.warm import WarmPool
from storage import LocalNode, Node
from storage import errors as se
from storage.blobs import MemoryBlobWriter
from storage.nodeapi import BLOCK
from storage.replicas import BlobMeta, ReplicatedWriter, place_small

__all__ = ["PeerFactory", "TaskAgent", "partition_of", "remote_peers", "sweep_scratch"]

log = logging.getLogger("manta.jobs")

Record = dict[str, Any]
PeerFactory = Callable[[str, str], Node]  # (node id, url) -> the Node to reach that peer by
EARLY_CANCEL_S = 600.0  # a cancel that arrives before its task is remembered this long


def remote_peers(secret: str | None) -> PeerFactory:
    """Peers of a `manta node` process: RemoteNodes signed with the cluster secret."""

    def make(node_id: str, url: str) -> Node:
        from storage.remote import RemoteNode  # the HTTP client only in node processes

        if secret is None:
            raise ValueError("peers on other hosts need the cluster secret")
        return RemoteNode(url, secret, node_id)

    return make


def sweep_scratch(node: LocalNode) -> None:
    """Remove the scratch dirs that tasks left when their process stopped mid-task."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root := node.scratch_root()):
            remove_tree(os.path.join(root, name))


class TaskAgent:
    """Runs tasks on `node`: at most `slots` containers at once within `memory_budget_mb`
    (or an `admission` shared with other nodes of this host), accounts in turn."""

    def __init__(self, node: LocalNode, sandbox: Sandbox | None, secret: str | None, slots: int,
                 memory_budget_mb: int | None = None, peer: PeerFactory | None = None, *,
                 admission: Admission | None = None, roots: TaskRoots | None = None,
                 stream_copies: bool = False) -> None:
        self.node = node
        self.sandbox = sandbox
        self.slots = slots
        self.stream_copies = stream_copies
        self._peer_factory = peer or remote_peers(secret)
        self.admission = admission or Admission([node.id], slots, memory_budget_mb or default_budget_mb())
        self._roots = roots
        self._own_roots = False
        self._lock = threading.Lock()
        self._peers: dict[str, Node] = {}
        self._running: dict[tuple[str, str], threading.Event] = {}
        self._early: dict[tuple[str, str], float] = {}
        self.images = NodeImages(node.root)
        self._tools_ok: bool | None = None
        reuse_s = sandbox.config.reuse_idle_s if sandbox is not None else 0
        self.warm = WarmPool(sandbox, reuse_s, max_idle=slots) if sandbox is not None and reuse_s > 0 else None

    # -- the node API ------------------------------------------------------------------

    def busy(self) -> int:
        """Containers running now."""
        return self.admission.running(self.node.id)

    def run(self, request: Record, cancel: threading.Event | None = None) -> Record:
        """Run one task (blocking) and return its outcome; a node failure is reported in
        the outcome's `node_failure`, never raised."""
        key = (request["job"], request["task"])
        event = cancel or threading.Event()
        with self._lock:
            if self._early.pop(key, None) is not None:
                event.set()
            self._running[key] = event
        task = _Task(self, request)
        try:
            return self._run(task, event)
        except (je.NodeFailure, se.StorageError, OSError) as exc:
            log.warning("job %s task %s: node %s failed: %s", key[0], key[1], self.node.id, exc)
            return task.outcome(node_failure=str(exc) or type(exc).__name__)
        finally:
            with self._lock:
                self._running.pop(key, None)

    def cancel(self, job_id: str, task_id: str) -> None:
        """Kill the task's container (or end its wait for a slot); one not started yet is
        cancelled when it arrives."""
        key = (job_id, task_id)
        with self._lock:
            event = self._running.get(key)
            if event is not None:
                event.set()
                return
            now = time.monotonic()
            self._early = {k: t for k, t in self._early.items() if now - t < EARLY_CANCEL_S}
            self._early[key] = now

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()
        with self._lock:
            if self._own_roots and self._roots is not None:
                self._roots.close()
                self._roots = None

    # -- one task -------------------------------------------------------------------------

    def peer(self, node_id: str, url: str) -> Node | None:
        if node_id == self.node.id:
            return self.node
        with self._lock:
            node = self._peers.get(node_id)
            if node is None:
                try:
                    node = self._peers[node_id] = self._peer_factory(node_id, url)
                except (KeyError, ValueError, OSError) as exc:
                    log.warning("peer %s (%s) is unknown here: %s", node_id, url, exc)
                    return None
            return node

    def roots(self) -> TaskRoots:
        """How the task user reaches this node's files; made on first use by an agent of its own."""
        with self._lock:
            if self._roots is None:
                ids = None
                if self.sandbox is not None:
                    with contextlib.suppress(SandboxError):
                        ids = self.sandbox.task_ids()
                self._roots = TaskRoots(ids)
                self._roots.open([self.node])
                self._own_roots = True
                with contextlib.suppress(OSError):
                    sweep_scratch(self.node)
            return self._roots

    def _run(self, task: _Task, cancel: threading.Event) -> Record:
        req = task.request
        if self.sandbox is None:
            return task.outcome(error=[je.INTERNAL_ERROR, "no sandbox is available on this server"])
        roots = self.roots()
        limits = req["limits"]
        env = dict(req["env"])
        spec = TaskSpec(exec=req["exec"], env=env, init=req.get("init"),
                        limits=TaskLimits(memory_mb=limits["memory_mb"], disk_mb=limits["disk_mb"],
                                          timeout_s=limits["timeout_s"]))
        outputs: TaskOutputs | None = None
        try:
            if req.get("image"):
                try:
                    spec.image = roots.path(self.node, self._image(task, req["image"]))
                except je.ImageError as exc:  # the same tar on every node: not this node's fault
                    return task.outcome(error=[je.TASK_INIT_ERROR, f"image {req['image']['name']}: {exc}"])
            if req["type"] == "map":
                path = task.input_path(req["inputs"][0])
                spec.stdin_paths = [path]
                spec.input_file = roots.path(self.node, path)
                env["MANTA_INPUT_FILE"] = "/manta/input"
            else:
                part = tuple(req["partition"]) if req.get("partition") else None
                spec.stdin_paths = [task.input_path(entry, part) for entry in req["inputs"]]  # type: ignore[arg-type]
            for asset in req.get("assets") or []:
                spec.assets.append((roots.path(self.node, _uncounted(task, asset)),
                                    os.path.basename(asset["name"])))
            if self._tools_reachable():
                ids = self._task_ids()
                spec.output_dir = roots.path(self.node, task.scratch.output_path())
                spec.make_output_dir = lambda: task.scratch.output_dir(ids)
            outputs = TaskOutputs(self._writer_factory(req), req.get("partitions") or 0,
                                  self._small_placer(req), self._delete)
            with self.admission.hold(self.node.id, req["owner"], limits["memory_mb"], cancel) as started:
                if not started:
                    outputs.abort()
                    return task.outcome(killed="cancelled")
                try:
                    if self.warm is not None:  # tasks of one job phase one after another share a container
                        result = self.warm.run((req["job"], req["phase"]), spec, outputs.write, cancel)
                    else:
                        result = self.sandbox.run(spec, outputs.write, cancel)
                except SandboxError as exc:  # could not start, or an input failed to read: the node's fault
                    raise je.NodeFailure(f"sandbox: {exc}") from exc
            if result.init_failed and result.stderr.startswith(b"bwrap: "):  # e.g. a bind source it cannot reach
                raise je.NodeFailure(f"sandbox setup: {result.stderr.decode(errors='replace').strip()[:500]}")
            if not result.ok:
                outputs.abort()
                return task.outcome(result)
            try:
                out_dir = task.scratch.made_output_dir()  # none: the task used no tool
                calls = read_calls(out_dir, limits["disk_mb"] << 20) if out_dir is not None else []
                check_reducers(calls, int(req.get("reducers") or 0))
            except ToolError as exc:
                outputs.abort()
                return task.outcome(result, error=[je.USER_TASK_ERROR, str(exc)])
            if any(call.emits for call in calls):  # as in Manta: mpipe, mcat, msplit replace stdout
                outputs.abort()
                stdout: list[tuple[int, BlobMeta]] = []
            else:
                stdout = outputs.commit()
            blobs = store_calls(calls, out_dir or "", self._writer_factory(req), self._delete)
            out = self._replicate(stdout + [(p, meta) for p, meta, _ in blobs], req, outputs.journal)
            for record, (_, _, fields) in zip(out[len(stdout):], blobs, strict=True):
                record.update(fields)
            return task.outcome(result, outputs=out + references(calls))
        except BaseException:
            if outputs is not None:
                outputs.abort()
            raise
        finally:
            task.scratch.remove()

    def _tools_reachable(self) -> bool:
        """Whether the task user can reach the tools (jobs/tools) to have them bound."""
        if self._tools_ok is None:
            ids = self._task_ids()
            where = unreachable(TOOLS_DIR, *ids) if ids is not None else None
            if where is not None:
                log.warning("the task user cannot search %s: tasks run without mpipe, mtee, mcat, msplit", where)
            self._tools_ok = where is None
        return self._tools_ok

    def _task_ids(self) -> tuple[int, int] | None:
        with contextlib.suppress(SandboxError):
            return self.sandbox.task_ids() if self.sandbox is not None else None
        return None

    def _image(self, task: _Task, image: Record) -> str:
        """The image's tree in this node's cache, unpacked from its tar object when it is not
        there yet."""
        return self.images.path(image["id"], lambda: _uncounted(task, image["entry"]))

    def _writer_factory(self, req: Record) -> Callable[[], ReplicatedWriter]:
        copies = max(1, int(req.get("copies") or 1))
        if self.stream_copies and copies > 1:
            peers = self._peer_nodes(req)
            return lambda: ReplicatedWriter([self.node, *peers], copies, first=self.node)

        def here() -> ReplicatedWriter:
            try:
                return ReplicatedWriter([self.node], 1, first=self.node)
            except se.InsufficientNodes as exc:
                raise je.NodeFailure(f"node {self.node.id} cannot take the task's output: {exc}") from exc

        return here

    def _small_placer(self, req: Record) -> Callable[[MemoryBlobWriter], BlobMeta] | None:
        """In the front door's process, small outputs are placed without fsync and journalled
        in the outcome's catalog transaction (jobs/outputs.py); a remote node's are files."""
        if not self.stream_copies:
            return None
        copies = max(1, int(req.get("copies") or 1))
        peers = self._peer_nodes(req) if copies > 1 else []
        return lambda small: place_small([self.node, *peers], copies, small, first=self.node)

    def _peer_nodes(self, req: Record) -> list[Node]:
        """The request's peers (where further copies of outputs may go), as nodes."""
        return [p for p in (self.peer(e["id"], e["url"]) for e in req.get("peers") or [])
                if p is not None and p is not self.node]

    def _replicate(self, metas: list[tuple[int, BlobMeta]], req: Record,
                   journal: dict[str, bytes] | None = None) -> list[Record]:
        """Copy each output from this node onto peers until `copies` copies exist. Outputs
        placed without fsync carry their bytes (`data_b64`: outcomes stay JSON) for the outcome's
        journal entry."""
        copies = max(1, int(req.get("copies") or 1))
        peers = [e for e in req.get("peers") or [] if e["id"] != self.node.id]
        try:
            for _, meta in metas:
                for entry in peers:
                    if len(meta.nodes) >= copies:
                        break
                    peer = self.peer(entry["id"], entry["url"])
                    if peer is None or peer.id in meta.nodes:
                        continue
                    try:
                        peer.copy_from(self.node, meta.blob_id)
                        meta.nodes.append(peer.id)
                    except se.ResourceExhausted:
                        raise
                    except (OSError, se.StorageError) as exc:
                        log.warning("node %s: copying output %s to peer %s failed: %s",
                                    self.node.id, meta.blob_id, entry["id"], exc)
                if len(meta.nodes) < copies:
                    raise je.NodeFailure(f"only {len(meta.nodes)} of {copies} copies of an output could be made")
        except BaseException:
            for _, meta in metas:
                self._delete(meta)
            raise
        out = [{"partition": index, "blob": m.blob_id, "size": m.size, "md5": m.md5.hex(),
                "sha256": m.sha256.hex(), "crcs": m.blocks.hex(), "nodes": list(m.nodes)}
               for index, m in metas]
        for output in out:
            if journal and output["blob"] in journal:
                output["data_b64"] = base64.b64encode(journal[output["blob"]]).decode()
        return out

    def _delete(self, meta: BlobMeta) -> None:
        for node_id in meta.nodes:
            node = self.node if node_id == self.node.id else self._peers.get(node_id)
            if node is not None:
                with contextlib.suppress(OSError, se.StorageError):
                    node.delete(meta.blob_id)


class _Scratch:
    """The task's own directory on the node (0711; files 0644 so the sandbox user can read
    them), made when the first file is asked for: a task using its input in place needs none."""

    def __init__(self, node: LocalNode, job_id: str, task_id: str) -> None:
        self.path = os.path.join(node.scratch_root(), f"{job_id}-{task_id}")
        self._n = 0
        self._made = False

    def _make(self) -> None:
        if not self._made:
            base = os.path.dirname(self.path)
            os.makedirs(base, exist_ok=True)
            os.chmod(base, 0o711)
            remove_tree(self.path)
            os.mkdir(self.path)
            os.chmod(self.path, 0o711)
            self._made = True

    def new_file(self) -> str:
        self._make()
        self._n += 1
        return os.path.join(self.path, f"in{self._n}")

    def output_path(self) -> str:
        """Where `output_dir` makes the in-task tools' directory; the scratch root above it
        is made now (reused containers keep their own directories there)."""
        base = os.path.dirname(self.path)
        if not os.path.isdir(base):
            os.makedirs(base, exist_ok=True)
            os.chmod(base, 0o711)
        return os.path.join(self.path, "out")

    def made_output_dir(self) -> str | None:
        """The in-task tools' directory if it was made (by a fresh container, or to take
        what a task left in a reused one's)."""
        path = os.path.join(self.path, "out")
        return path if self._made and os.path.isdir(path) else None

    def output_dir(self, ids: tuple[int, int] | None = None) -> str:
        """The in-task tools' directory (/manta/out), the task user's, made on first call."""
        path = os.path.join(self.path, "out")
        if not os.path.isdir(path):
            self._make()
            os.mkdir(path, 0o700)
            if ids is not None:
                os.chown(path, *ids)
        return path

    def remove(self) -> None:
        if self._made:
            remove_tree(self.path)


class _Task:
    """One request's inputs, byte counts and damage reports."""

    def __init__(self, agent: TaskAgent, request: Record) -> None:
        self.agent = agent
        self.node = agent.node
        self.request = request
        self.scratch = _Scratch(agent.node, request["job"], request["task"])
        self.bytes_local = 0
        self.bytes_remote = 0
        self.damaged: list[list[str]] = []

    def outcome(self, result: TaskResult | None = None, **fields: Any) -> Record:
        out: Record = {"exit_code": None, "signal": None, "killed": None, "init_failed": False,
                       "duration_s": None, "stderr_b64": "", "outputs": [],
                       "bytes_local": self.bytes_local, "bytes_remote": self.bytes_remote,
                       "damaged": self.damaged, "node_failure": None, "error": None}
        if result is not None:
            out.update(exit_code=result.exit_code, signal=result.signal, killed=result.killed,
                       init_failed=result.init_failed, duration_s=round(result.duration_s, 4),
                       stderr_b64=base64.b64encode(result.stderr).decode())
        out.update(fields)
        return out

    def input_path(self, entry: Record, partition: tuple[int, int] | None = None) -> str:
        """A file on this node holding the object's bytes (its blob itself when possible)."""
        segments = entry["segments"]
        if partition is None and len(segments) == 1 and self._listed_here(segments[0]):
            seg = segments[0]
            path, problem = self.node.task_input(seg["blob"], seg["size"], bytes.fromhex(seg["crcs"]))
            if path is not None:
                self.bytes_local += seg["size"]
                return path
            # the task would read the file raw: a replica failing its check is read block by block
            if problem is not None and (problem != "missing" or self.node.recheck(pool=False)):  # not merely a node gone
                self._report(seg["blob"], self.node.id, problem)
        target = self.scratch.new_file()
        with open(target, "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            pending = b""
            for seg in segments:
                for chunk in self._segment(entry["name"], seg):
                    if partition is None:
                        out.write(chunk)
                    else:
                        pending = _filter_lines(pending + chunk, partition, out)
            if pending and partition is not None and partition_of(pending, partition[1]) == partition[0]:
                out.write(pending)
        return target

    def _listed_here(self, seg: Record) -> bool:
        return any(n["id"] == self.node.id for n in seg["nodes"])

    def _segment(self, name: str, seg: Record) -> Iterator[bytes]:
        """The segment's bytes, block by block, each checked against its CRC32C, failing
        over between replicas (this node's first: its good blocks cross no network)."""
        blob, size = seg["blob"], seg["size"]
        crcs = bytes.fromhex(seg["crcs"]) or None
        sources: list[Node] = []
        for entry in seg["nodes"]:
            node = self.agent.peer(entry["id"], entry["url"])
            if node is not None:
                sources.append(node)
        sources.sort(key=lambda n: n is not self.node)
        pins: dict[str, tuple[Node, Any]] = {}
        try:
            for offset in range(0, size, BLOCK):
                data, source = self._block(blob, offset, min(BLOCK, size - offset), crcs, sources, pins)
                if source is self.node:
                    self.bytes_local += len(data)
                else:
                    self.bytes_remote += len(data)
                yield data
        except je.NodeFailure as exc:
            raise je.NodeFailure(f"reading {name}: {exc}") from exc
        finally:
            for node, handle in pins.values():
                if handle is not None:
                    with contextlib.suppress(OSError):
                        node.unpin(handle)

    def _block(self, blob: str, offset: int, length: int, crcs: bytes | None, sources: list[Node],
               pins: dict[str, tuple[Node, Any]]) -> tuple[bytes, Node]:
        for node in list(sources):
            try:
                if node.id not in pins:
                    pins[node.id] = (node, node.pin(blob))
                return node.read(blob, offset, length, crcs, pins[node.id][1]), node
            except (FileNotFoundError, se.BlobMissing):
                self._bad(sources, node, blob, "missing" if node.recheck(pool=False) else "node down")
            except se.BlobDamaged as exc:
                self._bad(sources, node, blob, exc.reason, keep=True)
            except ConnectionError as exc:  # a remote node gone: no replica's fault
                node.mark_failed(f"read failed: {exc}")
                self._bad(sources, node, blob, "node down")
            except OSError as exc:
                se.ResourceExhausted.raise_if(exc, "reading a task input")
                self._bad(sources, node, blob, f"read error: {exc.strerror or exc}", keep=True)
        raise je.NodeFailure(f"no replica of blob {blob} could be read at offset {offset}")

    def _bad(self, sources: list[Node], node: Node, blob: str, reason: str, keep: bool = False) -> None:
        """Report a failed replica and drop it; with `keep` (only this block may be bad) it
        stays a source for the following blocks: first if it is this node's, else last."""
        sources.remove(node)
        if keep:
            sources.insert(0 if node is self.node else len(sources), node)
        if reason != "node down":
            self._report(blob, node.id, reason)

    def _report(self, blob: str, node_id: str, reason: str) -> None:
        if not any(d[0] == blob and d[1] == node_id for d in self.damaged):
            self.damaged.append([blob, node_id, reason])


def _filter_lines(data: bytes, partition: tuple[int, int], out: Any) -> bytes:
    """Write the complete lines of `data` that belong to `partition`; return the tail."""
    index, count = partition
    lines = data.split(b"\n")
    tail = lines.pop()
    out.write(b"".join(line + b"\n" for line in lines if partition_of(line, count) == index))
    return tail


def _uncounted(task: _Task, entry: Record) -> str:
    """The path of an asset or an image's tar, fetched like an input (from a peer when this
    node has no copy) without counting as the task's input bytes (`bytes_local`,
    `bytes_remote` are what the task read of its inputs)."""
    counts = task.bytes_local, task.bytes_remote
    try:
        return task.input_path(entry)
    finally:
        task.bytes_local, task.bytes_remote = counts
