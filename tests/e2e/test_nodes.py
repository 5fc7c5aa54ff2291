"""Several storage nodes in one `manta serve` (dir: nodes here; tests/e2e/test_zfs.py runs
the damage scenario on ZFS): placement of K copies, reads around damaged replicas, scrub
and read-triggered repair, a node that goes away and comes back, stable node identity,
and reference-counted blob files (overwrite, delete, copy, orphans after a SIGKILL).

What is on disk is checked directly: the catalog (read-only LMDB snapshot, the server may
be running) says which nodes hold each blob; the files under `<node>/blobs/xx/<id>` must
agree. Admin commands run through the real CLI (`python -m manta admin ...`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from storage.catalog import Catalog
from storage.node import MARKER
from storage.records import BlobRecord
from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, catalog_of

MiB = 1024 * 1024
BLOB_ID = re.compile(r"[0-9a-f]{32}\Z")
NO_RETRIES: dict[str, Any] = {"retries": {"total_max_attempts": 1}}
BUCKET = "nodes-test"
HEALTH_TTL_S = 0.25  # the nodes' health cache in these tests' servers (MANTA_HEALTH_TTL_S)


# -- helpers shared with test_zfs.py -------------------------------------------------------

def cli(server: Server, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MANTA_URL": server.url, "MANTA_ACCESS_KEY": ROOT_AK,
           "MANTA_SECRET_KEY": ROOT_SK}
    return subprocess.run([sys.executable, "-m", "manta", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout_s)


def cli_json(server: Server, *args: str, exit_code: int = 0) -> Any:
    """Run a `--json` admin command; it must exit with `exit_code` and print exactly one JSON value."""
    done = cli(server, *args)
    assert done.returncode == exit_code, (f"manta {' '.join(args)}: exit {done.returncode}\n{done.stdout}"
                                  f"{done.stderr[-2000:]}\nserver log:\n{server.log()[-2000:]}")
    value, end = json.JSONDecoder().raw_decode(done.stdout)
    assert done.stdout[end:].strip() == "", f"more than one JSON value: {done.stdout!r}"
    return value


def scrub(server: Server, exit_code: int = 0) -> dict[str, Any]:
    """`manta admin scrub --json`; it exits 1 when a blob is lost."""
    report = cli_json(server, "admin", "scrub", "--json", exit_code=exit_code)
    assert isinstance(report, dict), report
    return report


def node_roots(server: Server) -> dict[str, str]:
    return {n["id"]: n["root"] for n in cli_json(server, "admin", "nodes", "--json")}


@dataclass
class CatalogView:
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> spec
    blobs: dict[str, BlobRecord] = field(default_factory=dict)
    objects: dict[str, list[str]] = field(default_factory=dict)  # key -> blob ids (segments)
    repairs: set[str] = field(default_factory=set)

    def blobs_on(self, node_id: str) -> int:
        """How many blobs have a copy on `node_id`."""
        return sum(node_id in r.nodes for r in self.blobs.values())


def read_catalog(data_dir: str, bucket: str = "") -> CatalogView:
    """A consistent read-only snapshot of the catalog (objects of `bucket` only)."""
    view = CatalogView()
    catalog = Catalog(catalog_of(data_dir), readonly=True)
    try:
        with catalog.read() as txn:
            view.nodes = {node_id: record.spec for node_id, record in catalog.nodes.scan(txn)}
            view.blobs = dict(catalog.blobrefs.scan(txn))
            view.repairs = {blob_id for blob_id, _ in catalog.repairs.scan(txn)}
            for raw, record in catalog.scan(txn, "objects"):
                owner, _, key = bytes(raw).partition(b"\0")
                if owner.decode() == bucket:
                    view.objects[key.decode()] = [seg[0] for seg in record["segments"]]
    finally:
        catalog.close()
    return view


def blob_files(root: str) -> dict[str, str]:
    """Every committed blob file under one node root: blob id -> path."""
    found: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(os.path.join(root, "blobs")):
        found.update({name: os.path.join(dirpath, name) for name in files if BLOB_ID.match(name)})
    return found


def placement_on_disk(roots: dict[str, str]) -> dict[str, set[str]]:
    """blob id -> the nodes that have a file for it."""
    out: dict[str, set[str]] = {}
    for node_id, root in roots.items():
        for blob_id in blob_files(root):
            out.setdefault(blob_id, set()).add(node_id)
    return out


def read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def holds(path: str, data: bytes) -> bool:
    """The file exists and has exactly these bytes."""
    try:
        return read_file(path) == data
    except FileNotFoundError:
        return False


def get_bytes(s3: Any, bucket: str, key: str) -> bytes:
    with contextlib.closing(s3.get_object(Bucket=bucket, Key=key)["Body"]) as body:
        return bytes(body.read())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_reads_back(s3: Any, bucket: str, objects: dict[str, bytes], keys: Any = None) -> None:
    for key in sorted(objects if keys is None else keys):
        assert sha(get_bytes(s3, bucket, key)) == sha(objects[key]), f"{key}: wrong bytes"


def upload_workload(s3: Any, bucket: str, rng: random.Random, count: int = 10, multipart: bool = True,
                    sizes: tuple[int, ...] = (1, 5_000, 64 * 1024, 300_000, MiB + 17, 3 * MiB + 5),
                    ) -> dict[str, bytes]:
    """`count` objects of random bytes (`sizes` first, then random sizes from 64 KiB to
    3 MiB), small (journalled) to multi-block, plus one two-part multipart upload.
    Returns key -> bytes."""
    sizes += tuple(rng.randrange(64 * 1024, 3 * MiB) for _ in range(max(0, count - len(sizes))))
    objects: dict[str, bytes] = {}
    for i, size in enumerate(sizes[:count]):
        objects[f"obj-{i:02d}"] = data = rng.randbytes(size)
        s3.put_object(Bucket=bucket, Key=f"obj-{i:02d}", Body=data)
    if multipart:
        parts = [rng.randbytes(5 * MiB), rng.randbytes(MiB + 3)]
        upload = s3.create_multipart_upload(Bucket=bucket, Key="multi")["UploadId"]
        done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="multi", UploadId=upload,
                                                          PartNumber=n, Body=part)["ETag"]}
                for n, part in enumerate(parts, 1)]
        s3.complete_multipart_upload(Bucket=bucket, Key="multi", UploadId=upload,
                                     MultipartUpload={"Parts": done})
        objects["multi"] = b"".join(parts)
    return objects


def blob_contents(view: CatalogView, objects: dict[str, bytes]) -> dict[str, bytes]:
    """blob id -> the bytes it must hold, from the objects' segments."""
    out: dict[str, bytes] = {}
    for key, blob_ids in view.objects.items():
        offset = 0
        for blob_id in blob_ids:
            size = view.blobs[blob_id].size
            out[blob_id] = objects[key][offset:offset + size]
            offset += size
        assert offset == len(objects[key]), key
    return out


