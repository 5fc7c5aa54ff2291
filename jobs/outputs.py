"""A task's stdout made into output blobs: one blob, or one per reducer of the next phase.

    stdout --write--> [partition by the text before the first tab] --> a writer per output
    commit --> (partition, BlobMeta) of each non-empty output; `journal` the small ones' bytes

Small outputs take the small PUT's durable path when the task runs in the front door's
process (`place` given): gathered in memory up to SMALL_OUTPUT_BYTES, placed on the nodes
without fsync at commit (`replicas.place_small`), their bytes returned in `journal` for
the catalog transaction that records the task's outcome (jobs/runner.py `_finish`). That
one group-committed fsync makes them durable; the leader's JournalFlusher syncs the files
later and recovery rewrites them after a crash, as for small PUTs. A light task (`wc -l`)
so saves a blob fsync and a directory fsync. An output that grows past the threshold is
spilled into a ReplicatedWriter (temp file, fsync at commit), as every output of a task
on a remote node is.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable

from jobs import errors as je
from storage import errors as se
from storage.blobs import MemoryBlobWriter
from storage.replicas import BlobMeta, ReplicatedWriter

__all__ = ["SMALL_OUTPUT_BYTES", "TaskOutputs", "partition_of"]

SMALL_OUTPUT_BYTES = 64 * 1024  # as the S3 layer's small PUTs

Writer = ReplicatedWriter | MemoryBlobWriter


def partition_of(line: bytes, count: int) -> int:
    """The reducer (0..count-1) a line goes to: a stable hash of the text before the first tab."""
    key = line.split(b"\t", 1)[0].rstrip(b"\n")
    return zlib.crc32(key) % count


class TaskOutputs:
    """stdout -> one blob, or one per reducer of the next phase (made on its first byte:
    an empty partition makes no blob). With `place`, outputs stay in memory while small."""

    def __init__(self, make: Callable[[], ReplicatedWriter], partitions: int,
                 place: Callable[[MemoryBlobWriter], BlobMeta] | None = None,
                 drop: Callable[[BlobMeta], None] | None = None) -> None:
        self.make = make
        self.place = place
        self.spilled = False  # an output outgrew memory: the task's new outputs go to files
        self._drop = drop
        self.partitions = partitions
        self.writers: dict[int, Writer] = {}
        self.journal: dict[str, bytes] = {}  # blob id -> bytes of each output placed without fsync
        self._tail = b""
        if partitions <= 1:
            self.writers[0] = self._new()  # fails now (no space) rather than mid-task

    def _new(self) -> Writer:
        if self.place is not None and not self.spilled:
            return MemoryBlobWriter()
        try:
            return self.make()
        except se.InsufficientNodes as exc:
            raise je.NodeFailure(str(exc)) from exc

    def _write(self, index: int, data: bytes) -> None:
        writer = self.writers.get(index)
        if writer is None:
            writer = self.writers[index] = self._new()
        if isinstance(writer, MemoryBlobWriter) and writer.size + len(data) > SMALL_OUTPUT_BYTES:
            gathered = writer
            self.spilled = True  # the other outputs of this task may be as big: files for all from now
            writer = self.writers[index] = self._new()
            writer.write(bytes(gathered.buffer))
        writer.write(data)

    def write(self, data: bytes) -> None:
        if self.partitions <= 1:
            self._write(0, data)
            return
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        buckets: dict[int, list[bytes]] = {}
        for line in data[:cut].splitlines(keepends=True):
            buckets.setdefault(partition_of(line, self.partitions), []).append(line)
        for index, lines in buckets.items():
            self._write(index, b"".join(lines))

    def commit(self) -> list[tuple[int, BlobMeta]]:
        """(partition, blob meta) of each non-empty output, in partition order."""
        if self._tail:
            self._write(partition_of(self._tail, self.partitions), self._tail + b"\n")
            self._tail = b""
        out: list[tuple[int, BlobMeta]] = []
        try:
            for index in sorted(self.writers):
                writer = self.writers[index]
                if writer.size == 0:
                    writer.abort()
                elif isinstance(writer, MemoryBlobWriter):
                    assert self.place is not None  # memory writers exist only with a placer
                    out.append((index, self.place(writer)))
                    self.journal[writer.blob_id] = bytes(writer.buffer)
                else:
                    out.append((index, writer.commit()))
        except se.InsufficientNodes as exc:
            nodes = {n.id: n for w in self.writers.values() if isinstance(w, ReplicatedWriter)
                     for n in w.all_nodes}
            for _, meta in out:
                if meta.blob_id in self.journal and self._drop is not None:
                    self._drop(meta)
                    continue
                for node_id in meta.nodes:
                    if node_id in nodes:
                        with contextlib.suppress(OSError, se.StorageError):
                            nodes[node_id].delete(meta.blob_id)
            raise je.NodeFailure(str(exc)) from exc
        return out

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
