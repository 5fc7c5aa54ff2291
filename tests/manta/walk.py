"""What the model walks (tests/manta/test_handlers_*model.py) share: a seeded run's checks,
whose failures name the seed, the step, the model's state and the last requests, so a
failure can be replayed; and the helpers that keep those messages readable."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import NoReturn

HISTORY_TAIL = 25  # requests a failure message shows


def shown(text: str) -> str:
    """`text` with long runs of one character abbreviated ("x{458}"): long keys stay readable."""
    return re.sub(r"(.)\1{15,}", lambda m: f"{m[1]}{{{len(m[0])}}}", text)


def difference(got: Sequence[object], want: Sequence[object]) -> str:
    """Where two listings part, with a few entries of context (whole lists are long)."""
    at = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
    lo = max(0, at - 2)
    return (f"  {len(got)} entries, S3 would answer {len(want)}; first difference at entry {at}\n"
            f"  got   [{lo}:]: {got[lo:at + 3]}\n"
            f"  model [{lo}:]: {want[lo:at + 3]}")


# (weight, operation); an operation answers False when it had nothing to act on
Operations = list[tuple[int, Callable[[], bool]]]


class Checks:
    """A walk's checks and steps (a mixin: the walk sets `seed`, `rng`, `step` and
    `history`, one line per request sent, and may say more of its model in `state`)."""

    seed: int
    rng: random.Random
    step: int
    history: list[str]

    def take_steps(self, ops: Operations, steps: int, full_every: int, full_check: Callable[[], None]) -> None:
        """`steps` random operations (drawn by weight until one acts), a `full_check`
        every `full_every` of them and one at the end (step steps + 1)."""
        weights = [w for w, _ in ops]
        for step in range(1, steps + 1):
            self.step = step
            while True:
                _, op = self.rng.choices(ops, weights)[0]
                if op():
                    break
            if step % full_every == 0:
                full_check()
        self.step = steps + 1
        full_check()

    def state(self) -> str:
        """The model's state worth seeing in a failure ("" for none)."""
        return ""

    def fail(self, what: str) -> NoReturn:
        tail = "\n".join(self.history[-HISTORY_TAIL:])
        state = self.state()
        raise AssertionError(f"seed={self.seed} step={self.step}: {shown(what)}\n"
                             + (f"{state}\n" if state else "")
                             + f"last {min(HISTORY_TAIL, len(self.history))} requests:\n{tail}")

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def equal(self, got: object, want: object, what: str) -> None:
        if got == want:
            return
        if isinstance(got, list) and isinstance(want, list):
            self.fail(f"{what}:\n{difference(got, want)}")
        self.fail(f"{what}: got {got!r}, S3 would answer {want!r}")
