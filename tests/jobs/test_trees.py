"""Trees a task wrote, nested deeper than Python recurses, are removed all the same: a task's
scratch dir (agent), what it left in a reused container's /manta/out (tooloutputs.hand_over)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jobs.tooloutputs import hand_over
from jobs.trees import remove_tree

DEPTH = 1500  # shutil.rmtree raises RecursionError well before this


def deep_tree(top: Path, depth: int = DEPTH) -> None:
    """`depth` nested directories under `top` (made by relative names: the full path is
    longer than PATH_MAX), a 4 KiB file at the bottom."""
    top.mkdir(parents=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as fh:
            fh.write(b"x" * 4096)
    finally:
        os.close(fd)


def test_remove_tree_removes_what_shutil_cannot(tmp_path: Path) -> None:
    top = tmp_path / "task"
    deep_tree(top)
    with pytest.raises(RecursionError):
        shutil.rmtree(top, ignore_errors=True)
    remove_tree(str(top))
    assert not top.exists()


def test_a_deep_tree_left_in_a_reused_containers_output_dir_is_removed(tmp_path: Path) -> None:
    """hand_over with no task dir to move into removes what the task left (it raised
    RecursionError, out of the pool's hand-over)."""
    container = tmp_path / "container"
    deep_tree(container / "nest")
    (container / "plain").write_bytes(b"x")
    assert hand_over(str(container), None)
    assert os.listdir(container) == []
