"""The LMDB catalog without HTTP: group commit, blob reference counts, multipart
completion, listing order, and durability across close/reopen.

Blob ids here are fake (no bytes are stored): the catalog only counts references.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from storage import errors
from storage.catalog import Catalog, Txn
from storage.objects import Listing, ObjectStore
from storage.uploads import MIN_PART_SIZE, UploadStore

BUCKET = "bkt"
OWNER = "root"


class Stores:
    def __init__(self, path: str) -> None:
        self.path = path
        self.open()

    def open(self) -> None:
        self.catalog = Catalog(self.path)
        self.objects = ObjectStore(self.catalog)
        self.uploads = UploadStore(self.catalog, self.objects)

    def reopen(self) -> None:
        self.catalog.close()
        self.open()


@pytest.fixture
def st(catalog_location: str) -> Iterator[Stores]:
    stores = Stores(catalog_location)
    stores.catalog.buckets.create(BUCKET, OWNER)
    yield stores
    stores.catalog.close()


def blob_id() -> str:
    return secrets.token_hex(16)


def record(*segments: tuple[str, int], etag: str = "e") -> dict[str, Any]:
    return {"size": sum(s for _, s in segments), "etag": etag, "mtime": 1.0,
            "segments": [[b, s] for b, s in segments], "headers": {}, "meta": {},
            "checksums": {}, "checksum_type": None, "parts": None, "replicas": ["n0"]}


def refcount(cat: Catalog, blob: str) -> int:
    with cat.read() as txn:
        record = cat.blobrefs.get(txn, blob)
        return record.refs if record is not None else 0


# -- group commit ------------------------------------------------------------------


def test_concurrent_writes_all_land(st: Stores) -> None:
    n_threads, per_thread = 16, 40
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            st.objects.put(BUCKET, f"t{t:02d}/k{i:03d}", record((blob_id(), 1), etag=f"{t}-{i}"))

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(worker, range(n_threads)))
    keys = [r["key"] for r in st.objects.list(BUCKET).contents]
    assert keys == sorted(f"t{t:02d}/k{i:03d}" for t in range(n_threads) for i in range(per_thread))
    for t in range(n_threads):
        assert st.objects.get(BUCKET, f"t{t:02d}/k007")["etag"] == f"{t}-7"
    assert len({b for b, _ in st.catalog.blobrefs.records()}) == n_threads * per_thread


def test_one_failing_write_does_not_roll_back_its_batch(st: Stores) -> None:
    batches: list[int] = []
    writer: Any = st.catalog.engine._writer  # type: ignore[attr-defined]  # the engine's batches
    real_apply = writer.apply

    def recording_apply(batch: list[Any]) -> None:
        batches.append(len(batch))
        real_apply(batch)

    writer.apply = recording_apply
    release = threading.Event()
    started = threading.Event()

    def hold_the_writer(txn: Txn) -> None:
        started.set()
        assert release.wait(10)

    blocker = st.catalog.submit(hold_the_writer)
    assert started.wait(10)
    # everything below queues up while the writer is busy, so it forms one batch
    good_before = [st.objects.put_async(BUCKET, f"good-{i}", record((blob_id(), 1))) for i in range(5)]

    def half_done_then_fail(txn: Txn) -> None:
        st.objects._put_in(txn, BUCKET, "doomed", record((blob_id(), 1)))
        st.catalog.put(txn, "buckets", b"doomed-bucket", {"v": 1, "name": "doomed-bucket"})
        raise RuntimeError("this write fails half way")

    bad = st.catalog.submit(half_done_then_fail)
    missing_bucket = st.objects.put_async("no-such-bucket", "k", record((blob_id(), 1)))
    good_after = [st.objects.put_async(BUCKET, f"good-{i}", record((blob_id(), 1))) for i in range(5, 10)]
    release.set()
    blocker.result(10)
    for fut in good_before + good_after:
        assert fut.result(10) == []
    with pytest.raises(RuntimeError, match="half way"):
        bad.result(10)
    with pytest.raises(errors.NoSuchBucket):
        missing_bucket.result(10)
    assert batches[:2] == [1, 12], "the queued writes were not committed as one batch"

    assert sorted(r["key"] for r in st.objects.list(BUCKET).contents) == sorted(f"good-{i}" for i in range(10))
    with pytest.raises(errors.NoSuchKey):
        st.objects.get(BUCKET, "doomed")
    with pytest.raises(errors.NoSuchBucket):
        st.catalog.buckets.get("doomed-bucket")
    assert len({b for b, _ in st.catalog.blobrefs.records()}) == 10, "the failed write's blob reference leaked"
    # the writer thread is still healthy
    st.objects.put(BUCKET, "after", record((blob_id(), 1)))


def test_a_cancelled_write_is_not_applied_or_fatal_to_the_writer(st: Stores) -> None:
    """A write cancelled while queued is skipped; one being applied cannot be cancelled and
    delivers its outcome; either way the writer thread lives on."""
    release, started = threading.Event(), threading.Event()

    def hold_the_writer(txn: Txn) -> str:
        started.set()
        assert release.wait(10)
        st.objects._put_in(txn, BUCKET, "running", {**record((blob_id(), 1)), "key": "running"})
        return "applied"

    running = st.catalog.submit(hold_the_writer)
    assert started.wait(10)
    queued = st.objects.put_async(BUCKET, "queued", record((blob_id(), 1)))
    assert queued.cancel() and not running.cancel()
    release.set()
    assert running.result(10) == "applied"
    st.objects.put(BUCKET, "after", record((blob_id(), 1)))  # the writer is alive
    assert sorted(r["key"] for r in st.objects.list(BUCKET).contents) == ["after", "running"]


def test_a_request_cancelled_during_its_commit_gets_the_committed_outcome(st: Stores) -> None:
    """catalog_write (the S3 layer's await of a commit): a cancel that lands while the write
    is applied waits for it, and a committed write returns its result (the caller must not
    free blobs the new record references); a cancel while queued cancels the write."""
    from manta.server.s3.common import catalog_write

    release, started = threading.Event(), threading.Event()

    def slow(txn: Txn) -> str:
        started.set()
        assert release.wait(10)
        return "committed"

    async def run() -> tuple[Any, Any]:
        running = asyncio.create_task(catalog_write(st.catalog.submit(slow)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        queued = asyncio.create_task(catalog_write(st.objects.put_async(BUCKET, "q", record((blob_id(), 1)))))
        await asyncio.sleep(0)
        running.cancel()
        queued.cancel()
        await asyncio.sleep(0.05)
        release.set()
        got = await running
        with pytest.raises(asyncio.CancelledError):
            await queued
        return got, None

    got, _ = asyncio.run(run())
    assert got == "committed"
    with pytest.raises(errors.NoSuchKey):
        st.objects.get(BUCKET, "q")
    st.objects.put(BUCKET, "after", record((blob_id(), 1)))


def test_write_returns_after_commit_and_reads_see_it(st: Stores) -> None:
    st.objects.put(BUCKET, "k", record((blob_id(), 3)))
    with st.catalog.read() as txn:
        assert st.catalog.get(txn, "objects", b"bkt\0k") is not None


# -- reference counts ---------------------------------------------------------------


def test_put_overwrite_delete_free_the_right_blobs(st: Stores) -> None:
    a, b = blob_id(), blob_id()
    assert st.objects.put(BUCKET, "k", record((a, 5))) == []
    assert refcount(st.catalog, a) == 1
    assert st.objects.put(BUCKET, "k", record((b, 6))) == [a]
    assert refcount(st.catalog, a) == 0
    assert refcount(st.catalog, b) == 1
    assert st.objects.delete(BUCKET, "k") == [b]
    assert st.objects.delete(BUCKET, "k") == []  # idempotent
    assert {b for b, _ in st.catalog.blobrefs.records()} == set()


def test_overwrite_with_the_same_blob_frees_nothing(st: Stores) -> None:
    a = blob_id()
    st.objects.put(BUCKET, "k", record((a, 5)))
    assert st.objects.put(BUCKET, "k", record((a, 5), etag="again")) == []
    assert refcount(st.catalog, a) == 1


def test_copy_shares_the_blob(st: Stores) -> None:
    a, b = blob_id(), blob_id()
    st.objects.put(BUCKET, "src", record((a, 4), (b, 4), etag="src"))
    rec, freed = st.objects.copy(BUCKET, "src", BUCKET, "dst", {"mtime": 2.0})
    assert freed == []
    assert rec["segments"] == [[a, 4], [b, 4]] and rec["key"] == "dst"
    assert st.objects.get(BUCKET, "dst")["segments"] == [[a, 4], [b, 4]]
    assert refcount(st.catalog, a) == refcount(st.catalog, b) == 2
    assert st.objects.delete(BUCKET, "src") == []
    assert refcount(st.catalog, a) == 1
    assert sorted(st.objects.delete(BUCKET, "dst")) == sorted([a, b])
    assert {b for b, _ in st.catalog.blobrefs.records()} == set()


def test_copy_over_an_existing_key_frees_its_blob(st: Stores) -> None:
    a, old = blob_id(), blob_id()
    st.objects.put(BUCKET, "src", record((a, 4)))
    st.objects.put(BUCKET, "dst", record((old, 4)))
    _, freed = st.objects.copy(BUCKET, "src", BUCKET, "dst", {})
    assert freed == [old]
    assert refcount(st.catalog, a) == 2


def test_copy_onto_itself_keeps_the_blob(st: Stores) -> None:
    a = blob_id()
    st.objects.put(BUCKET, "k", record((a, 4)))
    _, freed = st.objects.copy(BUCKET, "k", BUCKET, "k", {"meta": {"x": "1"}})
    assert freed == []
    assert refcount(st.catalog, a) == 1
    assert st.objects.get(BUCKET, "k")["meta"] == {"x": "1"}


def test_copy_checks_the_source(st: Stores) -> None:
    st.objects.put(BUCKET, "src", record((blob_id(), 4), etag="v1"))
    with pytest.raises(errors.SourceChanged):
        st.objects.copy(BUCKET, "src", BUCKET, "dst", {}, expect_etag="v0")
    with pytest.raises(errors.NoSuchKey):
        st.objects.copy(BUCKET, "nope", BUCKET, "dst", {})
    with pytest.raises(errors.NoSuchKey):
        st.objects.get(BUCKET, "dst")


def test_delete_many(st: Stores) -> None:
    blobs = [blob_id() for _ in range(3)]
    for i, b in enumerate(blobs):
        st.objects.put(BUCKET, f"k{i}", record((b, 1)))
    assert sorted(st.objects.delete_many(BUCKET, ["k0", "k2", "absent"])) == sorted([blobs[0], blobs[2]])
    assert [r["key"] for r in st.objects.list(BUCKET).contents] == ["k1"]


def test_bucket_lifecycle(st: Stores) -> None:
    with pytest.raises(errors.BucketAlreadyExists) as caught:
        st.catalog.buckets.create(BUCKET, OWNER)
    assert caught.value.owned_by_you
    with pytest.raises(errors.BucketAlreadyExists) as caught:
        st.catalog.buckets.create(BUCKET, "someone-else")
    assert not caught.value.owned_by_you
    st.objects.put(BUCKET, "k", record((blob_id(), 1)))
    with pytest.raises(errors.BucketNotEmpty):
        st.catalog.buckets.delete(BUCKET)
    st.objects.delete(BUCKET, "k")
    up = st.uploads.create(BUCKET, "pending", OWNER, {"headers": {}, "meta": {}})
    with pytest.raises(errors.BucketNotEmpty):
        st.catalog.buckets.delete(BUCKET)
    st.uploads.abort(BUCKET, "pending", up["upload_id"])
    st.catalog.buckets.delete(BUCKET)
    with pytest.raises(errors.NoSuchBucket):
        st.objects.put(BUCKET, "k", record((blob_id(), 1)))


# -- multipart ----------------------------------------------------------------------


def build(upload: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    rec = record(*((p["blob"], p["size"]) for p in parts), etag=f"mp-{len(parts)}")
    rec["parts"] = [p["size"] for p in parts]
    return rec


def make_upload(st: Stores, sizes: dict[int, int], key: str = "mp") -> tuple[str, dict[int, str]]:
    upload_id = st.uploads.create(BUCKET, key, OWNER, {"headers": {}, "meta": {}})["upload_id"]
    blobs = {}
    for number, size in sizes.items():
        blobs[number] = blob_id()
        st.uploads.put_part(BUCKET, key, upload_id, {"number": number, "blob": blobs[number],
                                                    "size": size, "etag": f"etag{number}"})
    return upload_id, blobs


def test_complete_links_chosen_parts_and_frees_the_rest(st: Stores) -> None:
    big = MIN_PART_SIZE
    upload_id, blobs = make_upload(st, {1: big, 2: big, 3: big, 4: 10})
    rec, freed = st.uploads.complete(BUCKET, "mp", upload_id, [(1, "etag1"), (3, '"etag3"'), (4, "etag4")], build)
    assert freed == [blobs[2]]
    assert rec["segments"] == [[blobs[1], big], [blobs[3], big], [blobs[4], 10]]
    stored = st.objects.get(BUCKET, "mp")
    assert stored["size"] == 2 * big + 10 and stored["parts"] == [big, big, 10]
    assert {b for b, _ in st.catalog.blobrefs.records()} == {blobs[1], blobs[3], blobs[4]}
    assert st.uploads.parts(upload_id) == []
    with pytest.raises(errors.NoSuchUpload):
        st.uploads.get(BUCKET, "mp", upload_id)
    assert st.uploads.list_uploads(BUCKET) == []
    # the object then behaves like any other: deleting it frees every part blob
    assert sorted(st.objects.delete(BUCKET, "mp")) == sorted([blobs[1], blobs[3], blobs[4]])


def test_complete_over_an_existing_object_frees_the_old_blob(st: Stores) -> None:
    old = blob_id()
    st.objects.put(BUCKET, "mp", record((old, 3)))
    upload_id, blobs = make_upload(st, {1: 7})
    _, freed = st.uploads.complete(BUCKET, "mp", upload_id, [(1, "etag1")], build)
    assert freed == [old]


@pytest.mark.parametrize(("chosen", "error"), [
    ([(1, "etag1"), (2, "wrong")], errors.InvalidPart),
    ([(1, "etag1"), (9, "etag9")], errors.InvalidPart),
    ([(2, "etag2"), (1, "etag1")], errors.InvalidPartOrder),
    ([(1, "etag1"), (2, "etag0"), (2, "old2")], errors.InvalidPart),  # twice, never as uploaded
    ([(3, "etag3"), (2, "etag2")], errors.InvalidPartOrder),
    ([(1, "etag1"), (3, "etag3"), (2, "etag2")], errors.InvalidPartOrder),
    ([(1, "etag1"), (3, "etag3"), (4, "etag4")], errors.EntityTooSmall),
])
def test_complete_rejects_bad_part_lists(st: Stores, chosen: list[tuple[int, str]],
                                         error: type[Exception]) -> None:
    upload_id, blobs = make_upload(st, {1: MIN_PART_SIZE, 2: MIN_PART_SIZE, 3: MIN_PART_SIZE - 1, 4: 1})
    with pytest.raises(error) as caught:
        st.uploads.complete(BUCKET, "mp", upload_id, chosen, build)
    if isinstance(caught.value, errors.EntityTooSmall):
        assert (caught.value.number, caught.value.size) == (3, MIN_PART_SIZE - 1)
    if isinstance(caught.value, errors.InvalidPart):
        assert caught.value.number == chosen[1][0]
    # nothing changed: the upload, its parts and their blobs are all still there
    assert [p["number"] for p in st.uploads.parts(upload_id)] == [1, 2, 3, 4]
    assert {b for b, _ in st.catalog.blobrefs.records()} == set(blobs.values())
    with pytest.raises(errors.NoSuchKey):
        st.objects.get(BUCKET, "mp")


def test_part_reupload_frees_the_old_part_and_abort_frees_all(st: Stores) -> None:
    upload_id, blobs = make_upload(st, {1: 10, 2: 10})
    newer = blob_id()
    freed = st.uploads.put_part(BUCKET, "mp", upload_id, {"number": 1, "blob": newer, "size": 11, "etag": "x"})
    assert freed == [blobs[1]]
    assert [p["size"] for p in st.uploads.parts(upload_id)] == [11, 10]
    assert [p["number"] for p in st.uploads.parts(upload_id, after=1)] == [2]
    assert sorted(st.uploads.abort(BUCKET, "mp", upload_id)) == sorted([newer, blobs[2]])
    assert {b for b, _ in st.catalog.blobrefs.records()} == set()
    with pytest.raises(errors.NoSuchUpload):
        st.uploads.abort(BUCKET, "mp", upload_id)


def test_upload_belongs_to_its_key(st: Stores) -> None:
    upload_id, _ = make_upload(st, {1: 10}, key="one")
    with pytest.raises(errors.NoSuchUpload):
        st.uploads.get(BUCKET, "other", upload_id)
    with pytest.raises(errors.NoSuchUpload):
        st.uploads.complete(BUCKET, "other", upload_id, [(1, "etag1")], build)


# -- listing ------------------------------------------------------------------------

KEYS = [
    "a", "a/", "a/b", "a/b/c", "a/c", "a-b", "a0", "b/1", "b/2", "b/3/x", "B", "Z",
    "c", "é", "é/1", "e\u0301", "z", "ÿ", "\u00ff/x", "日本/語", "日本語", "😀", "\ufb01", "~",
    "x y", "x%y", "x+y", "\uff5e",
]
# keys past LMDB's 511-byte key limit share overflow entries; they must list like any other
LONG = "l/" + "x" * 600
KEYS += [LONG + "a", LONG + "b", LONG + "/c", LONG + "/d/e", "l/" + "x" * 470, "l/" + "x" * 478 + "é",
         "l/" + "x" * 1022, "l/" + "x" * 474 + "y"]


def model_list(prefix: str = "", delimiter: str = "", start_after: str = "") -> list[str]:
    """Reference listing: keys after start_after in UTF-8 byte order, rolled up by delimiter
    (common prefixes end with '/' in this test so they cannot collide with keys)."""
    out: list[str] = []
    for key in sorted(KEYS, key=lambda k: k.encode()):
        if not key.startswith(prefix) or key.encode() <= start_after.encode():
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        entry = key[: cut + len(delimiter)] if cut >= 0 else key
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def entries(listing: Listing) -> list[str]:
    """Keys and common prefixes merged in byte order, as S3 returns them."""
    merged = [r["key"] for r in listing.contents] + listing.common_prefixes
    return sorted(merged, key=lambda k: k.encode())


@pytest.fixture
def listed(st: Stores) -> Stores:
    for key in KEYS:
        st.objects.put(BUCKET, key, record((blob_id(), 1)))
    st.catalog.buckets.create("other", OWNER)
    st.objects.put("other", "a/zzz", record((blob_id(), 1)))
    st.catalog.buckets.create("bk", OWNER)  # "bk" < "bkt": its keys must not leak in
    st.objects.put("bk", "t", record((blob_id(), 1)))
    return st


def test_listing_is_utf8_binary_order(listed: Stores) -> None:
    listing = listed.objects.list(BUCKET)
    keys = [r["key"] for r in listing.contents]
    assert keys == sorted(KEYS, key=lambda k: k.encode())
    assert keys != sorted(KEYS, key=lambda k: k.encode("utf-16-be"))  # U+FF5E vs U+1F600
    assert keys.index("\uff5e") < keys.index("😀")
    assert keys.index("é") != keys.index("e\u0301")  # no Unicode normalisation
    assert not listing.truncated and listing.common_prefixes == []
    assert keys.index("Z") < keys.index("a") < keys.index("é") < keys.index("日本語") < keys.index("😀")


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b", "b/", "é", "日本", "nothing", "😀", "l/", LONG, LONG + "/"])
@pytest.mark.parametrize("delimiter", ["", "/"])
def test_listing_prefix_and_delimiter(listed: Stores, prefix: str, delimiter: str) -> None:
    listing = listed.objects.list(BUCKET, prefix=prefix, delimiter=delimiter)
    assert entries(listing) == model_list(prefix, delimiter)
    assert all(p.endswith(delimiter) and p.startswith(prefix) for p in listing.common_prefixes)
    assert not listing.truncated


@pytest.mark.parametrize("start_after", ["", "a", "a/b", "b", "b/2", "c", "d", "é", "ÿ", "日", "😀", "\U0010ffff",
                                         LONG, LONG + "a", "l/" + "x" * 475])
@pytest.mark.parametrize("prefix", ["", "a", "é", "l/"])
def test_listing_start_after(listed: Stores, start_after: str, prefix: str) -> None:
    listing = listed.objects.list(BUCKET, prefix=prefix, start_after=start_after)
    assert [r["key"] for r in listing.contents] == model_list(prefix, "", start_after)


@pytest.mark.parametrize("max_keys", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize(("prefix", "delimiter"), [("", ""), ("", "/"), ("a", "/"), ("a/", "/"), ("b/", "/"),
                                                    ("l/", "/"), (LONG, "/"), ("l/", "")])
def test_listing_pages_with_max_keys(listed: Stores, max_keys: int, prefix: str, delimiter: str) -> None:
    """Following next_marker page by page yields every entry exactly once, in order."""
    seen: list[str] = []
    marker = ""
    for _ in range(len(KEYS) + 2):
        page = listed.objects.list(BUCKET, prefix=prefix, delimiter=delimiter, start_after=marker,
                                   max_keys=max_keys)
        got = entries(page)
        assert len(got) <= max_keys
        seen += got
        if not page.truncated:
            break
        assert got, "a truncated page must make progress"
        assert page.next_marker == got[-1]
        marker = page.next_marker
    else:
        pytest.fail("pagination did not end")
    assert seen == model_list(prefix, delimiter)
    assert (len(seen) > max_keys) == (seen != entries(listed.objects.list(
        BUCKET, prefix=prefix, delimiter=delimiter, max_keys=max_keys)))


def test_listing_after_a_folder_placeholder_key(st: Stores) -> None:
    """A key equal to the prefix ("folder/", as consoles create) used as the marker
    is a key, not a common prefix: the folder's contents still follow it."""
    for key in ["folder/", "folder/a", "folder/sub/b", "folder/z"]:
        st.objects.put(BUCKET, key, record((blob_id(), 1)))
    first = st.objects.list(BUCKET, prefix="folder/", delimiter="/", max_keys=1)
    assert [r["key"] for r in first.contents] == ["folder/"] and first.truncated
    rest = st.objects.list(BUCKET, prefix="folder/", delimiter="/", start_after=first.next_marker or "")
    assert [r["key"] for r in rest.contents] == ["folder/a", "folder/z"]
    assert rest.common_prefixes == ["folder/sub/"]
    # while a marker that is a common prefix of this listing skips its whole group
    after_group = st.objects.list(BUCKET, prefix="", delimiter="/", start_after="folder/")
    assert [r["key"] for r in after_group.contents] == [] and after_group.common_prefixes == []


def test_listing_missing_bucket(st: Stores) -> None:
    with pytest.raises(errors.NoSuchBucket):
        st.objects.list("absent")


# -- durability ---------------------------------------------------------------------


def test_catalog_survives_close_and_reopen(st: Stores) -> None:
    a, b = blob_id(), blob_id()
    st.catalog.accounts.add("alice", "AKALICE", "secret")
    st.objects.put(BUCKET, "k/é", record((a, 3), etag="e1"))
    st.objects.copy(BUCKET, "k/é", BUCKET, "copy", {})
    upload_id, parts = make_upload(st, {1: 10})
    st.objects.put(BUCKET, "gone", record((b, 3)))
    st.objects.delete(BUCKET, "gone")

    st.reopen()
    assert st.catalog.accounts.get("AKALICE").secret == "secret"
    assert st.catalog.buckets.get(BUCKET).owner == OWNER
    assert st.objects.get(BUCKET, "k/é")["etag"] == "e1"
    assert [r["key"] for r in st.objects.list(BUCKET).contents] == ["copy", "k/é"]
    assert refcount(st.catalog, a) == 2
    assert {b for b, _ in st.catalog.blobrefs.records()} == {a, parts[1]}
    assert [p["number"] for p in st.uploads.parts(upload_id)] == [1]
    # and it still takes writes
    _, freed = st.uploads.complete(BUCKET, "mp", upload_id, [(1, "etag1")], build)
    assert freed == []
    with pytest.raises(errors.AccountExists):
        st.catalog.accounts.add("alice", "AKOTHER", "x")


def test_upload_listings_come_in_pages_in_s3_order(st: Stores) -> None:
    """Pages of any size give the whole listing in S3's order (key, then initiation), keys
    longer than the index keeps included; markers as S3 has them; uploads aborted while
    the pages are read skip nothing."""
    long = "z" * 500  # the index cuts keys: these two share an index group
    for key in ("b", long + "2", "a", long + "1", "c"):
        for _ in range(3):
            st.uploads.create(BUCKET, key, OWNER, {"headers": {}, "meta": {}})
    whole = st.uploads.list_uploads(BUCKET)
    assert [u["key"] for u in whole] == [k for k in ("a", "b", "c", long + "1", long + "2") for _ in range(3)]
    assert whole == sorted(whole, key=lambda u: (u["key"], u["initiated"], u["upload_id"]))
    for page in (1, 2, 4, 7, 100):
        assert list(st.uploads.iter_uploads(BUCKET, page=page)) == whole
        assert st.uploads.list_uploads(BUCKET, limit=page) == whole[:page]
    second_b = whole[4]
    assert list(st.uploads.iter_uploads(BUCKET, key_marker="b", upload_id_marker=second_b["upload_id"],
                                        page=2)) == whole[5:]
    assert list(st.uploads.iter_uploads(BUCKET, key_marker="b", page=2)) == whole[6:]
    assert list(st.uploads.iter_uploads(BUCKET, prefix=long, page=2)) == whole[9:]
    seen = []
    for upload in st.uploads.iter_uploads(BUCKET, page=2):
        seen.append(upload["upload_id"])
        st.uploads.abort(BUCKET, upload["key"], upload["upload_id"])
    assert seen == [u["upload_id"] for u in whole]
    assert st.uploads.list_uploads(BUCKET) == []


def test_an_upload_id_marker_keeps_its_place_once_its_upload_is_gone(st: Stores) -> None:
    """A client that aborts each page of uploads before asking for the next names an
    aborted upload as its marker: the next page starts where that upload was. Upload ids
    sort as their uploads were initiated (storage.uploads.new_upload_id)."""
    made = [st.uploads.create(BUCKET, "k", OWNER, {"headers": {}, "meta": {}}) for _ in range(4)]
    made.append(st.uploads.create(BUCKET, "l", OWNER, {"headers": {}, "meta": {}}))
    assert st.uploads.list_uploads(BUCKET) == made
    assert [u["upload_id"] for u in made[:4]] == sorted(u["upload_id"] for u in made[:4])
    page = st.uploads.list_uploads(BUCKET, limit=2)
    for upload in page:
        st.uploads.abort(BUCKET, upload["key"], upload["upload_id"])
    rest = st.uploads.list_uploads(BUCKET, key_marker="k", upload_id_marker=page[-1]["upload_id"])
    assert rest == made[2:]
    # an id of no upload this store made: S3's rule, the key's uploads whose ids sort after it
    assert st.uploads.list_uploads(BUCKET, key_marker="k", upload_id_marker="~") == made[4:]
    assert st.uploads.list_uploads(BUCKET, key_marker="k", upload_id_marker="0") == made[2:]
