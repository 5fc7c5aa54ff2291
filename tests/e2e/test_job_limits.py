"""Accounts cannot starve each other through jobs: per-task memory ceilings, the host's
memory budget, fair share of a node's slots, no empty partition objects, job quotas."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, running_server
from tests.e2e.test_cli_find import manta
from tests.e2e.test_jobs import job_id_of, sandbox_usable, upload  # noqa: F401 (fixture)

pytestmark = pytest.mark.sandbox

LIMITS_ENV = {"MANTA_TASK_SLOTS": "2", "MANTA_TASK_MEMORY_BUDGET_MB": "300",
              "MANTA_TASK_MAX_MEMORY_MB": "256", "MANTA_TASK_MAX_DISK_MB": "128"}


@pytest.fixture(scope="module")
def small() -> Iterator[Server]:
    """A one-node server with 2 slots, 300 MB for all running tasks, 256 MB per task at most."""
    with running_server("manta-limits-", env=LIMITS_ENV, extra_args=["--nodes", "1", "--copies", "1"]) as srv:
        yield srv


def user(srv: Server, name: str, *args: str) -> dict[str, str]:
    added = manta(srv.url, "admin", "user", "add", name, "--json", *args)
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)  # type: ignore[no-any-return]


def as_user(srv: Server, account: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manta(srv.url, *args, access_key=account["access_key"], secret_key=account["secret_key"])


def job(srv: Server, job_id: str, account: dict[str, str] | None = None) -> dict[str, Any]:
    keys = {} if account is None else {"access_key": account["access_key"], "secret_key": account["secret_key"]}
    got = manta(srv.url, "job", "get", job_id, "--json", **keys)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def test_a_job_asking_for_more_than_the_ceilings_fails_at_create(small: Server) -> None:
    small.client().create_bucket(Bucket="ceil")  # type: ignore[attr-defined]
    names = upload(small.client(), "ceil", "in/", [b"x\n"])
    big = manta(small.url, "job", "create", "--memory", "257", "-m", "cat", *names)
    assert big.returncode == 1 and big.stdout == ""
    assert "memory_mb 257 is above the 256 MB a task may use on this server" in big.stderr
    disk = manta(small.url, "job", "create", "--disk", "129", "-m", "cat", *names)
    assert disk.returncode == 1 and "disk_mb 129 is above the 128 MB" in disk.stderr
    listed = manta(small.url, "job", "list", "--json")
    assert json.loads(listed.stdout) == []  # neither was created
    fits = manta(small.url, "job", "create", "-o", "--memory", "256", "--disk", "128", "-m", "cat", *names)
    assert fits.returncode == 0 and fits.stdout == "x\n", fits.stderr


def _intervals(stdout: str) -> list[tuple[float, float]]:
    values = [float(v) for v in stdout.split()]
    return sorted(zip(values[::2], values[1::2], strict=True))


def test_tasks_whose_memory_exceeds_the_budget_together_run_one_after_the_other(small: Server) -> None:
    client = small.client()
    client.create_bucket(Bucket="budget")  # type: ignore[attr-defined]
    names = upload(client, "budget", "in/", [b"1\n", b"2\n"])
    command = "echo $(date +%s.%N) $(sleep 1; date +%s.%N)"
    # 2 x 100 MB fit the 300 MB budget: both slots are used at once
    both = manta(small.url, "job", "create", "-o", "--memory", "100", "-m", command, *names)
    assert both.returncode == 0, both.stderr
    (s1, e1), (s2, e2) = _intervals(both.stdout)
    assert s2 < e1, "two tasks that fit together should have run at the same time"
    # 2 x 200 MB do not: the second waits for the first to end, though a slot is free
    apart = manta(small.url, "job", "create", "-o", "--memory", "200", "-m", command, *names)
    assert apart.returncode == 0, apart.stderr
    (s1, e1), (s2, e2) = _intervals(apart.stdout)
    assert s2 >= e1, f"the second task started at {s2}, before the first ended at {e1}"


def test_reducers_make_no_objects_for_empty_partitions(small: Server) -> None:
    client = small.client()
    client.create_bucket(Bucket="parts")  # type: ignore[attr-defined]
    lines = [f"key{i}\t{i}" for i in range(10)]
    names = upload(client, "parts", "in/", [("\n".join(lines) + "\n").encode()])
    done = manta(small.url, "job", "create", "-o", "--memory", "64", "-r", "cat", "--count", "64",
                 "-r", "cat", "--count", "64", *names)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(lines)
    job_id = job_id_of(done.stderr)
    listing = client.list_objects_v2(Bucket="_jobs_root", Prefix=f"{job_id}/")  # type: ignore[attr-defined]
    sizes = [o["Size"] for o in listing.get("Contents", [])]
    # 10 keys reach at most 10 of the 64 partitions in each phase: 8,320 objects before
    assert sizes and min(sizes) > 0 and len(sizes) <= 20, sizes
    info = job(small, job_id)
    assert [p["done"] for p in info["phases"]] == [64, 64]  # every reducer still ran


def test_a_short_job_of_one_account_runs_while_another_has_a_long_queue(small: Server) -> None:
    bob, carol = user(small, "bob-fair"), user(small, "carol-fair")
    for account, bucket in ((bob, "bob-fair"), (carol, "carol-fair")):
        made = as_user(small, account, "mb", bucket)
        assert made.returncode == 0, made.stderr
    bob_s3 = small.client(bob["access_key"], bob["secret_key"])
    carol_s3 = small.client(carol["access_key"], carol["secret_key"])
    bob_inputs = upload(bob_s3, "bob-fair", "in/", [f"{i}\n".encode() for i in range(8)])
    carol_inputs = upload(carol_s3, "carol-fair", "in/", [b"hello\n"])
    queued = as_user(small, bob, "job", "create", "--memory", "64", "-m", "sleep 10; cat", *bob_inputs)
    assert queued.returncode == 0, queued.stderr
    bob_job = queued.stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while job(small, bob_job, bob)["phases"][0]["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        short = as_user(small, carol, "job", "create", "-o", "--memory", "64", "-m", "wc -c", *carol_inputs)
        assert short.returncode == 0 and short.stdout.strip() == "6", short.stderr
        # carol took the first slot that freed: bob's queue (8 x 10 s on 2 slots) was still there
        bob_phase = job(small, bob_job, bob)["phases"][0]
        assert bob_phase["done"] <= 2, bob_phase
    finally:
        as_user(small, bob, "job", "cancel", bob_job)


# -- per-account limits (`manta admin user add --quota ...`) ------------------------------------

def _errors(srv: Server, account: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    got = as_user(srv, account, "job", "errors", job_id, "--json")
    return json.loads(got.stdout)  # type: ignore[no-any-return]


def test_an_account_at_its_running_jobs_limit_cannot_create_another(small: Server) -> None:
    dora = user(small, "dora-jobs", "--quota", "jobs=1")
    first = as_user(small, dora, "job", "create", "--open", "-m", "cat")
    assert first.returncode == 0, first.stderr
    second = as_user(small, dora, "job", "create", "--open", "-m", "cat")
    assert second.returncode == 1 and "QuotaExceeded" in second.stderr and "1 running jobs" in second.stderr
    other = manta(small.url, "job", "create", "--open", "-m", "cat")  # root is not held back by dora
    assert other.returncode == 0, other.stderr
    manta(small.url, "job", "cancel", other.stdout.strip())
    as_user(small, dora, "job", "cancel", first.stdout.strip())
    third = as_user(small, dora, "job", "create", "--open", "-m", "cat")
    assert third.returncode == 0, third.stderr
    as_user(small, dora, "job", "cancel", third.stdout.strip())


def test_a_jobs_outputs_stop_at_the_accounts_outputs_per_job_limit(small: Server) -> None:
    erin = user(small, "erin-outputs", "--quota", "outputs=2")
    assert as_user(small, erin, "mb", "erin-outputs").returncode == 0
    s3 = small.client(erin["access_key"], erin["secret_key"])
    inputs = upload(s3, "erin-outputs", "in/", [f"{i}\n".encode() for i in range(5)])
    done = as_user(small, erin, "job", "create", "-w", "--memory", "64", "-m", "cat", *inputs)
    job_id = job_id_of(done.stdout or done.stderr)
    info = job(small, job_id, erin)
    assert info["state"] == "done" and info["phases"][0]["done"] == 2, info
    errors = _errors(small, erin, job_id)
    assert len(errors) == 3 and {e["code"] for e in errors} == {"QuotaExceededError"}, errors
    listing = s3.list_objects_v2(Bucket="_jobs_erin-outputs", Prefix=f"{job_id}/")
    assert len(listing.get("Contents", [])) == 2


def test_an_account_over_its_object_quota_gets_a_quota_error_and_others_do_not(small: Server) -> None:
    fred = user(small, "fred-objects", "--quota", "objects=3")
    assert as_user(small, fred, "mb", "fred-objects").returncode == 0
    s3 = small.client(fred["access_key"], fred["secret_key"])
    inputs = upload(s3, "fred-objects", "in/", [b"a\n", b"b\n", b"c\n"])
    with pytest.raises(Exception, match="QuotaExceeded"):
        s3.put_object(Bucket="fred-objects", Key="fourth", Body=b"d")
    done = as_user(small, fred, "job", "create", "-w", "--memory", "64", "-m", "cat", *inputs)
    job_id = job_id_of(done.stdout or done.stderr)
    info = job(small, job_id, fred)
    assert info["state"] == "done" and info["phases"][0]["done"] == 0
    errors = _errors(small, fred, job_id)
    assert len(errors) == 3 and {e["code"] for e in errors} == {"QuotaExceededError"}, errors
    assert "objects" in errors[0]["message"]
    # root's job over the same kind of input is unaffected
    small.client().create_bucket(Bucket="root-objects")  # type: ignore[attr-defined]
    mine = upload(small.client(), "root-objects", "in/", [b"a\n", b"b\n", b"c\n"])
    ok = manta(small.url, "job", "create", "-o", "--memory", "64", "-m", "cat", *mine)
    assert ok.returncode == 0 and sorted(ok.stdout.split()) == ["a", "b", "c"], ok.stderr


def test_an_accounts_tasks_in_flight_stay_within_its_limit(small: Server) -> None:
    from tests.e2e.test_jobs import sleepers

    gina = user(small, "gina-tasks", "--quota", "tasks=1")
    assert as_user(small, gina, "mb", "gina-tasks").returncode == 0
    s3 = small.client(gina["access_key"], gina["secret_key"])
    inputs = upload(s3, "gina-tasks", "in/", [f"{i}\n".encode() for i in range(3)])
    marker = f"0.4{os.getpid() % 1000:03d}1"
    proc = subprocess.Popen(
        [*_cli(), "job", "create", "-o", "--memory", "64", "-m", f"sleep {marker}; cat", *inputs],
        env=_env(small, gina), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    while proc.poll() is None:
        seen.append(len(sleepers(marker)))
        time.sleep(0.01)
    out, err = proc.communicate()
    assert proc.returncode == 0 and sorted(out.split()) == ["0", "1", "2"], err
    assert max(seen) == 1, seen  # 2 slots were free, but gina may have one task in flight


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "manta"]


def _env(srv: Server, account: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MANTA_", "AWS_"))}
    env.update(MANTA_URL=srv.url, MANTA_ACCESS_KEY=account["access_key"], MANTA_SECRET_KEY=account["secret_key"])
    return env
