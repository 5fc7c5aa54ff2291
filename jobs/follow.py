"""Following the catalog: what the started scheduler learns of other processes' API writes.

Every API write (create, add_inputs, cancel; jobs/records.py) bumps the catalog's change
counter and appends the job id to the change log in the same transaction. The started
scheduler reads the counter every FOLLOW_S (one LMDB get); when it moved, it reads the log
past the last change it saw, reloads just those jobs' records, and drops the log up to
there (one write, not waited for). At start it takes the counter first and then loads every
running job, so a change made in between is seen twice, never missed; the log of a
scheduler that died is dropped by the next one's start.

Nudges: a process whose scheduler is not started sends one datagram after each such write
(`Nudge.send`) to a socket the started scheduler of the same data directory listens on
(`Nudge.listen`), so the leader reads the log at once instead of within FOLLOW_S (a job
created through another worker of `manta serve` starts within milliseconds). The socket
is in the abstract namespace (no file, gone with its process), named from the data
directory. A nudge carries nothing: it only makes the leader read the change counter
early, so a datagram from anyone else costs one read (nudges are taken at most every
NUDGE_GAP_S, those queued meanwhile as one), and a socket it cannot bind (another
process holds the name) leaves it polling every FOLLOW_S, as before; it tries again every
NUDGE_RETRY_S. A process on another host (doors over one PostgreSQL catalog) is not
nudged: the leader polls for its changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from jobs.phases import JobState
from jobs.records import JobRecords

__all__ = ["FOLLOW_S", "ChangeFollower", "Nudge", "load_job"]

log = logging.getLogger("manta.jobs")

Record = dict[str, Any]
FOLLOW_S = 0.1  # how often the started scheduler looks for other processes' changes
NUDGE_RETRY_S = 1.0  # how often a listener that could not bind tries again (and looks at stop)
NUDGE_GAP_S = 0.002  # nudges are taken at most this often: a flood of datagrams costs bounded work


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


class Nudge:
    """The wake-up datagram between the processes of one data directory (see above)."""

    def __init__(self, data_dir: str) -> None:
        digest = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:32]
        self.address = b"\0manta-jobs-" + digest.encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bound = threading.Event()  # the listener holds the name (for tests and logs)

    def send(self) -> None:
        """Nudge the listener, if any; never blocks, never fails. A socket per nudge: one
        per job API write, and nothing left open for whoever never stops this object."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(b"!", self.address)
        except OSError:  # nobody listens (no leader yet), or its queue is full: it polls anyway
            pass

    def listen(self, on_nudge: Callable[[], None]) -> None:
        """Call `on_nudge` for each datagram, from a thread of its own, until `close`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, args=(on_nudge,), name="job-nudges", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            if self.bound.is_set():
                self.send()  # ends its wait in recv now, not after NUDGE_RETRY_S
            self._thread.join()
            self._thread = None

    def _listen(self, on_nudge: Callable[[], None]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.settimeout(NUDGE_RETRY_S)
        told = False
        try:
            while not self._stop.is_set():
                try:
                    sock.bind(self.address)
                    break
                except OSError as exc:  # held: a leader that is still stopping, or another process
                    if not told:
                        told = True
                        log.info("job nudges: cannot listen (%s); following the catalog every %g s", exc, FOLLOW_S)
                    self._stop.wait(NUDGE_RETRY_S)
            else:
                return
            self.bound.set()
            while not self._stop.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                except OSError:
                    return
                # non-blocking for the drain: on a socket with a timeout, Python waits out
                # the timeout even for recv(MSG_DONTWAIT), then raises TimeoutError
                sock.setblocking(False)
                try:
                    while True:  # those queued meanwhile count as one
                        sock.recv(64)
                except BlockingIOError:
                    pass
                except OSError:
                    return
                finally:
                    sock.settimeout(NUDGE_RETRY_S)
                on_nudge()
                self._stop.wait(NUDGE_GAP_S)
        finally:
            self.bound.clear()
            sock.close()


def load_job(records: JobRecords, record: Record) -> JobState:
    """A job's in-memory state from its catalog records."""
    job = JobState(record)
    for task in records.tasks(record["id"]):
        job.tasks[task["id"]] = task
    job.reindex()
    return job
