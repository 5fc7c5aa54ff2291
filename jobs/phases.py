"""Which tasks a job has: phases chain, tasks are made as inputs and outputs allow.

Phase 0 map tasks are made as inputs arrive (one per input); a later map phase gets one
task per output of the phase before, as those finish; a reduce phase's `count` reducers
are made when the phase before is complete (for phase 0: when the inputs are ended). A
job is done when its last phase is complete. `JobState` is the scheduler's in-memory view
of one job (its record, its tasks, the queue of those not yet started); it knows nothing
of nodes or of when tasks run (jobs/scheduler.py).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from jobs.records import JobRecords

__all__ = ["TERMINAL", "JobState", "partition_outputs"]

Record = dict[str, Any]
TERMINAL = ("done", "failed", "cancelled")


@dataclass
class JobState:
    """`tasks` changes through `put` (a queued task may go running in place), which keeps
    per-phase indexes, so a scheduler tick costs what changed, not every task of the job."""

    record: Record
    tasks: dict[str, Record] = field(default_factory=dict)
    queue: deque[str] = field(default_factory=deque)
    scheduled_inputs: int = 0
    counters: dict[int, int] = field(default_factory=dict)  # next map task number per phase > 0
    failure: Record | None = None  # set when a task hit a quota: the job's other tasks fail alike
    in_phase: dict[int, int] = field(default_factory=dict)  # tasks per phase
    unfinished: dict[int, int] = field(default_factory=dict)  # per phase, tasks not yet TERMINAL
    unchained: dict[int, list[Record]] = field(default_factory=dict)  # per phase, done tasks whose
    # outputs a next map phase has not taken yet

    def phase_tasks(self, phase: int) -> list[Record]:
        return [t for t in self.tasks.values() if t["phase"] == phase]

    def put(self, task: Record) -> None:
        """Add `task`, or replace the record of its id."""
        self._index(self.tasks.get(task["id"]), -1)
        self.tasks[task["id"]] = task
        self._index(task, 1)

    def _index(self, task: Record | None, sign: int) -> None:
        if task is None:
            return
        phase = task["phase"]
        self.in_phase[phase] = self.in_phase.get(phase, 0) + sign
        if task["state"] not in TERMINAL:
            self.unfinished[phase] = self.unfinished.get(phase, 0) + sign
        elif task["state"] == "done" and not task["chained"]:
            if sign > 0:
                self.unchained.setdefault(phase, []).append(task)
            else:  # (a finished task is not replaced today)
                self.unchained[phase] = [t for t in self.unchained.get(phase, []) if t is not task]

    def reindex(self) -> None:
        """Rebuild the queue, the counters and the indexes from the tasks (after a restart)."""
        self.queue = deque(sorted(t["id"] for t in self.tasks.values() if t["state"] == "queued"))
        self.scheduled_inputs = sum(1 for t in self.tasks.values() if t["phase"] == 0 and t["type"] == "map")
        for task in self.tasks.values():
            if task["phase"] > 0 and task["type"] == "map":
                n = int(task["id"].rsplit("m", 1)[1]) + 1
                self.counters[task["phase"]] = max(self.counters.get(task["phase"], 0), n)
        self.in_phase, self.unfinished, self.unchained = {}, {}, {}
        for task in sorted(self.tasks.values(), key=lambda t: t["id"]):
            self._index(task, 1)

    def new_task(self, phase: int, task_id: str, **fields: Any) -> Record:
        kind = self.record["phases"][phase]["type"]
        task = {"v": 1, "id": task_id, "job": self.record["id"], "phase": phase, "type": kind,
                "state": "queued", "node": None, "attempts": 0, "excluded": [], "created": time.time(),
                "started": None, "finished": None, "outputs": [], "error": None,
                "bytes_local": 0, "bytes_remote": 0, "chained": False, **fields}
        self.put(task)
        self.queue.append(task_id)
        return task

    def expand(self, records: JobRecords) -> None:
        """Make the tasks that inputs and finished tasks now allow, and save them."""
        phases = self.record["phases"]
        new: list[Record] = []
        changed: list[Record] = []
        if phases[0]["type"] == "map":
            fresh = records.inputs(self.record["id"], start=self.scheduled_inputs)
            for item in fresh:
                new.append(self.new_task(0, f"p0-m{self.scheduled_inputs:07d}", input=item))
                self.scheduled_inputs += 1
        elif self.record["inputs_ended"] and not self.in_phase.get(0):
            inputs = records.inputs(self.record["id"])
            count = phases[0]["count"]
            for r in range(count):
                new.append(self.new_task(0, f"p0-r{r:04d}", inputs=inputs, reducer=r,
                                         partition=r if count > 1 else None))
        for phase in range(1, len(phases)):
            if phases[phase]["type"] == "map":  # the tasks done since the last tick, in task order
                for task in sorted(self.unchained.pop(phase - 1, []), key=lambda t: t["id"]):
                    for output in task["outputs"]:
                        n = self.counters.get(phase, 0)
                        self.counters[phase] = n + 1
                        new.append(self.new_task(phase, f"p{phase}-m{n:07d}", input=output))
                    task["chained"] = True
                    changed.append(task)
            elif not self.in_phase.get(phase) and self.phase_complete(phase - 1):
                before = [t for t in self.phase_tasks(phase - 1) if t["state"] == "done"]  # once
                count = phases[phase]["count"]
                for r in range(count):
                    if count > 1:
                        inputs = [o for t in before for o in partition_outputs(t, r, count)]
                    else:
                        inputs = [o for t in before for o in t["outputs"]]
                    new.append(self.new_task(phase, f"p{phase}-r{r:04d}", inputs=inputs, reducer=r,
                                             partition=None))
        if new or changed:
            records.save_tasks(changed + new)

    def phase_complete(self, phase: int) -> bool:
        phases = self.record["phases"]
        if self.unfinished.get(phase):
            return False
        if phase == 0:
            if not self.record["inputs_ended"]:
                return False
            if phases[0]["type"] == "map":
                return self.scheduled_inputs >= self.record["input_count"]
            return bool(self.in_phase.get(0))
        if not self.phase_complete(phase - 1):
            return False
        if phases[phase]["type"] == "map":  # every output of the phase before taken
            return not self.unchained.get(phase - 1)
        return bool(self.in_phase.get(phase))

    @property
    def done(self) -> bool:
        """Every phase complete. A task still queued (the queue's head, while the job runs)
        answers no without a scan of every task, which each scheduler tick would pay."""
        if self.queue and self.tasks.get(self.queue[0], {}).get("state") not in (None, *TERMINAL):
            return False
        return self.phase_complete(len(self.record["phases"]) - 1)


def partition_outputs(task: Record, reducer: int, count: int) -> list[str]:
    """The outputs of `task` meant for `reducer` of the next phase's `count`: the ones its
    `partitions` list names (empty partitions make no object); records written before that
    list existed have one output per reducer, in order."""
    if "partitions" in task:
        return [o for o, p in zip(task["outputs"], task["partitions"], strict=True) if p == reducer]
    return [task["outputs"][reducer]] if len(task["outputs"]) == count else []
