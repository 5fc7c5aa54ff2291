"""The catalog engine contract (storage/engine.py), run against LmdbEngine (a temporary
directory) and PgEngine (a fresh database on the session's throwaway PostgreSQL, marker
`postgresql`: skipped without PostgreSQL 15, required in CI)."""

from __future__ import annotations

import concurrent.futures
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest

from storage import engine_lmdb, engine_pg
from storage.engine import Engine, EngineUnavailable, GroupWriter, Relaxed
from storage.engine_pg import PgEngine
from storage.engine_pg_schema import lock_id
from storage.engines import open_engine
from tests.pgserver import PgServer

TABLES = ("objects", "usage")
Opener = Callable[..., Engine]


@pytest.fixture(params=["lmdb", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def opener(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Opener]:
    """Opens engines on one location (the same data dir or database each call), closing
    them after the test."""
    location = str(tmp_path / "catalog") if request.param == "lmdb" else request.getfixturevalue("pg_url")
    opened: list[Engine] = []

    def open_(tables: tuple[str, ...] = TABLES) -> Engine:
        engine = open_engine(location, tables)
        opened.append(engine)
        return engine

    yield open_
    for engine in opened:
        engine.close()  # again, for one a test closed: close is idempotent


@pytest.fixture
def engine(opener: Opener) -> Engine:
    return opener()


def put_all(engine: Engine, table: str, items: dict[bytes, bytes]) -> None:
    def fn(txn: Any) -> None:
        for key, value in items.items():
            txn.put(table, key, value)
    engine.write(fn)


def test_get_put_delete(engine: Engine) -> None:
    assert engine.write(lambda txn: txn.get("objects", b"k")) is None
    engine.write(lambda txn: txn.put("objects", b"k", b"v1"))
    engine.write(lambda txn: txn.put("usage", b"k", b"other table"))
    with engine.read() as txn:
        assert txn.get("objects", b"k") == b"v1"
        assert txn.get("usage", b"k") == b"other table"
        assert txn.get("objects", b"missing") is None
    engine.write(lambda txn: txn.put("objects", b"k", b"v2"))
    assert engine.write(lambda txn: (txn.get("objects", b"k"), txn.delete("objects", b"k"),
                                     txn.delete("objects", b"k"), txn.get("objects", b"k"))) \
        == (b"v2", True, False, None)
    big = bytes(random.Random(1).randbytes(1 << 20))
    engine.write(lambda txn: txn.put("objects", b"big", big))
    with engine.read() as txn:
        assert txn.get("objects", b"k") is None
        assert txn.get("objects", b"big") == big
        assert txn.get("usage", b"k") == b"other table"


def test_a_write_to_an_unknown_table_raises_key_error(engine: Engine) -> None:
    with pytest.raises(KeyError):
        engine.write(lambda txn: txn.put("nope", b"k", b"v"))
    assert engine.write(lambda txn: txn.get("objects", b"k")) is None  # the engine goes on


# in the contract's order, written out: unsigned bytes (\x80 after \x7f), a prefix first
KEYS = [b"\x00", b"\x00\x00", b"\x00\x01", b"\x01", b"a", b"a\x00", b"a\x00\x00", b"ab", b"abc",
        b"a\x7f", b"a\x80", b"a\xff", b"a\xff\x00", b"a\xff\xff", b"b", b"\x7f", b"\x80",
        b"\xfe\xff", b"\xff", b"\xff\x00", b"\xff\xff", b"\xff\xff\xff"]


def test_scan_is_in_unsigned_byte_order(engine: Engine) -> None:
    shuffled = KEYS[:]
    random.Random(7).shuffle(shuffled)
    put_all(engine, "objects", {key: b"v" + key for key in shuffled})
    with engine.read() as txn:
        assert list(txn.scan("objects")) == [(key, b"v" + key) for key in KEYS]
    assert sorted(KEYS) == KEYS  # and Python's bytes order is the same (the other tests use it)


def _expected(keys: list[bytes], start: bytes, prefix: bytes, end: bytes | None) -> list[bytes]:
    return [k for k in sorted(keys)
            if k >= max(start, prefix) and k.startswith(prefix) and (end is None or k < end)]


def test_scan_start_prefix_end(engine: Engine) -> None:
    # more keys than a PostgreSQL page (256 rows), so that ranges cross pages
    keys = KEYS + [b"p/" + i.to_bytes(2, "big") for i in range(700)]
    put_all(engine, "objects", {key: key[::-1] for key in keys})
    cases = [(b"", b"", None), (b"a", b"", None), (b"", b"a", None), (b"a\x00", b"a", None),
             (b"", b"a\xff", None), (b"", b"\xff", None), (b"", b"\xff\xff", None),
             (b"", b"", b"a"), (b"a", b"", b"b"), (b"b", b"a", None), (b"", b"a", b"a\x80"),
             (b"", b"p/", None), (b"p/\x01\x00", b"p/", None), (b"", b"p/", b"p/\x02\x05"),
             (b"p/\x00\xff", b"p/\x00", None), (b"zzz", b"", None), (b"", b"", b"\x00"),
             (b"", b"nothing", None), (b"\x00", b"", b"\x00")]
    with engine.read() as txn:
        for start, prefix, end in cases:
            got = [k for k, _ in txn.scan("objects", start=start, prefix=prefix, end=end)]
            assert got == _expected(keys, start, prefix, end), (start, prefix, end)
    # the same inside a write
    got = engine.write(lambda txn: [k for k, _ in txn.scan("objects", prefix=b"p/", end=b"p/\x01\x2c")])
    assert got == _expected(keys, b"", b"p/", b"p/\x01\x2c")


def test_scan_that_stops_early(engine: Engine) -> None:
    put_all(engine, "objects", {i.to_bytes(2, "big"): b"v" for i in range(1000)})
    with engine.read() as txn:
        seen = []
        for key, _ in txn.scan("objects", start=b"\x01\x00"):
            seen.append(key)
            break
        assert seen == [b"\x01\x00"]
        scan = txn.scan("objects", prefix=b"\x02")
        assert [next(scan)[0], next(scan)[0]] == [b"\x02\x00", b"\x02\x01"]
        # the transaction goes on after abandoned scans
        assert txn.get("objects", b"\x03\xe7") == b"v"
        assert len(list(txn.scan("objects", prefix=b"\x03"))) == 232


def test_read_is_a_snapshot(engine: Engine) -> None:
    put_all(engine, "objects", {b"a": b"1", b"b": b"1"})
    with engine.read() as txn:
        assert txn.get("objects", b"a") == b"1"
        committed = threading.Event()

        def concurrently() -> None:
            put_all(engine, "objects", {b"a": b"2", b"c": b"2"})
            committed.set()
        threading.Thread(target=concurrently).start()
        assert committed.wait(10)
        assert txn.get("objects", b"a") == b"1"
        assert list(txn.scan("objects")) == [(b"a", b"1"), (b"b", b"1")]
    with engine.read() as txn:
        assert list(txn.scan("objects")) == [(b"a", b"2"), (b"b", b"1"), (b"c", b"2")]


def test_group_commit_rolls_back_a_failing_write_alone(engine: Engine) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(txn: Any) -> str:  # holds the writer, so that the rest queue up as one batch
        started.set()
        release.wait(10)
        txn.put("objects", b"slow", b"v")
        return "slow"

    def failing(txn: Any) -> None:
        txn.put("objects", b"k005", b"overwritten")
        txn.put("objects", b"failed", b"v")
        txn.get("usage", b"n")
        raise ValueError("refused")

    first = engine.submit(slow)
    assert started.wait(10)
    futures = [engine.submit(lambda txn, i=i: txn.put("objects", b"k%03d" % i, b"v") or i) for i in range(10)]
    bad = engine.submit(failing)
    futures += [engine.submit(lambda txn, i=i: txn.put("objects", b"k%03d" % i, b"v") or i) for i in range(10, 20)]
    after = engine.submit(lambda txn: txn.get("objects", b"k005"))  # sees batch-mates, not `failing`
    release.set()
    assert first.result(10) == "slow"
    with pytest.raises(ValueError, match="refused"):
        bad.result(10)
    assert [f.result(10) for f in futures] == list(range(20))
    assert after.result(10) == b"v"
    with engine.read() as txn:
        assert txn.get("objects", b"failed") is None
        assert [k for k, _ in txn.scan("objects", prefix=b"k")] == [b"k%03d" % i for i in range(20)]
        assert txn.get("objects", b"k005") == b"v"


def test_relaxed_writes_commit_alone_and_beside_durable_ones(opener: Opener) -> None:
    """A Relaxed write (a job's task record) commits and is seen like any other, in a
    batch of its own (LMDB: no meta sync; PostgreSQL: synchronous_commit off) or with
    durable batch-mates (then the batch is durable); a reopened engine has them all."""
    engine = opener()
    release, started = threading.Event(), threading.Event()

    def blocker(txn: Any) -> None:
        started.set()
        release.wait(10)
        txn.put("objects", b"blocker", b"v")

    alone = engine.write(Relaxed(lambda txn: txn.put("objects", b"alone", b"1") or "alone"))
    first = engine.submit(blocker)
    assert started.wait(10)
    relaxed = [engine.submit(Relaxed(lambda txn, i=i: txn.put("objects", b"r%d" % i, b"v") or i)) for i in range(5)]
    durable = engine.submit(lambda txn: txn.put("objects", b"durable", b"v") or "durable")
    release.set()
    assert alone == "alone" and first.result(10) is None and durable.result(10) == "durable"
    assert [f.result(10) for f in relaxed] == list(range(5))
    engine.close()
    reopened = opener()
    with reopened.read() as txn:
        assert [k for k, _ in txn.scan("objects")] == [b"alone", b"blocker", b"durable",
                                                       b"r0", b"r1", b"r2", b"r3", b"r4"]


def test_lmdb_syncs_a_commit_unless_every_write_of_it_is_relaxed(tmp_path: Any) -> None:
    """LMDB commits sync their data pages always, and the meta page (what makes the commit
    the current state) at once only for a batch holding a durable write."""
    engine = engine_lmdb.LmdbEngine(str(tmp_path / "catalog"), TABLES)

    class CountingEnv:
        def __init__(self, env: Any) -> None:
            self.env, self.syncs = env, 0

        def sync(self, force: bool = False) -> None:
            self.syncs += 1
            self.env.sync(force)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.env, name)

    counting = engine.env = CountingEnv(engine.env)  # type: ignore[assignment]
    try:
        engine.write(Relaxed(lambda txn: txn.put("objects", b"a", b"v")))
        assert counting.syncs == 0
        engine.write(lambda txn: txn.put("objects", b"b", b"v"))
        assert counting.syncs == 1
    finally:
        engine.env = counting.env
        engine.close()


def test_writes_queued_while_a_batch_waits_join_it_up_to_the_limit() -> None:
    """GroupWriter.more: an apply that has waited (for LMDB's write lock) takes what was
    queued meanwhile into its batch, never past the limit and never a cancelled write."""
    started, go = threading.Event(), threading.Event()
    sizes: list[int] = []

    def apply(batch: list[Any]) -> None:
        started.set()
        go.wait(10)
        batch.extend(writer.more(len(batch)))
        sizes.append(len(batch))
        for fn, fut in batch:
            fut.set_result(fn(None))

    writer = GroupWriter(apply, limit=3)
    try:
        first = writer.submit(lambda _: "first")
        assert started.wait(10)  # the writer has taken [first] and waits
        late = [writer.submit(lambda _, i=i: i) for i in range(4)]
        assert late[1].cancel()
        go.set()
        assert first.result(10) == "first"
        assert [late[i].result(10) for i in (0, 2, 3)] == [0, 2, 3]
        # [first] took late 0 and 1 (cancelled: dropped); late 2 and 3 made the next batch
        assert sizes == [2, 2]
    finally:
        writer.close()


LOCK_HOLDER = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True, lock=True)
with env.begin(write=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_lmdb_writes_queued_while_another_process_commits_join_the_next_commit(tmp_path: Any) -> None:
    """Two processes on one catalog (`manta serve --workers 2`) take turns on LMDB's write
    lock. A write queued while this process's writer waits for it goes into the commit
    that follows, not into one after it."""
    path = str(tmp_path / "catalog")
    engine = engine_lmdb.LmdbEngine(path, TABLES)
    syncs = 0
    real_sync = engine.env.sync

    class CountingEnv:
        def sync(self, force: bool = False) -> None:
            nonlocal syncs
            syncs += 1
            real_sync(force)

        def __getattr__(self, name: str) -> Any:
            return getattr(real_env, name)

    real_env = engine.env
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        engine.env = CountingEnv()  # type: ignore[assignment]
        first = engine.submit(lambda txn: txn.put("objects", b"first", b"1"))
        queue = engine._writer._queue  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while not queue.empty() and time.monotonic() < deadline:
            time.sleep(0.005)  # until the writer has taken [first]: it now waits for the lock
        assert queue.empty()
        late = [engine.submit(lambda txn, i=i: txn.put("objects", b"late%d" % i, b"1")) for i in range(3)]
        assert not first.done()
        holder.stdin.write("\n")
        holder.stdin.flush()
        for fut in (first, *late):
            fut.result(10)
        assert syncs == 1  # one durable commit for all four
        with engine.read() as txn:
            assert [k for k, _ in txn.scan("objects")] == [b"first", b"late0", b"late1", b"late2"]
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()  # waits, and closes the pipes
        engine.env = real_env
        engine.close()


def test_refused_statement_and_last_write_failing_roll_back_alone(engine: Engine) -> None:
    release = threading.Event()
    huge_key = random.Random(3).randbytes(10_000)  # beyond either engine's key size limit

    def refused(txn: Any) -> None:
        txn.put("objects", b"refused-1", b"v")
        txn.put("objects", huge_key, b"v")

    def last(txn: Any) -> None:  # the batch's last write: nothing after it releases its savepoint
        txn.put("objects", b"ok-1", b"changed")
        txn.delete("objects", b"ok-2")
        raise LookupError("last")

    first = engine.submit(lambda txn: release.wait(10) and txn.put("objects", b"first", b"v"))
    ok1 = engine.submit(lambda txn: txn.put("objects", b"ok-1", b"v"))
    bad = engine.submit(refused)
    ok2 = engine.submit(lambda txn: txn.put("objects", b"ok-2", b"v"))
    failing = engine.submit(last)
    release.set()
    assert first.result(10) is None and ok1.result(10) is None and ok2.result(10) is None
    with pytest.raises(Exception) as refusal:
        bad.result(10)
    assert not isinstance(refusal.value, EngineUnavailable)
    with pytest.raises(LookupError):
        failing.result(10)
    with engine.read() as txn:
        assert [k for k, _ in txn.scan("objects")] == [b"first", b"ok-1", b"ok-2"]
        assert txn.get("objects", b"ok-1") == b"v"


def test_many_threads_submit_and_all_commit(engine: Engine) -> None:
    def worker(t: int) -> list[Any]:
        return [engine.submit(lambda txn, t=t, i=i: txn.put("objects", b"%02d/%03d" % (t, i), b"v"))
                for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = [f for fs in pool.map(worker, range(16)) for f in fs]
    assert all(f.result(30) is None for f in futures)
    assert engine.counts() == {"objects": 800, "usage": 0}


def _increment(key: bytes) -> Callable[[Any], int]:
    def fn(txn: Any) -> int:
        value = int(txn.get("usage", key) or b"0") + 1
        txn.put("usage", key, str(value).encode())
        return value
    return fn


def _hammer(engines: Sequence[Engine], threads: int, times: int, keys: list[list[bytes]]) -> None:
    """`threads` threads per engine, each calling `times` writes that increment, in order,
    the keys of its engine's list."""
    def write(txn: Any, ks: list[bytes]) -> None:
        for key in ks:
            _increment(key)(txn)

    def run(engine: Engine, ks: list[bytes]) -> None:
        for _ in range(times):
            engine.write(lambda txn: write(txn, ks))
    with concurrent.futures.ThreadPoolExecutor(threads * len(engines)) as pool:
        jobs = [pool.submit(run, engine, ks) for engine, ks in zip(engines, keys, strict=True)
                for _ in range(threads)]
        for job in jobs:
            job.result(120)


def test_read_modify_write_loses_no_update(engine: Engine) -> None:
    _hammer([engine], threads=8, times=40, keys=[[b"counter"]])
    with engine.read() as txn:
        assert txn.get("usage", b"counter") == b"320"


def test_a_batch_of_writes_touching_thousands_of_keys_commits(engine: Engine) -> None:
    """PostgreSQL's shared lock table holds a few thousand locks: a batch whose writes
    touch more keys than that between them commits in parts, every write applied once."""
    release, started = threading.Event(), threading.Event()

    def hold(txn: Any) -> None:
        started.set()
        assert release.wait(10)

    blocker = engine.submit(hold)
    assert started.wait(10)

    def many(i: int) -> Any:
        return lambda txn: [txn.put("objects", f"{i:02d}:{k:04d}".encode(), b"v") for k in range(400)]

    futures = [engine.submit(many(i)) for i in range(50)]  # 20,000 keys queued behind the blocker
    release.set()
    blocker.result(timeout=30)
    for future in futures:
        future.result(timeout=120)
    with engine.read() as txn:
        assert sum(1 for _ in txn.scan("objects")) == 20000


def _one_batch(engine: Engine, *fns: Callable[[Any], Any]) -> list[concurrent.futures.Future[Any]]:
    """Submit `fns` behind a write that holds the writer until all are queued: one batch."""
    release, started = threading.Event(), threading.Event()

    def hold(txn: Any) -> None:
        started.set()
        assert release.wait(10)

    blocker = engine.submit(hold)
    assert started.wait(10)
    futures = [engine.submit(fn) for fn in fns]
    release.set()
    blocker.result(10)
    return futures


def test_a_failing_writes_changes_are_not_seen_by_the_next_write_of_its_batch(engine: Engine) -> None:
    put_all(engine, "usage", {b"n": b"1", b"gone": b"g"})

    def read(txn: Any) -> Any:
        return txn.get("usage", b"n"), txn.get("usage", b"gone")

    def failing(txn: Any) -> None:
        txn.put("usage", b"n", b"2")
        assert txn.delete("usage", b"gone") is True
        assert (txn.get("usage", b"n"), txn.get("usage", b"gone")) == (b"2", None)
        raise ValueError("refused")

    def after(txn: Any) -> Any:
        seen = read(txn)
        return seen, txn.delete("usage", b"gone"), txn.get("usage", b"gone")

    futures = _one_batch(engine, read, failing, after, read)
    assert futures[0].result(10) == (b"1", b"g")
    with pytest.raises(ValueError):
        futures[1].result(10)
    assert futures[2].result(10) == ((b"1", b"g"), True, None)
    assert futures[3].result(10) == (b"1", None)  # the batch-mate's delete, not the failed put
    with engine.read() as txn:
        assert (txn.get("usage", b"n"), txn.get("usage", b"gone")) == (b"1", None)


def test_a_scan_in_a_write_sees_the_writes_own_changes(engine: Engine) -> None:
    put_all(engine, "objects", {b"p/a": b"old", b"p/c": b"c"})

    def changes(txn: Any) -> list[tuple[bytes, bytes]]:
        txn.put("objects", b"p/a", b"new")
        txn.put("objects", b"p/b", b"b")
        txn.delete("objects", b"p/c")
        return list(txn.scan("objects", prefix=b"p/"))

    def failing(txn: Any) -> None:
        txn.put("objects", b"p/d", b"d")
        assert [k for k, _ in txn.scan("objects", prefix=b"p/")] == [b"p/a", b"p/b", b"p/d"]
        raise ValueError("refused")

    def later(txn: Any) -> list[tuple[bytes, bytes]]:
        return list(txn.scan("objects", prefix=b"p/"))

    futures = _one_batch(engine, changes, failing, later)
    expected = [(b"p/a", b"new"), (b"p/b", b"b")]
    assert futures[0].result(10) == expected
    with pytest.raises(ValueError):
        futures[1].result(10)
    assert futures[2].result(10) == expected
    with engine.read() as txn:
        assert list(txn.scan("objects", prefix=b"p/")) == expected


def test_a_scan_sees_its_batch_mates_changes_and_the_last_value_of_a_key_wins(engine: Engine) -> None:
    """Finished writes' changes wait to be sent (PostgreSQL: at COMMIT, one statement per
    table): a later write's scan still sees them, and of a key written by several writes
    of the batch the last value is what commits."""
    put_all(engine, "objects", {b"q/gone": b"g", b"q/kept": b"k"})

    def first(txn: Any) -> None:
        txn.put("objects", b"q/a", b"1")
        txn.put("usage", b"n", b"1")
        txn.delete("objects", b"q/gone")

    def scan(txn: Any) -> list[tuple[bytes, bytes]]:
        return list(txn.scan("objects", prefix=b"q/"))

    def second(txn: Any) -> bytes:
        value = b"%d" % (int(txn.get("usage", b"n")) + 1)
        txn.put("usage", b"n", value)
        txn.put("objects", b"q/a", b"2")
        txn.put("objects", b"q/gone", b"back")
        txn.delete("objects", b"q/gone")
        return value  # type: ignore[no-any-return]

    futures = _one_batch(engine, first, scan, second, scan)
    assert futures[1].result(10) == [(b"q/a", b"1"), (b"q/kept", b"k")]
    assert futures[2].result(10) == b"2"
    assert futures[3].result(10) == [(b"q/a", b"2"), (b"q/kept", b"k")]
    with engine.read() as txn:
        assert list(txn.scan("objects", prefix=b"q/")) == [(b"q/a", b"2"), (b"q/kept", b"k")]
        assert txn.get("usage", b"n") == b"2"


def test_prefetch_reads_what_get_reads(engine: Engine) -> None:
    """`prefetch` is a hint: after it, get answers as without it, for keys stored, absent,
    written by a batch-mate, repeated, and more than one statement's worth."""
    stored = {b"s%03d" % i: b"v%d" % i for i in range(300)}
    put_all(engine, "objects", stored)

    def mate(txn: Any) -> None:
        txn.put("objects", b"s001", b"mate")
        txn.delete("objects", b"s002")
        txn.put("usage", b"u", b"7")

    def reader(txn: Any) -> list[bytes | None]:
        keys = [*stored, b"absent", b"s001", b"s002", b"s001"]
        txn.prefetch([("objects", key) for key in keys] + [("usage", b"u"), ("usage", b"none")])
        return [txn.get("objects", key) for key in keys] + [txn.get("usage", b"u"), txn.get("usage", b"none")]

    futures = _one_batch(engine, mate, reader)
    expected = {**stored, b"s001": b"mate", b"s002": None}
    assert futures[1].result(30) == ([expected[k] for k in stored] + [None, b"mate", None, b"mate"]
                                     + [b"7", None])


@pytest.mark.postgresql
def test_prefetch_takes_the_locks_a_get_takes(pg_url: str) -> None:
    """Keys read by prefetch are locked as by get: two front doors counting through
    prefetched reads lose no update."""
    doors = [PgEngine(pg_url, TABLES), PgEngine(pg_url, TABLES)]

    def count(txn: Any) -> None:
        txn.prefetch([("usage", b"c1"), ("usage", b"c2")])
        for key in (b"c1", b"c2"):
            txn.put("usage", key, b"%d" % (int(txn.get("usage", key) or b"0") + 1))

    def run(door: PgEngine) -> None:
        for _ in range(25):
            door.write(count)

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for job in [pool.submit(run, door) for door in doors for _ in range(4)]:
                job.result(120)
        with doors[0].read() as txn:
            assert txn.get("usage", b"c1") == txn.get("usage", b"c2") == b"200"
    finally:
        for door in doors:
            door.close()


def test_a_refused_statement_after_batch_mates_buffered_changes_rolls_back_alone(engine: Engine) -> None:
    """The refused put reaches the database in a message with other writes' changes: the
    batch runs again and each write gets its own outcome (and reads its batch-mates')."""
    huge_key = random.Random(4).randbytes(10_000)

    def bump(txn: Any) -> bytes:
        value = b"%d" % (int(txn.get("usage", b"n") or b"0") + 1)
        txn.put("usage", b"n", value)
        return value

    def refused(txn: Any) -> None:
        txn.put("usage", huge_key, b"v")

    futures = _one_batch(engine, bump, refused, bump, bump)
    with pytest.raises(Exception) as refusal:
        futures[1].result(10)
    assert not isinstance(refusal.value, EngineUnavailable)
    assert [futures[i].result(10) for i in (0, 2, 3)] == [b"1", b"2", b"3"]
    with engine.read() as txn:
        assert txn.get("usage", b"n") == b"3"


@pytest.mark.postgresql
def test_a_batch_run_again_after_a_deadlock_reads_afresh(pg_url: str) -> None:
    """A batch that lost a deadlock runs again with an empty key cache: it sees the value
    the winner committed meanwhile, not the one it had read before."""
    engine = PgEngine(pg_url, TABLES)
    other = psycopg.connect(pg_url, autocommit=True)
    try:
        put_all(engine, "usage", {b"x": b"old"})
        x_locked, y_locked = threading.Event(), threading.Event()
        seen: list[bytes] = []

        def write(txn: Any) -> bytes:
            value = txn.get("usage", b"x")
            seen.append(value)
            if len(seen) == 1:  # the first run waits for the other session to hold y
                x_locked.set()
                assert y_locked.wait(10)
            txn.get("usage", b"y")  # waits on y while the other waits on x: a deadlock
            return value  # type: ignore[no-any-return]

        def winner() -> None:
            assert x_locked.wait(10)
            other.execute("SET deadlock_timeout = '10s'")  # the engine's session detects it first
            with other.transaction():
                other.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("usage", b"y"),))
                y_locked.set()
                other.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("usage", b"x"),))
                other.execute("UPDATE manta_usage SET v = 'new' WHERE k = 'x'")

        thread = threading.Thread(target=winner)
        thread.start()
        assert engine.write(write) == b"new"
        thread.join(10)
        assert seen[0] == b"old" and seen[-1] == b"new"
    finally:
        other.close()
        engine.close()


