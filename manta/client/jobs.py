"""The Python client's jobs: `Job` follows a job on the server by id (any process can),
with tqdm progress bars in a terminal or a notebook; `job_phases` turns `Client.job`'s
arguments into the phases of a job spec.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from manta.client.errors import JobFailed

if TYPE_CHECKING:
    import pandas

__all__ = ["INPUT_BATCH", "Job", "job_phases", "progress_bar"]

INPUT_BATCH = 1000
WAIT_S = 0.5  # the longest a job-status request waits for the job to end


def progress_bar(total: int | None, desc: str, unit: str = "B", **kw: Any) -> Any:
    from tqdm.auto import tqdm

    scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **scaled, **kw)


def job_phases(map: str | list[str] | None, reduce: str | list[str] | None, count: int | None,
            phases: list[dict[str, Any]] | None, limits: dict[str, Any]) -> list[dict[str, Any]]:
    unknown = set(limits) - {"memory_mb", "disk_mb", "timeout_s", "assets", "init"}
    if unknown:
        raise TypeError(f"unknown job option(s): {', '.join(sorted(unknown))}")
    maps = [map] if isinstance(map, str) else list(map or [])
    reduces = [reduce] if isinstance(reduce, str) else list(reduce or [])
    if phases and (maps or reduces):
        raise ValueError("give either map/reduce or phases, not both")
    if count is not None and not reduces:
        raise ValueError("count is the number of reducers, and this job has no reduce phase")
    spec = [dict(p) for p in phases or []]
    spec += [{"type": "map", "exec": m} for m in maps]
    spec += [{"type": "reduce", "exec": r, **({"count": count} if count else {})} for r in reduces]
    if not spec:
        raise ValueError("a job needs at least one phase: map=..., reduce=... or phases=[...]")
    return [{**{k: v for k, v in limits.items() if v is not None}, **p} for p in spec]


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

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    @property
    def status(self) -> dict[str, Any]:
        """The job as the server has it now: state, phases with task counts, errors."""
        return self.client.api("GET", f"/_manta/jobs/{self.id}")  # type: ignore[no-any-return]

    @property
    def state(self) -> str:
        return str(self.status["state"])

    def add_inputs(self, inputs: str | Iterable[str], end: bool = False) -> None:
        batch: list[str] = []
        for item in self.client.expand(inputs):
            batch.append(item)
            if len(batch) >= INPUT_BATCH:
                self.client.api("POST", f"/_manta/jobs/{self.id}/inputs", {"inputs": batch, "end": False})
                batch = []
        if batch or end:
            self.client.api("POST", f"/_manta/jobs/{self.id}/inputs", {"inputs": batch, "end": end})

    def end_inputs(self) -> None:
        self.client.api("POST", f"/_manta/jobs/{self.id}/end")

    def wait(self, timeout_s: float | None = None, progress: bool = True, check: bool = False) -> Job:
        """Wait until the job is done or cancelled (and none of its tasks still runs),
        with a tqdm bar per phase; `check` raises JobFailed if any task failed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bars: list[Any] = []
        settle = None
        try:
            while True:  # the server answers when the job is over, or after WAIT_S
                status = self.client.api("GET", f"/_manta/jobs/{self.id}?wait={WAIT_S:g}")
                counts = [(p["type"], p["done"] + p["failed"] + p["cancelled"], p["tasks"]) for p in status["phases"]]
                while progress and len(bars) < len(counts):
                    kind, _, total = counts[len(bars)]
                    bars.append(progress_bar(total, f"job {self.id[:8]} phase {len(bars)} {kind}", unit="task"))
                for bar, (_, done, total) in zip(bars, counts, strict=False):
                    if bar.total != total:
                        bar.reset(total=total)  # (a notebook bar's maximum changes only so)
                    if bar.n != done:
                        bar.n = done
                        bar.set_postfix(errors=status["errors"], refresh=False)
                        bar.refresh()
                if status["state"] != "running":
                    settle = settle or time.monotonic() + 10
                    if not sum(p["running"] for p in status["phases"]) or time.monotonic() > settle:
                        break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} still {status['state']} after {timeout_s}s")
        finally:
            for bar in bars:
                bar.close()
        if check and (status["errors"] or status["state"] != "done"):
            first = "; ".join(f"{e['code']} {e.get('input') or e['task']}: {e.get('message', '')}"
                              for e in self.errors()[:3])
            raise JobFailed(f"job {self.id} {status['state']} with {status['errors']} errors: {first}")
        return self

    def outputs(self) -> list[str]:
        """The last phase's output objects (`bucket/key`), in task order."""
        return self.client.api("GET", f"/_manta/jobs/{self.id}/outputs")["outputs"]  # type: ignore[no-any-return]

    def read_outputs(self) -> bytes:
        """The outputs' contents, concatenated in task order."""
        return b"".join(self.client.get(name) for name in self.outputs())

    def to_pandas(self, **read_csv_kwargs: Any) -> pandas.DataFrame:
        """The outputs as one DataFrame: `pandas.read_csv(outputs, **read_csv_kwargs)`
        (e.g. sep="\\t", names=[...] for tab-separated lines without a header)."""
        import pandas

        data = self.read_outputs()
        if not data.strip():
            return pandas.DataFrame(columns=read_csv_kwargs.get("names"))
        return pandas.read_csv(io.BytesIO(data), **read_csv_kwargs)

    def errors(self) -> list[dict[str, Any]]:
        """Failed tasks: code, message, input, stderr excerpt."""
        return self.client.api("GET", f"/_manta/jobs/{self.id}/errors")["errors"]  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self.client.api("POST", f"/_manta/jobs/{self.id}/cancel")
