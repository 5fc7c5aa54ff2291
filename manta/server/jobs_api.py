"""The jobs HTTP API under /_manta/jobs (SigV4 with the same keys as S3).

    POST /_manta/jobs                 {name, phases, inputs, end}  -> 201 job
    GET  /_manta/jobs[?limit=N][&state=S][&marker=ID]             -> {"jobs": [...], "truncated": bool,
                                                                      "next_marker": ID (when truncated)}
    GET  /_manta/jobs/ID[?tasks=1][&wait=S]                        -> job + per-phase counts (+ tasks);
                                                                      with wait, once the job is over and
                                                                      no task runs, or after S s (<= 30)
    POST /_manta/jobs/ID/inputs       {"inputs": [...], "end": false} -> job   (<= 10,000 inputs
                                                                      a request, on create too)
    POST /_manta/jobs/ID/end                                       -> job
    POST /_manta/jobs/ID/cancel                                    -> job
    GET  /_manta/jobs/ID/outputs                                   -> {"outputs": ["bucket/key", ...]}
    GET  /_manta/jobs/ID/errors                                    -> {"errors": [...]}

A status reads the job's task counts (jobs.records: one catalog read, however many tasks
the job has); `?tasks=1` lists every task, and its counts are those of that list.
Any worker process serves it: its scheduler answers from the catalog when it is not the
started one (jobs/scheduler.py), and the started one picks up the change within 0.1 s.
An account sees only its own jobs. Inputs are checked when they are given, with the
condition keys of the request that gives them (`request_context`: the S3 requests' own,
s3/access.py), so a job reads nothing its owner's GET over the same connection could not:
one the account may not read (storage.access: a bucket policy or an ACL may share another
account's; a policy may refuse, say, plain HTTP) is AccessDenied. The job keeps those keys
(jobs/records.py `access`) and each task checks again when it runs, under them, at that
time (ResourceNotFoundError then, like a missing object). Outputs go only to the job
owner's buckets.
Errors use the S3 error XML (InvalidArgument for a bad spec, NoSuchJob, ...).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import JSONResponse, Response

from jobs import JobScheduler
from jobs import errors as je
from jobs.records import JOB_STATES, PAGE_MAX, task_counts
from jobs.spec import parse_spec
from manta.server.s3 import errors as s3e
from manta.server.s3.access import context_of
from manta.server.s3.body import read_small
from manta.server.s3.common import in_thread, read_catalog
from manta.server.s3.context import S3Request
from storage import Store

MAX_BODY = 8 * 1024 * 1024
# inputs one request may add (`manta.Client` sends batches of 1,000): each takes catalog
# work in one transaction, and 1,000,000 in one request held other writes for seconds
MAX_INPUTS_PER_REQUEST = 10_000
COUNT_STATES = ("queued", "running", "done", "failed", "cancelled")


async def _json(req: S3Request) -> dict[str, Any]:
    body = await read_small(req, MAX_BODY)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python recurses
        raise s3e.InvalidRequest("The body must be JSON.") from None
    if not isinstance(value, dict):
        raise s3e.InvalidRequest("The body must be a JSON object.")
    return value


def request_context(req: S3Request) -> dict[str, str]:
    """The condition keys a job's inputs are checked under: those an S3 request over the
    same connection would have (s3/access.py), but s3:versionid (a job reads the current
    version; `?versionId` on this request names none)."""
    context = context_of(req)
    context.pop("s3:versionid", None)
    return context


def summary(job: dict[str, Any], counts: dict[str, Any], tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The job's status: its record, per-phase task counts (jobs.records.task_counts), and
    with `tasks` every task's record."""
    phases = []
    for number, phase in enumerate(job["phases"]):
        mine = counts["phases"].get(str(number), {})
        phases.append({**phase, "tasks": sum(mine.values()), **{state: mine.get(state, 0) for state in COUNT_STATES}})
    out = {k: job[k] for k in ("id", "name", "owner", "state", "inputs_ended", "input_count", "created", "finished")}
    out["phases"] = phases
    out["errors"] = sum(p["failed"] + p["cancelled"] for p in phases)
    out["bytes_local"] = counts["bytes_local"]
    out["bytes_remote"] = counts["bytes_remote"]
    if tasks is not None:
        keep = ("id", "phase", "type", "state", "node", "attempts", "attempts_log",
                "input", "inputs", "reducer", "outputs",
                "error", "bytes_local", "bytes_remote", "started", "finished", "duration_s", "exit_code")
        out["tasks"] = [{k: t.get(k) for k in keep if k in t} for t in tasks]
    return out


async def status(scheduler: JobScheduler, job: dict[str, Any], with_tasks: bool = False) -> JSONResponse:
    """The job's status response: its counts from one catalog read, or with `with_tasks`
    from the task records it lists (so that both agree)."""
    if with_tasks:
        tasks = await in_thread(scheduler.tasks, job["id"])
        return JSONResponse(summary(job, task_counts(tasks), tasks))
    return JSONResponse(summary(job, await in_thread(scheduler.counts, job["id"])))


MAX_WAIT_S = 30.0
WAIT_POLL_S = 0.02


