"""The in-task tools end to end (mpipe, mtee, mcat, msplit): a real server, real bubblewrap
containers, the `manta` CLI as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import pytest

from tests.conftest import Server
from tests.e2e.test_cli_find import manta
from tests.e2e.test_jobs import (
    MAP_WC_KEYED,
    REDUCE_WC_KEYED,
    job_json,
    local_pipeline,
    sandbox_usable,  # noqa: F401 (an autouse fixture: skip without bwrap)
    texts,
    upload,
)

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def eve(server: Server) -> dict[str, str]:
    """Another account."""
    added = manta(server.url, "admin", "user", "add", f"tooleve{os.getpid()}", "--json")
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)  # type: ignore[no-any-return]


def job_id_of(result: Any) -> str:
    found = re.search(r"\b[0-9a-f]{16}\b", result.stderr + result.stdout)
    assert found, result.stderr
    return found.group(0)


def body(s3: Any, name: str) -> bytes:
    bucket, _, key = name.partition("/")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def test_mpipe_stores_each_input_s_errors_under_its_own_name(server: Server, s3: Any, bucket: str,
                                                             eve: dict[str, str]) -> None:
    logs = [f"line {i}\nERROR {i} went wrong\nfine\nERROR {i} again\n".encode() for i in range(3)]
    names = upload(s3, bucket, "logs/", logs)
    command = (f"grep ERROR | mpipe -p -H 'content-type: text/plain' "
               f"{bucket}/errors/$(basename $MANTA_INPUT_OBJECT)")
    result = manta(server.url, "job", "create", "-w", "-m", command, *names)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result)
    expected = [f"{bucket}/errors/{n.rsplit('/', 1)[1]}" for n in names]
    for i, name in enumerate(expected):
        assert body(s3, name) == f"ERROR {i} went wrong\nERROR {i} again\n".encode()
        bucket_, _, key = name.partition("/")
        assert s3.head_object(Bucket=bucket_, Key=key)["ContentType"] == "text/plain"
    outputs = manta(server.url, "job", "outputs", job_id).stdout.splitlines()
    assert sorted(outputs) == expected  # named outputs are the job's outputs; stdout is not one
    job = job_json(server.url, job_id)
    assert sorted(o for t in job["tasks"] for o in t["outputs"]) == expected
    # owned by the job's account: another account cannot read them
    eve_s3 = server.client(eve["access_key"], eve["secret_key"])
    with pytest.raises(Exception, match="AccessDenied"):
        eve_s3.get_object(Bucket=bucket, Key=f"errors/{names[0].rsplit('/', 1)[1]}")  # type: ignore[attr-defined]


def test_mpipe_into_another_account_s_bucket_fails_and_stores_nothing(server: Server, s3: Any, bucket: str,
                                                                      eve: dict[str, str]) -> None:
    eve_s3 = server.client(eve["access_key"], eve["secret_key"])
    theirs = f"eves-{os.getpid()}"
    eve_s3.create_bucket(Bucket=theirs)  # type: ignore[attr-defined]
    names = upload(s3, bucket, "in/", [b"ERROR one\n"])
    before = manta(server.url, "ls", bucket).stdout
    for target in (f"{theirs}/stolen", "_images/poisoned.tar", f"nosuch-{os.getpid()}/x"):
        result = manta(server.url, "job", "create", "-w", "-m",
                       f"grep ERROR | mpipe {bucket}/mine; grep ERROR | mpipe {target}", *names)
        assert result.returncode == 1
        job_id = job_id_of(result)
        errors = json.loads(manta(server.url, "job", "errors", job_id, "--json").stdout)
        assert [e["code"] for e in errors] == ["UserTaskError"], errors
        assert target in errors[0]["message"] and "nothing was stored" in errors[0]["message"]
        assert manta(server.url, "job", "outputs", job_id).stdout == ""
    listed = eve_s3.list_objects_v2(Bucket=theirs)  # type: ignore[attr-defined]
    assert listed["KeyCount"] == 0
    assert manta(server.url, "ls", bucket).stdout == before  # not even the allowed name was stored


def test_mtee_and_mcat_in_a_two_phase_job(server: Server, s3: Any, bucket: str) -> None:
    big = [os.urandom(512 * 1024) for _ in range(2)]
    s3.put_object(Bucket=bucket, Key="big/a", Body=big[0])
    s3.put_object(Bucket=bucket, Key="big/b", Body=big[1])
    listing = f"{bucket}/big/a\n{bucket}/big/b\n".encode()
    s3.put_object(Bucket=bucket, Key="list", Body=listing)
    result = manta(server.url, "job", "create", "-o",
                   "-m", f"mtee {bucket}/copy-of-list | xargs mcat",
                   "-r", "wc -c", f"{bucket}/list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(big[0]) + len(big[1]))]  # the reducer read both by reference
    assert body(s3, f"{bucket}/copy-of-list") == listing
    job = job_json(server.url, job_id_of(result))
    (mapper,) = [t for t in job["tasks"] if t["type"] == "map"]
    (reducer,) = [t for t in job["tasks"] if t["type"] == "reduce"]
    assert mapper["outputs"] == [f"{bucket}/big/a", f"{bucket}/big/b"]  # mtee's copy is no output
    assert mapper["bytes_local"] + mapper["bytes_remote"] == len(listing)  # mcat read nothing
    assert reducer["bytes_local"] + reducer["bytes_remote"] == len(big[0]) + len(big[1])


@pytest.fixture(scope="module")
def words(server: Server, s3: Any) -> tuple[str, list[bytes]]:
    bucket = f"split-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    datas = texts(12, seed=7)
    upload(s3, bucket, "texts/", datas)
    return bucket, datas


def test_msplit_word_count_with_three_reducers(server: Server, words: tuple[str, list[bytes]]) -> None:
    bucket, datas = words
    expected = local_pipeline(datas, ("map", MAP_WC_KEYED), ("reduce", REDUCE_WC_KEYED)).decode()
    result = manta(server.url, "job", "create", "-o", "--count", "3", "-m", MAP_WC_KEYED + " | msplit -n 3",
                   "-r", REDUCE_WC_KEYED, f"{bucket}/texts/")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(expected.splitlines())  # no word in two reducers
    job = job_json(server.url, job_id_of(result))
    mappers = [t for t in job["tasks"] if t["type"] == "map"]
    assert all(o.rsplit("/", 1)[1].startswith(f"{t['id']}.s0.r") for t in mappers for o in t["outputs"])


def test_msplit_partitions_csv_by_its_second_column(server: Server, s3: Any, bucket: str) -> None:
    keys = [f"key{k}" for k in range(20)]
    rows = [[f"{i},{keys[(i * 7 + j) % 20]},{i * j}" for j in range(15)] for i in range(4)]
    names = upload(s3, bucket, "csv/", [("\n".join(r) + "\n").encode() for r in rows])
    result = manta(server.url, "job", "create", "-w", "--count", "3", "-m", "msplit -d , -f 2",
                   "-r", "cut -d, -f2 | sort -u", *names)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result)
    outputs = manta(server.url, "job", "outputs", job_id).stdout.splitlines()
    assert len(outputs) == 3
    seen: dict[str, int] = {}
    for reducer, name in enumerate(sorted(outputs)):
        for key in body(s3, name).decode().split():
            assert key not in seen, f"{key} went to reducers {seen[key]} and {reducer}"
            seen[key] = reducer
    used = {line.split(",")[1] for r in rows for line in r}
    assert set(seen) == used  # every key landed in exactly one reducer
    for key, reducer in seen.items():  # Manta's choice: the first 32 bits of the key's MD5, mod N
        assert int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "big") % 3 == reducer


def test_msplit_and_mpipe_reducer_numbers_must_fit_the_next_phase(server: Server, s3: Any,
                                                                  bucket: str) -> None:
    names = upload(s3, bucket, "few/", [b"a\tb\n"])
    for command, message in (("msplit -n 2", "msplit -n 2: the next phase has 3 reducer(s)"),
                             ("mpipe -r 3", "mpipe -r 3: the next phase has 3 reducer(s) (numbered from 0)")):
        result = manta(server.url, "job", "create", "-w", "--count", "3", "-m", command, "-r", "cat", *names)
        assert result.returncode == 1, result.stderr
        errors = json.loads(manta(server.url, "job", "errors", job_id_of(result), "--json").stdout)
        assert [(e["code"], e["message"]) for e in errors] == [("UserTaskError", message)]


def test_each_task_in_a_reused_container_stores_only_its_own_outputs(server: Server, s3: Any,
                                                                     bucket: str) -> None:
    datas = [f"input {i}\n".encode() for i in range(12)]
    names = upload(s3, bucket, "many/", datas)
    # a call that never finishes (data file, no manifest) must not reach the next task
    command = ("test -z \"$(ls -A /manta/out)\" || { echo dirty >&2; exit 7; }; "
               "mpipe " + bucket + "/copies/$(basename $MANTA_INPUT_OBJECT); "
               "echo half > /manta/out/unfinished.d")
    result = manta(server.url, "job", "create", "-w", "-m", command, *names)
    assert result.returncode == 0, result.stderr
    for name, data in zip(names, datas, strict=True):
        assert body(s3, f"{bucket}/copies/{name.rsplit('/', 1)[1]}") == data
    job = job_json(server.url, job_id_of(result))
    assert sorted(o for t in job["tasks"] for o in t["outputs"]) == \
        sorted(f"{bucket}/copies/{n.rsplit('/', 1)[1]}" for n in names)


def test_msplit_j_routes_json_records_by_a_nested_field(server: Server, s3: Any, bucket: str) -> None:
    records = [json.dumps({"user": {"id": f"u{i % 7}"}, "n": i}) for i in range(40)]
    names = upload(s3, bucket, "json/", [("\n".join(records) + "\n").encode()])
    result = manta(server.url, "job", "create", "-w", "--count", "2", "-m", "msplit -j -f user.id",
                   "-r", "grep -o 'u[0-9]' | sort -u", *names)
    assert result.returncode == 0, result.stderr
    outputs = manta(server.url, "job", "outputs", job_id_of(result)).stdout.split()
    seen = set()
    for name in outputs:
        reducer = int(name.rsplit("-r", 1)[1])
        for key in body(s3, name).decode().split():
            assert int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "big") % 2 == reducer
            seen.add(key)
    assert seen == {f"u{i}" for i in range(7)}


def test_mpipe_without_a_name_makes_generated_outputs_and_replaces_stdout(server: Server, s3: Any,
                                                                          bucket: str) -> None:
    names = upload(s3, bucket, "gen/", [b"x\n"])
    result = manta(server.url, "job", "create", "-w", "-m", "echo one | mpipe; echo two | mpipe; echo not-an-output",
                   *names)
    assert result.returncode == 0, result.stderr
    job_id = job_id_of(result)
    outputs = manta(server.url, "job", "outputs", job_id).stdout.split()
    assert outputs == [f"_jobs_root/{job_id}/p0/p0-m0000000.m0", f"_jobs_root/{job_id}/p0/p0-m0000000.m1"]
    assert [body(s3, o) for o in outputs] == [b"one\n", b"two\n"]
