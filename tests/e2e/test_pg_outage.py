"""A server whose catalog is in PostgreSQL, when PostgreSQL dies and comes back: requests
answer 503 ServiceUnavailable while it is away, the same server answers again once it is
back (no restart), and what was acknowledged before reads back identical."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from tests.conftest import Server, free_port, require, traversable_dir
from tests.pgserver import PgServer, pg_unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.postgresql]


@pytest.fixture
def pg_and_server() -> Iterator[tuple[PgServer, Server]]:
    reason = pg_unavailable()
    require(reason is None, reason or "")
    pg = PgServer()  # its own server: the test kills it
    pg.start()
    base = traversable_dir("manta-pg-outage-")
    srv = Server(os.path.join(base, "data"), free_port(), catalog=pg.new_database("outage"))
    try:
        srv.start()
        yield pg, srv
    finally:
        srv.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def status_of(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    except (ConnectionClosedError, ReadTimeoutError):
        return -1
    return 200


def test_the_server_answers_503_while_postgresql_is_away_and_recovers_without_a_restart(
        pg_and_server: tuple[PgServer, Server]) -> None:
    pg, srv = pg_and_server
    s3 = srv.client(retries={"max_attempts": 1}, read_timeout=20, connect_timeout=5)
    assert isinstance(s3.meta.config, Config)  # type: ignore[attr-defined]
    s3.create_bucket(Bucket="outage")  # type: ignore[attr-defined]
    acked = {f"k{i}": os.urandom(1000 + i) for i in range(20)}
    for key, body in acked.items():
        s3.put_object(Bucket="outage", Key=key, Body=body)  # type: ignore[attr-defined]

    pg.kill()
    statuses = [status_of(lambda: s3.get_object(Bucket="outage", Key="k0")),  # type: ignore[attr-defined]
                status_of(lambda: s3.put_object(Bucket="outage", Key="during", Body=b"x")),  # type: ignore[attr-defined]
                status_of(lambda: s3.list_objects_v2(Bucket="outage"))]  # type: ignore[attr-defined]
    assert statuses == [503, 503, 503], srv.log()

    pg.restart()
    deadline = time.monotonic() + 30
    while status_of(lambda: s3.head_bucket(Bucket="outage")) != 200:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"no recovery within 30 s: {srv.log()}"
        time.sleep(0.5)
    for key, body in acked.items():
        assert s3.get_object(Bucket="outage", Key=key)["Body"].read() == body  # type: ignore[attr-defined]
    s3.put_object(Bucket="outage", Key="after", Body=b"back")  # type: ignore[attr-defined]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="outage")["Contents"]]  # type: ignore[attr-defined]
    assert "during" not in listed and "after" in listed and len(listed) == len(acked) + 1
    assert srv.proc is not None and srv.proc.poll() is None  # the same server, never restarted
