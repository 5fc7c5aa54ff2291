"""manta: an S3-compatible object store that runs map/reduce jobs next to the data.

`manta.Client` is the notebook/script client (imported lazily, so the server and the CLI
do not pay for boto3 until they use it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from manta.client import Client, Function, Job, MantaError

__all__ = ["Client", "Function", "Job", "MantaError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from manta import client

        return getattr(client, name)
    raise AttributeError(f"module 'manta' has no attribute {name!r}")
