"""`manta.Client` against a real `manta serve`: every object method, jobs, and the errors."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from manta import Client
from manta.client import (
    AccessDenied,
    BadCredentials,
    BucketExists,
    BucketNotEmpty,
    JobFailed,
    MantaError,
    NoSuchBucket,
    NoSuchJob,
    NoSuchKey,
    Unreachable,
)
from manta.server.keys import Credentials, write_root_credentials
from tests.conftest import (
    ROOT_AK,
    ROOT_SK,
    Server,
    free_port,
    require,
    running_server,
)

MiB = 1024 * 1024


def sandbox_reason() -> str | None:
    if not os.path.exists("/usr/bin/bwrap"):
        return "bubblewrap (bwrap) is not installed"
    from jobs.sandbox import Sandbox

    reason = Sandbox().check()
    return f"bubblewrap sandbox cannot run tasks here: {reason}" if reason else None


@contextlib.contextmanager
def jobs_server_running() -> Iterator[Server]:
    """A server whose data dir task containers can reach (its parents are traversable by the
    unprivileged task user, unlike pytest's 0700 tmp dirs); skips without the sandbox."""
    reason = sandbox_reason()
    require(reason is None, reason or "")
    with running_server("manta-client-") as srv:
        yield srv


@pytest.fixture(scope="module")
def jobs_server() -> Iterator[Server]:
    with jobs_server_running() as srv:
        yield srv


@pytest.fixture
def mc(server: Server) -> Client:
    return Client(server.url, ROOT_AK, ROOT_SK, part_size_mb=5)


def pending_uploads(mc: Client, bucket: str) -> list[Any]:
    return mc.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[no-any-return]


# -- put / get / open ---------------------------------------------------------------------

def test_put_and_get_every_kind_of_data(mc: Client, bucket: str, tmp_path: pathlib.Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(b"from a path")
    sources: dict[str, Any] = {
        "bytes": b"plain bytes", "bytearray": bytearray(b"a bytearray"), "memoryview": memoryview(b"a view"),
        "path": local, "file": io.BytesIO(b"a file object"), "iterator": iter([b"an ", b"iter", b"ator"]),
        "empty": b"",
    }
    expected = {"bytes": b"plain bytes", "bytearray": b"a bytearray", "memoryview": b"a view",
                "path": b"from a path", "file": b"a file object", "iterator": b"an iterator", "empty": b""}
    for name, data in sources.items():
        result = mc.put(f"{bucket}/{name}", data)
        assert result == {"name": f"{bucket}/{name}", "size": len(expected[name]), "etag": result["etag"]}
        assert mc.get(f"{bucket}/{name}") == expected[name]
    with open(local, "rb") as fh:  # a real file, not at its start
        fh.seek(5)
        mc.put(f"{bucket}/offset", fh)
    assert mc.get(f"{bucket}/offset") == b"a path"

    mc.put(f"{bucket}/typed.csv", b"a,b\n", content_type="text/csv", metadata={"origin": "test"})
    info = mc.info(f"{bucket}/typed.csv")
    assert info["content_type"] == "text/csv" and info["metadata"] == {"origin": "test"}
    with pytest.raises(TypeError, match="encode"):
        mc.put(f"{bucket}/text", "not bytes")  # type: ignore[arg-type]


def test_large_put_is_multipart_with_a_progress_bar(mc: Client, bucket: str, tmp_path: pathlib.Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(12 * MiB + 123)
    result = mc.put(f"{bucket}/big", data)
    assert result["size"] == len(data) and result["etag"].endswith("-3")  # 5 + 5 + 2 MiB parts
    assert f"put {bucket}/big" in capsys.readouterr().err  # the tqdm bar, on stderr

    # an iterator of odd-sized chunks, size unknown up front
    mc.put(f"{bucket}/big-iter", (data[i:i + 777_777] for i in range(0, len(data), 777_777)), progress=False)
    assert capsys.readouterr().err == ""
    assert mc.get(f"{bucket}/big-iter") == data

    # exactly one part: a single PUT
    assert "-" not in mc.put(f"{bucket}/one-part", data[:5 * MiB])["etag"]

    # get: to a file (appears only when complete) and to a file object, with a bar when large
    dest = tmp_path / "big.out"
    assert mc.get(f"{bucket}/big", dest) is None
    assert dest.read_bytes() == data and os.listdir(tmp_path) == ["big.out"]
    assert f"get {bucket}/big" in capsys.readouterr().err
    out = io.BytesIO()
    mc.get(f"{bucket}/big", out, progress=False)
    assert out.getvalue() == data
    assert pending_uploads(mc, bucket) == []


class Boom(Exception):
    pass


def _failing(parts: int, part: bytes) -> Iterator[bytes]:
    for _ in range(parts):
        yield part
    raise Boom("the source failed")


def test_interrupted_put_leaves_no_object_and_no_upload(mc: Client, bucket: str) -> None:
    # fails after two full parts went up: the multipart upload is aborted
    with pytest.raises(Boom):
        mc.put(f"{bucket}/partial", _failing(3, os.urandom(3 * MiB)))
    # fails before anything was sent (smaller than a part)
    with pytest.raises(Boom):
        mc.put(f"{bucket}/small", _failing(1, b"x" * 1000))
    # a KeyboardInterrupt is handled the same way
    def interrupted() -> Iterator[bytes]:
        yield os.urandom(6 * MiB)
        yield os.urandom(6 * MiB)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mc.put(f"{bucket}/interrupted", interrupted())
    assert mc.find(bucket) == []
    assert pending_uploads(mc, bucket) == []
    with pytest.raises(NoSuchKey):
        mc.get(f"{bucket}/partial")


def test_open_reads_ranges_and_writes_whole_objects(mc: Client, bucket: str) -> None:
    data = os.urandom(11 * MiB)
    mc.put(f"{bucket}/blob", data)
    with mc.open(f"{bucket}/blob") as f:
        assert f.size == len(data)
        f.seek(9 * MiB)
        assert f.read(10) == data[9 * MiB:9 * MiB + 10]
        f.seek(-5, 2)
        assert f.read() == data[-5:]
    with mc.open(f"{bucket}/small", "wb") as f:
        f.write(b"hello ")
        f.write(b"world")
    assert mc.get(f"{bucket}/small") == b"hello world"
    with mc.open(f"{bucket}/large", "wb", block_size=5 * MiB) as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
    assert mc.get(f"{bucket}/large") == data and mc.info(f"{bucket}/large")["etag"].endswith("-3")

    # an exception inside the with-block discards the write: no object, no pending upload
    for size in (100, 7 * MiB):
        with pytest.raises(Boom), mc.open(f"{bucket}/failed-{size}", "wb", block_size=5 * MiB) as f:
            f.write(os.urandom(size))
            raise Boom
    assert pending_uploads(mc, bucket) == []
    assert sorted(mc.ls(bucket)) == [f"{bucket}/blob", f"{bucket}/large", f"{bucket}/small"]


# -- listing, info, rm, buckets, copy -------------------------------------------------------

def test_ls_find_info(mc: Client, bucket: str) -> None:
    for key in ("a/1.txt", "a/2.csv", "a/b/3.txt", "top.txt", "a-sibling"):
        mc.put(f"{bucket}/{key}", key.encode())
    assert bucket in mc.ls()
    assert mc.ls(bucket) == [f"{bucket}/a-sibling", f"{bucket}/a/", f"{bucket}/top.txt"]
    assert mc.ls(f"{bucket}/a") == mc.ls(f"{bucket}/a/") == [f"{bucket}/a/1.txt", f"{bucket}/a/2.csv",
                                                             f"{bucket}/a/b/"]
    assert mc.ls(f"{bucket}/top.txt") == [f"{bucket}/top.txt"]  # ls of an object: itself
    detail = {e["name"]: e for e in mc.ls(f"{bucket}/a", detail=True)}
    assert detail[f"{bucket}/a/1.txt"]["size"] == 7 and detail[f"{bucket}/a/1.txt"]["type"] == "file"
    assert detail[f"{bucket}/a/b/"]["type"] == "directory"

    assert mc.find(f"{bucket}/a/") == [f"{bucket}/a/1.txt", f"{bucket}/a/2.csv", f"{bucket}/a/b/3.txt"]
    assert mc.find(bucket, name=r"\.txt$") == [f"{bucket}/a/1.txt", f"{bucket}/a/b/3.txt", f"{bucket}/top.txt"]
    assert mc.find(f"{bucket}/zzz") == []

    info = mc.info(f"{bucket}/a/1.txt")
    assert info["type"] == "file" and info["size"] == 7 and len(info["etag"]) == 32
    assert info["last_modified"] is not None
    assert mc.info(f"{bucket}/a")["type"] == "directory"
    assert mc.info(bucket)["type"] == "bucket" and mc.info(bucket)["created"] is not None

    with pytest.raises(NoSuchKey, match=f"no such key: {bucket}/nope"):
        mc.info(f"{bucket}/nope")
    with pytest.raises(NoSuchKey):
        mc.ls(f"{bucket}/nope")
    for call in (lambda: mc.ls("no-such-bucket-x"), lambda: mc.info("no-such-bucket-x"),
                 lambda: mc.info("no-such-bucket-x/k"), lambda: mc.get("no-such-bucket-x/k"),
                 lambda: mc.put("no-such-bucket-x/k", b"x"), lambda: mc.find("no-such-bucket-x")):
        with pytest.raises(NoSuchBucket, match="no such bucket: no-such-bucket-x"):
            call()
    # the not-found errors are FileNotFoundError too (fsspec, pandas)
    with pytest.raises(FileNotFoundError):
        mc.get(f"{bucket}/nope")


def test_rm(mc: Client, bucket: str) -> None:
    for key in ("x", "y", "d/1", "d/2", "d/e/3", "dx"):
        mc.put(f"{bucket}/{key}", b".")
    assert mc.rm(f"{bucket}/x") == [f"{bucket}/x"]
    assert mc.rm([f"{bucket}/y"]) == [f"{bucket}/y"]
    with pytest.raises(NoSuchKey):
        mc.rm(f"{bucket}/x")
    with pytest.raises(ValueError, match="names no object"):
        mc.rm(bucket)
    assert mc.rm(f"{bucket}/d", recursive=True) == [f"{bucket}/d/1", f"{bucket}/d/2", f"{bucket}/d/e/3"]
    assert mc.find(bucket) == [f"{bucket}/dx"]
    with pytest.raises(NoSuchKey):
        mc.rm(f"{bucket}/d", recursive=True)
    assert mc.rm(bucket, recursive=True) == [f"{bucket}/dx"]
    assert mc.ls(bucket) == []


def test_buckets_mb_rb_cp(mc: Client, server: Server) -> None:
    name = f"client-mb-{os.getpid()}"
    mc.mb(name)
    with pytest.raises(BucketExists, match="you already own it"):
        mc.mb(name)
    mc.mb(name, exist_ok=True)
    with pytest.raises(MantaError, match="invalid bucket name"):
        mc.mb("Bad_Name")

    data = os.urandom(6 * MiB)
    mc.put(f"{name}/src", data)
    copied = mc.cp(f"{name}/src", f"{name}/copy/dst")
    assert copied["etag"] == mc.info(f"{name}/src")["etag"]
    assert mc.get(f"{name}/copy/dst") == data
    with pytest.raises(NoSuchKey, match=f"{name}/missing"):
        mc.cp(f"{name}/missing", f"{name}/x")

    with pytest.raises(BucketNotEmpty):
        mc.rb(name)
    mc.rb(name, force=True)
    assert name not in mc.ls()
    with pytest.raises(NoSuchBucket):
        mc.rb(name)


# -- credentials and connection errors -------------------------------------------------------

def test_bad_credentials_unreachable_and_other_accounts(server: Server, mc: Client, bucket: str) -> None:
    with pytest.raises(BadCredentials, match="InvalidAccessKeyId"):
        Client(server.url, "NOSUCHKEY0000000000", "whatever").ls()
    wrong_secret = Client(server.url, ROOT_AK, "wrong-secret")
    with pytest.raises(BadCredentials, match="SignatureDoesNotMatch"):
        wrong_secret.get(f"{bucket}/x")
    with pytest.raises(PermissionError):  # BadCredentials is a PermissionError
        wrong_secret.job(map="cat", inputs=[f"{bucket}/x"])

    with pytest.raises(Unreachable, match=f"cannot reach http://127.0.0.1:{free_port()}|cannot reach"):
        Client(f"http://127.0.0.1:{free_port()}", ROOT_AK, ROOT_SK).ls()
    with pytest.raises(Unreachable):
        Client(f"http://127.0.0.1:{free_port()}", ROOT_AK, ROOT_SK).jobs()

    user = mc.api("POST", "/_manta/admin/users", {"name": f"client-other-{os.getpid()}"})
    other = Client(server.url, user["access_key"], user["secret_key"])
    assert bucket not in other.ls()
    with pytest.raises(AccessDenied):
        other.put(f"{bucket}/x", b"x")
    with pytest.raises(AccessDenied):
        other.info(bucket)


def test_defaults_come_from_the_environment_and_the_data_dir(
        server: Server, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    for name in ("MANTA_ACCESS_KEY", "MANTA_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MANTA_URL", server.url)
    monkeypatch.setenv("MANTA_DATA", str(tmp_path / "no-data-here"))
    with pytest.raises(BadCredentials, match="no credentials"):
        Client()

    write_root_credentials(str(tmp_path), Credentials(ROOT_AK, ROOT_SK))
    monkeypatch.setenv("MANTA_DATA", str(tmp_path))
    assert Client().access_key == ROOT_AK and bucket in Client().ls()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AWSKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "AWSSECRET")
    assert Client().access_key == "AWSKEY"
    monkeypatch.setenv("MANTA_ACCESS_KEY", ROOT_AK)
    monkeypatch.setenv("MANTA_SECRET_KEY", ROOT_SK)
    client = Client()
    assert client.url == server.url and client.access_key == ROOT_AK and bucket in client.ls()


# -- jobs --------------------------------------------------------------------------------------

MAP_COUNT = "wc -w"
REDUCE_SUM = "awk '{s += $1} END {print s}'"


@pytest.fixture(scope="module")
def jc(jobs_server: Server) -> Client:
    client = Client(jobs_server.url, ROOT_AK, ROOT_SK)
    client.mb("words")
    for i in range(6):
        client.put(f"words/in/{i}.txt", " ".join(["w"] * (i + 1)).encode() + b"\n")
    client.put("words/other.txt", b"not an input\n")
    return client


@pytest.mark.sandbox
def test_job_map_reduce_outputs_and_pandas(jc: Client, capsys: pytest.CaptureFixture[str]) -> None:
    job = jc.job(map=MAP_COUNT, reduce=REDUCE_SUM, inputs="words/in/", name="count words")
    assert job.wait(timeout_s=120) is job
    assert "phase 0 map" in capsys.readouterr().err  # the tqdm bars
    status = job.status
    assert status["state"] == job.state == "done" and status["name"] == "count words"
    assert status["input_count"] == 6 and status["errors"] == 0
    assert [(p["type"], p["tasks"], p["done"]) for p in status["phases"]] == [("map", 6, 6), ("reduce", 1, 1)]
    assert len(job.outputs()) == 1 and job.outputs()[0].startswith("_jobs_root/")
    assert job.read_outputs() == b"21\n"
    frame = job.to_pandas(header=None, names=["words"])
    assert frame["words"].tolist() == [21]
    assert job.errors() == []
    assert jc.get_job(job.id).state == "done"
    assert job.id in [j["id"] for j in jc.jobs()]


@pytest.mark.sandbox
def test_job_phases_counts_and_partitioned_reducers(jc: Client) -> None:
    # several maps in order, then a reduce with 2 reducers keyed by the text before the tab
    job = jc.job(map=["wc -w", "awk '{print ($1 % 2 ? \"odd\" : \"even\") \"\\t\" $1}'"],
                 reduce="awk -F'\\t' '{s[$1] += $2} END {for (k in s) print k, s[k]}'", count=2,
                 inputs=[f"words/in/{i}.txt" for i in range(6)])
    job.wait(timeout_s=120, progress=False, check=True)
    phases = job.status["phases"]
    assert [p["type"] for p in phases] == ["map", "map", "reduce"] and phases[2]["count"] == 2
    assert len(job.outputs()) == 2
    assert sorted(job.read_outputs().decode().split("\n")[:-1]) == ["even 12", "odd 9"]

    # the same as an explicit phases list
    explicit = jc.job(phases=[{"type": "map", "exec": "wc -w"}, {"type": "reduce", "exec": REDUCE_SUM}],
                      inputs="words/in/", timeout_s=60, memory_mb=256)
    assert explicit.wait(timeout_s=120, progress=False).read_outputs() == b"21\n"
    assert explicit.status["phases"][0]["memory_mb"] == 256

    with pytest.raises(ValueError, match="no reduce phase"):
        jc.job(map="cat", count=2, inputs="words/in/")
    with pytest.raises(ValueError, match="at least one phase"):
        jc.job(inputs="words/in/")
    with pytest.raises(MantaError, match="InvalidArgument"):
        jc.job(map="cat", timeout_s=-1, inputs="words/in/")


@pytest.mark.sandbox
def test_job_errors_check_and_cancel(jc: Client) -> None:
    failing = jc.job(map="grep -q 'w w w' && cat", inputs="words/in/")
    failing.wait(timeout_s=120, progress=False)
    errors = failing.errors()
    assert len(errors) == 2 and {e["code"] for e in errors} == {"UserTaskError"}
    assert {e["input"] for e in errors} == {"words/in/0.txt", "words/in/1.txt"}
    assert failing.outputs() == []  # the 4 tasks that passed printed nothing: empty outputs make no object
    assert sum(p["done"] for p in failing.status["phases"]) == 4
    with pytest.raises(JobFailed, match="UserTaskError"):
        failing.wait(progress=False, check=True)

    slow = jc.job(map="sleep 60", inputs="words/in/")
    with pytest.raises(TimeoutError):
        slow.wait(timeout_s=0.5, progress=False)
    slow.cancel()
    slow.wait(timeout_s=60, progress=False)
    assert slow.state == "cancelled"
    assert {e["code"] for e in slow.errors()} <= {"JobCancelledError"}

    opened = jc.job(map="wc -c", inputs=["words/in/0.txt"], end=False)
    opened.add_inputs(["words/in/1.txt"])
    opened.end_inputs()
    assert opened.wait(timeout_s=60, progress=False).read_outputs() == b"2\n4\n"

    with pytest.raises(NoSuchJob):
        jc.get_job("0000000000000000")
    with pytest.raises(NoSuchBucket):
        jc.job(map="cat", inputs="no-such-bucket-x/")
