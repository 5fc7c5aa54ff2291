"""What a task's in-task tools (mpipe, mtee, mcat, msplit: jobs/tools/mtool) left for its runner.

    task: a tool writes its data files, then its manifest `<id>.json`, into /manta/out,
          a host directory bound writable for the task (a reused container's own one is
          emptied into the task's after each task: `hand_over`)
    agent, after a task that succeeded: `read_calls` -> [ToolCall] -> `check_reducers`
          -> `store_calls`: each data file into a blob; `references`: mcat's names
          -> outcome outputs with `tool`, `call`, `name`, `headers`, `emit` or `ref`
    front door (jobs/runner.py): every name checked against the job owner's buckets,
          then the objects are committed with the task's record, or the task fails and
          nothing is stored

The directory is the task user's, and we read it as root: entries are opened relative to
the directory's fd, with O_NOFOLLOW and O_NONBLOCK, and must be regular files (a symlink
to a host file, a FIFO, a directory: the task fails). Manifests name data files by plain
names only. A call without a manifest (it did not finish) is ignored: its data is not
stored. The directory's files count against the task's disk limit (each file is bounded
by RLIMIT_FSIZE while the task runs; the total is checked here, after it).

mpipe, mcat and msplit emit outputs; when any of them ran, the task's stdout is not an
output (as in Manta). mtee's object is stored but is not an output.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jobs.trees import remove_tree
from storage.replicas import BlobMeta, ReplicatedWriter

__all__ = ["MANIFEST_BYTES", "OUTPUT_MOUNT", "TOOLS_DIR", "TOOLS_MOUNT", "ToolCall", "ToolError",
           "check_reducers", "hand_over", "open_data", "read_calls", "references", "store_calls"]

OUTPUT_MOUNT = "/manta/out"  # the tools' private output directory inside a task
TOOLS_MOUNT = "/opt/manta/tools"  # where the tools are bound, last on PATH
TOOLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools")
MANIFEST_BYTES = 1 << 20
TOOLS = ("mpipe", "mtee", "mcat", "msplit")


class ToolError(Exception):
    """What the tools left cannot be stored; the message is for the task's error record."""


@dataclass(frozen=True)
class ToolCall:
    """One finished call of a tool, as its manifest says."""
    tool: str                                        # mpipe, mtee, mcat, msplit
    name: str | None = None                          # mpipe/mtee: bucket/key; None: generated
    headers: dict[str, str] = field(default_factory=dict)
    reducer: int = 0                                 # mpipe/mcat -r
    data: str | None = None                          # mpipe/mtee: the data file
    names: tuple[str, ...] = ()                      # mcat: the objects emitted by reference
    parts: dict[int, str] = field(default_factory=dict)  # msplit: reducer -> data file
    count: int = 0                                   # msplit -n

    @property
    def emits(self) -> bool:
        """Its objects are outputs of the task (and the task's stdout is not)."""
        return self.tool != "mtee"


def read_calls(path: str, disk_bytes: int) -> list[ToolCall]:
    """The finished calls in `path`, in the order they started."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        total = 0
        manifests = []
        for name in sorted(os.listdir(fd)):
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{OUTPUT_MOUNT}/{name} is not a regular file")
            total += info.st_size
            if name.endswith(".json"):
                manifests.append(name)
        if total > disk_bytes:
            raise ToolError(f"the tools' outputs ({total} bytes) exceed the task's disk limit ({disk_bytes} bytes)")
        return [_call(_read_manifest(fd, name), name) for name in manifests]
    finally:
        os.close(fd)


def open_data(path: str, name: str) -> int:
    """A data file of `path` opened for reading, never through a link; the caller closes it."""
    if "/" in name or name in ("", ".", ".."):
        raise ToolError(f"a manifest names a bad data file: {name!r}")
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ToolError(f"{OUTPUT_MOUNT}/{name} is missing") from None
    except OSError as exc:
        raise ToolError(f"{OUTPUT_MOUNT}/{name}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ToolError(f"{OUTPUT_MOUNT}/{name} is not a regular file")
    return fd


def check_reducers(calls: list[ToolCall], reducers: int) -> None:
    """-r and msplit's -n must fit the next phase (`reducers`: its count when a reduce)."""
    for call in calls:
        if call.tool == "msplit" and reducers and call.count != reducers:
            raise ToolError(f"msplit -n {call.count}: the next phase has {reducers} reducer(s)")
        if call.tool in ("mpipe", "mcat") and call.reducer >= max(reducers, 1):
            raise ToolError(f"{call.tool} -r {call.reducer}: the next phase has {max(reducers, 1)} reducer(s) "
                            "(numbered from 0)")


