"""Python functions as job phases end to end: a real server with three nodes (one copy of each
object, so where a map runs matters), real bubblewrap containers running the python-data
image's python (from the shared MANTA_IMAGE_CACHE, tests/conftest.py), and
examples/python-functions.ipynb run top to bottom in a real kernel."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from manta import Client, Function
from tests.conftest import REPO, ROOT_AK, ROOT_SK, Server, require_root_sandbox, running_server
from tests.e2e.test_nodes import blob_files, node_roots
from tests.e2e.test_profiles import clean_env

pytestmark = pytest.mark.sandbox

NOTEBOOK = os.path.join(REPO, "examples", "python-functions.ipynb")
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    require_root_sandbox("the python-data image is built (or unpacked) by root")
    with running_server(prefix="manta-functions-", extra_args=["--nodes", "3", "--copies", "1"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Client:
    client = Client(server.url, ROOT_AK, ROOT_SK, progress=False)
    client.mb("fns")
    for i in range(6):
        rows = "".join(f"{['oslo', 'lima', 'pune'][(i + n) % 3]},{i * 10 + n}\n" for n in range(5))
        client.put(f"fns/in/{i}.csv", ("city,amount\n" + rows).encode())
    return client


def placement(server: Server) -> dict[str, set[str]]:
    """md5 of a blob file's bytes -> the nodes with such a file (inputs are stored as is)."""
    found: dict[str, set[str]] = {}
    for node_id, root in node_roots(server).items():
        for path in blob_files(root).values():
            with open(path, "rb") as fh:
                found.setdefault(hashlib.md5(fh.read()).hexdigest(), set()).add(node_id)  # noqa: S324
    return found


def city_totals(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.groupby("city").agg(total=("amount", "sum"), n=("amount", "size"))


def lines_of(file: Any) -> Iterator[str]:
    for line in file:
        yield line.decode().strip().upper()


def first_fields(path: str) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line.split(b",")[0] for line in fh]


def test_a_map_and_a_reduce_function(client: Client) -> None:
    def combine(per_file: pd.DataFrame) -> pd.DataFrame:
        return per_file.groupby("city")[["total", "n"]].sum().sort_index()

    job = client.job(map=city_totals, reduce=Function(combine, input="dataframe"), inputs="fns/in/")
    job.wait(timeout_s=TIMEOUT_S, progress=False, check=True)
    local = combine(pd.concat(city_totals(io.BytesIO(client.get(f"fns/in/{i}.csv"))) for i in range(6))
                    .reset_index())
    got = job.to_pandas()  # the reducer's CSV, its named index a column
    assert list(got.columns) == ["city", "total", "n"]
    pd.testing.assert_frame_equal(got, local.reset_index(), check_dtype=False)
    assert got["n"].sum() == 30
    phases = job.status["phases"]
    assert [p["image"] for p in phases] == ["python-data", "python-data"]
    assert all(p["exec"].startswith("python3 -c ") and p["assets"][0].startswith(client.functions_bucket)
               for p in phases)


def test_inputs_as_files_lines_out_and_a_shell_phase_beside_a_function(client: Client) -> None:
    job = client.job(map=Function(lines_of, input="file"), reduce="sort | head -3", inputs="fns/in/0.csv")
    job.wait(timeout_s=TIMEOUT_S, progress=False, check=True)
    assert job.read_outputs() == b"CITY,AMOUNT\nLIMA,1\nLIMA,4\n"
    map_phase, reduce_phase = job.status["phases"]
    assert map_phase["image"] == "python-data" and reduce_phase.get("image") is None


def test_a_dataframe_as_parquet_read_back_by_to_pandas(client: Client) -> None:
    def scaled(path: Any) -> pd.DataFrame:
        frame = pd.read_csv(path)
        return frame.assign(amount=frame["amount"] * 1.5, big=frame["amount"] > 20)

    job = client.job(map=scaled, output="parquet", inputs=[f"fns/in/{i}.csv" for i in (1, 3)])
    job.wait(timeout_s=TIMEOUT_S, progress=False, check=True)
    outputs = [client.get(name) for name in job.outputs()]
    assert len(outputs) == 2 and all(data[:4] == b"PAR1" for data in outputs)
    got = job.to_pandas().sort_values("amount", ignore_index=True)
    expected = pd.concat(scaled(io.BytesIO(client.get(f"fns/in/{i}.csv"))) for i in (1, 3))
    pd.testing.assert_frame_equal(got, expected.sort_values("amount", ignore_index=True), check_dtype=False)
    assert got["big"].dtype == bool and got["amount"].dtype.kind == "f"
    with pytest.raises(ValueError, match="before a reduce writes CSV"):
        client.job(map=Function(scaled, output="parquet"), reduce="cat", inputs="fns/in/1.csv")


