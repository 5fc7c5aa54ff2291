"""Run one task on one node: resolve its inputs to files on that node, run the user's
command in a fresh sandbox, turn stdout into output objects, record the outcome.

Inputs: a single-blob object with a replica on the node is used in place (bind-mounted
at /manta/input and fed to stdin): no copy, `bytes_local`. The task reads that file raw,
so it is first checked against the blob's block checksums; a damaged replica is reported
for repair and the input assembled from the good ones instead. Anything else (no local
replica, a multipart object) is first assembled into the task's scratch directory on the
node through verified reads; bytes from replicas on other nodes count as `bytes_remote`.
A reducer whose inputs are not pre-partitioned (a reduce-only job with count > 1) filters
each input to its own key partition while assembling.

Outputs: stdout streams into a new blob whose first copy is on this node (the others per
`copies`); when the next phase is a reduce with count > 1, lines are split into one
output per reducer by a stable hash of their key (the text before the first tab). The
output objects and the task's final record are written in one catalog transaction.
Failures keep the task's stderr (capped) as an object linked from the error record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from jobs import errors as je
from jobs.reach import TaskRoots
from jobs.records import JobRecords, jobs_bucket, task_key
from jobs.sandbox import Sandbox, SandboxError, TaskLimits, TaskResult, TaskSpec
from jobs.spec import parse_input
from storage import BucketRef, LocalNode, Store
from storage import errors as se
from storage.catalog import Txn
from storage.replicas import ReplicatedWriter

__all__ = ["RunContext", "partition_of", "run_task", "sweep_scratch"]

log = logging.getLogger("manta.jobs")

Record = dict[str, Any]
STDERR_EXCERPT_BYTES = 2048


def partition_of(line: bytes, count: int) -> int:
    """The reducer (0..count-1) a line goes to: a stable hash of the text before the first tab."""
    key = line.split(b"\t", 1)[0].rstrip(b"\n")
    return zlib.crc32(key) % count


@dataclass
class RunContext:
    store: Store
    sandbox: Sandbox | None
    records: JobRecords
    roots: TaskRoots


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Scratch:
    """The task's own directory on the node (0711; files 0644 so the sandbox user can read
    them), made when the first file is asked for: a task using its input in place needs none."""

    def __init__(self, node: LocalNode, job_id: str, task_id: str) -> None:
        self.path = os.path.join(scratch_root(node), f"{job_id}-{task_id}")
        self._n = 0

    def new_file(self) -> str:
        if self._n == 0:
            base = os.path.dirname(self.path)
            os.makedirs(base, exist_ok=True)
            os.chmod(base, 0o711)
            shutil.rmtree(self.path, ignore_errors=True)
            os.mkdir(self.path)
            os.chmod(self.path, 0o711)
        self._n += 1
        return os.path.join(self.path, f"in{self._n}")

    def remove(self) -> None:
        if self._n:
            shutil.rmtree(self.path, ignore_errors=True)


def scratch_root(node: LocalNode) -> str:
    return node.scratch_root()


def sweep_scratch(node: LocalNode) -> None:
    """Remove the scratch dirs that tasks left when the server stopped mid-task."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(root := scratch_root(node)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


