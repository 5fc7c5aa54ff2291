"""The front-door side of one task: build the agent's request from the catalog, hand it
to the task's node, commit the outcome.

Request (the node's agent runs it: jobs/agent.py, whose docstring has both shapes): the
phase's command, limits and env; each input and asset resolved to its segments, each with
its block CRCs and the nodes holding a replica (id and address, healthy ones first); the
next phase's reducer count (`partitions`); the phase's image (`image`: its id and its tar
object, resolved like an asset; the default image is built on first use); `copies` and the writable `peers` for output
copies. An input that is missing or that the job owner may not read ends the task
ResourceNotFoundError (an asset: TaskInitError) without running anything. May read: under
each request context the job keeps (its record's `access`, read afresh: jobs/records.py),
at the time of the check (storage.access.readable); a job that keeps none (a record from
before them) is decided for the worst case.

Outcome -> catalog: the output objects (blob records on the nodes the outcome names) and
the task's final record are written in one catalog transaction, committed relaxed
(storage.engine.Relaxed: it does not wait for the disk to flush; a crash of the machine,
not of the process, may undo the last such commits, and then their tasks run again, as
tasks that were running do after a restart; their blob files are then garbage). The job's
end commits durably, and so makes every outcome before it durable too; a failed task keeps its
stderr (capped) as an object linked from the error record. Replicas the agent found bad are
queued for repair. An outcome with `node_failure` raises NodeFailure (the scheduler retries
the task on another node holding a replica).

In-task tools' outputs (jobs/tooloutputs.py): a named one (mpipe/mtee NAME) is stored at its
name and an mcat reference is listed as it is, once its bucket is checked to be the job
owner's (not a system `_` bucket); any name that is not fails the task (UserTaskError),
and nothing of it is stored. Generated names: `<base>.m<call>` (mpipe) and
`<base>.s<call>.r<reducer>` (msplit) beside stdout's `<base>[.r<reducer>]`. The task's
`outputs` lists emitted ones in the outcome's order, generated, named and referenced alike;
mtee's objects are stored but not listed. An mcat'ed object itself is resolved by the
phase that reads it, as in Manta.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs import errors as je
from jobs.images import Images
from jobs.outputs import partition_of
from jobs.records import JobRecords, jobs_bucket
from jobs.spec import parse_input
from storage import BlobRecord, Node, Store
from storage import errors as se
from storage.access import readable
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
    def __init__(self, code: str, message: str, denied: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.denied = denied  # refused by access control (not missing)


NO_CONTEXT: tuple[Mapping[str, str], ...] = ({},)  # a check with no request context


def _entry(ctx: RunContext, owner: str | None, name: str, missing_code: str,
           contexts: Sequence[Mapping[str, str]] | None = NO_CONTEXT) -> Record:
    """An input or asset as the agent sees it: its segments and where their replicas are.
    `owner` None: a system object (an image's tar), whoever owns it; else an object the
    owner may read (theirs, or shared with them: storage.access) under each of `contexts`
    (None: not known, the worst case)."""
    bucket, key = parse_input(name)
    store = ctx.store
    try:
        if owner is None:
            ref = store.catalog.buckets.get(bucket).ref()
        else:
            found = readable(store, owner, bucket, key, contexts)
            if found is None:
                raise _Failure(missing_code, f"{name}: access denied", denied=True)
            ref = found.ref()
        record = store.objects.get(ref, key)  # the bucket re-checked there
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
    contexts = _contexts(ctx, job)
    env = {"MANTA_JOB_ID": job["id"], "MANTA_PHASE": str(phase_no),
           "MANTA_OUTPUT_BASE": f"{jobs_bucket(owner)}/{job['id']}/p{phase_no}/{task['id']}"}
    partition = None
    reducers = nxt["count"] if nxt and nxt["type"] == "reduce" else 0
    if reducers:
        env["MANTA_NREDUCERS"] = str(reducers)
    if task["type"] == "map":
        inputs = [_entry(ctx, owner, task["input"], je.RESOURCE_NOT_FOUND, contexts)]
        env["MANTA_INPUT_OBJECT"] = task["input"]
    else:
        inputs = [_entry(ctx, owner, name, je.RESOURCE_NOT_FOUND, contexts) for name in task["inputs"]]
        env["MANTA_REDUCER"] = str(task.get("reducer", 0))
        if task.get("partition") is not None:
            partition = [task["partition"], phase["count"]]
    assets = [_entry(ctx, owner, name, je.TASK_INIT_ERROR, contexts) for name in phase.get("assets", [])]
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
            "partitions": reducers if reducers > 1 else 0, "reducers": reducers,
            "copies": store.copies, "peers": [{"id": n.id, "url": n.address} for n in peers]}


def _contexts(ctx: RunContext, job: Record) -> list[Mapping[str, str]] | None:
    """The request contexts the job keeps (None: not known), from its record as the catalog
    has it now: a scheduler's copy may not have the context of inputs just added."""
    try:
        access = ctx.records.get(job["id"]).get("access")
    except je.NoSuchJob:
        return None
    return list(access) if access else None


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
    objects: list[tuple[str, str, Record]] = []
    outputs = outcome.get("outputs") or []
    if error is None:
        try:
            targets = [_target(ctx, job["owner"], bucket, base, o, partitioned) for o in outputs]
        except _Failure as failure:
            store.free([o["blob"] for o in outputs if o.get("blob")])
            error = (failure.code, failure.message)
    if error is None:
        journal = {o["blob"]: base64.b64decode(o["data_b64"]) for o in outputs if o.get("data_b64") is not None}
        listed: list[tuple[str, int]] = []
        for (out_bucket, key), output in zip(targets, outputs, strict=True):
            if output.get("emit", True):
                listed.append((f"{out_bucket}/{key}", output["partition"]))
            if output.get("ref"):
                continue
            new_blobs[output["blob"]] = BlobRecord(0, output["size"], bytes.fromhex(output["sha256"]),
                                                   bytes.fromhex(output["crcs"]), list(output["nodes"]))
            objects.append((out_bucket, key, _object_record(output["blob"], output["size"], output["md5"],
                                                            bytes.fromhex(output["sha256"]),
                                                            output.get("headers") or {})))
        done.update(state="done", outputs=[name for name, _ in listed], error=None)
        if partitioned:
            done["partitions"] = [p for _, p in listed]
    else:
        if stderr:
            writer = store.writer()
            writer.write(stderr)
            meta = writer.commit()
            new_blobs[meta.blob_id] = meta.record()
            objects.append((bucket, f"{job['id']}/err/{task['id']}.stderr",
                            _object_record(meta.blob_id, meta.size, meta.md5.hex(), meta.sha256,
                                           {"content-type": "text/plain"})))
        _failed(done, task, error, stderr, f"{bucket}/{objects[0][1]}" if objects else None)
    made = len(objects) if error is None else 0
    done["attempts_log"] = log_attempt(task, done["state"])

    def op(txn: Txn) -> list[str]:
        freed: list[str] = []
        if made:
            _count_outputs(ctx, txn, job, made)
            for blob_id, data in journal.items():
                store.catalog.journal.put(txn, blob_id, data)
        for out_bucket, name, record in objects:
            freed += store.objects.put_in(txn, out_bucket, name, record, new_blobs, owner=job["owner"],
                                            enforce_quota=True)
        ctx.records.put_tasks(txn, [done])
        return freed

    try:
        store.free(ctx.records.write(op, durable=False))  # relaxed: see the module's docstring
    except (se.QuotaExceeded, je.QuotaExceeded, se.NoSuchBucket) as exc:
        store.free(list(new_blobs))
        if error is None:
            quota = isinstance(exc, se.QuotaExceeded | je.QuotaExceeded)
            error = (je.QUOTA_EXCEEDED_ERROR if quota else je.USER_TASK_ERROR,
                     f"the outputs were not stored: {exc}")
        _failed(done, task, error, stderr, None)
        done["attempts_log"] = log_attempt(task, done["state"])
        ctx.records.write(lambda txn: ctx.records.put_tasks(txn, [done]), durable=False)
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


def _target(ctx: RunContext, owner: str, bucket: str, base: str, output: Record,
            partitioned: bool) -> tuple[str, str]:
    """(bucket, key) of one outcome output; a name given by an in-task tool must be in one
    of the owner's own buckets (else _Failure, UserTaskError)."""
    tool = output.get("tool")
    name = output.get("ref") or output.get("name")
    if name:
        try:
            out_bucket, key = parse_input(name)
            if out_bucket.startswith("_"):
                raise _Failure(je.USER_TASK_ERROR, f"{tool} {name}: {out_bucket} is a system bucket; nothing was stored")
            if ctx.store.catalog.buckets.get(out_bucket).owner != owner:
                raise _Failure(je.USER_TASK_ERROR,
                               f"{tool} {name}: bucket {out_bucket} is not yours; nothing was stored")
        except je.InvalidJobSpec as exc:
            raise _Failure(je.USER_TASK_ERROR, f"{tool}: {exc.message}; nothing was stored") from None
        except se.NoSuchBucket:
            raise _Failure(je.USER_TASK_ERROR, f"{tool} {name}: no bucket {out_bucket}; nothing was stored") from None
        return out_bucket, key
    if tool == "mpipe":
        return bucket, f"{base}.m{output['call']}"
    if tool == "msplit":
        return bucket, f"{base}.s{output['call']}.r{output['partition']}"
    return bucket, f"{base}.r{output['partition']}" if partitioned else base


def _object_record(blob_id: str, size: int, md5_hex: str, sha256: bytes, headers: dict[str, str]) -> Record:
    """An output's object record; `headers` as mpipe -H gave them (x-amz-meta-* are metadata)."""
    stored = {k: v for k, v in headers.items() if not k.startswith("x-amz-meta-")}
    stored.setdefault("content-type", "application/octet-stream")
    return {"size": size, "etag": md5_hex, "sha256": sha256, "mtime": time.time(),
            "segments": [[blob_id, size]], "headers": stored,
            "meta": {k[len("x-amz-meta-"):]: v for k, v in headers.items() if k.startswith("x-amz-meta-")},
            "checksums": {}, "checksum_type": None, "parts": None}