@pytest.mark.postgresql
def test_two_front_doors_lose_no_update(pg_url: str) -> None:
    doors = [PgEngine(pg_url, TABLES), PgEngine(pg_url, TABLES)]
    try:
        _hammer(doors, threads=6, times=30, keys=[[b"counter"], [b"counter"]])
        # keys locked in opposite orders: the front doors deadlock, and retry
        _hammer(doors, threads=4, times=20, keys=[[b"a", b"b"], [b"b", b"a"]])
        with doors[1].read() as txn:
            assert txn.get("usage", b"counter") == b"360"
            assert txn.get("usage", b"a") == txn.get("usage", b"b") == b"160"
    finally:
        for door in doors:
            door.close()


def test_counts_and_schema_version(opener: Opener) -> None:
    engine = opener()
    assert engine.counts() == {"objects": 0, "usage": 0}
    put_all(engine, "objects", {b"a": b"", b"b": b""})
    put_all(engine, "usage", {b"a": b""})
    assert engine.counts() == {"objects": 2, "usage": 1}
    expected = engine_pg.SCHEMA_VERSION if engine.name == "postgresql" else engine_lmdb.SCHEMA_VERSION
    assert engine.schema_version() == expected == 1


def test_close_and_reopen_keeps_writes(opener: Opener) -> None:
    engine = opener()
    put_all(engine, "objects", {b"kept": b"v"})
    engine.close()
    again = opener(TABLES + ("later",))  # a newer version lists one more table
    with again.read() as txn:
        assert txn.get("objects", b"kept") == b"v"
        assert list(txn.scan("later")) == []
    again.write(lambda txn: txn.put("later", b"k", b"v"))
    assert again.counts() == {"objects": 1, "usage": 0, "later": 1}
    assert again.schema_version() == 1


