"""Image trees (jobs/imagetree.py) and images in reused containers (jobs/warm.py).

The tar checks and the node cache need nothing of the system; the container tests need
bubblewrap and root, like tests/jobs/test_warm.py.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Iterator

import pytest

from jobs.errors import ImageError
from jobs.imagebuild import image_id
from jobs.imagetree import NodeImages, pack, unpack
from jobs.sandbox import Sandbox, TaskSpec
from jobs.spec import parse_spec
from jobs.warm import WarmPool
from tests.conftest import require
from tests.jobs.test_warm import ENV, PHASE


@pytest.fixture
def base() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="manta-image-test-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


def tar_of(path: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, linkname
    return info


def test_pack_and_unpack_keep_the_tree_owned_by_root_without_setuid(base: str) -> None:
    src = os.path.join(base, "src")
    os.makedirs(os.path.join(src, "bin"))
    with open(os.path.join(src, "bin", "tool"), "w") as fh:
        fh.write("#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(src, "bin", "tool"), 0o4775)  # setuid, group-writable
    os.symlink("/usr/bin/python3", os.path.join(src, "bin", "python3"))
    pack(src, os.path.join(base, "t.tar"))
    unpack(os.path.join(base, "t.tar"), os.path.join(base, "out"))
    tool = os.stat(os.path.join(base, "out", "bin", "tool"))
    assert stat.S_IMODE(tool.st_mode) == 0o755  # no setuid, writable by its owner only
    if os.geteuid() == 0:
        assert (tool.st_uid, tool.st_gid) == (0, 0)
    assert os.readlink(os.path.join(base, "out", "bin", "python3")) == "/usr/bin/python3"


@pytest.mark.parametrize("members", [
    [(member("../outside"), b"x")],
    [(member("/etc/owned"), b"x")],
    [(member("link", tarfile.SYMTYPE, linkname="/etc"), None), (member("link/passwd"), b"x")],
    [(member("up", tarfile.SYMTYPE, linkname=".."), None), (member("up/escaped"), b"x")],
    [(member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
], ids=["dotdot", "absolute", "through-a-link", "through-a-relative-link", "hard-link-out"])
def test_unsafe_members_are_refused_and_nothing_lands_outside(base: str, members: list) -> None:
    tar = tar_of(os.path.join(base, "bad.tar"), members)
    with pytest.raises(ImageError, match="unsafe"):
        unpack(tar, os.path.join(base, "tree"))
    assert sorted(os.listdir(base)) == ["bad.tar", "tree"]


def test_devices_and_fifos_are_skipped(base: str) -> None:
    tar = tar_of(os.path.join(base, "dev.tar"), [(member("dev/null", tarfile.CHRTYPE), None),
                                                  (member("fifo", tarfile.FIFOTYPE), None),
                                                  (member("ok"), b"fine")])
    unpack(tar, os.path.join(base, "out"))
    assert sorted(os.listdir(os.path.join(base, "out"))) == ["ok"]


def test_a_node_unpacks_an_image_once_even_when_asked_at_once(base: str) -> None:
    tar = tar_of(os.path.join(base, "img.tar"), [(member("bin/x", mode=0o755), b"#!/bin/sh\n")])
    images = NodeImages(os.path.join(base, "node"))
    fetched: list[int] = []

    def fetch() -> str:
        fetched.append(1)
        return tar

    paths: list[str] = []
    threads = [threading.Thread(target=lambda: paths.append(images.path("abc123", fetch))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and os.path.isfile(os.path.join(paths[0], "bin", "x"))
    assert fetched == [1] and images.unpacked() == ["abc123"]
    assert NodeImages(os.path.join(base, "node")).path("abc123", fetch) == paths[0] and fetched == [1]
    assert not [n for n in os.listdir(os.path.join(base, "node", "images")) if n.startswith(".tmp")]


def test_a_failed_unpack_leaves_no_tree(base: str) -> None:
    tar = tar_of(os.path.join(base, "bad.tar"), [(member("ok"), b"x"), (member("../bad"), b"x")])
    images = NodeImages(os.path.join(base, "node"))
    with pytest.raises(ImageError):
        images.path("bad1", lambda: tar)
    assert sorted(os.listdir(images.dir)) == [".bad1.lock"] and images.unpacked() == []


def test_image_ids_address_content() -> None:
    a = image_id("python", "pandas==2.3.2\n", "3.11.2 x86_64 glibc 2.36")
    assert a == image_id("python", "pandas==2.3.2\n", "3.11.2 x86_64 glibc 2.36")
    assert len({a, image_id("python", "pandas==2.3.1\n", "3.11.2 x86_64 glibc 2.36"),
                image_id("python", "pandas==2.3.2\n", "3.12.1 x86_64 glibc 2.36"),
                image_id("python", "pandas==2.3.2\n", "3.11.2 aarch64 glibc 2.36"),
                image_id("import", "pandas==2.3.2\n", "3.11.2 x86_64 glibc 2.36")}) == 5


def test_the_spec_takes_an_image_name() -> None:
    spec = parse_spec({"phases": [{"exec": "true", "image": "python-data"}, {"type": "reduce", "exec": "cat"}]})
    assert spec.phases[0].image == "python-data" and spec.phases[1].image is None
    assert spec.phases[0].to_dict()["image"] == "python-data"
    from jobs.errors import InvalidJobSpec

    for bad in ("", "Bad Name", "../x", 7):
        with pytest.raises(InvalidJobSpec, match="image"):
            parse_spec({"phases": [{"exec": "true", "image": bad}]})


def test_reused_containers_are_kept_per_image(base: str) -> None:
    require(os.path.exists("/usr/bin/bwrap"), "bubblewrap is not installed")
    require(os.geteuid() == 0, "reused containers need root (tasks run as another user)")
    sandbox = Sandbox()
    reason = sandbox.check()
    require(reason is None, f"the sandbox cannot run here: {reason}")
    trees = {}
    for name in ("one", "two"):
        tar = tar_of(os.path.join(base, f"{name}.tar"),
                     [(member("bin/which-image", mode=0o755), f"#!/bin/sh\necho {name}\n".encode())])
        trees[name] = NodeImages(os.path.join(base, "node")).path(name, lambda tar=tar: tar)
    pool = WarmPool(sandbox, idle_s=60)
    try:
        outputs = []
        for image in ("one", "one", "two", None, "two"):
            out: list[bytes] = []
            spec = TaskSpec("which-image 2>/dev/null || echo none; echo $PATH", dict(ENV),
                            image=trees[image] if image else None)
            assert pool.run(PHASE, spec, out.append).ok
            outputs.append(b"".join(out).decode().split("\n")[0])
        assert outputs == ["one", "one", "two", "none", "two"]
        assert pool.started == 3  # one container per image (and one without), reused within each
    finally:
        pool.close()
