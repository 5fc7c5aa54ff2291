"""The Python client's jobs: `Job` follows a job on the server by id (any process can);
`Job.wait` is the one wait loop (the `manta job` commands use it too), reporting to
`progress.JobProgress`; `job_phases` turns `Client.job`'s arguments into the phases of a
job spec (a Python function's phase is made by `functions.py`).
"""

from __future__ import annotations

import io
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from manta.client.errors import JobFailed
from manta.client.functions import Function, Upload, as_function, function_phase
from manta.client.progress import JobProgress

if TYPE_CHECKING:
    import pandas

__all__ = ["INPUT_BATCH", "INPUT_BATCH_S", "Command", "Job", "job_phases"]

INPUT_BATCH = 1000
INPUT_BATCH_S = 1.0  # inputs that trickle in (a pipe) are sent at least this often
WAIT_S = 0.5  # the longest a job-status request waits for the job to end


Command = str | Callable[..., Any] | Function


def _listed(commands: Command | list[Command] | None) -> list[Command]:
    if isinstance(commands, str | Function) or callable(commands):
        return [commands]
    return list(commands or [])


def job_phases(map: Command | list[Command] | None, reduce: Command | list[Command] | None, count: int | None,
               phases: list[dict[str, Any]] | None, limits: dict[str, Any], *, bucket: str = "",
               input: str | None = None, output: str | None = None) -> tuple[list[dict[str, Any]], list[Upload]]:
    """The phases of a job spec, and the objects its function phases need (`functions.py`:
    a phase's `exec` is a shell command, a Python callable or a `Function`; functions'
    pickles go to `bucket`; `input` applies to every function phase, `output` to the last)."""
    unknown = set(limits) - {"memory_mb", "disk_mb", "timeout_s", "assets", "init", "image"}
    if unknown:
        raise TypeError(f"unknown job option(s): {', '.join(sorted(unknown))}")
    maps, reduces = _listed(map), _listed(reduce)
    if phases and (maps or reduces):
        raise ValueError("give either map/reduce or phases, not both")
    if count is not None and not reduces:
        raise ValueError("count is the number of reducers, and this job has no reduce phase")
    spec = [dict(p) for p in phases or []]
    spec += [{"type": "map", "exec": m} for m in maps]
    spec += [{"type": "reduce", "exec": r, **({"count": count} if count else {})} for r in reduces]
    if not spec:
        raise ValueError("a job needs at least one phase: map=..., reduce=... or phases=[...]")
    settings = {k: v for k, v in limits.items() if v is not None}
    uploads: list[Upload] = []
    for i, phase in enumerate(spec):
        last = i == len(spec) - 1
        function = as_function(phase.get("exec"), input, output if last else None)
        if function is None:
            spec[i] = {**settings, **phase}
            continue
        made, upload = function_phase(phase.get("type", "map"), function, bucket, limits={**settings, **phase},
                                      before_reduce=not last and spec[i + 1].get("type") == "reduce")
        spec[i] = {**settings, **phase, **made}
        uploads.append(upload)
    return spec, uploads


class JobsClient(Protocol):
    """What a `Job` needs of its client (a `manta.Client`)."""

    def api(self, method: str, path: str, payload: Any = None, timeout_s: float = 60.0) -> Any: ...

    def get(self, path: str) -> bytes: ...

    def expand(self, inputs: str | Iterable[str]) -> Iterator[str]: ...


