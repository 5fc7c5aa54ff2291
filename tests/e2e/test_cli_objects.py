"""The object commands (`manta mb rb put get ls rm info cp`) as a user runs them, and every
command's --help."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from manta.cli import main, parser
from tests.conftest import NO_USER_CONFIG, REPO, ROOT_AK, ROOT_SK, Server, free_port

MiB = 1024 * 1024


def manta(server: Server | str, *args: str, stdin: bytes = b"", secret_key: str = ROOT_SK,
          cwd: str = REPO) -> subprocess.CompletedProcess[bytes]:
    """`manta ARGS` run in this process (a subprocess costs a second of imports each time):
    the same `main()`, environment, stdin/stdout/stderr bytes and exit status as a user gets."""
    env = {"MANTA_URL": server if isinstance(server, str) else server.url, "MANTA_ACCESS_KEY": ROOT_AK,
           "MANTA_SECRET_KEY": secret_key}
    out, err = io.BytesIO(), io.BytesIO()
    saved = {k: os.environ.get(k) for k in env}
    streams = (sys.stdin, sys.stdout, sys.stderr)
    here = os.getcwd()
    os.environ.update(env)
    wrappers = (io.TextIOWrapper(io.BytesIO(stdin)), io.TextIOWrapper(out, write_through=True),
                io.TextIOWrapper(err, write_through=True))
    sys.stdin, sys.stdout, sys.stderr = wrappers
    os.chdir(cwd)
    try:
        code = main(list(args))
    finally:
        for wrapper in wrappers:
            wrapper.flush()
            wrapper.detach()
        sys.stdin, sys.stdout, sys.stderr = streams
        os.chdir(here)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["manta", *args], code, out.getvalue(), err.getvalue())


def manta_process(server: Server, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=server.url, MANTA_ACCESS_KEY=ROOT_AK, MANTA_SECRET_KEY=ROOT_SK, **NO_USER_CONFIG)
    return subprocess.run([sys.executable, "-m", "manta", *args], env=env, cwd=REPO, input=stdin,
                          capture_output=True, timeout=60)


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def fails(result: subprocess.CompletedProcess[bytes], message: str) -> None:
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert err.startswith("manta: ") and message in err, err
    assert "Traceback" not in err


def test_mb_put_get_ls_info_cp_rm_rb(server: Server, tmp_path: pathlib.Path) -> None:
    b = f"cli-{os.getpid()}"
    ok(manta(server, "mb", b))
    fails(manta(server, "mb", b), f"bucket {b} exists: you already own it")
    ok(manta(server, "mb", "-p", b))

    # put: a file (keeping its name), stdin, a large file with a progress bar
    small = tmp_path / "small.txt"
    small.write_text("hello\n")
    ok(manta(server, "put", str(small), f"{b}/docs/"))
    ok(manta(server, "put", "-", f"{b}/docs/stdin.txt", stdin=b"from stdin\n"))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * MiB))
    result = manta(server, "put", str(big), f"{b}/big.bin")
    assert result.returncode == 0 and b"put " in result.stderr and b"B/s" in result.stderr  # the bar
    assert manta(server, "put", "-q", str(big), f"{b}/quiet.bin").stderr == b""

    # ls: buckets, a directory level, -l, --json, an object
    assert b in ok(manta(server, "ls")).splitlines()
    assert ok(manta(server, "ls", b)).splitlines() == [f"{b}/big.bin", f"{b}/docs/", f"{b}/quiet.bin"]
    assert ok(manta(server, "ls", f"{b}/docs")).splitlines() == [f"{b}/docs/small.txt", f"{b}/docs/stdin.txt"]
    long = ok(manta(server, "ls", "-l", b)).splitlines()
    assert long[0].split()[0:2] == ["f", str(9 * MiB)] and long[0].endswith(f"{b}/big.bin")
    assert long[1].split()[0] == "d" and long[1].endswith(f"{b}/docs/")
    rows = json.loads(ok(manta(server, "ls", "--json", f"{b}/docs/")))
    assert [(r["name"], r["type"], r["size"]) for r in rows] == [
        (f"{b}/docs/small.txt", "file", 6), (f"{b}/docs/stdin.txt", "file", 11)]
    assert ok(manta(server, "ls", f"{b}/docs/small.txt")) == f"{b}/docs/small.txt\n"

    # get: to stdout, to a directory, to a file
    assert manta(server, "get", f"{b}/docs/stdin.txt", "-").stdout == b"from stdin\n"
    ok(manta(server, "get", f"{b}/big.bin", str(tmp_path / "copy.bin")))
    assert (tmp_path / "copy.bin").read_bytes() == big.read_bytes()
    (tmp_path / "dl").mkdir()
    ok(manta(server, "get", f"{b}/docs/small.txt", str(tmp_path / "dl")))
    assert (tmp_path / "dl" / "small.txt").read_text() == "hello\n"
    ok(manta(server, "get", f"{b}/docs/stdin.txt", cwd=str(tmp_path / "dl")))  # default: ./NAME
    assert (tmp_path / "dl" / "stdin.txt").read_bytes() == b"from stdin\n"

    # info
    info = ok(manta(server, "info", f"{b}/docs/small.txt"))
    assert "type:         file" in info and "size:         6" in info and "etag:" in info
    as_json = json.loads(ok(manta(server, "info", "--json", f"{b}/big.bin")))
    assert as_json["size"] == 9 * MiB and as_json["etag"].endswith("-2")
    assert json.loads(ok(manta(server, "info", "--json", b)))["type"] == "bucket"
    assert json.loads(ok(manta(server, "info", "--json", f"{b}/docs")))["type"] == "directory"

    # cp: server-side, same ETag
    ok(manta(server, "cp", f"{b}/big.bin", f"{b}/archive/"))
    assert json.loads(ok(manta(server, "info", "--json", f"{b}/archive/big.bin")))["etag"] == as_json["etag"]
    assert manta(server, "get", f"{b}/archive/big.bin", "-").stdout == big.read_bytes()

    # rm: one, several, recursive
    ok(manta(server, "rm", f"{b}/quiet.bin"))
    ok(manta(server, "rm", f"{b}/docs/small.txt", f"{b}/docs/stdin.txt"))
    result = manta(server, "rm", "-r", "-v", f"{b}/archive")
    assert result.returncode == 0 and result.stderr.decode() == f"deleted {b}/archive/big.bin\n"
    assert ok(manta(server, "ls", b)).splitlines() == [f"{b}/big.bin"]

    # as a separate process, in a pipeline: stdin to an object, an object to stdout
    data = os.urandom(6 * MiB)
    ok(manta_process(server, "put", "-q", "-", f"{b}/piped", stdin=data))
    assert manta_process(server, "get", f"{b}/piped", "-").stdout == data

    # rb: refuses a non-empty bucket unless --force
    fails(manta(server, "rb", b), "is not empty")
    ok(manta(server, "rb", "--force", b))
    assert b not in ok(manta(server, "ls")).splitlines()


def test_errors_say_what_went_wrong(server: Server, bucket: str, tmp_path: pathlib.Path) -> None:
    fails(manta(server, "ls", "no-such-bucket-x"), "no such bucket: no-such-bucket-x")
    fails(manta(server, "put", "-", "no-such-bucket-x/k", stdin=b"x"), "no such bucket: no-such-bucket-x")
    fails(manta(server, "get", f"{bucket}/missing", "-"), f"no such key: {bucket}/missing")
    fails(manta(server, "info", f"{bucket}/missing"), f"no such key: {bucket}/missing")
    fails(manta(server, "rm", f"{bucket}/missing"), f"no such key: {bucket}/missing")
    fails(manta(server, "rm", "-r", f"{bucket}/missing/"), "no such key or prefix")
    fails(manta(server, "cp", f"{bucket}/missing", f"{bucket}/x"), f"no such key: {bucket}/missing")
    fails(manta(server, "rb", "no-such-bucket-x"), "no such bucket")
    fails(manta(server, "mb", "Bad_Name"), "invalid bucket name")
    fails(manta(server, "ls", bucket, secret_key="wrong"), "bad credentials (SignatureDoesNotMatch)")
    fails(manta(f"http://127.0.0.1:{free_port()}", "ls"), "cannot reach http://127.0.0.1:")
    fails(manta(server, "put", str(tmp_path / "nope"), f"{bucket}/x"), "No such file or directory")
    fails(manta(server, "put", "-", bucket, stdin=b"x"), "names no object")
    fails(manta(server, "get", bucket, "-"), "names no object")
    assert not os.path.exists(os.path.join(tmp_path, "missing"))
    ok(manta(server, "put", "-", f"{bucket}/k", stdin=b"x"))
    fails(manta(server, "get", f"{bucket}/k", str(tmp_path / "no-dir" / "f")), "No such file or directory")


OBJECT_COMMANDS = ("mb", "rb", "put", "get", "ls", "rm", "info", "cp")


def _subcommands(p: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                 ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name), child
                yield from _subcommands(child, (*prefix, name))


def test_every_help_has_an_example() -> None:
    commands = dict(_subcommands(parser()))
    for expected in (*OBJECT_COMMANDS, "serve", "admin", "job", "find"):
        assert (expected,) in commands
    for name in OBJECT_COMMANDS:
        assert commands[(name,)].description and len(commands[(name,)].description) > 20
    for command in [(), *commands]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0, command
        assert "example" in out.getvalue().lower(), f"manta {' '.join(command)} --help has no example"
    top = subprocess.run([sys.executable, "-m", "manta", "--help"], capture_output=True, text=True, cwd=REPO)
    assert top.returncode == 0 and "put" in top.stdout and "example" in top.stdout