def flip(path: str, offsets: list[int]) -> None:
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0xFF]))
        fh.flush()
        os.fsync(fh.fileno())


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.1)


def assert_copies(view: CatalogView, roots: dict[str, str], copies: int,
                  healthy: set[str] | None = None) -> None:
    """Every blob is listed on exactly `copies` distinct (healthy) nodes and each of
    those nodes has its file with the recorded size."""
    for blob_id, record in view.blobs.items():
        nodes = record.nodes
        assert len(nodes) == len(set(nodes)) == copies, f"blob {blob_id} on {nodes}"
        if healthy is not None:
            assert set(nodes) <= healthy, f"blob {blob_id} listed on a down node: {nodes}"
        for node_id in nodes:
            path = os.path.join(roots[node_id], "blobs", blob_id[:2], blob_id)
            assert os.path.getsize(path) == record.size, f"blob {blob_id} on {node_id}"


def client(server: Server) -> Any:
    """boto3 without retries: a failed request must fail the test, not be retried."""
    return server.client(**NO_RETRIES)


def start_cluster(server: Server, *args: str) -> Any:
    server.extra_args = list(args)
    server.env["MANTA_HEALTH_TTL_S"] = str(HEALTH_TTL_S)
    server.start()
    return client(server)


# -- tests ---------------------------------------------------------------------------------

