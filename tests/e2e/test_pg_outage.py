"""Two front doors whose catalog is in PostgreSQL, when PostgreSQL is SIGKILLed during
uploads and started again: the doors answer 503 ServiceUnavailable while it is away and
answer again once it is back (neither restarted); every acknowledged object reads back
identical, and every listed object is whole (a PUT whose answer was lost may or may not
have landed, but never in part)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import Server, free_port, require, traversable_dir
from tests.pgserver import PgServer, pg_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]

BUCKET = "outage"
UPLOADERS = 8
ONE_TRY: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 20}


@pytest.fixture
def pg_and_doors() -> Iterator[tuple[PgServer, list[Server]]]:
    reason = pg_unavailable()
    require(reason is None, reason or "")
    pg = PgServer()  # its own PostgreSQL: the test kills it
    pg.start()
    base = traversable_dir("manta-pg-outage-")
    url = pg.new_database("outage")
    doors = [Server(os.path.join(base, "data"), free_port(), catalog=url) for _ in range(2)]
    try:
        for door in doors:
            door.start()
        yield pg, doors
    finally:
        for door in doors:
            door.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def status_of(call: Any) -> int:
    try:
        call()
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    except BotoCoreError:
        return -1
    return 200


class Uploader:
    """PUTs new keys with known bodies, through one door, until told to stop."""

    def __init__(self, door: Server, n: int) -> None:
        self.s3: Any = door.client(**ONE_TRY)
        self.n = n
        self.sent: dict[str, bytes] = {}
        self.acked: set[str] = set()
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"u{self.n}/{i:05d}"
            body = os.urandom(500 + (i * 997) % 200_000)  # small (journalled) and larger bodies
            self.sent[key] = body
            status = status_of(lambda: self.s3.put_object(Bucket=BUCKET, Key=key, Body=body))  # noqa: B023
            self.statuses.append(status)
            if status == 200:
                self.acked.add(key)
            else:
                time.sleep(0.05)
            i += 1
        self.s3.close()


def test_doors_answer_503_while_postgresql_is_killed_mid_upload_and_recover(
        pg_and_doors: tuple[PgServer, list[Server]]) -> None:
    pg, doors = pg_and_doors
    clients: list[Any] = [door.client(**ONE_TRY) for door in doors]
    clients[0].create_bucket(Bucket=BUCKET)
    uploaders = [Uploader(doors[n % 2], n) for n in range(UPLOADERS)]
    threads = [threading.Thread(target=u.run) for u in uploaders]
    for t in threads:
        t.start()
    time.sleep(2)
    pg.kill()
    time.sleep(1)
    for s3 in clients:  # every door, every kind of request: 503 while the database is away
        assert [status_of(lambda c=s3: c.get_object(Bucket=BUCKET, Key="u0/00000")),
                status_of(lambda c=s3: c.put_object(Bucket=BUCKET, Key="during", Body=b"x")),
                status_of(lambda c=s3: c.list_objects_v2(Bucket=BUCKET))] == [503, 503, 503], doors[0].log()
    time.sleep(1)
    pg.restart()
    deadline = time.monotonic() + 30
    for s3 in clients:
        while status_of(lambda c=s3: c.head_bucket(Bucket=BUCKET)) != 200:
            assert time.monotonic() < deadline, f"no recovery within 30 s: {doors[0].log()}"
            time.sleep(0.5)
    time.sleep(1)  # uploads succeed again for a moment
    for u in uploaders:
        u.stop.set()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()

    statuses = [s for u in uploaders for s in u.statuses]
    assert statuses.count(200) > 0 and set(statuses) - {200} <= {503, -1}, sorted(set(statuses))
    assert 503 in statuses, "no upload met the outage"
    sent = {k: v for u in uploaders for k, v in u.sent.items()}
    acked = {k for u in uploaders for k in u.acked}
    pages = clients[1].get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    listed = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
    assert acked <= set(listed), f"acknowledged but not listed: {sorted(acked - set(listed))[:5]}"
    for key, size in listed.items():
        body = clients[0].get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body == sent[key] and size == len(body), f"{key}: not the whole body sent"
    assert "during" not in listed
    print(f"\n{len(acked)} acknowledged, {len(listed)} listed, {statuses.count(503)} answered 503, "
          f"{statuses.count(-1)} lost connections")
    for door in doors:  # the same servers throughout
        assert door.proc is not None and door.proc.poll() is None
    for s3 in clients:
        s3.close()
