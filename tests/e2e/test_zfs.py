"""Three storage nodes on three ZFS pools (zfs-fuse, file vdevs), two copies of everything:
real on-disk damage is caught by ZFS checksums (EIO), read around, and repaired.

The datasets are set to `primarycache=metadata`, so once the kernel page cache is dropped
every read of file data reaches the vdev. After the uploads a txg sync puts every block in
the vdev files; then bytes of the objects are found in one pool's vdev (a 64-byte piece
of each) and overwritten there. Reading such a replica now fails with EIO: the server must
still return the right bytes, and `manta admin scrub` must find and rewrite the damaged
replicas, losing nothing. Then the damaged node's dataset is unmounted: the node is down,
reads and writes go to the other two, and it is back once mounted again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time

import pytest

from tests.conftest import Server, require
from tests.e2e.test_nodes import (
    HEALTH_TTL_S,
    CatalogView,
    assert_copies,
    assert_reads_back,
    blob_contents,
    cli,
    cli_json,
    client,
    holds,
    read_catalog,
    read_file,
    scrub,
    upload_workload,
    wait_for,
)
from tests.zfs_pools import DROP_CACHES, Pool, PoolFactory, drop_caches, zfs_unavailable

pytestmark = pytest.mark.zfs

BUCKET = "zfs-test"
KiB, MiB = 1024, 1024 * 1024
RECORD = 128 * KiB  # the datasets' recordsize: a needle inside one record is stored contiguously


def needle(data: bytes) -> bytes:
    """64 bytes from inside the blob's first record (random data is stored uncompressed)."""
    at = min(1000, len(data) - 64)
    assert at >= 0 and at + 64 <= RECORD
    return data[at:at + 64]


def blob_path(root: str, blob_id: str) -> str:
    return os.path.join(root, "blobs", blob_id[:2], blob_id)


def objects_on(view: CatalogView, node_id: str) -> int:
    return sum(1 for ids in view.objects.values()
               if any(node_id in view.blobs[b].nodes for b in ids))


def test_zfs_damage_is_read_around_and_repaired_by_scrub(zfs_pools: PoolFactory, fresh_server: Server) -> None:
    require(os.access(DROP_CACHES, os.W_OK), f"cannot write {DROP_CACHES} (reads must reach the vdev)")
    pools = [zfs_pools.create() for _ in range(3)]
    specs = [f"zfs:{pool.dataset('node')}" for pool in pools]
    fresh_server.extra_args = ["--storage", ",".join(specs), "--copies", "2"]
    fresh_server.env["MANTA_HEALTH_TTL_S"] = str(HEALTH_TTL_S)
    fresh_server.start(timeout_s=60)
    try:
        run_damage_scenario(fresh_server, pools, specs)
    finally:
        fresh_server.stop()  # before the pools are destroyed


def run_damage_scenario(server: Server, pools: list[Pool], specs: list[str]) -> None:
    nodes = cli_json(server, "admin", "nodes", "--json")
    by_spec = {n["spec"]: n for n in nodes}
    assert set(by_spec) == set(specs)
    pool_of = {by_spec[spec]["id"]: pool for spec, pool in zip(specs, pools, strict=True)}
    roots = {n["id"]: n["root"] for n in nodes}
    for spec, pool in zip(specs, pools, strict=True):
        assert by_spec[spec]["root"] == os.path.join(pool.mountpoint, "node")
        pool.driver.set(pool.dataset("node"), "primarycache", "metadata")

    s3 = client(server)
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(7)
    objects = upload_workload(s3, BUCKET, rng, count=10, sizes=(64 * KiB, 100_000, MiB + 17, 3 * MiB))
    view = read_catalog(server.data_dir, BUCKET)
    contents = blob_contents(view, objects)
    assert_copies(view, roots, copies=2)
    for pool in pools:
        pool.sync()

    # damage every blob the node with the most blobs holds, in its pool's vdev file
    victim = max(roots, key=view.blobs_on)
    pool = pool_of[victim]
    on_victim = sorted(b for b, r in view.blobs.items() if victim in r.nodes)
    assert len(on_victim) >= 4
    for blob_id in on_victim:
        assert pool.corrupt(needle(contents[blob_id])) >= 1, f"blob {blob_id} not found in {pool.vdev}"
    drop_caches()
    for blob_id in on_victim:  # the damage is live: ZFS refuses to return those blocks
        with pytest.raises(OSError) as caught:
            read_file(blob_path(roots[victim], blob_id))
        assert caught.value.errno == errno.EIO, caught.value
    drop_caches()

    # group A is read before the scrub (a read may hit the bad copy: EIO, fail over, and
    # queue a repair); group B only after it, so the scrub must find at least those
    keys_of = {b: k for k, ids in view.objects.items() for b in ids}
    group_b = set(on_victim[1::2])
    unread = {keys_of[b] for b in group_b}
    assert_reads_back(s3, BUCKET, objects, [k for k in objects if k not in unread])
    report = scrub(server)
    assert report["lost"] == 0 and report["lost_blobs"] == [], report
    assert report["unavailable"] == 0, report
    assert report["checked"] == 2 * len(view.blobs), report
    assert len(group_b) <= report["damaged"] <= len(on_victim), report
    assert len(group_b) <= report["repaired"] <= report["damaged"], report
    assert set(report["pools"]) == {p.name for p in pools}, report
    assert all(status.get("health") in ("ONLINE", "DEGRADED") for status in report["pools"].values()), report
    assert report["pools"][pool.name]["errors"] > 0, report  # zpool scrub saw the bad blocks too
    drop_caches()
    assert_reads_back(s3, BUCKET, objects)

    # the damaged replicas were rewritten on the victim (new blocks): they read back whole
    def repaired() -> bool:
        drop_caches()
        try:
            return all(holds(blob_path(roots[victim], b), contents[b]) for b in on_victim)
        except OSError:
            return False

    wait_for(repaired, 10, "every damaged replica on the ZFS node to be rewritten")
    again = scrub(server)
    assert (again["damaged"], again["repaired"], again["lost"], again["unavailable"]) == (0, 0, 0, 0), again
    after = read_catalog(server.data_dir, BUCKET)
    assert_copies(after, roots, copies=2)
    assert {b: r.nodes for b, r in after.blobs.items()}.keys() == view.blobs.keys()

    nodes = cli_json(server, "admin", "nodes", "--json")
    assert sorted(n["id"] for n in nodes) == ["n0", "n1", "n2"]
    for node in nodes:
        assert node["backend"] == "zfs", node
        assert node["healthy"] is True and node["health"] == "ok", node
        assert node["pool_health"] in ("ONLINE", "DEGRADED"), node
        assert node["used_bytes"] > 0 and node["free_bytes"] > 0, node
        assert node["free_bytes"] < 256 * MiB, node  # the pool's, not the host's
        assert node["blob_count"] == sum(node["id"] in r.nodes for r in after.blobs.values()), node
        assert node["object_count"] == objects_on(after, node["id"]), node
    assert sum(n["object_count"] for n in nodes) >= 2 * len(objects)

    # an unmounted dataset makes its node down: reads and writes go to the other two
    pool.umount("node")
    try:
        time.sleep(HEALTH_TTL_S + 0.3)
        state = {n["id"]: n for n in cli_json(server, "admin", "nodes", "--json")}
        assert state[victim]["healthy"] is False, state[victim]
        assert_reads_back(s3, BUCKET, objects)
        objects["while-unmounted"] = rng.randbytes(2 * MiB)
        s3.put_object(Bucket=BUCKET, Key="while-unmounted", Body=objects["while-unmounted"])
        (blob_id,) = read_catalog(server.data_dir, BUCKET).objects["while-unmounted"]
        assert victim not in read_catalog(server.data_dir, BUCKET).blobs[blob_id].nodes
    finally:
        pool.mount("node")
    time.sleep(HEALTH_TTL_S + 0.3)
    assert all(n["healthy"] for n in cli_json(server, "admin", "nodes", "--json"))
    final = scrub(server)
    assert (final["damaged"], final["lost"], final["unavailable"]) == (0, 0, 0), final
    assert_reads_back(s3, BUCKET, objects)


