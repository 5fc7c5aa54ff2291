"""One process of a multi-process server, for tests/jobs/test_scheduler_processes.py: it
opens the data dir's store, builds a JobScheduler as the front door does, and answers JSON
lines on stdin with JSON lines on stdout. `start` makes it the leader; without it, it
is a follower that serves the jobs API from the catalog.

    python -m tests.jobs.scheduler_proc DATA_DIR [CATALOG_URL]
    {"op": "create", "owner": "root", "spec": {...}}  -> {"ok": job record}
    {"op": "add_inputs"|"cancel"|"job"|"tasks"|"settled"|"put"|"get"|"account", ...}
    {"op": "start"[, "poll_s": S]}                  -> {"ok": its nudge listener is up}
    errors                                            -> {"error": "QuotaExceeded", "message": "..."}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any

import jobs.scheduler
from jobs.records import TABLES as JOB_TABLES
from jobs.sandbox import Sandbox
from jobs.scheduler import JobScheduler, SchedulerConfig
from jobs.spec import parse_spec
from storage import Store, StoreConfig

CONFIG = SchedulerConfig(slots_per_node=2, tick_s=1.0, memory_budget_mb=1024)  # the usual tick: follow is apart


def store_config(data_dir: str, catalog: str | None = None) -> StoreConfig:
    return StoreConfig(data_dir=data_dir, node_count=2, copies=1, catalog=catalog, extra_tables=JOB_TABLES)


def put(store: Store, bucket: str, key: str, data: bytes) -> None:
    try:
        store.catalog.buckets.create(bucket, "root")
    except Exception:  # noqa: BLE001 - made by an earlier put
        pass
    writer = store.writer()
    writer.write(data)
    meta = writer.commit()
    record = {"size": meta.size, "etag": meta.md5.hex(), "sha256": meta.sha256, "mtime": time.time(),
              "segments": [[meta.blob_id, meta.size]], "headers": {}, "meta": {}, "checksums": {},
              "checksum_type": None, "parts": None}
    store.objects.put(bucket, key, record, {meta.blob_id: meta.record()})


def get(store: Store, name: str) -> bytes:
    bucket, key = name.split("/", 1)
    with store.catalog.read() as txn:
        record = store.objects.read_in(txn, bucket, key)
        assert record is not None, name
        out = b""
        for blob_id, size, *_ in record["segments"]:
            meta = store.catalog.blobrefs.get(txn, blob_id)
            assert meta is not None and meta.blocks is not None, blob_id
            out += store.nodes[meta.nodes[0]].read(blob_id, 0, size, meta.blocks)
    return out


def serve(store: Store, scheduler: JobScheduler, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "start":
        if request.get("poll_s"):  # look at the catalog only this often: only nudges are prompt
            jobs.scheduler.FOLLOW_S = request["poll_s"]
            scheduler.config = dataclasses.replace(scheduler.config, tick_s=request["poll_s"])
        scheduler.start()
        return scheduler.nudge.bound.wait(10)
    if op == "create":
        return scheduler.create(request["owner"], parse_spec(request["spec"], scheduler.phase_defaults()))
    if op == "add_inputs":
        return scheduler.add_inputs(request["id"], request["owner"], request["inputs"], request.get("end", False))
    if op == "cancel":
        return scheduler.cancel(request["id"], request["owner"])
    if op == "job":
        return scheduler.job(request["id"], request["owner"])
    if op == "tasks":
        return scheduler.tasks(request["id"])
    if op == "settled":
        return scheduler.settled(request["id"])
    if op == "put":
        put(store, request["bucket"], request["key"], request["data"].encode())
        return True
    if op == "get":
        return get(store, request["name"]).decode()
    if op == "account":
        store.catalog.accounts.add(request["name"], request["name"].upper() + "KEY", "secret")
        store.catalog.accounts.set_quota(request["name"], request["quota"])
        return True
    raise ValueError(f"unknown op {op}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    store = Store(store_config(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
    scheduler = JobScheduler(store, Sandbox(), CONFIG)  # as every worker of the front door does
    print(json.dumps({"ok": "ready"}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                reply = {"ok": serve(store, scheduler, request)}
            except Exception as exc:  # noqa: BLE001 - the test asserts on it
                reply = {"error": type(exc).__name__, "message": str(exc)}
            print(json.dumps(reply, default=lambda b: b.hex()), flush=True)
    finally:
        if scheduler.started:
            scheduler.stop()
        store.close()


if __name__ == "__main__":
    main()