class _Inputs:
    def __init__(self, ctx: RunContext, owner: str, node: LocalNode, scratch: _Scratch) -> None:
        self.ctx = ctx
        self.owner = owner
        self.node = node
        self.scratch = scratch
        self.bytes_local = 0
        self.bytes_remote = 0

    def object(self, name: str, missing_code: str) -> Record:
        bucket, key = parse_input(name)
        try:
            bucket_record = self.ctx.store.catalog.bucket(bucket)
            if bucket_record["owner"] != self.owner:
                raise _Failure(missing_code, f"{name}: access denied")
            return self.ctx.store.objects.get(BucketRef(bucket, self.owner), key)  # owner re-checked there
        except (se.NoSuchBucket, se.NoSuchKey):
            raise _Failure(missing_code, f"{name}: no such object") from None

    def path(self, name: str, missing_code: str, partition: tuple[int, int] | None = None) -> str:
        """A file on this node holding the object's bytes (its blob itself when possible)."""
        record = self.object(name, missing_code)
        segments = record["segments"]
        with self.ctx.store.catalog.read() as txn:
            metas = [self.ctx.store.catalog.blob(txn, seg[0]) or {} for seg in segments]
        local_ok = True
        if partition is None and len(segments) == 1 and self.node.id in metas[0].get("nodes", []):
            # the task reads the file raw: it is checked first
            path, problem = self.node.task_input(segments[0][0], record["size"], metas[0].get("blocks") or b"")
            if path is not None:
                self.bytes_local += record["size"]
                return path
            local_ok = False
            if problem is not None and (problem != "missing" or self.node.recheck(pool=False)):  # not merely a node gone
                self.ctx.store.report_damage(segments[0][0], self.node.id, problem)
        target = self.scratch.new_file()
        readers = self.ctx.store.readers([seg[0] for seg in segments])
        try:
            with open(target, "wb") as out:
                os.fchmod(out.fileno(), 0o644)
                pending = b""
                for reader, meta, (_, size, *_) in zip(readers, metas, segments, strict=True):
                    if local_ok:
                        reader.prefer(self.node.id)
                    for chunk in reader.read(0, size):
                        if partition is None:
                            out.write(chunk)
                        else:
                            pending = _filter_lines(pending + chunk, partition, out)
                    if self.node.id in meta.get("nodes", []):
                        self.bytes_local += size
                    else:
                        self.bytes_remote += size
                if pending and partition is not None and partition_of(pending, partition[1]) == partition[0]:
                    out.write(pending)
        except se.StorageError as exc:
            raise je.NodeFailure(f"reading {name}: {exc}") from exc
        finally:
            for reader in readers:
                reader.close()
        return target


def _filter_lines(data: bytes, partition: tuple[int, int], out: Any) -> bytes:
    """Write the complete lines of `data` that belong to `partition`; return the tail."""
    index, count = partition
    lines = data.split(b"\n")
    tail = lines.pop()
    out.write(b"".join(line + b"\n" for line in lines if partition_of(line, count) == index))
    return tail


class _Outputs:
    """stdout -> one blob, or one per reducer of the next phase (made on its first byte:
    an empty partition makes no blob and no object)."""

    def __init__(self, store: Store, node: LocalNode, partitions: int) -> None:
        self.store = store
        self.node = node
        self.partitions = partitions
        self.writers: dict[int, ReplicatedWriter] = {}
        self._tail = b""
        if partitions <= 1:
            self.writers[0] = store.writer(first=node)  # fails now (no nodes) rather than mid-task

    def _writer(self, index: int) -> ReplicatedWriter:
        if index not in self.writers:
            self.writers[index] = self.store.writer(first=self.node)
        return self.writers[index]

    def write(self, data: bytes) -> None:
        if self.partitions <= 1:
            self.writers[0].write(data)
            return
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        buckets: dict[int, list[bytes]] = {}
        for line in data[:cut].splitlines(keepends=True):
            buckets.setdefault(partition_of(line, self.partitions), []).append(line)
        for index, lines in buckets.items():
            self._writer(index).write(b"".join(lines))

    def commit(self) -> list[tuple[int, Any]]:
        """(partition, blob meta) of each non-empty output, in partition order."""
        if self._tail:
            self._writer(partition_of(self._tail, self.partitions)).write(self._tail + b"\n")
            self._tail = b""
        out = []
        for index in sorted(self.writers):
            writer = self.writers[index]
            if writer.size == 0:
                writer.abort()
            else:
                out.append((index, writer.commit()))
        return out

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


def _classify(result: TaskResult) -> tuple[str, str] | None:
    if result.init_failed:
        return je.TASK_INIT_ERROR, "the phase's init command failed"
    if result.killed == "cancelled":
        return je.JOB_CANCELLED_ERROR, "the job was cancelled"
    if result.killed:
        return je.TASK_KILLED_ERROR, f"the task was killed: {result.killed} limit exceeded"
    if result.exit_code != 0:
        how = f"exit status {result.exit_code}" if result.exit_code is not None else f"signal {result.signal}"
        return je.USER_TASK_ERROR, f"the command failed ({how})"
    return None


