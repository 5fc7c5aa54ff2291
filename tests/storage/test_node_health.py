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

import pytest

from storage.node import LocalNode, parse_spec
from storage.zfs import CommandDriver
from tests.zfs_pools import Pool

pytestmark = pytest.mark.zfs

WRAPPER = """#!/bin/sh
# every `zpool list` is counted (a line in {calls}); it answers OFFLINE while {flag} exists
# (removed after the first answer unless {sticky}); everything else is the real zpool
[ "$1" = list ] && echo list >> '{calls}'
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
                                zpool=real))
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    spec = parse_spec(f"zfs:{pool.dataset('health-' + secrets.token_hex(4))}")
    driver = CommandDriver(zpool=wrapper)
    root = driver.ensure_dataset(spec.location)
    LocalNode.write_marker(root, "h0")
    return LocalNode("h0", spec, root, driver, health_ttl_s=0.0), flag


def calls_file(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "calls")


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
