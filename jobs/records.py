"""Durable job state in the catalog: jobs, their inputs and their tasks.

    jobs       job id                          -> job record
    jobinputs  job id \\0 seq (u32 big-endian)  -> {"v": 1, "input": "bucket/key"}
    jobtasks   job id \\0 task id               -> task record

Job record: {v, id, owner, name, phases: [phase dicts], state: running|done|cancelled,
inputs_ended, input_count, created, finished}. Task record: {v, id, job, phase, type,
state, input | inputs, reducer, partition, node, attempts, excluded, created, started,
finished, outputs, error, bytes_local, bytes_remote, chained, attempts_log: [{node, started,
finished, outcome: done|failed|cancelled|"node failure: why"|"interrupted: ..."}]}.

Every change is one catalog transaction; a task's output objects are written in the same
transaction that marks it done, so a restart never sees half a task.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from jobs.errors import JobInputsClosed, NoSuchJob
from jobs.spec import JobSpec
from storage import Catalog
from storage.catalog import Txn

__all__ = ["JobRecords", "jobs_bucket"]

Record = dict[str, Any]


def jobs_bucket(owner: str) -> str:
    """The bucket that holds an account's job outputs and stderr (not a valid S3 name, so
    nobody can create it; readable by its owner through S3 and the jobs API)."""
    return f"_jobs_{owner}"


def task_key(job_id: str, task_id: str) -> bytes:
    return job_id.encode() + b"\0" + task_id.encode()


class JobRecords:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def write(self, fn: Callable[[Txn], Any]) -> Any:
        return self.catalog.write(fn)

    # -- jobs -----------------------------------------------------------------------

    def create(self, owner: str, spec: JobSpec) -> Record:
        job_id = secrets.token_hex(8)
        record: Record = {
            "v": 1, "id": job_id, "owner": owner, "name": spec.name,
            "phases": [p.to_dict() for p in spec.phases], "state": "running",
            "inputs_ended": False, "input_count": 0, "created": time.time(), "finished": None,
        }
        bucket = jobs_bucket(owner)

        def op(txn: Txn) -> Record:
            self.catalog.ensure_bucket_in(txn, bucket, owner)
            self.catalog.put(txn, "jobs", job_id.encode(), record)
            self._add_inputs_in(txn, record, list(spec.inputs))
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

    def jobs(self, owner: str | None = None, state: str | None = None) -> list[Record]:
        with self.catalog.read() as txn:
            return [r for _, r in self.catalog.scan(txn, "jobs")
                    if (owner is None or r["owner"] == owner) and (state is None or r["state"] == state)]

    def update_job(self, job_id: str, **changes: Any) -> Record:
        def op(txn: Txn) -> Record:
            record = self.get(job_id, txn)
            record.update(changes)
            self.catalog.put(txn, "jobs", job_id.encode(), record)
            return record

        return self.write(op)  # type: ignore[no-any-return]

    # -- inputs ---------------------------------------------------------------------

    def _add_inputs_in(self, txn: Txn, job: Record, inputs: list[str]) -> None:
        for item in inputs:
            key = job["id"].encode() + b"\0" + struct.pack(">I", job["input_count"])
            self.catalog.put(txn, "jobinputs", key, {"v": 1, "input": item})
            job["input_count"] += 1
        self.catalog.put(txn, "jobs", job["id"].encode(), job)

    def add_inputs(self, job_id: str, inputs: list[str], end: bool = False) -> Record:
        def op(txn: Txn) -> Record:
            job = self.get(job_id, txn)
            if job["inputs_ended"] or job["state"] != "running":
                if inputs or not end:
                    raise JobInputsClosed(job_id)
                return job
            self._add_inputs_in(txn, job, inputs)
            if end:
                job["inputs_ended"] = True
                self.catalog.put(txn, "jobs", job_id.encode(), job)
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
            return [r for _, r in self.catalog.scan(txn, "jobtasks", prefix=job_id.encode() + b"\0")]

    def put_tasks(self, txn: Txn, tasks: list[Record]) -> None:
        for task in tasks:
            self.catalog.put(txn, "jobtasks", task_key(task["job"], task["id"]), task)

    def save_tasks(self, tasks: list[Record]) -> None:
        self.write(lambda txn: self.put_tasks(txn, tasks))

    def submit_tasks(self, tasks: list[Record]) -> Future[None]:
        """save_tasks without waiting; later writes are applied after it."""
        return self.catalog.submit(lambda txn: self.put_tasks(txn, tasks))
