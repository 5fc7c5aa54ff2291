"""manta/client/functions.py without a server: the phases `job_phases` makes of functions, and
the bootstrap a task runs, here run by this interpreter (it has cloudpickle and pandas) on a
pickle and an input in a temp dir, as the sandbox would with /manta/assets and /manta/input.
tests/e2e/test_functions.py runs the same in real containers with the python-data image."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import pandas as pd
import pytest

from manta.client.functions import Function, function_phase, payload
from manta.client.jobs import job_phases

CSV = b"city,amount\noslo,1\nlima,2\noslo,3\n"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def outside_env(**extra: str) -> dict[str, str]:
    """This environment as a task's python sees it: without a PYTHONPATH naming the checkout
    (a task imports nothing of the project; its functions travel by value)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


def run(tmp_path: pathlib.Path, kind: str, function: Function, stdin: bytes = b"",
        data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`function` as a `kind` task: its phase's command, with this python for python3."""
    spec, upload = function_phase(kind, function, "bkt", before_reduce=False, limits={})
    name = upload.path.split("/", 1)[1]
    (tmp_path / name).write_bytes(data if data is not None else upload.data)
    (tmp_path / "input").write_bytes(CSV)
    command = spec["exec"].replace(f"/manta/assets/{name}", str(tmp_path / name))
    assert command.startswith("python3 -c ")
    return subprocess.run(["bash", "-c", sys.executable + command[len("python3"):]], input=stdin,
                          capture_output=True, timeout=60, cwd=tmp_path,
                          env=outside_env(MANTA_INPUT_FILE=str(tmp_path / "input")))


def totals(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("city").agg(total=("amount", "sum"))


def lines(file: Any) -> Iterator[str | bytes]:
    for number, line in enumerate(file):
        yield f"{number}:{line.decode().strip()}" if number % 2 else line  # str without newline, bytes with


@pytest.mark.parametrize(("function", "stdout"), [
    (Function(lambda path: open(path, "rb").read().upper()), CSV.upper()),
    (Function(lambda path: f"{len(open(path).read())}"), str(len(CSV)).encode()),
    (Function(lines, input="file"), b"city,amount\n1:oslo,1\nlima,2\n3:oslo,3\n"),
    (Function(totals, input="dataframe"), b"city,total\nlima,2\noslo,4\n"),
    (Function(lambda frame: frame["amount"] * 2, input="dataframe"), b"amount\n2\n4\n6\n"),
    (Function(lambda path: None), b""),
])
def test_what_a_map_function_returns_is_its_output(tmp_path: pathlib.Path, function: Function,
                                                   stdout: bytes) -> None:
    done = run(tmp_path, "map", function)
    assert (done.returncode, done.stderr, done.stdout) == (0, b"", stdout)


def test_a_dataframe_as_parquet(tmp_path: pathlib.Path) -> None:
    done = run(tmp_path, "map", Function(totals, input="dataframe", output="parquet"))
    assert done.returncode == 0 and done.stdout[:4] == b"PAR1"
    frame = pd.read_parquet(io.BytesIO(done.stdout))
    assert frame.to_dict("list") == {"city": ["lima", "oslo"], "total": [2, 4]}


def test_a_reducer_reads_one_stream_or_one_frame_without_repeated_headers(tmp_path: pathlib.Path) -> None:
    maps = b"city,total\noslo,4\nlima,2\ncity,total\noslo,5\n"
    raw = run(tmp_path, "reduce", Function(lambda file: file.read()[::-1]), stdin=maps)
    assert raw.stdout == maps[::-1]
    frame = run(tmp_path, "reduce", Function(lambda f: f.groupby("city").sum(), input="dataframe"), stdin=maps)
    assert frame.stdout == b"city,total\nlima,2\noslo,9\n"


@pytest.mark.parametrize(("function", "last_line"), [
    (Function(lambda path: 1 / 0), b"ZeroDivisionError: division by zero"),
    (Function(lambda path: 42), b"TypeError: a phase function returns bytes, str, lines, a pandas DataFrame "
                                b"or None, not int"),
    (Function(lambda path: [1, 2]), b"TypeError: a function's lines are str or bytes, not int"),
])
def test_an_exception_is_a_traceback_on_stderr_and_status_1(tmp_path: pathlib.Path, function: Function,
                                                            last_line: bytes) -> None:
    done = run(tmp_path, "map", function)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.rstrip().endswith(last_line) and b"<string>" not in done.stderr
    if b"ZeroDivisionError" in last_line:  # raised in the function: its frame; else the message alone
        assert done.stderr.startswith(b"Traceback (most recent call last):\n") and b", in <lambda>" in done.stderr
    else:
        assert done.stderr == last_line + b"\n"


def test_a_long_traceback_keeps_its_top_and_its_error_within_the_excerpt(tmp_path: pathlib.Path) -> None:
    def chained(path: str) -> None:
        error = None
        for n in range(40):
            try:
                raise KeyError(f"level {n}") from error
            except KeyError as exc:
                error = exc
        raise KeyError("the last one") from error

    done = run(tmp_path, "map", Function(chained))
    assert done.returncode == 1 and len(done.stderr) <= 1900
    assert done.stderr.startswith(b"Traceback") and b"bytes of the traceback left out" in done.stderr
    assert done.stderr.rstrip().endswith(b"KeyError: 'the last one'")


def test_a_pickle_from_another_python_or_cloudpickle_fails_clearly(tmp_path: pathlib.Path) -> None:
    data = payload(totals).replace(PYTHON.encode(), b"3.99", 1)
    done = run(tmp_path, "map", Function(totals), data=data)
    assert done.returncode == 1
    assert f"the function was pickled by Python 3.99 and this image runs Python {PYTHON}".encode() in done.stderr
    header = f"manta-function 1 {PYTHON} 0.0.1\n".encode()
    other = run(tmp_path, "map", Function(totals), data=header + payload(totals).split(b"\n", 1)[1][:40])
    assert other.returncode == 1 and other.stderr.rstrip().endswith(
        f"the function was pickled by cloudpickle 0.0.1 and this image has {cloudpickle.__version__}: "
        "use the same version on both sides".encode())


def test_payloads_are_content_addressed_and_carry_their_module_by_value(tmp_path: pathlib.Path) -> None:
    assert payload(totals) == payload(totals)
    assert payload(totals) != payload(lines)
    assert payload(totals).startswith(f"manta-function 1 {PYTHON} {cloudpickle.__version__}\n".encode())
    # the tasks above loaded functions of this module where it cannot be imported
    cannot = subprocess.run([sys.executable, "-c", "import tests.manta.test_functions"], cwd=tmp_path,
                            capture_output=True, timeout=60, env=outside_env())
    assert b"ModuleNotFoundError: No module named 'tests'" in cannot.stderr
    assert run(tmp_path, "map", Function(totals, input="dataframe")).returncode == 0


def shell_or_function(phases: list[dict[str, Any]]) -> list[str]:
    return ["python" if p["exec"].startswith("python3 -c ") else p["exec"] for p in phases]


def test_job_phases_of_functions_and_commands() -> None:
    spec, uploads = job_phases([totals, "wc -l"], lines, 2, None, {"memory_mb": 512, "assets": ["a/b"]},
                               bucket="fb", input="file", output="parquet")
    assert shell_or_function(spec) == ["python", "wc -l", "python"]
    assert [p.get("image") for p in spec] == ["python-data", None, "python-data"]
    assert [p["memory_mb"] for p in spec] == [512] * 3 and spec[2]["count"] == 2
    assert spec[1]["assets"] == ["a/b"] and [p["assets"][0] for p in (spec[0], spec[2])] == ["a/b", "a/b"]
    assert [p["assets"][1] for p in (spec[0], spec[2])] == [u.path for u in uploads]
    assert all(u.path.startswith("fb/") and u.path.endswith(".pickle") for u in uploads)
    assert spec[0]["exec"].endswith(" map /manta/assets/" + uploads[0].path[3:] + " file csv")
    assert spec[2]["exec"].endswith(" reduce /manta/assets/" + uploads[1].path[3:] + " file parquet")

    explicit, _ = job_phases(None, None, None, [{"type": "map", "exec": totals, "image": "mine"}], {},
                             bucket="fb")
    assert explicit[0]["image"] == "mine" and " map /manta/assets/" in explicit[0]["exec"]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: job_phases(Function(totals, output="parquet"), "cat", None, None, {}),
     "a phase before a reduce writes CSV"),
    (lambda: job_phases(None, Function(totals, input="path"), None, None, {}),
     "a reduce function takes input='file' or 'dataframe', not 'path'"),
    (lambda: job_phases(totals, None, None, None, {}, output="json"), "output must be 'csv' or 'parquet'"),
    (lambda: job_phases(totals, totals, 2, None, {}, input="dataframe"), "input='dataframe' needs count=1"),
])
def test_what_cannot_work_is_refused_before_the_job_is_made(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
