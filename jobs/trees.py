"""Removing a directory tree that a task wrote (its scratch dir, a reused container's
/manta/out and what it left there), however deep: shutil.rmtree recurses once per level,
and a task can nest thousands (RecursionError, which `ignore_errors` does not cover)."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["remove_tree"]


def remove_tree(path: str) -> None:
    """Remove `path` and all below it, ignoring errors (the caller looks at what is left);
    rm(1), which does not recurse on a stack, where shutil.rmtree runs out of one."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
