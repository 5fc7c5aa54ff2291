"""Task images end to end: a real server with two nodes, real bubblewrap containers, the CLI.

python-data is built from the project's pinned requirements at first use (or taken from
MANTA_IMAGE_CACHE, which tests/conftest.py points at one directory for the whole run, so CI
builds it once); a custom image needs pip and PyPI (or the host's pip mirror).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from jobs.imagetree import CACHE_DIR, UNPACK_LOG
from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, require_root_sandbox, running_server
from tests.e2e.test_jobs import job_json
from tests.e2e.test_nodes import node_roots

pytestmark = pytest.mark.sandbox

IMPORT_ALL = "python3 -c 'import pandas, pyarrow, duckdb, numpy; print(pandas.__version__)'"
BUILD_TIMEOUT_S = 1800


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    require_root_sandbox("image builds run pip as the task user and need root")
    with running_server(prefix="manta-images-", extra_args=["--nodes", "2"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def s3(server: Server) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    name = f"images-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    for i in range(4):
        s3.put_object(Bucket=name, Key=f"in/{i}.txt", Body=f"line {i}\n".encode())
    return name


def manta(url: str, *args: str, timeout_s: float = BUILD_TIMEOUT_S, access_key: str = ROOT_AK,
          secret_key: str = ROOT_SK) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=url, MANTA_ACCESS_KEY=access_key, MANTA_SECRET_KEY=secret_key)
    return subprocess.run([sys.executable, "-m", "manta", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


def images(url: str) -> dict[str, dict[str, Any]]:
    listed = manta(url, "admin", "image", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    return {i["name"]: i for i in json.loads(listed.stdout)}


def builds(image_id: str) -> int:
    """Times pip ran for `image_id` in the shared build cache."""
    try:
        with open(os.path.join(os.environ["MANTA_IMAGE_CACHE"], "builds.log")) as fh:
            return sum(1 for line in fh if line.split()[0] == image_id)
    except FileNotFoundError:
        return 0


def unpacks(server: Server) -> dict[str, list[str]]:
    """node root -> the image ids unpacked there, one entry per unpack."""
    out = {}
    for root in node_roots(server).values():
        try:
            with open(os.path.join(root, CACHE_DIR, UNPACK_LOG)) as fh:
                out[root] = [line.split()[0] for line in fh if line.strip()]
        except FileNotFoundError:
            out[root] = []
    return out


def test_python_data_is_built_at_first_use_and_has_the_data_tools(server: Server, bucket: str) -> None:
    with_image = manta(server.url, "job", "create", "-o", "--image", "python-data", "-m", IMPORT_ALL,
                       f"{bucket}/in/")
    assert with_image.returncode == 0, with_image.stderr
    assert with_image.stdout.splitlines() == ["2.3.2"] * 4
    record = images(server.url)["python-data"]
    assert record["kind"] == "python" and record["object"] == f"_images/{record['id']}.tar"
    # each node unpacked it once, whatever its number of tasks
    assert all(ids.count(record["id"]) <= 1 for ids in unpacks(server).values())
    assert sum(ids.count(record["id"]) for ids in unpacks(server).values()) >= 1

    without = manta(server.url, "job", "create", "-o", "-m", IMPORT_ALL, f"{bucket}/in/0.txt")
    assert without.returncode == 1
    assert "UserTaskError" in without.stderr and "ModuleNotFoundError" in without.stderr

    tools = manta(server.url, "job", "create", "-o", "--image", "python-data", "-m",
                  "command -v python3 duckdb; echo $MANTA_IMAGE; duckdb -csv -noheader -c 'select 40 + 2'",
                  f"{bucket}/in/0.txt")
    assert tools.returncode == 0, tools.stderr
    assert tools.stdout.splitlines() == ["/opt/manta/image/bin/python3", "/opt/manta/image/bin/duckdb",
                                         "python-data", "42"]


def test_a_second_job_and_a_second_build_do_nothing_again(server: Server, bucket: str) -> None:
    first = manta(server.url, "job", "create", "-o", "--image", "python-data", "-m", IMPORT_ALL, f"{bucket}/in/")
    assert first.returncode == 0, first.stderr
    image_id = images(server.url)["python-data"]["id"]
    built, unpacked = builds(image_id), unpacks(server)
    assert built <= 1  # once for the whole test run (the cache is shared), or taken from it

    again = manta(server.url, "job", "create", "-o", "--image", "python-data", "-m", IMPORT_ALL, f"{bucket}/in/")
    assert again.returncode == 0, again.stderr
    rebuild = manta(server.url, "admin", "image", "build", "python-data", "--json")
    assert rebuild.returncode == 0, rebuild.stderr
    assert json.loads(rebuild.stdout)["id"] == image_id
    assert builds(image_id) == built and unpacks(server) == unpacked


def test_duckdb_sql_over_parquet_objects_equals_the_local_query(server: Server, s3: Any, bucket: str) -> None:
    duckdb = pytest.importorskip("duckdb")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    local_dir = tempfile.mkdtemp(prefix="manta-parquet-")
    try:
        paths = []
        for i in range(6):
            table = pa.table({"city": [["oslo", "lima", "pune", "kobe"][(i * 7 + n) % 4] for n in range(500)],
                              "amount": [(i * 1000 + n * 37) % 991 for n in range(500)]})
            path = os.path.join(local_dir, f"sales-{i}.parquet")
            pq.write_table(table, path)
            paths.append(path)
            with open(path, "rb") as fh:
                s3.put_object(Bucket=bucket, Key=f"parquet/sales-{i}.parquet", Body=fh.read())
        per_file = "select city, sum(amount) as total, count(*) as n from read_parquet('{}') group by city"
        # stdin is reopened by path through a pipe of the task's own (cat's): the one a
        # fresh container gets is the host's, which the task user may not open by name
        combine = ("select city, sum(total)::bigint, sum(n)::bigint from read_csv('/dev/stdin', header=false, "
                   "columns={'city': 'varchar', 'total': 'bigint', 'n': 'bigint'}) group by city order by city")
        job = manta(server.url, "job", "create", "-o", "--image", "python-data",
                    "-m", f'duckdb -csv -noheader -c "{per_file.format("/manta/input")}"',
                    "-r", f'cat | duckdb -csv -noheader -c "{combine}"', f"{bucket}/parquet/")
        assert job.returncode == 0, job.stderr
        expected = duckdb.sql(
            "select city, sum(amount)::bigint, count(*)::bigint from read_parquet(" + json.dumps(paths)
            + ") group by city order by city").fetchall()
        assert expected and [tuple(line.split(",")) for line in job.stdout.splitlines()] == [
            (city, str(total), str(n)) for city, total, n in expected]

        python_api = manta(server.url, "job", "create", "-o", "--image", "python-data", "-m",
                           "python3 -c \"import duckdb; print(duckdb.sql(\\\"select count(*), sum(amount) "
                           "from read_parquet('/manta/input')\\\").fetchone())\"", f"{bucket}/parquet/sales-0.parquet")
        assert python_api.returncode == 0, python_api.stderr
        assert python_api.stdout.strip() == str(duckdb.sql(
            f"select count(*), sum(amount) from read_parquet('{paths[0]}')").fetchall()[0])
    finally:
        shutil.rmtree(local_dir)


def test_a_custom_image_is_seen_only_by_the_jobs_naming_it(server: Server, bucket: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("tabulate==0.9.0\n")
        req.flush()
        built = manta(server.url, "admin", "image", "build", "tabtools", "--requirements", req.name, "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["requirements"] == "tabulate==0.9.0\n"
    probe = "python3 -c 'import tabulate; print(tabulate.__version__)'"
    mine = manta(server.url, "job", "create", "-o", "--image", "tabtools", "-m", probe, f"{bucket}/in/0.txt")
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout == "0.9.0\n"
    for other in (["--image", "python-data"], []):
        theirs = manta(server.url, "job", "create", "-o", *other, "-m", probe, f"{bucket}/in/0.txt")
        assert theirs.returncode == 1 and "ModuleNotFoundError" in theirs.stderr, theirs.stderr


def test_a_broken_requirements_file_fails_with_pips_message_and_leaves_no_image(server: Server) -> None:
    cache = os.environ["MANTA_IMAGE_CACHE"]
    before = sorted(os.listdir(cache))
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("pandas===>not a version<\n")
        req.flush()
        broken = manta(server.url, "admin", "image", "build", "broken", "--requirements", req.name)
    assert broken.returncode == 1
    assert "ImageBuildFailed" in broken.stderr and "ERROR:" in broken.stderr and "pandas" in broken.stderr
    assert "broken" not in images(server.url)
    assert sorted(n for n in os.listdir(cache) if not n.endswith(".lock")) == [
        n for n in before if not n.endswith(".lock")]  # no tar, no build dir left
    job = manta(server.url, "job", "create", "--image", "broken", "-m", "true")
    assert job.returncode == 1 and "no task image named 'broken'" in job.stderr


def tree_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_import_ls_rm_and_only_root_manages_images(server: Server, bucket: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as tar:
        tar.write(tree_tar({"bin/hello": b"#!/bin/sh\necho hello from $0\n", "share/note": b"imported\n"}))
        tar.flush()
        imported = manta(server.url, "admin", "image", "import", "tools", tar.name, "--json")
    assert imported.returncode == 0, imported.stderr
    record = json.loads(imported.stdout)
    assert record["kind"] == "import" and images(server.url)["tools"]["id"] == record["id"]
    job = manta(server.url, "job", "create", "-o", "--image", "tools", "-m",
                "hello; cat /opt/manta/image/share/note", f"{bucket}/in/0.txt")
    assert job.returncode == 0, job.stderr
    assert job.stdout == "hello from /opt/manta/image/bin/hello\nimported\n"

    user = manta(server.url, "admin", "user", "add", f"imgs{os.getpid()}", "--json")
    keys = json.loads(user.stdout)
    denied = manta(server.url, "admin", "image", "ls", access_key=keys["access_key"], secret_key=keys["secret_key"])
    assert denied.returncode == 1 and "access denied" in denied.stderr.lower(), denied.stderr

    removed = manta(server.url, "admin", "image", "rm", "tools")
    assert removed.returncode == 0, removed.stderr
    assert "tools" not in images(server.url)
    gone = manta(server.url, "job", "create", "--image", "tools", "-m", "hello", f"{bucket}/in/0.txt")
    assert gone.returncode == 1 and "no task image named 'tools'" in gone.stderr
    again = manta(server.url, "admin", "image", "rm", "tools")
    assert again.returncode == 1 and "NoSuchImage" in again.stderr
    bad_name = manta(server.url, "admin", "image", "build", "Not/Valid")
    assert bad_name.returncode == 1 and "InvalidArgument" in bad_name.stderr, bad_name.stderr
    no_file = manta(server.url, "admin", "image", "build", "custom")
    assert no_file.returncode == 1 and "needs a requirements file" in no_file.stderr, no_file.stderr


def test_an_unsafe_tar_is_refused_by_the_nodes(server: Server, bucket: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".tar") as tar:
        tar.write(tree_tar({"../escape": b"x\n"}))
        tar.flush()
        assert manta(server.url, "admin", "image", "import", "unsafe", tar.name).returncode == 0
    job = manta(server.url, "job", "create", "-o", "--image", "unsafe", "-m", "true", f"{bucket}/in/0.txt")
    assert job.returncode == 1 and "TaskInitError" in job.stderr and "unsafe" in job.stderr
    assert not any(os.path.exists(os.path.join(root, CACHE_DIR, "escape")) for root in node_roots(server).values())
    assert manta(server.url, "admin", "image", "rm", "unsafe").returncode == 0


def test_the_client_names_an_image_for_every_phase(server: Server, bucket: str) -> None:
    from manta import Client

    client = Client(server.url, ROOT_AK, ROOT_SK)
    job = client.job(map="python3 -c 'import numpy; print(numpy.arange(4).sum())'", image="python-data",
                     inputs=f"{bucket}/in/0.txt")
    job.wait(progress=False, timeout_s=BUILD_TIMEOUT_S)
    assert [client.get(name) for name in job.outputs()] == [b"6\n"]
    assert job_json(server.url, job.id)["phases"][0]["image"] == "python-data"