def test_map_tasks_read_their_inputs_in_place_on_zfs_nodes(zfs_pools: PoolFactory, fresh_server: Server) -> None:
    """Two nodes on two ZFS pools, one copy each: every map task runs on the node whose
    dataset holds its input, reads it in place (bind mount and stdin), and gets the bytes."""
    pools = [zfs_pools.create() for _ in range(2)]
    fresh_server.extra_args = ["--storage", ",".join(f"zfs:{p.dataset('node')}" for p in pools), "--copies", "1"]
    fresh_server.start(timeout_s=60)
    try:
        s3 = client(fresh_server)
        s3.create_bucket(Bucket=BUCKET)
        rng = random.Random(5)
        datas = [rng.randbytes(rng.randrange(1, 3 * MiB)) for _ in range(8)]
        for i, data in enumerate(datas):
            s3.put_object(Bucket=BUCKET, Key=f"in/{i}", Body=data)
        created = cli(fresh_server, "job", "create", "-w", "-m", 'md5sum; md5sum < "$MANTA_INPUT_FILE"',
                      *(f"{BUCKET}/in/{i}" for i in range(len(datas))))
        job_id = created.stdout.split()[0]
        assert created.returncode == 0, cli(fresh_server, "job", "errors", job_id).stdout
        job = cli_json(fresh_server, "job", "get", job_id, "--json")
        tasks = sorted(job["tasks"], key=lambda t: int(t["input"].rsplit("/", 1)[1]))
        assert [t["state"] for t in tasks] == ["done"] * len(datas), tasks
        assert all(t["bytes_remote"] == 0 for t in tasks) and len({t["node"] for t in tasks}) == 2
        for task, data in zip(tasks, datas, strict=True):
            bucket, _, key = task["outputs"][0].partition("/")
            digest = hashlib.md5(data).hexdigest()
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode() == f"{digest}  -\n" * 2
    finally:
        fresh_server.stop()  # before the pools are destroyed


def test_a_zfs_node_the_task_user_cannot_reach_fails_tasks_fast_and_says_why(
        tmp_path: object, fresh_server: Server) -> None:
    """A dataset mounted under a 0700 directory (pytest's tmp dir here) cannot be bound by
    the task user and gets no alias (its mount comes and goes with the node): the log says
    which directory to open up, and a task on it ends InternalError with bwrap's reason
    instead of waiting forever for another node."""
    require(zfs_unavailable() is None, zfs_unavailable() or "")
    with PoolFactory(os.path.join(str(tmp_path), "zfs")) as pools:
        pool = pools.create()
        fresh_server.extra_args = ["--storage", f"zfs:{pool.dataset('node')}"]
        fresh_server.start(timeout_s=60)
        try:
            s3 = client(fresh_server)
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key="x", Body=b"some bytes\n")
            started = time.monotonic()
            created = cli(fresh_server, "job", "create", "-w", "-m", "wc -c", f"{BUCKET}/x")
            assert created.returncode != 0 and time.monotonic() - started < 30
            errors = cli(fresh_server, "job", "errors", created.stdout.split()[0]).stdout
            assert "InternalError" in errors and "Permission denied" in errors, errors
            assert "the task user cannot reach" in fresh_server.log()
        finally:
            fresh_server.stop()  # before the pool is destroyed
