"""Object Lock (S3's write-once retention): the rules a version's retention and legal hold
impose, checked inside the storage transactions that delete or change a version, so every
path (S3, DeleteObjects, lifecycle expiry, admin tools) meets them.

A bucket with Object Lock has `BucketRecord.lock` (a `LockConfig`, its default retention or
none) and versioning Enabled for good: its writes always make new versions, never replace
one in place. Fields Object Lock adds to a version's record::

    lock_mode   "GOVERNANCE" | "COMPLIANCE"   } both or neither: the version's retention
    lock_until  epoch seconds (float)          }
    legal_hold  True: ON, False: OFF (absent: never set)

A version is retained while `lock_until` is in the future. Rules:

    delete by version id   refused (ObjectLocked) while retained, unless GOVERNANCE and the
                           caller asked to bypass it; refused while the legal hold is ON
    change of retention    while retained: to a later or equal date and the same or a
                           stricter mode is allowed; COMPLIANCE can never be shortened,
                           loosened to GOVERNANCE or removed; GOVERNANCE can, with bypass
    legal hold             ON or OFF at any time (its own permission guards it)

A plain DELETE (no version id) adds a delete marker and removes nothing: always allowed.
A new version gets the bucket's default retention when the write gave none (`apply_default`).
Who may bypass GOVERNANCE (s3:BypassGovernanceRetention) is the S3 layer's decision; storage
only takes the caller's `bypass`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import errors

__all__ = ["LOCK_FIELDS", "MODES", "LockConfig", "apply_default", "check_delete", "retained",
           "with_legal_hold", "with_retention"]

MODES = ("GOVERNANCE", "COMPLIANCE")
LOCK_FIELDS = ("lock_mode", "lock_until", "legal_hold")
_STRICTNESS = {"GOVERNANCE": 0, "COMPLIANCE": 1}

Record = dict[str, Any]


@dataclass(frozen=True)
class LockConfig:
    """A bucket's Object Lock configuration: its default retention (mode with days or
    years), or none (mode None)."""

    mode: str | None = None
    days: int | None = None
    years: int | None = None

    def __post_init__(self) -> None:
        if self.mode is None:
            if self.days is not None or self.years is not None:
                raise ValueError("a default retention period needs a mode")
            return
        if self.mode not in MODES:
            raise ValueError(f"retention mode is one of {MODES}: {self.mode!r}")
        if (self.days is None) == (self.years is None):
            raise ValueError("a default retention has days or years, not both")
        if (self.days or self.years or 0) <= 0:
            raise ValueError("a default retention period is positive")

    def until(self, now: float) -> float:
        """The retain-until date of a version written at `now` under the default rule."""
        if self.days is not None:
            return now + self.days * 86400.0
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        years = start.year + (self.years or 0)
        try:
            end = start.replace(year=years)
        except ValueError:  # 29 February
            end = start.replace(year=years, day=28)
        return end.timestamp()

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mode is not None:
            out["mode"] = self.mode
            out["days" if self.days is not None else "years"] = self.days if self.days is not None else self.years
        return out

    @classmethod
    def decode(cls, d: dict[str, Any]) -> LockConfig:
        return cls(d.get("mode"), d.get("days"), d.get("years"))


def apply_default(config: LockConfig, record: Record, now: float) -> None:
    """Give a new version the bucket's default retention, unless its write set one."""
    if config.mode is not None and "lock_mode" not in record:
        record["lock_mode"] = config.mode
        record["lock_until"] = config.until(now)


def retained(record: Record, now: float) -> bool:
    """Whether the version's retention is in force at `now`."""
    until = record.get("lock_until")
    return until is not None and until > now


def check_delete(record: Record, bucket: str, vid: str, bypass: bool, now: float) -> None:
    """Raise ObjectLocked if the version may not be removed now."""
    if record.get("legal_hold"):
        raise errors.ObjectLocked(bucket, record["key"], vid, "a legal hold is on")
    if retained(record, now) and not (bypass and record.get("lock_mode") == "GOVERNANCE"):
        raise errors.ObjectLocked(bucket, record["key"], vid,
                                  f"{record.get('lock_mode')} retention until {record['lock_until']}")


def with_retention(bucket: str, mode: str | None, until: float | None, bypass: bool,
                   now: float) -> Callable[[Record], Record]:
    """The change that sets a version's retention (mode None: removes it), refused
    (ObjectLocked) when the retention in force forbids it."""
    if (mode is None) != (until is None) or (mode is not None and mode not in MODES):
        raise ValueError("a retention is a mode and a date, or neither")

    def change(record: Record) -> Record:
        if retained(record, now):
            old_mode, old_until = record["lock_mode"], record["lock_until"]
            loosened = (mode is None or until is None or until < old_until
                        or _STRICTNESS[mode] < _STRICTNESS[old_mode])
            if loosened and (old_mode == "COMPLIANCE" or not bypass):
                raise errors.ObjectLocked(bucket, record["key"], record.get("vid") or "null",
                                          f"{old_mode} retention until {old_until} cannot be shortened "
                                          "or removed" + ("" if old_mode == "COMPLIANCE" else " without bypass"))
        kept = {k: v for k, v in record.items() if k not in ("lock_mode", "lock_until")}
        return kept if mode is None else {**kept, "lock_mode": mode, "lock_until": until}

    return change


def with_legal_hold(on: bool) -> Callable[[Record], Record]:
    def change(record: Record) -> Record:
        return {**record, "legal_hold": on}

    return change