def run_task(ctx: RunContext, job: Record, task: Record, node: LocalNode, cancel: Any,
             slot: Callable[[Any], AbstractContextManager[bool]]) -> Record:
    """Run `task` on `node` and persist its outcome; returns the final task record.
    `slot(cancel)` is held while the container runs (False: cancelled while waiting for it).
    Raises NodeFailure when the node (not the user's command) is at fault."""
    if ctx.sandbox is None:
        return _finish(ctx, job, task, error=(je.INTERNAL_ERROR, "no sandbox is available on this server"))
    phase_no = task["phase"]
    phase = job["phases"][phase_no]
    nxt = job["phases"][phase_no + 1] if phase_no + 1 < len(job["phases"]) else None
    partitions = nxt["count"] if nxt and nxt["type"] == "reduce" and nxt["count"] > 1 else 0
    scratch = _Scratch(node, job["id"], task["id"])
    inputs = _Inputs(ctx, job["owner"], node, scratch)
    outputs: _Outputs | None = None
    try:
        env = {"MANTA_JOB_ID": job["id"], "MANTA_PHASE": str(phase_no),
               "MANTA_OUTPUT_BASE": f"{jobs_bucket(job['owner'])}/{job['id']}/p{phase_no}/{task['id']}"}
        spec = TaskSpec(exec=phase["exec"], env=env, init=phase.get("init"),
                        limits=TaskLimits(memory_mb=phase["memory_mb"], disk_mb=phase["disk_mb"],
                                          timeout_s=phase["timeout_s"]))
        try:
            if task["type"] == "map":
                path = inputs.path(task["input"], je.RESOURCE_NOT_FOUND)
                spec.stdin_paths = [path]
                spec.input_file = ctx.roots.path(node, path)
                env["MANTA_INPUT_OBJECT"] = task["input"]
                env["MANTA_INPUT_FILE"] = "/manta/input"
            else:
                part = (task["partition"], phase["count"]) if task.get("partition") is not None else None
                spec.stdin_paths = [inputs.path(name, je.RESOURCE_NOT_FOUND, part) for name in task["inputs"]]
                env["MANTA_REDUCER"] = str(task.get("reducer", 0))
            for asset in phase.get("assets", []):
                spec.assets.append((ctx.roots.path(node, inputs.path(asset, je.TASK_INIT_ERROR)),
                                    os.path.basename(asset)))
        except _Failure as failure:
            return _finish(ctx, job, task, error=(failure.code, failure.message), inputs=inputs)
        try:
            outputs = _Outputs(ctx.store, node, partitions)
        except se.InsufficientNodes as exc:
            raise je.NodeFailure(str(exc)) from exc
        with slot(cancel) as started:
            if not started:
                outputs.abort()
                return _finish(ctx, job, task, error=(je.JOB_CANCELLED_ERROR, "the job was cancelled"),
                               inputs=inputs)
            try:
                result = ctx.sandbox.run(spec, outputs.write, cancel)
            except SandboxError as exc:  # could not start, or an input failed to read: the node's fault
                raise je.NodeFailure(f"sandbox: {exc}") from exc
        if result.init_failed and result.stderr.startswith(b"bwrap: "):  # e.g. a bind source it cannot reach
            raise je.NodeFailure(f"sandbox setup: {result.stderr.decode(errors='replace').strip()[:500]}")
        error = _classify(result)
        if error is not None:
            outputs.abort()
            return _finish(ctx, job, task, error=error, inputs=inputs, result=result)
        try:
            metas = outputs.commit()
        except se.InsufficientNodes as exc:
            raise je.NodeFailure(str(exc)) from exc
        return _finish(ctx, job, task, inputs=inputs, result=result, metas=metas, partitioned=partitions > 1)
    except BaseException:
        if outputs is not None:
            outputs.abort()
        raise
    finally:
        scratch.remove()


