"""Following the catalog: what the started scheduler learns of other processes' API writes.

Every API write (create, add_inputs, cancel; jobs/records.py) bumps the catalog's change
counter and appends the job id to the change log in the same transaction. The started
scheduler reads the counter every FOLLOW_S (one LMDB get); when it moved, it reads the log
past the last change it saw, reloads just those jobs' records, and drops the log up to
there (one write, not waited for). At start it takes the counter first and then loads every
running job, so a change made in between is seen twice, never missed; the log of a
scheduler that died is dropped by the next one's start.
"""

from __future__ import annotations

from typing import Any

from jobs.phases import JobState
from jobs.records import JobRecords

__all__ = ["FOLLOW_S", "ChangeFollower", "load_job"]

Record = dict[str, Any]
FOLLOW_S = 0.1  # how often the started scheduler looks for other processes' changes


class ChangeFollower:
    def __init__(self, records: JobRecords) -> None:
        self.records = records
        self.seen = 0

    def begin(self) -> None:
        """Take the counter as it is now, before the jobs are loaded; forget older changes."""
        self.seen = self.records.change_seq()
        self.records.drop_changes(self.seen)

    def poll(self) -> list[str]:
        """The jobs changed since the last poll (none: one read)."""
        if self.records.change_seq() == self.seen:
            return []
        self.seen, changed = self.records.changes(self.seen)
        self.records.drop_changes(self.seen)
        return changed


def load_job(records: JobRecords, record: Record) -> JobState:
    """A job's in-memory state from its catalog records."""
    job = JobState(record)
    for task in records.tasks(record["id"]):
        job.tasks[task["id"]] = task
    job.reindex()
    return job
