"""A ZFS node's health against a pool state that is wrong once.

zfs-fuse under load has answered OFFLINE for an ONLINE pool (seen in a scrub run beside
other ZFS work: the scrub took the node for down and copied its replicas elsewhere). The
node asks again before a bad answer counts. These tests put a `zpool` in front of the real
one whose first `list` answers OFFLINE (or every one does), over a real pool.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import threading
import time

import pytest

from storage.node import LocalNode, parse_spec
from storage.zfs import CommandDriver
from tests.zfs_pools import Pool

pytestmark = pytest.mark.zfs

WRAPPER = """#!/bin/sh
# every `zpool list` is counted (a line in {calls}); it waits while {hold} exists, then
# answers OFFLINE while {flag} exists (removed after the first answer unless {sticky});
# everything else is the real zpool
[ "$1" = list ] && echo list >> '{calls}'
while [ "$1" = list ] && [ -e '{hold}' ]; do sleep 0.05; done
if [ "$1" = list ] && [ -e '{flag}' ]; then
    [ '{sticky}' = yes ] || rm -f '{flag}'
    echo OFFLINE
    exit 0
fi
exec '{zpool}' "$@"
"""


def node_behind_wrapper(pool: Pool, tmp_path: object, sticky: bool) -> tuple[LocalNode, str]:
    """A ZFS node on a dataset of `pool` whose driver's zpool is the wrapper; the flag file."""
    real = shutil.which("zpool") or "/usr/sbin/zpool"
    flag = os.path.join(str(tmp_path), "offline")
    wrapper = os.path.join(str(tmp_path), "zpool")
    with open(wrapper, "w") as fh:
        fh.write(WRAPPER.format(flag=flag, calls=calls_file(tmp_path), sticky="yes" if sticky else "no",
                                zpool=real, hold=hold_file(tmp_path)))
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    spec = parse_spec(f"zfs:{pool.dataset('health-' + secrets.token_hex(4))}")
    driver = CommandDriver(zpool=wrapper)
    root = driver.ensure_dataset(spec.location)
    LocalNode.write_marker(root, "h0")
    return LocalNode("h0", spec, root, driver, health_ttl_s=0.0), flag


def calls_file(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "calls")


def hold_file(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "hold")


def pool_asks(tmp_path: object) -> int:
    """How many `zpool list` the wrapper has answered since the last call (then forgets them)."""
    try:
        with open(calls_file(tmp_path)) as fh:
            count = len(fh.readlines())
    except FileNotFoundError:
        return 0
    os.remove(calls_file(tmp_path))
    return count


def test_one_offline_answer_for_an_online_pool_does_not_take_the_node_down(
        zfs_session_pool: Pool, tmp_path: object) -> None:
    node, flag = node_behind_wrapper(zfs_session_pool, tmp_path, sticky=False)
    assert node.recheck() is True
    open(flag, "w").close()
    pool_asks(tmp_path)
    assert node.recheck() is True  # OFFLINE, then ONLINE when asked again
    assert not os.path.exists(flag)  # the wrapper did answer OFFLINE once
    assert pool_asks(tmp_path) == 2
    assert node.info()["healthy"] is True


def test_a_pool_that_stays_offline_takes_the_node_down(zfs_session_pool: Pool, tmp_path: object) -> None:
    node, flag = node_behind_wrapper(zfs_session_pool, tmp_path, sticky=True)
    assert node.recheck() is True
    open(flag, "w").close()
    assert node.recheck() is False
    assert node.status()[1] == f"pool {zfs_session_pool.name} is OFFLINE"
    os.remove(flag)
    assert node.recheck() is True  # a good answer counts at once


def test_a_healthy_node_does_not_ask_twice(zfs_session_pool: Pool, tmp_path: object) -> None:
    node, _ = node_behind_wrapper(zfs_session_pool, tmp_path, sticky=False)
    pool_asks(tmp_path)  # the node's own check when it was made
    assert node.recheck() is True
    assert pool_asks(tmp_path) == 1


def test_the_request_paths_health_check_does_not_wait_for_a_zpool_run(
        zfs_session_pool: Pool, tmp_path: object) -> None:
    """A synchronous recheck runs `zpool` (and, on a bad answer, asks again 0.2 s later)
    outside the node's lock: `healthy()`, which placement calls on the event loop, answers
    from what it has meanwhile instead of waiting for that run."""
    node, flag = node_behind_wrapper(zfs_session_pool, tmp_path, sticky=False)
    open(hold_file(tmp_path), "w").close()
    pool_asks(tmp_path)
    recheck = threading.Thread(target=node.recheck)
    recheck.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(calls_file(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.path.exists(calls_file(tmp_path)), "the recheck never ran zpool"
        answers: list[bool] = []
        quick = threading.Thread(target=lambda: answers.append(node.healthy()))
        quick.start()
        quick.join(timeout=20)
        assert not quick.is_alive(), "healthy() waited for the recheck's zpool run"
        assert answers == [True]
        assert recheck.is_alive()  # still held in zpool: healthy() did not wait for it
    finally:
        os.remove(hold_file(tmp_path))
        recheck.join(timeout=60)
    assert not recheck.is_alive()
    assert node.recheck() is True
    assert not os.path.exists(flag)
