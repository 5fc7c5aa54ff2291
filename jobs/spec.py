"""Job specs: phases and their limits, validated with clear messages.

    {"name": "...", "phases": [{"type": "map"|"reduce", "exec": "<bash pipeline>",
      "count": 1, "memory_mb": 1024, "disk_mb": 256, "timeout_s": 300,
      "assets": ["bucket/key", ...], "init": "<bash>", "image": "NAME"}, ...]}

`count` (number of reducers) only applies to reduce phases. Inputs are `bucket/key`
strings, given at create time or added later until the job's inputs are ended. `image`
names a task image (jobs/images.py) bound at /opt/manta/image, its bin first on PATH;
without one a phase sees the host's /usr only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.errors import InvalidJobSpec

__all__ = ["LIMITS", "JobSpec", "Phase", "parse_input", "parse_spec"]

# (default, minimum, maximum) of each phase limit
LIMITS = {
    "memory_mb": (1024, 16, 16384),
    "disk_mb": (256, 8, 65536),
    "timeout_s": (300.0, 1.0, 86400.0),
    "count": (1, 1, 1024),
}
MAX_EXEC_BYTES = 64 * 1024
MAX_PHASES = 32
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Phase:
    type: str
    exec: str
    count: int = 1
    memory_mb: int = 1024
    disk_mb: int = 256
    timeout_s: float = 300.0
    assets: tuple[str, ...] = ()
    init: str | None = None
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["assets"] = list(self.assets)
        return out


@dataclass(frozen=True)
class JobSpec:
    phases: tuple[Phase, ...]
    name: str = ""
    inputs: tuple[str, ...] = field(default_factory=tuple)


def parse_input(text: str) -> tuple[str, str]:
    """`bucket/key` -> (bucket, key)."""
    bucket, sep, key = text.strip().lstrip("/").partition("/")
    if not sep or not bucket or not key:
        raise InvalidJobSpec(f"input {text!r} is not of the form bucket/key")
    if "\0" in key or len(key.encode()) > 1024:
        raise InvalidJobSpec(f"input {text!r} is not a valid object key")
    return bucket, key


def _number(phase: dict[str, Any], name: str, index: int, defaults: dict[str, Any]) -> Any:
    default, low, high = LIMITS[name]
    default = defaults.get(name, default)
    value = phase.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJobSpec(f"phase {index}: {name} must be a number")
    if isinstance(default, int) and value != int(value):
        raise InvalidJobSpec(f"phase {index}: {name} must be a whole number")
    if not low <= value <= high:
        raise InvalidJobSpec(f"phase {index}: {name} must be between {low} and {high}")
    return type(default)(value)


def parse_phase(raw: Any, index: int, defaults: dict[str, Any] | None = None) -> Phase:
    defaults = defaults or {}
    if not isinstance(raw, dict):
        raise InvalidJobSpec(f"phase {index} must be an object")
    unknown = set(raw) - {"type", "exec", "count", "memory_mb", "disk_mb", "timeout_s", "assets", "init", "image"}
    if unknown:
        raise InvalidJobSpec(f"phase {index}: unknown field(s) {', '.join(sorted(unknown))}")
    kind = raw.get("type", "map")
    if kind not in ("map", "reduce"):
        raise InvalidJobSpec(f"phase {index}: type must be map or reduce, not {kind!r}")
    command = raw.get("exec")
    if not isinstance(command, str) or not command.strip():
        raise InvalidJobSpec(f"phase {index}: exec must be a non-empty command")
    if len(command.encode()) > MAX_EXEC_BYTES or "\0" in command:
        raise InvalidJobSpec(f"phase {index}: exec is too long or contains NUL")
    count = _number(raw, "count", index, defaults)
    if kind == "map" and count != 1:
        raise InvalidJobSpec(f"phase {index}: count applies to reduce phases only")
    assets = raw.get("assets") or []
    if not isinstance(assets, list) or not all(isinstance(a, str) for a in assets):
        raise InvalidJobSpec(f"phase {index}: assets must be a list of bucket/key strings")
    for asset in assets:
        parse_input(asset)
    init = raw.get("init")
    if init is not None and (not isinstance(init, str) or "\0" in init):
        raise InvalidJobSpec(f"phase {index}: init must be a command")
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not IMAGE_NAME.match(image)):
        raise InvalidJobSpec(f"phase {index}: image must be an image name (lowercase letters, digits, . _ -)")
    return Phase(type=kind, exec=command, count=count, memory_mb=_number(raw, "memory_mb", index, defaults),
                 disk_mb=_number(raw, "disk_mb", index, defaults),
                 timeout_s=_number(raw, "timeout_s", index, defaults),
                 assets=tuple(assets), init=init or None, image=image or None)


def parse_spec(raw: Any, defaults: dict[str, Any] | None = None) -> JobSpec:
    """The spec of `raw`; a phase that leaves a limit out gets `defaults` (a server whose
    ceilings are below the usual defaults passes its own), else the usual default."""
    if not isinstance(raw, dict):
        raise InvalidJobSpec("a job spec must be a JSON object")
    phases = raw.get("phases")
    if not isinstance(phases, list) or not phases:
        raise InvalidJobSpec("a job needs at least one phase")
    if len(phases) > MAX_PHASES:
        raise InvalidJobSpec(f"a job has at most {MAX_PHASES} phases")
    name = raw.get("name") or ""
    if not isinstance(name, str) or len(name) > 256:
        raise InvalidJobSpec("name must be a string of at most 256 characters")
    inputs = raw.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise InvalidJobSpec("inputs must be a list of bucket/key strings")
    for item in inputs:
        parse_input(item)
    return JobSpec(phases=tuple(parse_phase(p, i, defaults) for i, p in enumerate(phases)), name=name,
                   inputs=tuple(inputs))