class Job:
    """A job on the server: its state lives there, so any process can follow it by id."""

    def __init__(self, client: JobsClient, job_id: str) -> None:
        self.client = client
        self.id = job_id
        self._path = "/_manta/jobs/" + urllib.parse.quote(job_id, safe="")

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @property
    def status(self) -> dict[str, Any]:
        """The job as the server has it now: state, phases with task counts, errors."""
        return self.fetch()

    def fetch(self, tasks: bool = False, wait_s: float | None = None) -> dict[str, Any]:
        """`status`, with every task's record too if `tasks`; with `wait_s`, the server
        answers as soon as the job is over, or after `wait_s` seconds."""
        query = urllib.parse.urlencode({**({"tasks": 1} if tasks else {}),
                                        **({"wait": f"{wait_s:g}"} if wait_s is not None else {})})
        return self.client.api("GET", f"{self._path}?{query}" if query else self._path)  # type: ignore[no-any-return]

    @property
    def state(self) -> str:
        return str(self.status["state"])

    def add_inputs(self, inputs: str | Iterable[str], end: bool = False) -> None:
        """Add `bucket/key` inputs (a bucket or `bucket/prefix/` stands for every object
        under it), sent in batches of INPUT_BATCH or of what arrived in INPUT_BATCH_S."""
        batch: list[str] = []
        sent = time.monotonic()
        for item in self.client.expand(inputs):
            batch.append(item)
            if len(batch) >= INPUT_BATCH or time.monotonic() - sent >= INPUT_BATCH_S:
                self.client.api("POST", f"{self._path}/inputs", {"inputs": batch, "end": False})
                batch = []
                sent = time.monotonic()
        if batch or end:
            self.client.api("POST", f"{self._path}/inputs", {"inputs": batch, "end": end})

    def end_inputs(self) -> None:
        self.client.api("POST", f"{self._path}/end")

    def wait(self, timeout_s: float | None = None, progress: bool = True, check: bool = False) -> Job:
        """Wait until the job is done or cancelled (and none of its tasks still runs), with
        its progress on stderr (`manta.client.progress`: bars where someone watches, plain
        lines elsewhere); `check` raises JobFailed if any task failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        report = JobProgress(self.id, show=progress)
        settle = None
        ended = None
        try:
            while True:  # the server answers when the job is over, or after WAIT_S
                status = self.fetch(wait_s=WAIT_S)
                report.update(status)
                if status["state"] != "running":
                    settle = settle or time.monotonic() + 10
                    if not sum(p["running"] for p in status["phases"]) or time.monotonic() > settle:
                        ended = status
                        break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {status['state']} after {timeout_s}s")
        finally:
            report.close(ended)
        if check and (status["errors"] or status["state"] != "done"):
            first = "; ".join(f"{e['code']} {e.get('input') or e['task']}: {e.get('message', '')}"
                              for e in self.errors()[:3])
            raise JobFailed(f"job {self.id} {status['state']} with {status['errors']} errors: {first}")
        return self

    def outputs(self) -> list[str]:
        """The last phase's output objects (`bucket/key`), in task order."""
        return self.client.api("GET", f"{self._path}/outputs")["outputs"]  # type: ignore[no-any-return]

    def read_outputs(self) -> bytes:
        """The outputs' contents, concatenated in task order."""
        return b"".join(self.client.get(name) for name in self.outputs())

    def to_pandas(self, **read_csv_kwargs: Any) -> pandas.DataFrame:
        """The outputs as one DataFrame: each output read by itself, as Parquet when it
        begins with PAR1, else `pandas.read_csv(output, **read_csv_kwargs)` (e.g. sep="\\t",
        names=[...] for tab-separated lines without a header), then concatenated in task order."""
        import pandas

        frames = []
        for name in self.outputs():
            data = self.client.get(name)
            if data[:4] == b"PAR1":
                frames.append(pandas.read_parquet(io.BytesIO(data)))
            elif data.strip():
                frames.append(pandas.read_csv(io.BytesIO(data), **read_csv_kwargs))
        if not frames:
            return pandas.DataFrame(columns=read_csv_kwargs.get("names"))
        return pandas.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def errors(self) -> list[dict[str, Any]]:
        """Failed tasks: code, message, input, stderr excerpt."""
        return self.client.api("GET", f"{self._path}/errors")["errors"]  # type: ignore[no-any-return]

    def cancel(self) -> dict[str, Any]:
        """Cancel the job (queued tasks dropped, running ones killed); returns its status
        after the cancel (a job that had ended keeps its state)."""
        return self.client.api("POST", f"{self._path}/cancel")  # type: ignore[no-any-return]
