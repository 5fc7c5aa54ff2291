"""jobs/outwatch.py: what a running task's /manta/out holds on the node's disk."""

from __future__ import annotations

import os
from pathlib import Path

from jobs.outwatch import OUT_SCAN_S, OutputWatch, over


def fill(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
        os.fsync(fh.fileno())  # blocks allocated now, not at writeback


def test_blocks_of_files_in_nested_directories_count_against_the_limit(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    fill(tmp_path / "a" / "b" / "deep", 300_000)
    assert not over(str(tmp_path), 1 << 20)
    fill(tmp_path / "top", 900_000)
    assert over(str(tmp_path), 1 << 20)


def test_a_sparse_file_counts_for_its_blocks_not_its_size(tmp_path: Path) -> None:
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(1 << 30)
    assert not over(str(tmp_path), 1 << 20)


def test_many_empty_entries_count_even_without_blocks(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"e{i}").touch()
    assert not over(str(tmp_path), 1 << 30, max_entries=50)
    (tmp_path / "one-more").touch()
    assert over(str(tmp_path), 1 << 30, max_entries=50)


def test_a_link_is_not_followed_and_a_missing_directory_holds_nothing(tmp_path: Path) -> None:
    fill(tmp_path / "big", 2 << 20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "big")
    (tmp_path / "out" / "dirlink").symlink_to(tmp_path)
    assert not over(str(tmp_path / "out"), 1 << 20)
    assert not over(str(tmp_path / "gone"), 0)


def test_the_watch_measures_at_most_every_scan_interval(tmp_path: Path) -> None:
    watch = OutputWatch(str(tmp_path), 1 << 20)
    fill(tmp_path / "big", 2 << 20)
    assert watch.breach(0.0) is None  # not yet: the first look is one interval in
    assert watch.breach(OUT_SCAN_S) == "disk"
    (tmp_path / "big").unlink()
    assert watch.breach(OUT_SCAN_S + 0.01) is None  # too soon to look again
    assert watch.breach(2 * OUT_SCAN_S + 0.01) is None  # looked: nothing left
    assert OutputWatch(None, 0).breach(10.0) is None  # a task without /manta/out
