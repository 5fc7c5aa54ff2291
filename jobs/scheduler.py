"""The job scheduler: durable job state in, tasks placed next to their data out.

Task states (a task record's `state`):

    queued --dispatch--> running --command ok-------------> done
       ^                    |----user/limit/init failure---> failed
       |                    |----job cancelled-------------> cancelled
       +---node failure-----+   (retried on another node, up to MAX_ATTEMPTS)

Job states: running -> done (every phase complete) | cancelled.

Which tasks a job has, phase by phase, is jobs/phases.py (JobState); this module decides
where and when they run.

Placement: a map task goes to the healthy node holding most of its input's bytes (a
replica); if that node's slots are full it waits, or runs on another node that holds a
replica; only when no node holding a copy is up does it run elsewhere (reading over the
"network"). Reducers go where most of their input bytes are.

Where a task runs: the scheduler hands the agent's request (jobs/runner.py builds it) to
the node's task agent: in-process for a local node (one jobs.agent.TaskAgent per node, all
sharing this host's admission), `POST /v1/tasks` for a remote one (its agent admits it).
A node failure (unreachable, NodeFailure, an outcome saying so) queues the task again for
another healthy node holding a replica; each attempt is kept in the task's `attempts_log`.

Slots: each node runs at most `slots_per_node` containers at once (admission, held only
while the container runs), and has at most twice that many tasks in flight:
while some run, others resolve their inputs or commit their outputs, so a container
starts the moment another ends and no slot waits for the disk or for this thread.

Running records: a task's `running` record is written only once it has run for
RUNNING_RECORD_S (the scheduler's loop writes those due in one transaction, without
waiting); a shorter task goes from queued to its outcome in one write, so a job of many
short tasks costs one catalog write per task, not two (as Marlin's agents batched their
task updates). The catalog applies writes in order and the write leaves a task whose
outcome is in already, so a late running record never hides an outcome. A status shows a
task running for less than that as queued. Another process's cancel still stops every
task: it marks the job's queued tasks (those not recorded running too) cancelled in its
transaction; this scheduler learns of it within FOLLOW_S and stops them, and a running
record refused because the task was cancelled stops it as well.

State lives in the catalog (jobs/records.py). Several processes may share one catalog,
each with a JobScheduler; exactly one of them is started (the leader) and runs tasks. A
scheduler that was never started serves the API from the catalog alone: create counts the
running-jobs quota inside its transaction, cancel ends the job and its queued tasks in one,
tasks and settled read it. The started one keeps an index in memory (`jobs`), rebuilt at
start, and answers from it; it learns of other processes' creates, inputs and cancels
through the catalog's change log within FOLLOW_S (jobs/follow.py), reloading only the jobs
named there (a cancel stops its running tasks as a local one does). Every write it makes
decides on the catalog's record inside its transaction, never on its in-memory copy
(jobs/records.py lists them), so a stale index cannot undo another process's change.

Start (after a restart, or when this process takes over from a leader that died): tasks
the catalog says are running are queued again (their containers died with their process)
and run again; their outputs were never committed (outputs and the task's done record are
one transaction, jobs/runner.py), so nothing is counted twice. A started scheduler resumes
every running job.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from jobs import errors as je
from jobs.admission import Admission, default_budget_mb, default_slots
from jobs.agent import TaskAgent, sweep_scratch
from jobs.follow import FOLLOW_S, ChangeFollower, Nudge, load_job
from jobs.imagebuild import BuildConfig
from jobs.images import Images
from jobs.phases import JobState
from jobs.reach import TaskRoots
from jobs.records import JobRecords, cancelled
from jobs.runner import RunContext, log_attempt, run_task
from jobs.sandbox import Sandbox, SandboxError
from jobs.spec import LIMITS, JobSpec, parse_input
from storage import LocalNode, Node, Quota, Store
from storage import errors as se
from storage.access import readable

__all__ = ["JobScheduler", "SchedulerConfig"]

log = logging.getLogger("manta.jobs")

Record = dict[str, Any]
MAX_ATTEMPTS = 3
MAX_WORKERS = 512  # threads for tasks in flight (they wait for admission, prepare, commit)
SCAN_TASKS = 256  # queued tasks of one job looked at per dispatch for a node with room
REMOTE_GRACE_S = 60.0  # a remote task's call may outlast its phase's timeout by this much
CANCEL_TIMEOUT_S = 5.0
RUNNING_RECORD_S = 0.5  # a task still running this long gets its running record; a shorter one none


class _TaskNode(Protocol):
    """What a remote node (storage.remote.RemoteNode) offers for tasks."""

    def post_json(self, path: str, obj: Record, timeout_s: float) -> Record: ...


@dataclass(frozen=True)
class SchedulerConfig:
    slots_per_node: int = field(default_factory=default_slots)
    tick_s: float = 1.0
    memory_budget_mb: int = field(default_factory=default_budget_mb)  # this host's, for all its nodes
    max_task_memory_mb: int | None = None  # a phase's memory_mb ceiling (default: min(16 GiB, budget))
    max_task_disk_mb: int | None = None    # a phase's disk_mb ceiling (default: min(64 GiB, budget))
    image_cache_dir: str | None = None     # built image tars by id (default: <data dir>/image-cache)

    def __post_init__(self) -> None:
        if self.slots_per_node < 1 or self.memory_budget_mb < 16:
            raise ValueError("slots_per_node must be >= 1 and memory_budget_mb >= 16")
        for name in ("max_task_memory_mb", "max_task_disk_mb"):
            value = getattr(self, name)
            if value is not None and value < LIMITS[name.removeprefix("max_task_")][1]:
                raise ValueError(f"{name} must be at least {LIMITS[name.removeprefix('max_task_')][1]}")

    @property
    def memory_ceiling_mb(self) -> int:
        """The most memory one task may ask for: the admin's ceiling, never above the budget."""
        return min(self.max_task_memory_mb or int(LIMITS["memory_mb"][2]), self.memory_budget_mb)

    @property
    def disk_ceiling_mb(self) -> int:
        return self.max_task_disk_mb or min(int(LIMITS["disk_mb"][2]), self.memory_budget_mb)