def test_every_object_has_copies_on_distinct_nodes_and_nodes_report_them(fresh_server: Server) -> None:
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    objects = upload_workload(s3, BUCKET, random.Random(1), count=8)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    roots = node_roots(fresh_server)
    assert sorted(roots) == ["n0", "n1", "n2"]
    assert set(view.objects) == set(objects)
    assert_copies(view, roots, copies=2)
    on_disk = placement_on_disk(roots)
    for key, blob_ids in view.objects.items():
        for blob_id in blob_ids:
            assert on_disk.get(blob_id) == set(view.blobs[blob_id].nodes), f"{key}: files of {blob_id}"
    assert set(on_disk) == set(view.blobs), "blob files that the catalog does not know"
    assert len(on_disk) == len(objects) + 1  # the multipart object has two blobs

    nodes = cli_json(fresh_server, "admin", "nodes", "--json")
    assert isinstance(nodes, list) and len(nodes) == 3
    for node in nodes:
        held = {b for b, rec in view.blobs.items() if node["id"] in rec.nodes}
        assert node["backend"] == "dir" and node["spec"] == f"dir:{roots[node['id']]}"
        assert node["healthy"] is True and node["health"] == "ok", node
        assert node["used_bytes"] > 0 and node["free_bytes"] > 0, node
        assert node["blob_count"] == len(held), node
        assert node["object_count"] == sum(1 for ids in view.objects.values() if held & set(ids)), node
    assert sum(n["blob_count"] for n in nodes) == 2 * len(view.blobs)
    text = cli(fresh_server, "admin", "nodes")
    assert text.returncode == 0 and all(n in text.stdout for n in ("n0", "n1", "n2")), text
    assert_reads_back(s3, BUCKET, objects)