def _finish(ctx: RunContext, job: Record, task: Record, error: tuple[str, str] | None = None,
            inputs: _Inputs | None = None, result: TaskResult | None = None,
            metas: list[tuple[int, Any]] | None = None, partitioned: bool = False) -> Record:
    """Write the task's outcome and its output (or stderr) objects in one transaction.
    An outcome the owner's quota cannot hold fails the task with QuotaExceededError
    (a failed task whose stderr object does not fit keeps only the excerpt)."""
    store = ctx.store
    bucket = jobs_bucket(job["owner"])
    base = f"{job['id']}/p{task['phase']}/{task['id']}"
    done = dict(task)
    done.update(finished=time.time(), bytes_local=inputs.bytes_local if inputs else 0,
                bytes_remote=inputs.bytes_remote if inputs else 0)
    if result is not None:
        done["duration_s"] = round(result.duration_s, 4)
        done["exit_code"] = result.exit_code
    new_blobs: dict[str, Record] = {}
    objects: list[tuple[str, Record]] = []
    if error is None:
        names = [f"{base}.r{i}" if partitioned else base for i, _ in metas or []]
        for name, (_, meta) in zip(names, metas or [], strict=True):
            new_blobs[meta.blob_id] = meta.record()
            objects.append((name, _object_record(meta, "application/octet-stream")))
        done.update(state="done", outputs=[f"{bucket}/{n}" for n in names], error=None)
        if partitioned:
            done["partitions"] = [i for i, _ in metas or []]
    else:
        stderr = result.stderr if result is not None else b""
        if stderr:
            writer = store.writer()
            writer.write(stderr)
            meta = writer.commit()
            new_blobs[meta.blob_id] = meta.record()
            objects.append((f"{job['id']}/err/{task['id']}.stderr", _object_record(meta, "text/plain")))
        _failed(done, task, error, stderr, f"{bucket}/{objects[0][0]}" if objects else None)
    outputs = len(objects) if error is None else 0

    def op(txn: Txn) -> list[str]:
        freed: list[str] = []
        if outputs:
            _count_outputs(ctx, txn, job, outputs)
        for name, record in objects:
            freed += store.objects.put_in(txn, bucket, name, record, new_blobs, owner=job["owner"],
                                            enforce_quota=True)
        store.catalog.put(txn, "jobtasks", task_key(job["id"], task["id"]), done)
        return freed

    try:
        store.free(ctx.records.write(op))
    except (se.QuotaExceeded, je.QuotaExceeded) as exc:
        store.free(list(new_blobs))
        if error is None:
            error = (je.QUOTA_EXCEEDED_ERROR, f"the outputs were not stored: {exc}")
        _failed(done, task, error, result.stderr if result is not None else b"", None)
        ctx.records.write(lambda txn: store.catalog.put(txn, "jobtasks", task_key(job["id"], task["id"]), done))
    return done


def _failed(done: Record, task: Record, error: tuple[str, str], stderr: bytes, stderr_name: str | None) -> None:
    code, message = error
    done.update(state="cancelled" if code == je.JOB_CANCELLED_ERROR else "failed", outputs=[],
                error={"code": code, "message": message,
                       "input": task.get("input") or ",".join(task.get("inputs", [])[:3]),
                       "stderr": stderr_name,
                       "excerpt": stderr[:STDERR_EXCERPT_BYTES].decode(errors="replace")})
    done.pop("partitions", None)


def _count_outputs(ctx: RunContext, txn: Txn, job: Record, count: int) -> None:
    """Add `count` to the job's output objects, within the owner's per-job limit."""
    record = ctx.records.get(job["id"], txn)
    made = record.get("output_count", 0) + count
    limit = ctx.store.catalog.limits(job["owner"], txn).outputs
    if limit is not None and made > limit:
        raise je.QuotaExceeded(job["owner"], "outputs per job", limit)
    record["output_count"] = made
    ctx.store.catalog.put(txn, "jobs", job["id"].encode(), record)


def _object_record(meta: Any, content_type: str) -> Record:
    return {"size": meta.size, "etag": meta.md5.hex(), "sha256": meta.sha256, "mtime": time.time(),
            "segments": [[meta.blob_id, meta.size]], "headers": {"content-type": content_type},
            "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}
