"""Durable job state in the catalog: jobs, their inputs and their tasks.

    jobs       job id                          -> job record
    jobinputs  job id \\0 seq (u32 big-endian)  -> {"v": 1, "input": "bucket/key"}
    jobtasks   job id \\0 task id               -> task record

    jobs       \0seq                            -> change counter: bumped by every API write
    jobs       \0chg\0 seq (u64 big-endian)      -> job id: the change log (jobs/follow.py reads it)
    jobs       \0run\0 owner \0 job id           -> 1 while the job runs (the running-jobs quota)
    jobs       \0img\0 name                      -> a task image's record (jobs/images.py)
    jobs       \0cnt\0 job id                    -> the job's task counts (`task_counts`), changed
                                                   with every write of one of its tasks
    jobs       \0own\0 owner \0 created job id    -> the job's listing (`LISTED` fields), written with
                                                   its record; created: u64 big-endian microseconds

Job record: {v, id, owner, name, phases: [phase dicts], state: running|done|cancelled,
inputs_ended, input_count, created, finished, access}. `access`: the condition keys
(storage.access.lasting) of the requests that gave the job its inputs, each distinct one
once: the create's, then each add-inputs' with inputs; the reads its tasks make are
decided under every one of them (jobs/runner.py). None, or absent (a record from before
it, a job given inputs without a context, or more than MAX_CONTEXTS distinct ones): not
known, and those reads are decided for the worst case (storage.access.worst_case).
Task record: {v, id, job, phase, type, state, input | inputs, reducer, partition, node,
attempts, excluded, created, started, finished, outputs, error, bytes_local, bytes_remote, chained, attempts_log: [{node, started,
finished, outcome: done|failed|cancelled|"node failure: why"|"interrupted: ..."}]}.

These tables are the jobs package's (`TABLES`): storage does not know them, so whatever
runs jobs opens its catalog with them (`StoreConfig(extra_tables=TABLES)`).

Every change is one catalog transaction; a task's output objects are written in the same
transaction that marks it done, so a restart never sees half a task. Task records (running,
an outcome with its outputs, a task queued again) commit relaxed (storage.engine.Relaxed):
durable with the next durable commit, not before their writer goes on. Only a crash of the
machine can undo them, and then their tasks run again at the next start, as interrupted
ones do. API writes and a job's end are durable (and so make the task records before them
durable too): a job a client saw end stays ended.

Several processes share one catalog: any of them writes jobs through the API (create,
add_inputs, cancel), only the one started scheduler runs tasks. Each API write bumps the
change counter and logs the job id in the same transaction, so that scheduler learns of it
with one read. Writes that could race another process decide inside their transaction, on
the catalog's record, never on a copy: the running-jobs quota is counted in the create's
transaction; a job ends (done or cancelled) only if it still runs; a task goes running
unless it was cancelled meanwhile; a queued task is cancelled or failed only if still
queued; a task queued again whose job no longer runs is cancelled instead.

A listing of an account's jobs (`page`) reads only its `\0own\0` keys, in creation order:
every write of a job record goes through `_put_job`, which writes its listing in the same
transaction (the runner's output count, which no listing shows, is the one exception). A
scheduler that starts makes both indexes agree with the job records (`reindex`: catalogs
made before the listing index, or jobs an older server wrote).

A job's status needs its task counts, not its tasks: every task write (`put_tasks`) moves
the task's phase and state, and its bytes, in the job's counts record in the same
transaction, so a status costs one read however many tasks the job has. A scheduler that
starts writes the counts of every running job afresh (`recount`). A finished job made
before there were counts has none (and writes to it make none): its status counts a scan.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from jobs import errors as je
from jobs.errors import JobInputsClosed, NoSuchJob
from jobs.spec import JobSpec
from storage import Catalog
from storage.access import lasting
from storage.catalog import Txn

__all__ = ["TABLES", "JobRecords", "cancelled", "jobs_bucket"]

Record = dict[str, Any]
TABLES = ("jobs", "jobinputs", "jobtasks")  # the catalog tables of the jobs package
CHANGE_SEQ = b"\0seq"
CHANGES = b"\0chg\0"
RUNNING = b"\0run\0"
COUNTS = b"\0cnt\0"
OWNED = b"\0own\0"
JOB_STATES = ("running", "done", "cancelled")
LISTED = ("id", "name", "state", "created", "finished", "input_count")  # a job's fields in listings
PAGE_MAX = 1000
MAX_CONTEXTS = 16  # distinct request contexts a job keeps (`access`); past that, not known
FIRST_JOB = b"\x01"  # job ids sort after the keys above


def jobs_bucket(owner: str) -> str:
    """The bucket that holds an account's job outputs and stderr (not a valid S3 name, so
    nobody can create it; readable by its owner through S3 and the jobs API)."""
    return f"_jobs_{owner}"


def task_key(job_id: str, task_id: str) -> bytes:
    return job_id.encode() + b"\0" + task_id.encode()


class JobRecords:
    def __init__(self, catalog: Catalog) -> None:
        missing = [t for t in TABLES if t not in catalog.tables]
        if missing:
            raise ValueError(f"the catalog was opened without the jobs tables {missing}: "
                             "open it with extra_tables=jobs.records.TABLES")
        self.catalog = catalog

    def write(self, fn: Callable[[Txn], Any], durable: bool = True) -> Any:
        return self.catalog.write(fn, durable)

    # -- jobs -----------------------------------------------------------------------

    def create(self, owner: str, spec: JobSpec, context: Mapping[str, str] | None = None) -> Record:
        """A new running job; QuotaExceeded if `owner` runs as many jobs as allowed (counted
        in this transaction, so two processes cannot both pass). `context`: the condition
        keys of the request that creates it (None: not known)."""
        job_id = secrets.token_hex(8)
        record: Record = {
            "v": 1, "id": job_id, "owner": owner, "name": spec.name,
            "phases": [p.to_dict() for p in spec.phases], "state": "running",
            "inputs_ended": False, "input_count": 0, "created": time.time(), "finished": None,
            "access": [lasting(context)] if context is not None else None,
        }
        bucket = jobs_bucket(owner)

        def op(txn: Txn) -> Record:
            limit = self.catalog.accounts.limits(owner, txn).jobs
            if limit is not None and self._running(txn, owner) >= limit:
                raise je.QuotaExceeded(owner, "running jobs", limit)
            self.catalog.buckets.ensure_in(txn, bucket, owner)
            self._put_job(txn, record)
            self.catalog.put(txn, "jobs", _running_key(record), 1)
            self.catalog.put(txn, "jobs", COUNTS + job_id.encode(), task_counts([]))
            self._add_inputs_in(txn, record, list(spec.inputs))
            self._changed(txn, job_id)
            return record

        return self.write(op)  # type: ignore[no-any-return]

    def get(self, job_id: str, txn: Txn | None = None) -> Record:
        if txn is None:
            with self.catalog.read() as t:
                return self.get(job_id, t)
        record = self.catalog.get(txn, "jobs", job_id.encode())
        if record is None:
            raise NoSuchJob(job_id)
        return record  # type: ignore[no-any-return]

    def _put_job(self, txn: Txn, record: Record) -> None:
        """Write a job's record and its listing."""
        self.catalog.put(txn, "jobs", record["id"].encode(), record)
        self.catalog.put(txn, "jobs", _owned_key(record), _listing(record))

    def running_jobs(self) -> list[Record]:
        """Every running job's record (through the running-jobs index)."""
        with self.catalog.read() as txn:
            ids = [key.rpartition(b"\0")[2] for key, _ in self.catalog.scan(txn, "jobs", prefix=RUNNING)]
            records = [self.catalog.get(txn, "jobs", job_id) for job_id in ids]
        return [r for r in records if r is not None and r["state"] == "running"]

    def page(self, owner: str, state: str | None = None, after: str | None = None,
             limit: int = PAGE_MAX) -> tuple[list[Record], str | None]:
        """Up to `limit` listings (`LISTED` fields) of `owner`'s jobs in creation order, those
        in `state` only, after the job `after` (one of theirs: else NoSuchJob); and the id to
        go on after when more follow (None: none do)."""
        prefix = OWNED + owner.encode() + b"\0"
        with self.catalog.read() as txn:
            start = prefix
            if after is not None:
                marker = self.get(after, txn)
                if marker["owner"] != owner:
                    raise NoSuchJob(after)
                start = _owned_key(marker) + b"\0"  # the first key past it
            out: list[Record] = []
            for _, listing in self.catalog.scan(txn, "jobs", start=start, prefix=prefix):
                if state is None or listing["state"] == state:
                    if len(out) == limit:
                        return out, out[-1]["id"]
                    out.append(listing)
        return out, None

    def jobs(self, owner: str) -> list[Record]:
        """Every listing of `owner`'s jobs, in creation order."""
        listings, after = self.page(owner)
        while after is not None:
            more, after = self.page(owner, after=after)
            listings += more
        return listings

    def _running(self, txn: Txn, owner: str) -> int:
        return sum(1 for _ in self.catalog.scan(txn, "jobs", prefix=RUNNING + owner.encode() + b"\0"))

    def reindex(self) -> None:
        """Make the running-jobs index and the listings agree with the job records, in one
        transaction that writes only what differs (catalogs made before an index, jobs an
        older server wrote). It reads every job record."""
        def op(txn: Txn) -> None:
            want: dict[bytes, Any] = {}
            for _, record in list(self.catalog.scan(txn, "jobs", start=FIRST_JOB)):
                want[_owned_key(record)] = _listing(record)
                if record["state"] == "running":
                    want[_running_key(record)] = 1
            for prefix in (RUNNING, OWNED):
                for key, value in list(self.catalog.scan(txn, "jobs", prefix=prefix)):
                    if key not in want:
                        self.catalog.delete(txn, "jobs", key)
                    elif want[key] == value:
                        del want[key]
            for key, value in want.items():
                self.catalog.put(txn, "jobs", key, value)

        self.write(op)

    def _end_in(self, txn: Txn, job_id: str, state: str, **changes: Any) -> tuple[Record, bool]:
        record = self.get(job_id, txn)
        if record["state"] != "running":
            return record, False
        record.update(changes, state=state, finished=time.time())
        self._put_job(txn, record)
        self.catalog.delete(txn, "jobs", _running_key(record))
        return record, True

    def end_job(self, job_id: str, state: str) -> Record:
        """The job ends in `state` if it still runs (else it keeps how it ended); its record."""
        return self.write(lambda txn: self._end_in(txn, job_id, state)[0])  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> Record:
        """Cancel a running job and its queued tasks, in one transaction; its record."""
        def op(txn: Txn) -> Record:
            record, ended = self._end_in(txn, job_id, "cancelled", inputs_ended=True)
            if ended:
                queued = [task for task in self._task_records(txn, job_id) if task["state"] == "queued"]
                self.put_tasks(txn, [cancelled(task) for task in queued], queued)
                self._changed(txn, job_id)
            return record

        return self.write(op)  # type: ignore[no-any-return]

    # -- changes, for the scheduler of another process ---------------------------------

    def _changed(self, txn: Txn, job_id: str) -> None:
        seq = (self.catalog.get(txn, "jobs", CHANGE_SEQ) or 0) + 1
        self.catalog.put(txn, "jobs", CHANGE_SEQ, seq)
        self.catalog.put(txn, "jobs", CHANGES + struct.pack(">Q", seq), job_id)

    def change_seq(self) -> int:
        with self.catalog.read() as txn:
            return self.catalog.get(txn, "jobs", CHANGE_SEQ) or 0  # type: ignore[no-any-return]

    def changes(self, after: int) -> tuple[int, list[str]]:
        """(the newest change, the jobs changed after change `after`, each once)."""
        with self.catalog.read() as txn:
            seq = self.catalog.get(txn, "jobs", CHANGE_SEQ) or 0
            ids = [r for _, r in self.catalog.scan(txn, "jobs", start=CHANGES + struct.pack(">Q", after + 1),
                                                   prefix=CHANGES)]
            return seq, list(dict.fromkeys(ids))

    def drop_changes(self, upto: int) -> Future[None]:
        """Forget the changes up to `upto` (without waiting)."""
        def op(txn: Txn) -> None:
            last = CHANGES + struct.pack(">Q", upto)
            for key, _ in list(self.catalog.scan(txn, "jobs", prefix=CHANGES)):
                if key > last:
                    break
                self.catalog.delete(txn, "jobs", key)

        return self.catalog.submit(op)

    # -- inputs ---------------------------------------------------------------------

    def _add_inputs_in(self, txn: Txn, job: Record, inputs: list[str]) -> None:
        for item in inputs:
            key = job["id"].encode() + b"\0" + struct.pack(">I", job["input_count"])
            self.catalog.put(txn, "jobinputs", key, {"v": 1, "input": item})
            job["input_count"] += 1
        self._put_job(txn, job)

    def add_inputs(self, job_id: str, inputs: list[str], end: bool = False,
                   context: Mapping[str, str] | None = None) -> Record:
        """Add inputs (and end them with `end`); `context`: the condition keys of the
        request that gives them (None: not known), kept in the job's `access`."""
        def op(txn: Txn) -> Record:
            job = self.get(job_id, txn)
            if job["inputs_ended"] or job["state"] != "running":
                if inputs or not end:
                    raise JobInputsClosed(job_id)
                return job
            if inputs:
                job["access"] = _with_context(job.get("access"), context)
            self._add_inputs_in(txn, job, inputs)
            if end:
                job["inputs_ended"] = True
                self._put_job(txn, job)
            self._changed(txn, job_id)
            return job

        return self.write(op)  # type: ignore[no-any-return]

    def inputs(self, job_id: str, start: int = 0, limit: int = 100_000) -> list[str]:
        with self.catalog.read() as txn:
            out = []
            first = job_id.encode() + b"\0" + struct.pack(">I", start)
            for _, record in self.catalog.scan(txn, "jobinputs", start=first, prefix=job_id.encode() + b"\0"):
                out.append(record["input"])
                if len(out) >= limit:
                    break
            return out

    # -- tasks ----------------------------------------------------------------------

    def tasks(self, job_id: str) -> list[Record]:
        with self.catalog.read() as txn:
            return list(self._task_records(txn, job_id))

    def _task_records(self, txn: Txn, job_id: str) -> Iterator[Record]:
        """The job's task records, in task id order."""
        return (r for _, r in self.catalog.scan(txn, "jobtasks", prefix=job_id.encode() + b"\0"))

    def counts(self, job_id: str) -> Record:
        """The job's task counts (`task_counts`): from its counts record, or for a job made
        before those, from a scan of its tasks."""
        with self.catalog.read() as txn:
            counts = self.catalog.get(txn, "jobs", COUNTS + job_id.encode())
            if counts is not None:
                return counts  # type: ignore[no-any-return]
            return task_counts(self._task_records(txn, job_id))

    def recount(self, job_id: str) -> None:
        """Write the job's counts from its task records, in one transaction. A scheduler
        does so for each running job when it starts: a job made before counts gets them,
        and counts an older server let go stale (it wrote tasks without moving them) are
        right again."""
        def op(txn: Txn) -> None:
            self.catalog.put(txn, "jobs", COUNTS + job_id.encode(), task_counts(self._task_records(txn, job_id)))

        self.write(op)

    def put_tasks(self, txn: Txn, tasks: list[Record], current: Sequence[Record | None] | None = None) -> None:
        """Write task records, and their change in their jobs' counts; `current`: the
        records they replace (None for a new task), when the caller has read them."""
        counts: dict[str, Record | None] = {}
        for i, task in enumerate(tasks):
            key = task_key(task["job"], task["id"])
            old = current[i] if current is not None else self.catalog.get(txn, "jobtasks", key)
            self.catalog.put(txn, "jobtasks", key, task)
            job_id = task["job"]
            if job_id not in counts:
                counts[job_id] = self.catalog.get(txn, "jobs", COUNTS + job_id.encode())
            if (mine := counts[job_id]) is not None:  # None: a job made before counts
                _tally(mine, old, -1)
                _tally(mine, task, 1)
        for job_id, mine in counts.items():
            if mine is not None:
                self.catalog.put(txn, "jobs", COUNTS + job_id.encode(), mine)

    def save_tasks(self, tasks: list[Record]) -> None:
        self.write(lambda txn: self.put_tasks(txn, tasks))

    def submit_running(self, tasks: list[Record]) -> Future[list[bool]]:
        """Write each task running (attempt `attempts`), in one transaction, without waiting;
        for each, False if another process cancelled it meanwhile. A task whose record has
        moved on (its outcome written, or queued again after this attempt) is left alone:
        the scheduler writes these late, and may have written the outcome first."""
        def op(txn: Txn) -> list[bool]:
            written = []
            for task in tasks:
                current = self.catalog.get(txn, "jobtasks", task_key(task["job"], task["id"]))
                if current is not None and current["state"] == "cancelled":
                    written.append(False)
                    continue
                if current is None or (current["state"] == "queued"
                                       and current.get("attempts", 0) < task["attempts"]):
                    self.put_tasks(txn, [task], [current])
                written.append(True)
            return written

        return self.catalog.submit(op, durable=False)  # a task's record: see the module's docstring

    def save_if_queued(self, tasks: list[Record]) -> None:
        """Write each task (now cancelled or failed) whose record still says queued."""
        def op(txn: Txn) -> None:
            for task in tasks:
                current = self.catalog.get(txn, "jobtasks", task_key(task["job"], task["id"]))
                if current is None or current["state"] == "queued":
                    self.put_tasks(txn, [task], [current])

        if tasks:
            self.write(op)

    def save_outcome(self, task: Record) -> Record:
        """Write a task's outcome; one queued again whose job no longer runs is cancelled
        instead. Returns the record written."""
        def op(txn: Txn) -> Record:
            record = task
            if task["state"] == "queued" and self.get(task["job"], txn)["state"] != "running":
                record = cancelled(task)
            self.put_tasks(txn, [record])
            return record

        return self.write(op, durable=False)  # type: ignore[no-any-return]

    def settled(self, job_id: str) -> bool:
        """Is the job over with none of its tasks running (a missing job is)?"""
        with self.catalog.read() as txn:
            record = self.catalog.get(txn, "jobs", job_id.encode())
            if record is None:
                return True
            if record["state"] == "running":
                return False
            counts = self.catalog.get(txn, "jobs", COUNTS + job_id.encode())
            if counts is not None:
                return not any(by_state.get("running") for by_state in counts["phases"].values())
            return not any(t["state"] == "running" for t in self._task_records(txn, job_id))


