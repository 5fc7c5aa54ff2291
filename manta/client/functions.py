"""Python functions as job phases: `Client.job(map=func, reduce=func2, ...)`.

    client.job(map=f) --cloudpickle (by value)--> "manta-function 1 3.11 3.1.3\\n" + pickle
        --PUT once--> <Client.functions_bucket>/<sha256>.pickle (content-addressed; not sent
                      again when there)
        --phase--> {"exec": "python3 -c BOOTSTRAP map /manta/assets/<sha256>.pickle path csv",
                    "assets": [that object], "image": "python-data"}
    task: the image's python3 runs BOOTSTRAP: unpickle /manta/assets/<sha256>.pickle, call
        the function on the input, write what it returns to stdout; an exception prints its
        traceback (the task's stderr excerpt) and exits 1 (UserTaskError)

The sandbox has no `manta` package: BOOTSTRAP is self-contained and needs only the image's
python (the same minor version as the client's: pickled code is version-bound; the header
line says which it was made by) with cloudpickle (the client's version, best; a pickle that
does not load says both versions) and pandas for DataFrames. A function is
pickled by value together with the module defining it (a notebook's `__main__`, a script,
a test module), unless that module is installed (the stdlib, site-packages); helpers from
other modules of your own need `cloudpickle.register_pickle_by_value(module)`.

Input (`input=`): a map function gets "path" (default: "/manta/input"), "file" (that file
opened "rb", seekable) or "dataframe" (Parquet when it begins with PAR1, else CSV). A reduce
function gets "file" (default: its concatenated inputs, binary, `sys.stdin.buffer`) or
"dataframe" (the inputs read as one CSV whose header line is dropped where it repeats, as
each map's DataFrame brings its own; one reducer only, since lines are split between them).

Output (`output=`): the function returns or yields bytes, str, lines (str or bytes; a newline
added where missing), None, or a pandas DataFrame or Series, written as "csv" (default) or
"parquet", with its index as columns when the index is named (as after a groupby). Parquet
cannot go into a reduce (its inputs arrive as one stream): it is for a job's last phase,
which `Job.to_pandas` reads, or a map followed by a map.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["DEFAULT_IMAGE", "Function", "Upload", "as_function", "function_phase", "functions_bucket", "payload"]

DEFAULT_IMAGE = "python-data"
MAGIC = "manta-function 1"
INPUTS = {"map": ("path", "file", "dataframe"), "reduce": ("file", "dataframe")}
OUTPUTS = ("csv", "parquet")


@dataclass(frozen=True)
class Function:
    """A function phase with its own `input`/`output` (else the job's, else the defaults):
    `client.job(map=Function(f, input="dataframe"), reduce=g)`."""
    func: Callable[..., Any]
    input: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class Upload:
    """An object a function phase needs: `path` (bucket/key) holding `data`."""
    path: str
    data: bytes


def functions_bucket(access_key: str) -> str:
    """The default bucket for an account's pickled functions (one per access key)."""
    return "manta-functions-" + hashlib.sha256(access_key.encode()).hexdigest()[:16]


def _installed(module: Any) -> bool:
    """Whether `module` comes from the stdlib or site-packages (pickled by reference)."""
    path = getattr(module, "__file__", None)
    if not path:
        return module.__name__ in sys.builtin_module_names
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(os.path.realpath(path).startswith(os.path.realpath(r) + os.sep) for r in roots)


def payload(func: Callable[..., Any]) -> bytes:
    """The bytes a task loads `func` from: a header line (the Python and cloudpickle
    versions that pickled it), then `func` pickled by value."""
    import cloudpickle

    name = getattr(func, "__module__", None) or getattr(type(func), "__module__", None)
    module = sys.modules.get(name or "")
    register = (module is not None and module.__name__ != "__main__" and not _installed(module)
                and module.__name__ not in cloudpickle.list_registry_pickle_by_value())
    if register:
        cloudpickle.register_pickle_by_value(module)
    try:
        pickled = cloudpickle.dumps(func)
    finally:
        if register:
            cloudpickle.unregister_pickle_by_value(module)
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"{MAGIC} {python} {cloudpickle.__version__}\n".encode() + pickled


def function_phase(kind: str, phase: Function, bucket: str, *, before_reduce: bool,
                   limits: dict[str, Any]) -> tuple[dict[str, Any], Upload]:
    """The job-spec phase that runs `phase` as a `kind` ("map"/"reduce") task, and the
    object it needs. `before_reduce`: the next phase is a reduce (it reads CSV, not Parquet)."""
    how_in = phase.input or INPUTS[kind][0]
    how_out = phase.output or "csv"
    if how_in not in INPUTS[kind]:
        raise ValueError(f"a {kind} function takes input={' or '.join(map(repr, INPUTS[kind]))}, not {how_in!r}")
    if how_out not in OUTPUTS:
        raise ValueError(f"output must be 'csv' or 'parquet', not {how_out!r}")
    if kind == "reduce" and how_in == "dataframe" and (limits.get("count") or 1) > 1:
        raise ValueError("a reduce function with input='dataframe' needs count=1: lines are split between "
                         "reducers, and a CSV header goes to one of them only")
    if how_out == "parquet" and before_reduce:
        raise ValueError("a phase before a reduce writes CSV: the reducer reads its inputs as one stream")
    data = payload(phase.func)
    key = hashlib.sha256(data).hexdigest() + ".pickle"
    command = shlex.join(["python3", "-c", BOOTSTRAP, kind, f"/manta/assets/{key}", how_in, how_out])
    spec = {"type": kind, "exec": command, "assets": [*(limits.get("assets") or []), f"{bucket}/{key}"],
            "image": limits.get("image") or DEFAULT_IMAGE}
    return spec, Upload(f"{bucket}/{key}", data)


def as_function(value: Any, input: str | None, output: str | None) -> Function | None:
    """`value` as a Function (the job's `input`/`output` filling in what it leaves open),
    or None for a shell command."""
    if isinstance(value, Function):
        return replace(value, input=value.input or input, output=value.output or output)
    if callable(value):
        return Function(value, input, output)
    return None


# Runs in the task with the image's python: argv = kind, pickle path, input, output.
BOOTSTRAP = r'''
import io, os, sys, traceback

EXCERPT_BYTES = 1900  # the job's error records keep the first 2 KiB of stderr


def load(path):
    with open(path, "rb") as fh:
        head = fh.readline().decode(errors="replace").split()
        have = "%d.%d" % sys.version_info[:2]
        if head[:2] != ["manta-function", "1"] or len(head) != 4:
            raise RuntimeError(path + " is not a function pickled by manta.Client")
        if head[2] != have:
            raise RuntimeError("the function was pickled by Python " + head[2] + " and this image runs "
                               "Python " + have + ": pickled code needs the same version on both sides")
        import cloudpickle
        try:
            return cloudpickle.load(fh)
        except Exception as exc:
            if head[3] == cloudpickle.__version__:
                raise
            raise RuntimeError("the function was pickled by cloudpickle " + head[3] + " and this image has "
                               + cloudpickle.__version__ + ": use the same version on both sides") from exc


def frame(data):
    import pandas
    if data[:4] == b"PAR1":
        return pandas.read_parquet(io.BytesIO(data))
    if not data.strip():
        return pandas.DataFrame()
    lines = data.splitlines(keepends=True)
    header = lines[0].rstrip(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if line.rstrip(b"\r\n") != header]
    return pandas.read_csv(io.BytesIO(b"".join(kept)))


def argument(kind, how):
    if kind == "reduce":
        return sys.stdin.buffer if how == "file" else frame(sys.stdin.buffer.read())
    path = os.environ.get("MANTA_INPUT_FILE", "/manta/input")
    if how == "path":
        return path
    if how == "file":
        return open(path, "rb")
    with open(path, "rb") as fh:
        return frame(fh.read())


def write(out, result, how):
    pandas = sys.modules.get("pandas")
    if result is None:
        return
    if isinstance(result, (bytes, bytearray, memoryview)):
        out.write(result)
    elif isinstance(result, str):
        out.write(result.encode())
    elif pandas is not None and isinstance(result, (pandas.DataFrame, pandas.Series)):
        table = result.to_frame() if isinstance(result, pandas.Series) else result
        if any(name is not None for name in table.index.names):
            table = table.reset_index()
        if how == "parquet":
            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            out.write(buffer.getvalue())
        else:
            out.write(table.to_csv(index=False).encode())
    elif hasattr(result, "__iter__"):
        for item in result:
            line = item.encode() if isinstance(item, str) else item
            if not isinstance(line, (bytes, bytearray, memoryview)):
                raise TypeError("a function's lines are str or bytes, not " + type(item).__name__)
            out.write(line)
            if not bytes(line[-1:]) == b"\n":
                out.write(b"\n")
    else:
        raise TypeError("a phase function returns bytes, str, lines, a pandas DataFrame or None, not "
                        + type(result).__name__)


def report(exc):
    shown = traceback.TracebackException.from_exception(exc)
    shown.stack = traceback.StackSummary.from_list([f for f in shown.stack if f.filename != "<string>"])
    text = "".join(shown.format()).encode(errors="replace")
    if len(text) > EXCERPT_BYTES:  # keep the top (the function's frames) and the end (the error)
        cut = len(text) - EXCERPT_BYTES + 60
        text = text[:700] + b"\n  ... (%d bytes of the traceback left out) ...\n" % cut + text[700 + cut:]
    sys.stderr.buffer.write(text)
    sys.stderr.flush()


def main():
    kind, path, how_in, how_out = sys.argv[1:5]
    try:
        func = load(path)
        write(sys.stdout.buffer, func(argument(kind, how_in)), how_out)
        sys.stdout.flush()
    except Exception as exc:
        report(exc)
        sys.exit(1)


main()
'''
