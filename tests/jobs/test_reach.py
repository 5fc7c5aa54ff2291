"""jobs.reach: which node paths the task user can bind, and the aliases for those it cannot.

The aliases are real bind mounts (root only); the end-to-end case is
tests/e2e/test_jobs.py::test_jobs_work_with_a_data_dir_the_task_user_cannot_reach.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from jobs.reach import TaskRoots, unreachable
from tests.conftest import require

TASK_IDS = (64000, 64000)  # nobody's uid and gid here: only "other" permission bits apply


@pytest.fixture
def base() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="manta-reach-")  # 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unreachable_names_the_first_directory_in_the_way(base: str) -> None:
    inner = os.path.join(base, "a", "b")
    os.makedirs(inner)
    os.chmod(os.path.join(base, "a"), 0o711)
    assert unreachable(inner, *TASK_IDS) == base  # 0700, owned by root
    os.chmod(base, 0o711)
    assert unreachable(inner, *TASK_IDS) is None
    os.chmod(inner, 0o750)
    assert unreachable(inner, *TASK_IDS) == inner
    assert unreachable(inner, os.stat(inner).st_uid, 0) is None  # the owner's bits count for it
    assert unreachable(os.path.join(base, "missing", "x"), *TASK_IDS) == os.path.join(base, "missing")


def test_a_node_root_missing_at_start_gets_its_alias_when_it_appears(base: str) -> None:
    require(os.geteuid() == 0, "bind mounts need root")
    root = os.path.join(base, "node")
    node = SimpleNamespace(id="nx", root=root, spec=SimpleNamespace(backend="dir"))
    roots = TaskRoots(TASK_IDS, base=os.path.join(base, "run"))
    try:
        roots.open([node])  # type: ignore[list-item]
        blob = os.path.join(root, "blobs", "ab", "abcd")
        assert roots.path(node, blob) == blob  # not there yet: nothing decided, nothing made
        os.makedirs(os.path.dirname(blob))
        with open(blob, "wb") as fh:
            fh.write(b"bytes")
        seen = roots.path(node, blob)  # type: ignore[arg-type]
        assert seen == os.path.join(base, "run", f"{os.getpid()}-nx", "blobs", "ab", "abcd")
        with open(seen, "rb") as fh:
            assert fh.read() == b"bytes"
    finally:
        roots.close()
    assert not os.path.exists(os.path.join(base, "run", f"{os.getpid()}-nx"))


def test_zfs_nodes_get_no_alias(base: str, caplog: pytest.LogCaptureFixture) -> None:
    root = os.path.join(base, "pool", "node")
    os.makedirs(root)
    node = SimpleNamespace(id="nz", root=root, spec=SimpleNamespace(backend="zfs"))
    roots = TaskRoots(TASK_IDS, base=os.path.join(base, "run"))
    roots.open([node])  # type: ignore[list-item]
    assert roots.path(node, os.path.join(root, "f")) == os.path.join(root, "f")  # type: ignore[arg-type]
    assert "the task user cannot reach" in caplog.text and f"{base} is drwx------" in caplog.text
    roots.close()


def test_a_zombie_server_owns_no_alias() -> None:
    """A killed worker whose supervisor died too may stay a zombie (init in a container may
    never reap it): its aliases are swept all the same."""
    import subprocess

    from jobs.cgroups import owner_gone

    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as fh:
            if fh.read().rpartition(")")[2].split()[0] == "Z":
                break
        time.sleep(0.01)
    assert owner_gone(f"{child.pid}-n0")
    assert not owner_gone(f"{os.getpid()}-n0")
    child.wait()
    assert owner_gone(f"{child.pid}-n0")
    assert not owner_gone("notapid-n0")