def test_a_raising_function_is_a_user_task_error_with_its_traceback(client: Client) -> None:
    def check_amounts(path: str) -> str:
        frame = pd.read_csv(path)
        return validate(frame["amount"].max())

    def validate(biggest: int) -> str:
        if biggest > 10:
            raise ValueError(f"amount {biggest} is over the limit")
        return "ok\n"

    job = client.job(map=check_amounts, inputs=[f"fns/in/{i}.csv" for i in (0, 3)])
    job.wait(timeout_s=TIMEOUT_S, progress=False)
    assert job.read_outputs() == b"ok\n"  # fns/in/0.csv's amounts are 0..4
    [error] = job.errors()
    assert error["code"] == "UserTaskError" and error["input"] == "fns/in/3.csv"
    excerpt = error["excerpt"]
    assert excerpt.startswith("Traceback (most recent call last):\n"), excerpt
    assert "in check_amounts" in excerpt and "in validate" in excerpt
    assert excerpt.rstrip().endswith("ValueError: amount 34 is over the limit"), excerpt
    assert "<string>" not in excerpt  # the bootstrap's own frames are left out


def test_the_same_function_is_uploaded_once(client: Client) -> None:
    made = any(b["name"] == client.functions_bucket for b in client.buckets())
    before = set(client.find(client.functions_bucket)) if made else set()
    first = client.job(map=first_fields, inputs="fns/in/2.csv")
    after_one = set(client.find(client.functions_bucket))
    [pickle] = after_one - before
    stamp = client.info(pickle)["last_modified"]
    second = client.job(map=first_fields, reduce="wc -l", inputs="fns/in/4.csv")
    for job in (first, second):
        job.wait(timeout_s=TIMEOUT_S, progress=False, check=True)
    assert set(client.find(client.functions_bucket)) == after_one
    assert client.info(pickle)["last_modified"] == stamp  # not sent again
    assert pickle.rsplit("/", 1)[1] == hashlib.sha256(client.get(pickle)).hexdigest() + ".pickle"
    assert client.get(pickle).startswith(b"manta-function 1 3.11 ")
    assert first.read_outputs() == b"city\npune\noslo\nlima\npune\noslo\n"
    assert second.read_outputs() == b"6\n"


def test_the_python_functions_notebook(server: Server, tmp_path: pathlib.Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    env = clean_env(HOME=str(tmp_path), MANTA_URL=server.url, MANTA_ACCESS_KEY=ROOT_AK, MANTA_SECRET_KEY=ROOT_SK)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    original_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(
        'import json\n'
        'print("RESULT", result.to_json(orient="records"))\n'
        'print("TASKS", json.dumps(job.fetch(tasks=True)["tasks"]))'))
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    code_cells = [c for c in nb.cells[:original_cells] if c.cell_type == "code"]
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    result = pd.DataFrame(json.loads(printed.split("RESULT ", 1)[1].split("\nTASKS ", 1)[0]))
    tasks = json.loads(printed.split("\nTASKS ", 1)[1])

    # the same numbers recomputed here from the objects the notebook uploaded
    s3 = server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sales", Prefix="orders/")["Contents"]]  # type: ignore[attr-defined]
    assert len(keys) == 24
    bodies = {k: s3.get_object(Bucket="sales", Key=k)["Body"].read() for k in keys}  # type: ignore[attr-defined]
    orders = pd.concat(pd.read_csv(io.BytesIO(b)) for b in bodies.values())
    orders["revenue"] = orders["units"] * orders["price"]
    expected = orders.groupby("region").agg(revenue=("revenue", "sum"), units=("units", "sum"),
                                            orders=("units", "size")).reset_index()
    assert result["region"].tolist() == expected["region"].tolist() == ["east", "north", "south", "west"]
    for column in ("revenue", "units", "orders"):
        assert result[column].tolist() == expected[column].tolist()
    assert (result["revenue_per_order"] - expected["revenue"] / expected["orders"]).abs().max() < 1e-9

    # every map ran on a node holding its input: the task's node has a blob file of its bytes
    maps = [t for t in tasks if t["type"] == "map"]
    assert sorted(t["input"] for t in maps) == sorted(f"sales/{k}" for k in keys)
    held = placement(server)
    for task in maps:
        data = bodies[task["input"].split("/", 1)[1]]
        assert task["state"] == "done" and task["node"] in held[hashlib.md5(data).hexdigest()], task  # noqa: S324
        assert (task["bytes_local"], task["bytes_remote"]) == (len(data), 0), task  # read in place
    assert len({t["node"] for t in maps}) >= 2
