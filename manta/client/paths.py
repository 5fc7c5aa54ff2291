"""Object paths as the client takes them: `bucket/key` (or `manta://bucket/key`)."""

from __future__ import annotations

__all__ = ["need_key", "split_path"]


def split_path(path: str) -> tuple[str, str]:
    """`bucket/key` (or `manta://bucket/key`) -> (bucket, key); key may be empty."""
    bucket, _, key = path.removeprefix("manta://").lstrip("/").partition("/")
    if not bucket:
        raise ValueError(f"{path!r} names no bucket: paths are bucket/key")
    return bucket, key


def need_key(path: str) -> tuple[str, str]:
    bucket, key = split_path(path)
    if not key or key.endswith("/"):
        raise ValueError(f"{path!r} names no object: paths are bucket/key")
    return bucket, key
