"""The front-door side of one task: build the agent's request from the catalog, hand it
to the task's node, commit the outcome.

Request (the node's agent runs it: jobs/agent.py, whose docstring has both shapes): the
phase's command, limits and env; each input and asset resolved to its segments, each with
its block CRCs and the nodes holding a replica (id and address, healthy ones first); the
next phase's reducer count (`partitions`); the phase's image (`image`: its id and its tar
object, resolved like an asset; the default image is built on first use); `copies` and the writable `peers` for output
copies. An input that is missing or not the job owner's ends the task ResourceNotFoundError
(an asset: TaskInitError) without running anything.

Outcome -> catalog: the output objects (blob records on the nodes the outcome names) and
the task's final record are written in one catalog transaction; a failed task keeps its
stderr (capped) as an object linked from the error record. Replicas the agent found bad are
queued for repair. An outcome with `node_failure` raises NodeFailure (the scheduler retries
the task on another node holding a replica).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobs import errors as je
from jobs.images import Images
from jobs.outputs import partition_of
from jobs.records import JobRecords, jobs_bucket, task_key
from jobs.spec import parse_input
from storage import BlobRecord, BucketRef, Node, Store
from storage import errors as se
from storage.catalog import Txn
from storage.replicas import choose_nodes

__all__ = ["RunContext", "build_request", "log_attempt", "partition_of", "run_task"]

Record = dict[str, Any]
STDERR_EXCERPT_BYTES = 2048


@dataclass
class RunContext:
    store: Store
    records: JobRecords
    images: Images | None = None


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _entry(ctx: RunContext, owner: str | None, name: str, missing_code: str) -> Record:
    """An input or asset as the agent sees it: its segments and where their replicas are.
    `owner` None: a system object (an image's tar), whoever owns it."""
    bucket, key = parse_input(name)
    store = ctx.store
    try:
        if owner is None:
            owner = store.catalog.buckets.get(bucket).owner
        if store.catalog.buckets.get(bucket).owner != owner:
            raise _Failure(missing_code, f"{name}: access denied")
        record = store.objects.get(BucketRef(bucket, owner), key)  # owner re-checked there
    except (se.NoSuchBucket, se.NoSuchKey):
        raise _Failure(missing_code, f"{name}: no such object") from None
    segments = []
    with store.catalog.read() as txn:
        for blob_id, size, *_ in record["segments"]:
            meta = store.catalog.blobrefs.get(txn, blob_id) or BlobRecord()
            holders = [store.nodes[n] for n in meta.nodes if n in store.nodes]
            holders.sort(key=lambda n: not n.healthy())
            segments.append({"blob": blob_id, "size": size, "crcs": (meta.blocks or b"").hex(),
                             "nodes": [{"id": n.id, "url": n.address} for n in holders]})
    return {"name": name, "size": record["size"], "segments": segments}


def build_request(ctx: RunContext, job: Record, task: Record, node: Node) -> Record:
    """The agent's request for `task` on `node`. Raises _Failure for a missing input."""
    phase_no = task["phase"]
    phase = job["phases"][phase_no]
    nxt = job["phases"][phase_no + 1] if phase_no + 1 < len(job["phases"]) else None
    owner = job["owner"]
    env = {"MANTA_JOB_ID": job["id"], "MANTA_PHASE": str(phase_no),
           "MANTA_OUTPUT_BASE": f"{jobs_bucket(owner)}/{job['id']}/p{phase_no}/{task['id']}"}
    partition = None
    if task["type"] == "map":
        inputs = [_entry(ctx, owner, task["input"], je.RESOURCE_NOT_FOUND)]
        env["MANTA_INPUT_OBJECT"] = task["input"]
    else:
        inputs = [_entry(ctx, owner, name, je.RESOURCE_NOT_FOUND) for name in task["inputs"]]
        env["MANTA_REDUCER"] = str(task.get("reducer", 0))
        if task.get("partition") is not None:
            partition = [task["partition"], phase["count"]]
    assets = [_entry(ctx, owner, name, je.TASK_INIT_ERROR) for name in phase.get("assets", [])]
    image = _image(ctx, phase["image"]) if phase.get("image") else None
    if image is not None:
        env["MANTA_IMAGE"] = phase["image"]
    store = ctx.store
    peers = choose_nodes(store.node_list(), len(store.nodes), exclude={node.id}) if store.copies > 1 else []
    return {"job": job["id"], "task": task["id"], "owner": owner, "phase": phase_no, "type": task["type"],
            "exec": phase["exec"], "init": phase.get("init"), "env": env,
            "limits": {"memory_mb": phase["memory_mb"], "disk_mb": phase["disk_mb"],
                       "timeout_s": phase["timeout_s"]},
            "inputs": inputs, "partition": partition, "assets": assets, "image": image,
            "partitions": nxt["count"] if nxt and nxt["type"] == "reduce" and nxt["count"] > 1 else 0,
            "copies": store.copies, "peers": [{"id": n.id, "url": n.address} for n in peers]}


def _image(ctx: RunContext, name: str) -> Record:
    """The phase's image as the agent sees it: its id and its tar object's replicas (the
    default image is built here when it does not exist yet)."""
    if ctx.images is None:
        raise _Failure(je.TASK_INIT_ERROR, f"image {name}: task images are not available on this server")
    try:
        record = ctx.images.resolve(name)
    except (je.NoSuchImage, je.ImageError) as exc:
        raise _Failure(je.TASK_INIT_ERROR, f"image {name}: {exc}") from None
    return {"name": name, "id": record.id, "entry": _entry(ctx, None, record.object, je.TASK_INIT_ERROR)}


def run_task(ctx: RunContext, job: Record, task: Record, node: Node,
             call: Callable[[Record], Record]) -> Record:
    """Run `task` on `node` through `call(request) -> outcome` (the node's agent) and
    persist its outcome; returns the final task record. Raises NodeFailure when the node
    (not the user's command) is at fault, OSError when it cannot be reached."""
    try:
        request = build_request(ctx, job, task, node)
    except _Failure as failure:
        return _finish(ctx, job, task, error=(failure.code, failure.message))
    outcome = call(request)
    for blob_id, node_id, reason in outcome.get("damaged") or []:
        ctx.store.report_damage(blob_id, node_id, reason)
    if outcome.get("node_failure"):
        raise je.NodeFailure(outcome["node_failure"])
    error = tuple(outcome["error"]) if outcome.get("error") else _classify(outcome)
    return _finish(ctx, job, task, error=error, outcome=outcome,  # type: ignore[arg-type]
                   partitioned=request["partitions"] > 1)


def _classify(outcome: Record) -> tuple[str, str] | None:
    if outcome["init_failed"]:
        return je.TASK_INIT_ERROR, "the phase's init command failed"
    if outcome["killed"] == "cancelled":
        return je.JOB_CANCELLED_ERROR, "the job was cancelled"
    if outcome["killed"]:
        return je.TASK_KILLED_ERROR, f"the task was killed: {outcome['killed']} limit exceeded"
    if outcome["exit_code"] != 0:
        code = outcome["exit_code"]
        how = f"exit status {code}" if code is not None else f"signal {outcome['signal']}"
        return je.USER_TASK_ERROR, f"the command failed ({how})"
    return None


def _finish(ctx: RunContext, job: Record, task: Record, error: tuple[str, str] | None = None,
            outcome: Record | None = None, partitioned: bool = False) -> Record:
    """Write the task's outcome and its output (or stderr) objects in one transaction.
    An outcome the owner's quota cannot hold fails the task with QuotaExceededError
    (a failed task whose stderr object does not fit keeps only the excerpt). The attempt
    is added to the record's `attempts_log`."""
    store = ctx.store
    bucket = jobs_bucket(job["owner"])
    base = f"{job['id']}/p{task['phase']}/{task['id']}"
    outcome = outcome or {}
    done = dict(task)
    done.update(finished=time.time(), bytes_local=outcome.get("bytes_local", 0),
                bytes_remote=outcome.get("bytes_remote", 0))
    if outcome.get("duration_s") is not None:
        done["duration_s"] = outcome["duration_s"]
        done["exit_code"] = outcome["exit_code"]
    stderr = base64.b64decode(outcome.get("stderr_b64") or "")
    new_blobs: dict[str, BlobRecord] = {}
    journal: dict[str, bytes] = {}  # outputs placed without fsync: durable with this commit
    objects: list[tuple[str, Record]] = []
    if error is None:
        outputs = outcome.get("outputs") or []
        journal = {o["blob"]: base64.b64decode(o["data_b64"]) for o in outputs if o.get("data_b64") is not None}
        names = [f"{base}.r{o['partition']}" if partitioned else base for o in outputs]
        for name, output in zip(names, outputs, strict=True):
            new_blobs[output["blob"]] = BlobRecord(0, output["size"], bytes.fromhex(output["sha256"]),
                                                   bytes.fromhex(output["crcs"]), list(output["nodes"]))
            objects.append((name, _object_record(output["blob"], output["size"], output["md5"],
                                                 bytes.fromhex(output["sha256"]), "application/octet-stream")))
        done.update(state="done", outputs=[f"{bucket}/{n}" for n in names], error=None)
        if partitioned:
            done["partitions"] = [o["partition"] for o in outputs]
    else:
        if stderr:
            writer = store.writer()
            writer.write(stderr)
            meta = writer.commit()
            new_blobs[meta.blob_id] = meta.record()
            objects.append((f"{job['id']}/err/{task['id']}.stderr",
                            _object_record(meta.blob_id, meta.size, meta.md5.hex(), meta.sha256, "text/plain")))
        _failed(done, task, error, stderr, f"{bucket}/{objects[0][0]}" if objects else None)
    made = len(objects) if error is None else 0
    done["attempts_log"] = log_attempt(task, done["state"])

    def op(txn: Txn) -> list[str]:
        freed: list[str] = []
        if made:
            _count_outputs(ctx, txn, job, made)
            for blob_id, data in journal.items():
                store.catalog.journal.put(txn, blob_id, data)
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
        _failed(done, task, error, stderr, None)
        done["attempts_log"] = log_attempt(task, done["state"])
        ctx.records.write(lambda txn: store.catalog.put(txn, "jobtasks", task_key(job["id"], task["id"]), done))
    return done


def log_attempt(task: Record, outcome: str) -> list[Record]:
    """The task's `attempts_log` with its current attempt added (node, started, finished, outcome)."""
    return [*task.get("attempts_log", []),
            {"node": task.get("node"), "started": task.get("started"), "finished": time.time(),
             "outcome": outcome}]


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
    limit = ctx.store.catalog.accounts.limits(job["owner"], txn).outputs
    if limit is not None and made > limit:
        raise je.QuotaExceeded(job["owner"], "outputs per job", limit)
    record["output_count"] = made
    ctx.store.catalog.put(txn, "jobs", job["id"].encode(), record)


def _object_record(blob_id: str, size: int, md5_hex: str, sha256: bytes, content_type: str) -> Record:
    return {"size": size, "etag": md5_hex, "sha256": sha256, "mtime": time.time(),
            "segments": [[blob_id, size]], "headers": {"content-type": content_type},
            "meta": {}, "checksums": {}, "checksum_type": None, "parts": None}