def test_damaged_replicas_are_read_around_and_scrub_repairs_them(fresh_server: Server) -> None:
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(2)
    objects = upload_workload(s3, BUCKET, rng, count=10)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    roots = node_roots(fresh_server)
    contents = blob_contents(view, objects)

    # one replica of one blob of each of 8 objects is damaged: bytes flipped (in every 1 MiB
    # block), the file truncated, or the file deleted. Group A is read before the scrub
    # (reads fail over and queue a repair), group B is not.
    damaged_keys = sorted(k for k in objects if len(objects[k]) > 1)[:8]
    kinds = ["flip", "flip", "truncate", "truncate", "delete", "delete", "flip", "flip"]
    group_b = damaged_keys[1::2]  # group A: the other half
    damaged: dict[str, str] = {}  # blob id -> path of the damaged replica
    for key, kind in zip(damaged_keys, kinds, strict=True):
        blob_id = rng.choice(view.objects[key])
        node_id = rng.choice(view.blobs[blob_id].nodes)
        path = os.path.join(roots[node_id], "blobs", blob_id[:2], blob_id)
        size = view.blobs[blob_id].size
        if kind == "flip":
            flip(path, sorted({min(size - 1, block + rng.randrange(MiB)) for block in range(0, size, MiB)}))
        elif kind == "truncate":
            os.truncate(path, size // 2)
        else:
            os.unlink(path)
        assert not holds(path, contents[blob_id])
        damaged[blob_id] = path

    assert_reads_back(s3, BUCKET, objects, [k for k in objects if k not in group_b])
    report = scrub(fresh_server)
    blobs_in_b = len(group_b)
    assert report["lost"] == 0 and report["lost_blobs"] == [], report
    assert report["unavailable"] == 0, report
    assert report["checked"] == 2 * len(view.blobs), report
    assert blobs_in_b <= report["damaged"] <= len(damaged), report
    assert blobs_in_b <= report["repaired"] <= report["damaged"], report
    assert_reads_back(s3, BUCKET, objects)
    # group A may have been repaired by the Repairer (read reports) instead of the scrub
    wait_for(lambda: all(holds(p, contents[b]) for b, p in damaged.items()), 10,
             "every damaged replica to be rewritten")
    again = scrub(fresh_server)
    assert (again["damaged"], again["repaired"], again["lost"]) == (0, 0, 0), again
    assert_copies(read_catalog(fresh_server.data_dir, BUCKET), roots, copies=2)


def test_a_damaged_replica_found_by_a_read_is_repaired_in_the_background(fresh_server: Server) -> None:
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    data = random.Random(3).randbytes(2 * MiB + 100)
    s3.put_object(Bucket=BUCKET, Key="k", Body=data)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    (blob_id,) = view.objects["k"]
    roots = node_roots(fresh_server)
    path = os.path.join(roots[view.blobs[blob_id].nodes[0]], "blobs", blob_id[:2], blob_id)
    flip(path, [10, MiB + 20, 2 * MiB + 30])
    good_replica = os.path.join(roots[view.blobs[blob_id].nodes[1]], "blobs", blob_id[:2], blob_id)
    mtime = os.stat(good_replica).st_mtime_ns

    # a read picks a replica at random, so read until one has hit the damaged copy
    deadline = time.monotonic() + 15
    while not holds(path, data):
        assert time.monotonic() < deadline, "the damaged replica was not repaired after reads"
        assert get_bytes(s3, BUCKET, "k") == data
        time.sleep(0.2)
    assert os.stat(good_replica).st_mtime_ns == mtime, "the good replica was rewritten"
    after = read_catalog(fresh_server.data_dir, BUCKET)
    assert sorted(after.blobs[blob_id].nodes) == sorted(view.blobs[blob_id].nodes)
    wait_for(lambda: not read_catalog(fresh_server.data_dir, BUCKET).repairs, 5, "the repair queue to drain")
    assert scrub(fresh_server)["damaged"] == 0


def test_replicas_damaged_in_different_blocks_still_read_correctly(fresh_server: Server) -> None:
    """Reads fail over per 1 MiB block: with block 0 bad on one replica and block 2 bad on
    the other, every block still has a good copy, so every read returns the right bytes."""
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    data = random.Random(10).randbytes(3 * MiB + 10)
    s3.put_object(Bucket=BUCKET, Key="k", Body=data)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    (blob_id,) = view.objects["k"]
    roots = node_roots(fresh_server)
    first, second = (os.path.join(roots[n], "blobs", blob_id[:2], blob_id) for n in view.blobs[blob_id].nodes)
    flip(first, [100])
    flip(second, [2 * MiB + 100])
    for _ in range(6):  # both replica orders (a read starts at a random replica)
        assert sha(get_bytes(s3, BUCKET, "k")) == sha(data)
    for start, end in ((0, MiB - 1), (2 * MiB, 3 * MiB), (MiB - 5, 2 * MiB + 200)):
        with contextlib.closing(s3.get_object(Bucket=BUCKET, Key="k", Range=f"bytes={start}-{end}")["Body"]) as body:
            assert body.read() == data[start:end + 1], (start, end)


def test_scrub_rebuilds_a_blob_whose_every_replica_is_damaged_in_different_blocks(fresh_server: Server) -> None:
    """No replica is wholly good, but every block has a good copy somewhere: scrub assembles
    the blob from those and rewrites both replicas. A blob bad in the same block on both is
    reported lost, and reads of it fail rather than return wrong bytes."""
    s3 = start_cluster(fresh_server, "--nodes", "2", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(11)
    data = {"split": rng.randbytes(3 * MiB + 10), "same": rng.randbytes(2 * MiB)}
    for key, body in data.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    roots = node_roots(fresh_server)
    paths = {key: [os.path.join(roots[n], "blobs", b[:2], b) for b in view.objects[key] for n in view.blobs[b].nodes]
             for key in data}
    flip(paths["split"][0], [100])
    flip(paths["split"][1], [2 * MiB + 100])
    flip(paths["same"][0], [MiB + 7])
    flip(paths["same"][1], [MiB + 7])
    report = scrub(fresh_server, exit_code=1)
    assert (report["damaged"], report["repaired"], report["lost"]) == (4, 2, 1), report
    assert report["lost_blobs"] == view.objects["same"]
    assert all(holds(path, data["split"]) for path in paths["split"])
    assert get_bytes(s3, BUCKET, "split") == data["split"]
    with pytest.raises(ClientError) as err:
        get_bytes(s3, BUCKET, "same")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503  # unavailable, never wrong bytes
    again = scrub(fresh_server, exit_code=1)
    assert (again["damaged"], again["repaired"], again["lost"]) == (2, 0, 1), again


def test_a_node_that_goes_away_and_comes_back(fresh_server: Server) -> None:
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    rng = random.Random(4)
    objects = upload_workload(s3, BUCKET, rng, count=8, multipart=False)
    roots = node_roots(fresh_server)
    time.sleep(HEALTH_TTL_S + 0.1)
    s3.put_object(Bucket=BUCKET, Key="warm", Body=b"x")  # every node's health is checked afresh
    objects["warm"] = b"x"
    before = read_catalog(fresh_server.data_dir, BUCKET)
    # the node holding the most blobs goes away (its directory is moved while the server runs)
    away = max(roots, key=before.blobs_on)
    staying = set(roots) - {away}
    on_away = {b for b, r in before.blobs.items() if away in r.nodes}
    assert on_away
    os.rename(roots[away], roots[away] + ".away")
    # at once (the node may still be cached as healthy: its I/O fails) and after the
    # health cache expired: reads succeed, and new writes too, with both copies on the
    # two remaining nodes
    new_keys = []
    for round_no in range(2):
        for size in (2 * MiB, 10, 70_000):
            key = f"new-{round_no}-{size}"
            objects[key] = rng.randbytes(size)
            s3.put_object(Bucket=BUCKET, Key=key, Body=objects[key])
            new_keys.append(key)
        assert_reads_back(s3, BUCKET, objects)
        time.sleep(HEALTH_TTL_S + 0.3)

    state = {n["id"]: n for n in cli_json(fresh_server, "admin", "nodes", "--json")}
    assert state[away]["healthy"] is False and state[away]["health"] != "ok", state[away]
    assert all(state[n]["healthy"] for n in staying), state
    during = read_catalog(fresh_server.data_dir, BUCKET)
    for key in new_keys:
        (blob_id,) = during.objects[key]
        assert set(during.blobs[blob_id].nodes) == staying
        assert {n for n, root in roots.items() if n != away and blob_id in blob_files(root)} == staying
        assert blob_id not in blob_files(roots[away] + ".away")
    # a delete while the node is away cannot remove that node's copy (GC does, later)
    gone = next(k for k, ids in before.objects.items() if on_away & set(ids))
    s3.delete_object(Bucket=BUCKET, Key=gone)
    (gone_blob,) = before.objects[gone]
    del objects[gone]

    # a scrub while the node is away restores two copies on the nodes that are up
    report = scrub(fresh_server)
    still_on_away = on_away - {gone_blob}
    assert report["lost"] == 0 and report["damaged"] == 0, report
    assert report["unavailable"] == len(still_on_away), report
    assert report["repaired"] == len(still_on_away), report
    assert_copies(read_catalog(fresh_server.data_dir, BUCKET), roots, copies=2, healthy=staying)
    assert_reads_back(s3, BUCKET, objects)

    os.rename(roots[away] + ".away", roots[away])
    time.sleep(HEALTH_TTL_S + 0.3)
    state = {n["id"]: n for n in cli_json(fresh_server, "admin", "nodes", "--json")}
    assert all(n["healthy"] for n in state.values()), state
    report = scrub(fresh_server)
    assert (report["lost"], report["damaged"], report["unavailable"]) == (0, 0, 0), report
    after = read_catalog(fresh_server.data_dir, BUCKET)
    assert_copies(after, roots, copies=2, healthy=set(roots))
    assert set(after.objects) == set(objects)
    assert_reads_back(s3, BUCKET, objects)

    # the returned node still has files the catalog no longer places there: its copy of
    # the deleted object and the copies the scrub replaced. GC collects them after a
    # restart with no grace period, and keeps every placed copy.
    stale = {b for b in blob_files(roots[away]) if away not in (after.blobs[b].nodes if b in after.blobs else [])}
    assert gone_blob in stale and len(stale) == len(on_away)
    fresh_server.kill()
    fresh_server.env["MANTA_GC_GRACE_S"] = "0"
    fresh_server.start()
    wait_for(lambda: not set(blob_files(roots[away])) & stale, 10, "GC of the stale copies")
    assert_copies(read_catalog(fresh_server.data_dir, BUCKET), roots, copies=2)
    assert placement_on_disk(roots) == {b: set(r.nodes) for b, r in after.blobs.items()}
    assert_reads_back(client(fresh_server), BUCKET, objects)


def test_a_node_whose_disk_is_missing_at_start_stays_down(fresh_server: Server) -> None:
    """A known node found without its marker at start (disk not mounted) is down, not a new
    empty node under the old id: reads use the other copies, scrub counts its copies as
    unavailable rather than damaged, and it comes back when its disk does."""
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    objects = upload_workload(s3, BUCKET, random.Random(12), count=6, multipart=False)
    roots = node_roots(fresh_server)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    away = max(roots, key=view.blobs_on)
    held = view.blobs_on(away)
    assert held
    fresh_server.stop()
    os.rename(roots[away], roots[away] + ".unmounted")
    fresh_server.start()
    assert "its disk is missing or not mounted" in fresh_server.log()
    assert not os.path.exists(os.path.join(roots[away], MARKER))
    state = {n["id"]: n for n in cli_json(fresh_server, "admin", "nodes", "--json")}
    assert state[away]["healthy"] is False, state[away]
    assert_reads_back(client(fresh_server), BUCKET, objects)
    report = scrub(fresh_server)
    assert (report["damaged"], report["lost"], report["unavailable"]) == (0, 0, held), report
    fresh_server.stop()
    shutil.rmtree(roots[away])
    os.rename(roots[away] + ".unmounted", roots[away])
    fresh_server.start()
    state = {n["id"]: n for n in cli_json(fresh_server, "admin", "nodes", "--json")}
    assert all(n["healthy"] for n in state.values()), state
    report = scrub(fresh_server)
    assert (report["damaged"], report["lost"], report["unavailable"]) == (0, 0, 0), report
    assert_reads_back(client(fresh_server), BUCKET, objects)


def test_copies_on_nodes_that_are_down_are_unavailable_not_lost(fresh_server: Server) -> None:
    """With two of three nodes away some blobs have no copy on a node that is up: the scrub
    must call those copies unavailable (they come back with their nodes), not lost."""
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    objects = upload_workload(s3, BUCKET, random.Random(9), count=8, multipart=False)
    roots = node_roots(fresh_server)
    view = read_catalog(fresh_server.data_dir, BUCKET)
    # the node that stays up is the one with the fewest blobs: each blob misses one node
    up = min(roots, key=view.blobs_on)
    away = sorted(set(roots) - {up})
    for node_id in away:
        os.rename(roots[node_id], roots[node_id] + ".away")
    time.sleep(HEALTH_TTL_S + 0.3)
    cut_off = [b for b, r in view.blobs.items() if up not in r.nodes]
    assert cut_off

    # reads: a copy on the node that is up is enough; no copy reachable is a 503, never
    # wrong bytes. Writes need two nodes: refused with a 503, leaving no file behind.
    readable = {k for k, ids in view.objects.items() if not set(ids) & set(cut_off)}
    assert_reads_back(s3, BUCKET, objects, readable)
    for key in set(objects) - readable:
        with pytest.raises(ClientError) as caught:
            get_bytes(s3, BUCKET, key)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, key
    files_before = blob_files(roots[up])
    for size in (100, 2 * MiB):
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=BUCKET, Key=f"refused-{size}", Body=os.urandom(size))
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert blob_files(roots[up]) == files_before, "a refused write left a blob file"

    done = cli(fresh_server, "admin", "scrub", "--json")
    report = json.loads(done.stdout)
    assert report["lost"] == 0 and report["lost_blobs"] == [], report
    assert report["damaged"] == 0, report
    assert report["unavailable"] == sum(len(set(r.nodes) & set(away)) for r in view.blobs.values())
    assert done.returncode == 0, done

    for node_id in away:
        os.rename(roots[node_id] + ".away", roots[node_id])
    time.sleep(HEALTH_TTL_S + 0.3)
    report = scrub(fresh_server)
    assert (report["lost"], report["damaged"], report["unavailable"]) == (0, 0, 0), report
    assert_copies(read_catalog(fresh_server.data_dir, BUCKET), roots, copies=2)
    assert_reads_back(s3, BUCKET, objects)


class _UnsignedPayload(S3SigV4Auth):
    def payload(self, request: AWSRequest) -> str:
        return "UNSIGNED-PAYLOAD"


def test_a_node_lost_in_the_middle_of_a_write(fresh_server: Server) -> None:
    """The write continues on the surviving copy and is acknowledged only with two copies:
    the missing one is made from the survivor on the third node."""
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    roots = node_roots(fresh_server)
    data = random.Random(8).randbytes(4 * MiB)
    url = f"{fresh_server.url}/{BUCKET}/mid"
    request = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(len(data))})
    _UnsignedPayload(Credentials(ROOT_AK, ROOT_SK), "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=30)
    try:
        conn.putrequest("PUT", f"/{BUCKET}/mid", skip_accept_encoding=True)
        for name, value in request.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        conn.send(data[:MiB])

        def writing() -> set[str]:
            return {n for n, root in roots.items() if os.listdir(os.path.join(root, "tmp"))}

        wait_for(lambda: len(writing()) == 2, 5, "the write to reach two nodes")
        lost = sorted(writing())[0]
        os.rename(roots[lost], roots[lost] + ".away")
        conn.send(data[MiB:])
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()
    view = read_catalog(fresh_server.data_dir, BUCKET)
    (blob_id,) = view.objects["mid"]
    assert set(view.blobs[blob_id].nodes) == set(roots) - {lost}
    assert placement_on_disk({n: r for n, r in roots.items() if n != lost})[blob_id] == set(roots) - {lost}
    assert get_bytes(s3, BUCKET, "mid") == data


def test_node_identity_is_stable_across_restarts_and_spec_order(fresh_server: Server, tmp_path: Any) -> None:
    dirs = [os.path.join(str(tmp_path), name) for name in ("alpha", "beta", "gamma")]
    specs = [f"dir:{d}" for d in dirs]
    s3 = start_cluster(fresh_server, "--storage", ",".join(specs), "--copies", "2")
    ids = {n["spec"]: n["id"] for n in cli_json(fresh_server, "admin", "nodes", "--json")}
    assert set(ids) == set(specs) and sorted(ids.values()) == ["n0", "n1", "n2"]
    s3.create_bucket(Bucket=BUCKET)
    objects = upload_workload(s3, BUCKET, random.Random(5), count=6, multipart=False)

    for order in (specs, [specs[2], specs[0], specs[1]], [specs[1], specs[2], specs[0]]):
        fresh_server.stop()
        s3 = start_cluster(fresh_server, "--storage", ",".join(order), "--copies", "2")
        again = {n["spec"]: n["id"] for n in cli_json(fresh_server, "admin", "nodes", "--json")}
        assert again == ids, f"order {order}"
        for spec, node_id in ids.items():
            assert read_file(os.path.join(spec[4:], ".manta-node")).strip() == node_id.encode()
        assert_reads_back(s3, BUCKET, objects)
        report = scrub(fresh_server)
        assert (report["damaged"], report["lost"], report["unavailable"]) == (0, 0, 0), report
    assert read_catalog(fresh_server.data_dir).nodes == {v: k for k, v in ids.items()}


def test_blob_files_follow_reference_counts_and_gc_collects_orphans_after_a_kill(fresh_server: Server) -> None:
    s3 = start_cluster(fresh_server, "--nodes", "3", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    roots = node_roots(fresh_server)
    rng = random.Random(6)

    def files() -> dict[str, set[str]]:
        return placement_on_disk(roots)

    def blobs_of(key: str) -> list[str]:
        return read_catalog(fresh_server.data_dir, BUCKET).objects[key]

    objects: dict[str, bytes] = {}
    for size in (1_000, 2 * MiB):  # a journalled small blob and a streamed one
        key = f"over-{size}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=rng.randbytes(size))
        (first,) = blobs_of(key)
        assert len(files()[first]) == 2
        body = rng.randbytes(size)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        (second,) = blobs_of(key)
        assert first not in files(), f"overwritten blob {first} still on disk"
        assert len(files()[second]) == 2
        assert get_bytes(s3, BUCKET, key) == body
        objects[key] = body

    # a server-side copy shares the blob: no new file, two references
    before = files()
    s3.copy_object(Bucket=BUCKET, Key="copy", CopySource={"Bucket": BUCKET, "Key": "over-2097152"})
    view = read_catalog(fresh_server.data_dir, BUCKET)
    assert view.objects["copy"] == view.objects["over-2097152"]
    assert view.blobs[view.objects["copy"][0]].refs == 2
    assert files() == before, "a copy wrote blob files"
    s3.delete_object(Bucket=BUCKET, Key="over-2097152")
    del objects["over-2097152"]
    assert files() == before, "deleting one of two references freed the blob"
    shared = view.objects["copy"][0]
    s3.delete_object(Bucket=BUCKET, Key="copy")
    assert shared not in files(), "the last reference is gone but the files are not"

    # a multipart upload: its parts are the object's blobs; deleting it frees them all
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    parts = [rng.randbytes(5 * MiB), rng.randbytes(1000)]
    etags = [s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=upload, PartNumber=n, Body=p)["ETag"]
             for n, p in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    part_blobs = blobs_of("mp")
    assert len(part_blobs) == 2 and all(len(files()[b]) == 2 for b in part_blobs)
    s3.delete_object(Bucket=BUCKET, Key="mp")
    assert not set(part_blobs) & set(files())

    # SIGKILL right after acknowledged deletes; orphans a crash left behind (files no record
    # places on that node, made to look old) are collected by the GC round at start-up
    objects.update({f"keep-{i}": rng.randbytes(s) for i, s in enumerate([10, 5_000, 100_000, MiB + 1])})
    doomed = {f"doomed-{i}": rng.randbytes(s) for i, s in enumerate([20, 200_000, MiB + 2])}
    for key, data in {**objects, **doomed}.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    pending = s3.create_multipart_upload(Bucket=BUCKET, Key="pending")["UploadId"]
    pending_part = rng.randbytes(5 * MiB)
    pending_etag = s3.upload_part(Bucket=BUCKET, Key="pending", UploadId=pending, PartNumber=1,
                                  Body=pending_part)["ETag"]
    orphans: dict[str, str] = {}
    for node_id, root in roots.items():
        for _ in range(2):
            orphan = secrets.token_hex(16)
            path = os.path.join(root, "blobs", orphan[:2], orphan)
            with open(path, "wb") as fh:
                fh.write(os.urandom(1000))
            os.utime(path, (time.time() - 7200, time.time() - 7200))
            orphans[orphan] = node_id
    kept_before = read_catalog(fresh_server.data_dir, BUCKET)
    for key in doomed:
        s3.delete_object(Bucket=BUCKET, Key=key)
    fresh_server.kill()
    doomed_blobs = {b for k in doomed for b in kept_before.objects[k]}
    assert not doomed_blobs & set(files()), "acknowledged deletes left blob files"
    assert set(orphans) <= set(files())

    fresh_server.env["MANTA_GC_GRACE_S"] = "0"
    fresh_server.start()
    wait_for(lambda: not set(orphans) & set(files()), 10, "GC of the orphan files")
    view = read_catalog(fresh_server.data_dir, BUCKET)
    assert set(view.objects) == set(objects)
    assert {b: set(r.nodes) for b, r in view.blobs.items()} == files(), "catalog and disk disagree"
    assert_copies(view, roots, copies=2)
    s3 = client(fresh_server)
    assert_reads_back(s3, BUCKET, objects)
    for key in doomed:
        with pytest.raises(ClientError) as caught:
            s3.head_object(Bucket=BUCKET, Key=key)
        assert caught.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    # the part of an upload still in progress is referenced too: it survived the GC
    s3.complete_multipart_upload(Bucket=BUCKET, Key="pending", UploadId=pending, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": pending_etag}]})
    assert get_bytes(s3, BUCKET, "pending") == pending_part


def test_admin_gc_deletes_copies_no_object_needs_now(fresh_server: Server) -> None:
    """`manta admin gc` runs the orphan collector on demand: old files no record places on
    their node go, referenced copies and files younger than the grace period stay."""
    fresh_server.env["MANTA_GC_GRACE_S"] = "600"
    s3 = start_cluster(fresh_server, "--nodes", "2", "--copies", "2")
    s3.create_bucket(Bucket=BUCKET)
    roots = node_roots(fresh_server)
    body = os.urandom(MiB + 3)
    s3.put_object(Bucket=BUCKET, Key="kept", Body=body)
    (kept,) = read_catalog(fresh_server.data_dir, BUCKET).objects["kept"]
    old, young = secrets.token_hex(16), secrets.token_hex(16)
    for blob_id, age_s in ((old, 7200), (young, 0)):
        path = os.path.join(roots["n0"], "blobs", blob_id[:2], blob_id)
        with open(path, "wb") as fh:
            fh.write(b"stale copy")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    assert cli_json(fresh_server, "admin", "gc", "--json") == {"removed": 1}
    on_disk = placement_on_disk(roots)
    assert old not in on_disk and on_disk[young] == {"n0"} and on_disk[kept] == {"n0", "n1"}
    assert get_bytes(s3, BUCKET, "kept") == body
    assert cli_json(fresh_server, "admin", "gc", "--json") == {"removed": 0}