def store_calls(calls: list[ToolCall], path: str, make: Callable[[], ReplicatedWriter],
                drop: Callable[[BlobMeta], None]) -> list[tuple[int, BlobMeta, dict[str, Any]]]:
    """Each call's data files as blobs (`make` writes one): (partition, meta, the fields of
    its outcome record). On an error the blobs made are dropped."""
    made: list[tuple[int, BlobMeta, dict[str, Any]]] = []
    try:
        for n, call in enumerate(calls):
            if call.tool == "msplit":
                files = sorted(call.parts.items())
            else:
                files = [(call.reducer if call.tool == "mpipe" else 0, call.data)] if call.data else []
            for partition, name in files:
                fields = {"tool": call.tool, "call": n, "name": call.name, "headers": call.headers,
                          "emit": call.emits}
                made.append((partition, _blob_of(path, name, make), fields))
    except BaseException:
        for _, meta, _ in made:
            drop(meta)
        raise
    return made


def references(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """mcat's outputs, as outcome records: no blob, the name they are read by."""
    return [{"partition": call.reducer, "tool": "mcat", "call": n, "ref": name, "emit": True}
            for n, call in enumerate(calls) if call.tool == "mcat" for name in call.names]


def _blob_of(path: str, name: str, make: Callable[[], ReplicatedWriter]) -> BlobMeta:
    fd = open_data(path, name)
    try:
        writer = make()
        try:
            for data in _chunks(fd):
                writer.write(data)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        os.close(fd)


def _chunks(fd: int, size: int = 1 << 20) -> Iterator[bytes]:
    while data := os.read(fd, size):
        yield data


def hand_over(container_dir: str, task_dir: str | None, make: Callable[[], object] | None = None) -> bool:
    """Move what a task left in a reused container's directory into the task's own (made
    by `make` first, if there is anything to move) or remove it, so the next task starts
    with it empty. False when it could not be emptied."""
    try:
        os.chmod(container_dir, 0o700)
        names = os.listdir(container_dir)
    except OSError:
        return False
    if not names:  # the usual case; nothing of the task runs any more (the runner reaped it all)
        return True
    if task_dir is not None and make is not None:
        make()  # an error here is the task's: it raises, as a directory not made before the task would
    with contextlib.suppress(OSError):
        for name in names:
            source = os.path.join(container_dir, name)
            if task_dir is not None:
                os.rename(source, os.path.join(task_dir, name))
            elif os.path.isdir(source) and not os.path.islink(source):
                remove_tree(source)  # what it cannot remove stays: not empty, so False
            else:
                os.unlink(source)
        return not os.listdir(container_dir)
    return False


def _read_manifest(dir_fd: int, name: str) -> dict[str, object]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise ToolError(f"{OUTPUT_MOUNT}/{name}: {exc.strerror}") from None
    try:
        data = os.read(fd, MANIFEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        record = json.loads(data) if len(data) <= MANIFEST_BYTES else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ToolError(f"{OUTPUT_MOUNT}/{name} is not a tool's manifest")
    return record


def _call(record: dict[str, object], source: str) -> ToolCall:
    """A manifest's record as a ToolCall; anything unexpected is a ToolError."""
    def bad(what: str) -> ToolError:
        return ToolError(f"{OUTPUT_MOUNT}/{source}: {what}")

    tool = record.get("tool")
    if tool not in TOOLS:
        raise bad(f"unknown tool {tool!r}")
    headers = record.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in headers.items()):
        raise bad("bad headers")
    reducer = record.get("reducer", 0)
    if not isinstance(reducer, int) or reducer < 0:
        raise bad("bad reducer")
    name = record.get("name")
    if name is not None and not isinstance(name, str) or tool == "mtee" and name is None:
        raise bad("bad name")
    data = record.get("data")
    if tool in ("mpipe", "mtee") and not isinstance(data, str):
        raise bad("no data file")
    names = record.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or tool == "mcat" and not names:
        raise bad("bad names")
    parts = record.get("parts") or {}
    count = record.get("count", 0)
    if not isinstance(parts, dict) or not isinstance(count, int) or tool == "msplit" and count < 1:
        raise bad("bad parts")
    try:
        split = {int(k): v for k, v in parts.items()}
    except ValueError:
        raise bad("bad parts") from None
    if not all(isinstance(v, str) and 0 <= k < max(count, 1) for k, v in split.items()):
        raise bad("bad parts")
    return ToolCall(tool=str(tool), name=name if isinstance(name, str) else None,  # type: ignore[arg-type]
                    headers=dict(headers), reducer=reducer,
                    data=data if isinstance(data, str) else None, names=tuple(names),
                    parts=split, count=count)
