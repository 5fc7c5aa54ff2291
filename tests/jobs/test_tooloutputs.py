"""What the in-task tools leave (jobs/tooloutputs.py), read as root from a directory the
task user wrote: only finished calls, only regular files, within the disk limit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.tooloutputs import ToolError, hand_over, open_data, read_calls


def manifest(out: Path, ident: str, **record: object) -> None:
    (out / f"{ident}.json").write_text(json.dumps(record))


def test_finished_calls_in_the_order_they_started(tmp_path: Path) -> None:
    (tmp_path / "2.d").write_bytes(b"two\n")
    manifest(tmp_path, "2", tool="mpipe", name="b/k", headers={"content-type": "text/plain"}, reducer=1, data="2.d")
    manifest(tmp_path, "1", tool="mcat", names=["b/x", "b/y"], reducer=0)
    (tmp_path / "3.r0").write_bytes(b"a\n")
    manifest(tmp_path, "3", tool="msplit", count=2, parts={"0": "3.r0"})
    (tmp_path / "4.d").write_bytes(b"never finished\n")  # no manifest: not stored
    calls = read_calls(str(tmp_path), 1 << 20)
    assert [(c.tool, c.emits) for c in calls] == [("mcat", True), ("mpipe", True), ("msplit", True)]
    assert calls[0].names == ("b/x", "b/y") and calls[1].reducer == 1 and calls[2].parts == {0: "3.r0"}
    assert calls[1].headers == {"content-type": "text/plain"}


def test_links_fifos_and_directories_are_refused(tmp_path: Path) -> None:
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_bytes(b"host secret\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.d").symlink_to(secret)
    manifest(out, "x", tool="mpipe", name=None, data="x.d")
    with pytest.raises(ToolError, match="not a regular file"):
        read_calls(str(out), 1 << 20)
    with pytest.raises(ToolError):
        os.close(open_data(str(out), "x.d"))
    with pytest.raises(ToolError, match="bad data file"):
        open_data(str(out), "../secret")
    (out / "x.d").unlink()
    os.mkfifo(out / "x.d")
    with pytest.raises(ToolError, match="not a regular file"):
        read_calls(str(out), 1 << 20)
    secret.unlink()


@pytest.mark.parametrize("record", [
    {"tool": "mrm"}, {"tool": "mpipe"}, {"tool": "mtee", "data": "d"}, {"tool": "mcat", "names": []},
    {"tool": "msplit", "count": 2, "parts": {"2": "f"}}, {"tool": "mpipe", "data": "d", "reducer": -1},
    {"tool": "mpipe", "data": "d", "headers": {"a": 1}},
])
def test_bad_manifests_fail(tmp_path: Path, record: dict[str, object]) -> None:
    (tmp_path / "m.json").write_text(json.dumps(record))
    with pytest.raises(ToolError):
        read_calls(str(tmp_path), 1 << 20)


def test_the_disk_limit_counts_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.d").write_bytes(b"x" * 600)
    (tmp_path / "b.tmp").write_bytes(b"x" * 600)
    with pytest.raises(ToolError, match="exceed the task's disk limit"):
        read_calls(str(tmp_path), 1000)


def test_hand_over_moves_everything_and_leaves_the_directory_empty(tmp_path: Path) -> None:
    container, task = tmp_path / "c", tmp_path / "t"
    container.mkdir()
    task.mkdir()
    (container / "1.d").write_bytes(b"x")
    (container / "sub").mkdir()
    os.chmod(container, 0)
    assert hand_over(str(container), str(task))
    assert sorted(os.listdir(task)) == ["1.d", "sub"] and os.listdir(container) == []
    (container / "2.d").write_bytes(b"y")
    (container / "sub2").mkdir()
    assert hand_over(str(container), None) and os.listdir(container) == []