def test_a_hold_excludes_every_other_holder_until_released(opener: Opener) -> None:
    one = opener()
    # another front door on the catalog (LMDB: one environment per process; its holds are
    # flocks, which two opens in one process contend for as two processes do)
    other = opener() if one.name == "postgresql" else one
    held = one.try_hold("leader")
    assert held is not None and not held.lost()
    assert other.try_hold("leader") is None
    assert one.try_hold("leader") is None  # not reentrant: one holder per name
    elsewhere = other.try_hold("scrubber")
    assert elsewhere is not None
    held.release()
    again = other.try_hold("leader")
    assert again is not None and not again.lost()
    for hold in (again, elsewhere):
        hold.release()


@pytest.mark.postgresql
def test_pg_readonly_reads_and_refuses_writes(pg_url: str) -> None:
    writer = PgEngine(pg_url, TABLES)
    put_all(writer, "objects", {b"k": b"v"})
    writer.close()
    reader = open_engine(pg_url, TABLES, readonly=True)
    try:
        with reader.read() as txn:
            assert txn.get("objects", b"k") == b"v"
        with pytest.raises(RuntimeError, match="read-only"):
            reader.submit(lambda txn: txn.put("objects", b"k", b"w"))
    finally:
        reader.close()


@pytest.mark.postgresql
def test_pg_hold_ends_with_its_session(pg_url: str) -> None:
    engine = PgEngine(pg_url, TABLES)
    try:
        held = engine.try_hold("leader")
        assert held is not None
        # its holder dies: the server ends the session (here: terminated from outside)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'manta-hold-leader'")
        assert held.lost()
        successor = engine.try_hold("leader")
        assert successor is not None
        successor.release()
    finally:
        engine.close()


