"""Progress on stderr, one implementation for `manta.Client` and the `manta` command: bytes
moved by `Client.put` / `Client.get` (`Transfer`) and tasks finished by `Job.wait`
(`JobProgress`).

Where someone watches the output as it is written (a terminal, or a Jupyter kernel) progress
is tqdm bars (`tqdm.auto`: widgets in a notebook). Anywhere else (a pipe, a log file, a
captured stream) a bar's redraws would be noise, so it is plain lines:

    put logs/big.bin: 20.0 MiB in 0.4s, 48.1 MiB/s             a transfer, once, when it ends
    job 5f0c2a9e11d3b7a4: phase 0 map 3/10, phase 1 reduce 0/1   a job, whenever a count changes
    job 5f0c2a9e11d3b7a4 done: 0 errors                        a job, when the wait ends (bars too)
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["JobProgress", "Transfer", "watched"]


def watched(stream: TextIO) -> bool:
    """Whether a person sees `stream` as it is written: a terminal, or a Jupyter kernel's output."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        pass
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar(total: int | None, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr, **scaled)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Transfer:
    """The bytes of one put or get, `update`d from any thread; a context manager. Shows
    nothing unless `show`; a plain line only for a transfer that completed."""

    def __init__(self, desc: str, total: int | None, show: bool) -> None:
        self.desc = desc
        self.show = show
        self.done = 0
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._bar = _bar(total, desc, "B") if show and watched(sys.stderr) else None

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.show and exc_type is None:
            seconds = max(time.monotonic() - self._started, 1e-3)
            print(f"{self.desc}: {_size(self.done)} in {seconds:.1f}s, {_size(self.done / seconds)}/s",
                  file=sys.stderr, flush=True)


class JobProgress:
    """Tasks finished per phase of job `job_id`, from the job statuses `Job.wait` reads.
    Shows nothing unless `show`."""

    def __init__(self, job_id: str, show: bool) -> None:
        self.job_id = job_id
        self.show = show
        self._bars: list[Any] | None = [] if show and watched(sys.stderr) else None
        self._last = ""

    def update(self, status: dict[str, Any]) -> None:
        if not self.show:
            return
        counts = [(p["type"], p["done"] + p["failed"] + p["cancelled"], p["tasks"]) for p in status["phases"]]
        if self._bars is None:
            line = f"job {self.job_id}: " + ", ".join(
                f"phase {i} {kind} {done}/{total}" for i, (kind, done, total) in enumerate(counts))
            if status["errors"]:
                line += f", {status['errors']} errors"
            if line != self._last:
                print(line, file=sys.stderr, flush=True)
                self._last = line
            return
        bars = self._bars
        while len(bars) < len(counts):
            kind, _, total = counts[len(bars)]
            bars.append(_bar(total, f"job {self.job_id[:8]} phase {len(bars)} {kind}", "task"))
        for bar, (_, done, total) in zip(bars, counts, strict=False):
            if bar.total != total:
                bar.reset(total=total)  # (a notebook bar's maximum changes only so)
            if bar.n != done:
                bar.n = done
                bar.set_postfix(errors=status["errors"], refresh=False)
                bar.refresh()

    def close(self, status: dict[str, Any] | None) -> None:
        """The wait is over: with the job's last status when it ended, None when it did not
        (a timeout, an interrupt, an error)."""
        for bar in self._bars or []:
            bar.close()
        if self.show and status is not None:
            print(f"job {self.job_id} {status['state']}: {status['errors']} errors", file=sys.stderr, flush=True)
