"""Per-account limits: what one account may store and run, so it cannot starve the others.

    objects   stored objects (job outputs and stderr objects included), and pending multipart
              uploads, one each (storage.uploads)
    bytes     stored bytes: objects' sizes plus the parts of pending multipart uploads
    jobs      jobs running at once
    tasks     tasks in flight at once (running or preparing to, over all nodes)
    outputs   output objects one job may make

An account record carries only the limits set for it (`manta admin user add/set --quota`);
the others take the defaults below. `None` means no limit.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["DEFAULT_QUOTA", "QUOTA_FIELDS", "Quota", "parse_quota"]

QUOTA_FIELDS = ("objects", "bytes", "jobs", "tasks", "outputs")
_SIZE = re.compile(r"^(\d+)([KMGTP]i?B?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


@dataclass(frozen=True)
class Quota:
    objects: int | None = None
    bytes: int | None = None
    jobs: int | None = 64
    tasks: int | None = None
    outputs: int | None = 100_000

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)

    def merged(self, overrides: dict[str, Any] | None) -> Quota:
        """These limits with an account record's own (`quota` map) on top."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in (overrides or {}).items() if k in known})


DEFAULT_QUOTA = Quota()


def parse_quota(text: str) -> dict[str, int | None]:
    """`objects=1000,bytes=10G,jobs=4` -> {"objects": 1000, "bytes": 10737418240, "jobs": 4};
    a value of `none` (or `unlimited`) removes that limit. Raises ValueError with a message."""
    out: dict[str, int | None] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in QUOTA_FIELDS:
            raise ValueError(f"quota {item!r}: want NAME=VALUE with NAME one of {', '.join(QUOTA_FIELDS)}")
        if value.lower() in ("none", "unlimited"):
            out[name] = None
            continue
        match = _SIZE.match(value) if name == "bytes" else re.match(r"^(\d+)()$", value)
        if match is None:
            raise ValueError(f"quota {item!r}: {value!r} is not a whole number"
                             + (" (with an optional K, M, G, T or P suffix)" if name == "bytes" else ""))
        out[name] = int(match.group(1)) * _UNITS[(match.group(2) or "")[:1].upper()]
    return out