async def _settled(scheduler: JobScheduler, store: Store, job_id: str, wait: str) -> None:
    """Return once the job is over with no task running, or after `wait` seconds: a client
    waiting for a job learns of its end within WAIT_POLL_S instead of its own poll interval."""
    try:
        wait_s = float(wait)
    except ValueError:
        raise s3e.InvalidArgument("wait must be a number of seconds", ArgumentName="wait") from None
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise s3e.InvalidArgument(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", ArgumentName="wait")
    deadline = asyncio.get_running_loop().time() + wait_s
    while (not await read_catalog(store, scheduler.settled, job_id)
           and asyncio.get_running_loop().time() < deadline):
        await asyncio.sleep(WAIT_POLL_S)


async def _listing(scheduler: JobScheduler, owner: str, query: Any) -> dict[str, Any]:
    """A page of the account's jobs, oldest first: `limit` (1-1000, default 1000), `state`,
    `marker` (the `next_marker` of the page before: a job id of theirs)."""
    try:
        limit = int(query.get("limit", PAGE_MAX))
    except ValueError:
        limit = 0
    if not 1 <= limit <= PAGE_MAX:
        raise s3e.InvalidArgument(f"limit must be a whole number from 1 to {PAGE_MAX}", ArgumentName="limit")
    state = query.get("state")
    if state is not None and state not in JOB_STATES:
        raise s3e.InvalidArgument(f"state must be one of {', '.join(JOB_STATES)}", ArgumentName="state")
    marker = query.get("marker") or None
    try:
        jobs, after = await in_thread(scheduler.records.page, owner, state, marker, limit)
    except je.NoSuchJob:
        raise s3e.InvalidArgument(f"marker {marker} is not one of your jobs", ArgumentName="marker") from None
    return {"jobs": jobs, "truncated": after is not None, **({"next_marker": after} if after else {})}


def routes(scheduler: JobScheduler) -> Any:
    async def handle(req: S3Request) -> Response:
        try:
            return await _handle(scheduler, req)
        except je.InvalidJobSpec as exc:
            raise s3e.InvalidArgument(exc.message) from None
        except je.NoSuchJob as exc:
            raise s3e.NoSuchJob(f"The job {exc.job_id} does not exist.") from None
        except je.JobInputsClosed as exc:
            raise s3e.InvalidRequest(str(exc)) from None
        except je.AccessDenied as exc:
            raise s3e.AccessDenied(f"Access Denied: {exc.name}") from None
        except je.QuotaExceeded as exc:
            raise s3e.QuotaExceeded(f"You are at your limit of {exc.limit} {exc.resource}.") from None

    return handle


def _check_count(inputs: object) -> None:
    if isinstance(inputs, list) and len(inputs) > MAX_INPUTS_PER_REQUEST:
        raise s3e.InvalidArgument(f"At most {MAX_INPUTS_PER_REQUEST} inputs may be given in one request; "
                                  f"this one gives {len(inputs)}: add the others in further requests.")


async def _handle(scheduler: JobScheduler, req: S3Request) -> Response:
    parts = req.key.split("/")  # ["jobs", ID?, ACTION?]
    owner = req.owner
    if len(parts) == 1:
        if req.method == "POST":
            payload = await _json(req)
            _check_count(payload.get("inputs"))
            spec = parse_spec(payload, scheduler.phase_defaults())
            job = await in_thread(scheduler.create, owner, spec, request_context(req))
            if payload.get("end"):
                job = await in_thread(scheduler.add_inputs, job["id"], owner, [], True)
            return JSONResponse(summary(job, task_counts([])), status_code=201)
        if req.method == "GET":
            return JSONResponse(await _listing(scheduler, owner, req.query))
        raise s3e.MethodNotAllowed(Method=req.method, ResourceType="JOBS")
    job_id = parts[1]
    action = "/".join(parts[2:])
    job = await in_thread(scheduler.job, job_id, owner)
    if action == "" and req.method == "GET":
        if "wait" in req.query:
            await _settled(scheduler, req.store, job_id, req.query["wait"])
            job = await in_thread(scheduler.job, job_id, owner)
        return await status(scheduler, job, with_tasks=req.query.get("tasks") in ("1", "true"))
    if req.method == "POST" and action in ("inputs", "end"):
        payload = await _json(req) if action == "inputs" else {}
        inputs = payload.get("inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise s3e.InvalidArgument("inputs must be a list of bucket/key strings")
        _check_count(inputs)
        job = await in_thread(scheduler.add_inputs, job_id, owner, inputs,
                              action == "end" or bool(payload.get("end")), request_context(req))
        return await status(scheduler, job)
    if req.method == "POST" and action == "cancel":
        job = await in_thread(scheduler.cancel, job_id, owner)
        return await status(scheduler, job)
    if req.method == "GET" and action == "outputs":
        tasks = await in_thread(scheduler.tasks, job_id)
        last = len(job["phases"]) - 1
        outputs = [o for t in tasks if t["phase"] == last and t["state"] == "done" for o in t["outputs"]]
        return JSONResponse({"outputs": outputs, "state": job["state"]})
    if req.method == "GET" and action == "errors":
        tasks = await in_thread(scheduler.tasks, job_id)
        errors = [{"task": t["id"], "phase": t["phase"], "node": t.get("node"), **t["error"]}
                  for t in tasks if t.get("error")]
        return JSONResponse({"errors": errors, "state": job["state"]})
    raise s3e.NoSuchKey(Key=req.key)