@pytest.mark.postgresql
def test_pg_front_doors_start_together_and_hide_the_password(pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:s3cret@") + "?application_name=x"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        doors = list(pool.map(lambda _: PgEngine(url, TABLES), range(4)))
    try:
        assert "s3cret" not in doors[0].location
        assert doors[0].location.startswith("postgresql://postgres@127.0.0.1:")
        assert {door.schema_version() for door in doors} == {1}
        doors[0].write(lambda txn: txn.put("objects", b"k", b"v"))
        with doors[3].read() as txn:
            assert txn.get("objects", b"k") == b"v"
    finally:
        for door in doors:
            door.close()
    with pytest.raises(ValueError, match="lowercase"):
        PgEngine(pg_url, ("Objects; drop",))


@pytest.mark.postgresql
def test_pg_unavailable_then_back(pg_server: PgServer, pg_url: str) -> None:
    engine = PgEngine(pg_url, TABLES, connect_timeout_s=2, pool_timeout_s=2)
    try:
        engine.write(lambda txn: txn.put("objects", b"acked", b"v"))
        held = engine.try_hold("leader")
        assert held is not None
        pg_server.kill()
        try:
            began = time.monotonic()
            with pytest.raises(EngineUnavailable):
                engine.write(lambda txn: txn.put("objects", b"during", b"v"))
            with pytest.raises(EngineUnavailable):
                with engine.read() as txn:
                    txn.get("objects", b"acked")
            with pytest.raises(EngineUnavailable):
                engine.try_hold("leader")
            assert held.lost()
            assert time.monotonic() - began < 10
        finally:
            pg_server.restart()
        engine.write(lambda txn: txn.put("objects", b"after", b"v"))
        with engine.read() as txn:
            assert txn.get("objects", b"acked") == b"v"
            assert txn.get("objects", b"after") == b"v"
            assert txn.get("objects", b"during") is None
        assert held.lost()
        successor = engine.try_hold("leader")
        assert successor is not None
        successor.release()
    finally:
        engine.close()