class JobScheduler:
    def __init__(self, store: Store, sandbox: Sandbox | None, config: SchedulerConfig | None = None) -> None:
        self.store = store
        self.config = config or SchedulerConfig()
        self.records = JobRecords(store.catalog)
        self.images = Images(store, BuildConfig(self.config.image_cache_dir
                                                or os.path.join(store.config.data_dir, "image-cache")))
        self.ctx = RunContext(store, self.records, self.images)
        self.sandbox = sandbox
        self.roots = TaskRoots(None)
        self.jobs: dict[str, JobState] = {}
        self.lock = threading.RLock()
        self.wake = threading.Event()
        # tasks in flight per node and account: each account may have 2x slots of them on a node
        self.busy: dict[str, dict[str, int]] = {nid: {} for nid in store.nodes}
        # one admission for the local nodes: they share this host's memory
        self.admission = Admission([n.id for n in store.local_nodes()], self.config.slots_per_node,
                                   self.config.memory_budget_mb)
        self.agents = {n.id: TaskAgent(n, sandbox, None, self.config.slots_per_node, peer=self._local_peer,
                                       admission=self.admission, roots=self.roots, stream_copies=True)
                       for n in store.local_nodes()}
        self.cancels: dict[tuple[str, str], threading.Event] = {}
        # started tasks whose running record is not written yet: (started, task, cancel)
        self._unrecorded: dict[tuple[str, str], tuple[float, Record, threading.Event]] = {}
        self.pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="task")
        self._served: list[str] = []  # accounts, the one dispatched to longest ago first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.follower = ChangeFollower(self.records)
        self.nudge = Nudge(store.config.data_dir)  # a follower's writes wake the leader's loop at once

    @property
    def started(self) -> bool:
        return self._thread is not None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.sandbox is not None:
            try:
                self.roots.ids = self.sandbox.task_ids()
            except SandboxError as exc:  # its tasks end in InternalError, saying why
                log.warning("no sandbox: %s", exc)
        self.roots.open(self.store.local_nodes())
        log.info("tasks: %d slots per node, %d MB of memory for all running tasks, at most %d MB "
                 "memory and %d MB disk per task", self.config.slots_per_node, self.config.memory_budget_mb,
                 self.config.memory_ceiling_mb, self.config.disk_ceiling_mb)
        for node in self.store.local_nodes():
            try:
                sweep_scratch(node)
            except OSError as exc:  # a node that is down: its scratch dirs wait for the next start
                log.warning("cannot sweep task scratch dirs on node %s: %s", node.id, exc)
        self.follower.begin()
        self.records.reindex()
        for record in self.records.running_jobs():
            requeue = [{**task, "state": "queued", "node": None,
                        "attempts_log": log_attempt(task, "interrupted: the server stopped")}
                       for task in self.records.tasks(record["id"]) if task["state"] == "running"]
            if requeue:
                self.records.save_tasks(requeue)
                log.info("job %s: %d tasks interrupted by a restart are queued again", record["id"], len(requeue))
            self.records.recount(record["id"])  # counts for a job from before them, or gone stale
            with self.lock:
                self.jobs[record["id"]] = load_job(self.records, record)
        self.nudge.listen(self.wake.set)
        self._thread = threading.Thread(target=self._loop, name="job-scheduler", daemon=True)
        self._thread.start()
        self.wake.set()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self.nudge.close()
        with self.lock:
            for event in self.cancels.values():
                event.set()
            remote = [(job_id, task_id, self._running_node(job_id, task_id)) for job_id, task_id in self.cancels]
        for job_id, task_id, node in remote:
            if node is not None and node.remote:
                self._cancel_remote(node, job_id, task_id)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for agent in self.agents.values():  # their idle reused containers too
            agent.close()
        self.roots.close()

    def _local_peer(self, node_id: str, url: str) -> Node:
        return self.store.nodes[node_id]

    def _running_node(self, job_id: str, task_id: str) -> Node | None:
        job = self.jobs.get(job_id)
        task = job.tasks.get(task_id) if job is not None else None
        node_id = task.get("node") if task is not None else None
        return self.store.nodes.get(node_id) if node_id else None

    @staticmethod
    def _cancel_remote(node: Node, job_id: str, task_id: str) -> None:
        try:
            cast(_TaskNode, node).post_json(f"/v1/tasks/{job_id}/{task_id}/cancel", {}, CANCEL_TIMEOUT_S)
        except Exception as exc:  # the node is gone: so is its task, or the retry's cancel covers it
            log.warning("cancelling job %s task %s on node %s failed: %s", job_id, task_id, node.id, exc)

    def _loop(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            woken = self.wake.wait(min(self.config.tick_s, FOLLOW_S))
            self.wake.clear()
            try:
                changed = self._follow()
                if woken or changed or time.monotonic() - last >= self.config.tick_s:
                    last = time.monotonic()
                    self.tick()
                self._record_running()
            except Exception:
                log.exception("scheduler tick failed")

    def _follow(self) -> bool:
        """Take in the jobs other processes changed (jobs/follow.py); were there any?"""
        changed = self.follower.poll()
        for job_id in changed:
            try:
                record = self.records.get(job_id)
            except je.NoSuchJob:
                continue
            with self.lock:
                job = self.jobs.get(job_id)
                if job is None:
                    if record["state"] == "running":
                        self.jobs[job_id] = load_job(self.records, record)
                    continue
                was, job.record = job.record["state"], record
                if was == "running" and record["state"] == "cancelled":
                    log.info("job %s cancelled by another process", job_id)
                    self._cancel_tasks(job)
        return bool(changed)

    # -- the API the HTTP layer uses ---------------------------------------------------

    def create(self, owner: str, spec: JobSpec, context: Mapping[str, str] | None = None) -> Record:
        """A new job; `context`: the condition keys of the request that creates it (its
        inputs are checked under them, and kept for its tasks' reads; None: not known)."""
        self._check_limits(spec)
        self._check_readable(owner, spec.inputs, context)
        record = self.records.create(owner, spec, context)  # the quota is counted in its transaction
        if self.started:
            with self.lock:
                self.jobs.setdefault(record["id"], JobState(record))
        self._changed()
        return record

    def _changed(self) -> None:
        """After an API write: this scheduler's loop looks at it now, or (not started) the
        leader's does, nudged (jobs/follow.py)."""
        if self.started:
            self.wake.set()
        else:
            self.nudge.send()

    def phase_defaults(self) -> dict[str, int]:
        """Limits for phases that do not set them: the usual ones, or the ceilings if lower."""
        return {"memory_mb": min(int(LIMITS["memory_mb"][0]), self.config.memory_ceiling_mb),
                "disk_mb": min(int(LIMITS["disk_mb"][0]), self.config.disk_ceiling_mb)}

    def _check_limits(self, spec: JobSpec) -> None:
        """A phase asking for more than any task may have here fails now, not when it runs."""
        memory, disk = self.config.memory_ceiling_mb, self.config.disk_ceiling_mb
        for number, phase in enumerate(spec.phases):
            if phase.memory_mb > memory:
                raise je.InvalidJobSpec(f"phase {number}: memory_mb {phase.memory_mb} is above the "
                                        f"{memory} MB a task may use on this server")
            if phase.disk_mb > disk:
                raise je.InvalidJobSpec(f"phase {number}: disk_mb {phase.disk_mb} is above the "
                                        f"{disk} MB a task may use on this server")
            if phase.image is not None and not self.images.known(phase.image):
                raise je.InvalidJobSpec(f"phase {number}: {je.NoSuchImage(phase.image)}")


    def _check_readable(self, owner: str, inputs: Iterable[str], context: Mapping[str, str] | None) -> None:
        """AccessDenied for an input the owner may not read (storage.access) under the
        condition keys of the request that names it (`context`; None: not known, the worst
        case); a missing bucket or object fails its task later, as before."""
        contexts = [context] if context is not None else None
        for name in inputs:
            bucket, key = parse_input(name)
            try:
                if readable(self.store, owner, bucket, key, contexts) is None:
                    raise je.AccessDenied(name)
            except se.NoSuchBucket:
                continue

    def job(self, job_id: str, owner: str) -> Record:
        record = self.records.get(job_id)
        if record["owner"] != owner:
            raise je.NoSuchJob(job_id)
        return record

    def add_inputs(self, job_id: str, owner: str, inputs: list[str], end: bool = False,
                   context: Mapping[str, str] | None = None) -> Record:
        """Add inputs to a job; `context` as for `create`, of the request that gives them."""
        self.job(job_id, owner)
        for item in inputs:
            parse_input(item)
        self._check_readable(owner, inputs, context)
        record = self.records.add_inputs(job_id, inputs, end, context)
        self._changed()  # the loop reloads the job's record, as for another process's write
        return record

    def cancel(self, job_id: str, owner: str) -> Record:
        record = self.job(job_id, owner)
        if record["state"] != "running":
            return record
        record = self.records.cancel(job_id)  # the job and its queued tasks, in one transaction
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None and job.record["state"] == "running":
                job.record = record
                self._cancel_tasks(job)
        self._changed()
        return record

    def _cancel_tasks(self, job: JobState) -> None:
        """A cancelled job's tasks in this process: queued ones end, running ones are stopped."""
        job_id = job.record["id"]
        ended = []
        for task_id, task in list(job.tasks.items()):
            if task["state"] == "queued":
                job.put(cancelled(task))
                ended.append(job.tasks[task_id])
            elif task["state"] == "running":
                self.cancels.get((job_id, task_id), threading.Event()).set()
                node = self._running_node(job_id, task_id)
                if node is not None and node.remote:
                    self.pool.submit(self._cancel_remote, node, job_id, task_id)
        job.queue.clear()
        self.records.save_if_queued(ended)  # the catalog's cancel did those it saw

    def counts(self, job_id: str) -> Record:
        """The job's task counts (jobs.records.task_counts): one catalog read, however many
        tasks the job has."""
        return self.records.counts(job_id)

    def tasks(self, job_id: str) -> list[Record]:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                return [dict(t) for t in sorted(job.tasks.values(), key=lambda t: t["id"])]
        return self.records.tasks(job_id)

    def settled(self, job_id: str) -> bool:
        """Is the job over (done or cancelled) with none of its tasks still running? The
        index answers for the jobs in it, the catalog for the others (and in a scheduler
        that was never started)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                return job.record["state"] != "running" and not any(
                    t["state"] == "running" for t in job.tasks.values())
        return self.records.settled(job_id)

    # -- scheduling ---------------------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            for job in list(self.jobs.values()):
                if job.record["state"] != "running":
                    if not any(t["state"] == "running" for t in job.tasks.values()):
                        del self.jobs[job.record["id"]]
                    continue
                job.expand(self.records)
                if job.done:
                    job.record = self.records.end_job(job.record["id"], "done")  # unless cancelled meanwhile
                    log.info("job %s %s", job.record["id"], job.record["state"])
            self._dispatch()

    def _placement(self, job: JobState, task: Record) -> list[tuple[int, Node]]:
        """(local input bytes, node) for healthy nodes, best first."""
        names = [task["input"]] if task["type"] == "map" else task["inputs"]
        local: dict[str, int] = {}
        with self.store.catalog.read() as txn:
            for name in names:
                try:
                    bucket, key = parse_input(name)
                    record = self.store.objects.read_in(txn, bucket, key)
                except je.InvalidJobSpec:
                    record = None
                if record is None:
                    continue
                for blob_id, size, *_ in record["segments"]:
                    meta = self.store.catalog.blobrefs.get(txn, blob_id)
                    for node_id in meta.nodes if meta is not None else ():
                        local[node_id] = local.get(node_id, 0) + size
        ranked = [(local.get(n.id, 0), n) for n in self.store.node_list()
                  if n.id not in task["excluded"] and n.healthy()]
        ranked.sort(key=lambda item: (-item[0], sum(self.busy.get(item[1].id, {}).values())))
        return ranked

    def _dispatch(self) -> None:
        """Start queued tasks where their data is, accounts in turn (the one served longest
        ago first), one task per account per round, while any account has room left."""
        if self._stop.is_set():
            return
        by_owner: dict[str, list[JobState]] = {}
        for job in self.jobs.values():
            if job.record["state"] == "running" and job.queue:
                by_owner.setdefault(job.record["owner"], []).append(job)
        owners = sorted(by_owner, key=lambda o: self._served.index(o) if o in self._served else -1)
        quotas = {owner: self.store.catalog.accounts.limits(owner) for owner in owners}
        while owners:
            for owner in list(owners):
                if not self._dispatch_one(owner, by_owner[owner], quotas[owner]):
                    owners.remove(owner)
                elif owner in self._served:
                    self._served.remove(owner)
                    self._served.append(owner)
                else:
                    self._served.append(owner)

    def _room(self, node_id: str, owner: str) -> bool:
        return self.busy[node_id].get(owner, 0) < 2 * self.config.slots_per_node

    def _dispatch_one(self, owner: str, jobs: list[JobState], quota: Quota) -> bool:
        """Start one task of `owner`'s jobs (oldest job first); False if none can start now."""
        if quota.tasks is not None and sum(b.get(owner, 0) for b in self.busy.values()) >= quota.tasks:
            return False
        if not any(self._room(nid, owner) for nid in self.busy):
            return False
        for job in jobs:
            if job.failure is not None:  # the job hit a quota: its tasks fail without running
                self._fail_queued(job, job.failure)
                continue
            for task_id in list(itertools.islice(job.queue, SCAN_TASKS)):  # not a copy of the whole queue
                task = job.tasks[task_id]
                ranked = self._placement(job, task)
                holders = [n for b, n in ranked if b > 0]
                node = next((n for n in holders or [n for _, n in ranked] if self._room(n.id, owner)), None)
                if node is not None:  # else: no node up, or its data's nodes are busy: it waits
                    job.queue.remove(task_id)
                    self._start(job, task, node)
                    return True
        return False

    def _fail_queued(self, job: JobState, error: Record) -> None:
        failed = []
        for task_id in job.queue:
            task = job.tasks[task_id]
            job.put({**task, "state": "failed", "finished": time.time(),
                     "error": {**error, "input": task.get("input") or ",".join(task.get("inputs", [])[:3]),
                               "stderr": None, "excerpt": ""}})
            failed.append(job.tasks[task_id])
        job.queue.clear()
        self.records.save_if_queued(failed)

    def _start(self, job: JobState, task: Record, node: Node) -> None:
        task.update(state="running", node=node.id, started=time.time(), attempts=task["attempts"] + 1)
        owner = job.record["owner"]
        self.busy[node.id][owner] = self.busy[node.id].get(owner, 0) + 1
        cancel = threading.Event()
        self.cancels[(job.record["id"], task["id"])] = cancel
        self._unrecorded[(job.record["id"], task["id"])] = (time.monotonic(), dict(task), cancel)
        record = dict(job.record)
        self.pool.submit(self._run, record, dict(task), node, cancel)

    def _record_running(self) -> None:
        """Submit (without waiting) the running records of the tasks started RUNNING_RECORD_S
        ago or more that have not ended, in one catalog write; a task another process
        cancelled meanwhile is stopped. Submitted under the lock, before _run's end takes
        the task out: so its outcome lands after it, or the write sees the outcome first
        and leaves it (JobRecords.submit_running)."""
        now = time.monotonic()
        with self.lock:
            due = [key for key, (started, _, _) in self._unrecorded.items() if now - started >= RUNNING_RECORD_S]
            if not due:
                return
            batch = [self._unrecorded.pop(key) for key in due]
            written = self.records.submit_running([task for _, task, _ in batch])
        written.add_done_callback(lambda fut: _cancel_refused(fut, [cancel for _, _, cancel in batch]))

    def _call(self, job: Record, task: Record, node: Node, cancel: threading.Event) -> Any:
        """The function that hands a request to `node`'s agent and returns its outcome."""
        if isinstance(node, LocalNode):
            agent = self.agents.get(node.id)
            if agent is None:
                raise je.NodeFailure(f"node {node.id} has no task agent here")
            return lambda request: agent.run(request, cancel)
        timeout_s = job["phases"][task["phase"]]["timeout_s"] + REMOTE_GRACE_S
        return lambda request: cast(_TaskNode, node).post_json("/v1/tasks", request, timeout_s)

    def _run(self, job: Record, task: Record, node: Node, cancel: threading.Event) -> None:
        outcome: Record | None = None
        try:
            outcome = run_task(self.ctx, job, task, node, self._call(job, task, node, cancel))
            if self._stop.is_set() and outcome["state"] == "cancelled":
                # killed because the server is stopping: it runs again after a restart, unless
                # its job was cancelled (then it stays cancelled)
                outcome = self.records.save_outcome({**task, "state": "queued", "node": None,
                                                     "attempts_log": log_attempt(task, "interrupted: the server stopped")})
        except (je.NodeFailure, se.StorageError, OSError) as exc:
            log.warning("job %s task %s: node %s failed: %s", job["id"], task["id"], node.id, exc)
            node.recheck()
            excluded = task["excluded"] + [node.id]
            others = [n for n in self.store.node_list() if n.id not in excluded and n.healthy()]
            task = {**task, "attempts_log": log_attempt(task, f"node failure: {exc}")}
            if task["attempts"] < MAX_ATTEMPTS and others:
                outcome = {**task, "state": "queued", "node": None, "excluded": excluded}
            else:  # no other node to try: waiting for one would hang the job
                outcome = self._internal_error(job, task, f"node failures: {exc}")
            outcome = self.records.save_outcome(outcome)  # cancelled instead if its job no longer runs
        except Exception as exc:
            log.exception("job %s task %s failed unexpectedly", job["id"], task["id"])
            outcome = self._internal_error(job, {**task, "attempts_log": log_attempt(task, "failed")}, str(exc))
            self.records.save_tasks([outcome])
        finally:
            with self.lock:
                self._unrecorded.pop((job["id"], task["id"]), None)  # ended: no running record now
                self.busy[node.id][job["owner"]] -= 1
                self.cancels.pop((job["id"], task["id"]), None)
                state = self.jobs.get(job["id"])
                if state is not None and outcome is not None:
                    state.put(outcome)
                    if outcome["state"] == "queued":
                        state.queue.appendleft(task["id"])
                    error = outcome.get("error") or {}
                    if error.get("code") == je.QUOTA_EXCEEDED_ERROR and state.failure is None:
                        state.failure = {"code": error["code"], "message": error["message"]}
            self.wake.set()

    @staticmethod
    def _internal_error(job: Record, task: Record, message: str) -> Record:
        return {**task, "state": "failed", "finished": time.time(), "outputs": [],
                "error": {"code": je.INTERNAL_ERROR, "message": message,
                          "input": task.get("input", ""), "stderr": None, "excerpt": ""}}


def _cancel_refused(written: Future[list[bool]], cancels: list[threading.Event]) -> None:
    """A task whose running record was refused (another process cancelled it) is stopped."""
    if (failed := written.exception()) is not None:
        log.warning("running records not written: %s", failed)
        return
    for ok, cancel in zip(written.result(), cancels, strict=True):
        if not ok:
            cancel.set()