def task_counts(tasks: Iterable[Record]) -> Record:
    """{v, phases: {"<phase number>": {state: tasks}}, bytes_local, bytes_remote} of `tasks`."""
    counts: Record = {"v": 1, "phases": {}, "bytes_local": 0, "bytes_remote": 0}
    for task in tasks:
        _tally(counts, task, 1)
    return counts


def _tally(counts: Record, task: Record | None, sign: int) -> None:
    if task is None:
        return
    phase = str(task["phase"])
    by_state = counts["phases"].setdefault(phase, {})
    if n := by_state.get(task["state"], 0) + sign:
        by_state[task["state"]] = n
    else:  # none left: no entry, as a count of the records makes it
        del by_state[task["state"]]
        if not by_state:
            del counts["phases"][phase]
    counts["bytes_local"] += sign * (task.get("bytes_local") or 0)
    counts["bytes_remote"] += sign * (task.get("bytes_remote") or 0)


def _with_context(access: list[Record] | None, context: Mapping[str, str] | None) -> list[Record] | None:
    """A job's `access` once a request with `context` gave it inputs: None (not known) stays
    so, and becomes so for a request without a context or past MAX_CONTEXTS."""
    if access is None or context is None:
        return None
    kept = lasting(context)
    if kept in access:
        return access
    return [*access, kept] if len(access) < MAX_CONTEXTS else None


def _running_key(job: Record) -> bytes:
    return RUNNING + job["owner"].encode() + b"\0" + job["id"].encode()


def _owned_key(job: Record) -> bytes:
    created = struct.pack(">Q", max(0, int(job["created"] * 1_000_000)))
    return OWNED + job["owner"].encode() + b"\0" + created + job["id"].encode()


def _listing(job: Record) -> Record:
    return {name: job.get(name) for name in LISTED}


def cancelled(task: Record) -> Record:
    """A queued task's record once its job is cancelled."""
    return {**task, "state": "cancelled", "finished": time.time(), "node": None,
            "error": {"code": je.JOB_CANCELLED_ERROR, "message": "the job was cancelled",
                      "input": task.get("input", ""), "stderr": None, "excerpt": ""}}
