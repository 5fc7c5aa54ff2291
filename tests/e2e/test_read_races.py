"""Reads racing disconnects, overwrites and deletes: no descriptor is closed while a read
still uses it, none leaks, and no healthy blob is reported damaged.

A GET of a big range reads blocks in worker threads, one batch ahead of the send. When
the client goes away mid-body, Starlette cancels the response task; the files it reads
must be closed only after the worker thread is done with them (a descriptor closed under
a running `pread` gives EBADF, or, once the number is reused by another request's open,
the wrong file: either way a healthy blob is queued for repair).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server, default_workers, running_server
from tests.e2e.test_crash import sign

MIB = 1024 * 1024
SIZE = 12 * MIB
KEYS = [f"race-{i}" for i in range(4)]
READERS = 4
GETS_PER_READER = 150
DEADLINE_S = 90.0


@pytest.fixture(params=[None, 2], ids=["default-workers", "2-workers"])
def race_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    with running_server("manta-races-", workers=request.param or default_workers()) as srv:
        yield srv


def _payload(key: str, version: int) -> bytes:
    unit = f"{key}:{version}:".encode()
    return (unit * (SIZE // len(unit) + 1))[: SIZE]


def _get_and_drop(server: Server, bucket: str, key: str, rng: random.Random) -> None:
    """A ranged GET whose client reads part of the body, then resets the connection."""
    start = rng.randrange(0, 2 * MIB)
    end = start + rng.randrange(5 * MIB, 9 * MIB)  # more than one read-ahead batch
    target = f"/{bucket}/{key}"
    headers = sign(server, "GET", target, {"Range": f"bytes={start}-{end}"})
    lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall("\r\n".join(lines).encode())
        want = rng.choice([0, 0, 0, 1, 64 * 1024, MIB, 3 * MIB])  # 0: gone before the body
        got = 0
        while got < want:
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            got += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_disconnects_overwrites_and_deletes_do_not_close_fds_under_reads(race_server: Server) -> None:
    server = race_server
    s3 = server.client()
    bucket = "read-races"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=_payload(key, 0))  # type: ignore[attr-defined]
    assert server.proc is not None
    pid = server.proc.pid
    s3.get_object(Bucket=bucket, Key=KEYS[0])["Body"].read()  # type: ignore[attr-defined]
    fds_before = _open_fds(pid)

    deadline = time.monotonic() + DEADLINE_S
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(GETS_PER_READER):
                if time.monotonic() > deadline:
                    return
                _get_and_drop(server, bucket, rng.choice(KEYS), rng)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def writer() -> None:
        rng = random.Random(99)
        version = 0
        client = server.client()
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                version += 1
                key = rng.choice(KEYS)
                if version % 3 == 0:
                    client.delete_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
                else:
                    client.put_object(Bucket=bucket, Key=key, Body=_payload(key, version))  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(seed,)) for seed in range(READERS)]
    writing = threading.Thread(target=writer)
    for thread in [*readers, writing]:
        thread.start()
    for thread in readers:
        thread.join(DEADLINE_S + 30)
    stop.set()
    writing.join(60)
    assert not errors, errors

    settle_until = time.monotonic() + 15
    while _open_fds(pid) > fds_before + 2 and time.monotonic() < settle_until:
        time.sleep(0.2)
    fds_after = _open_fds(pid)
    with open(server.log_path, errors="replace") as fh:
        log = fh.read()
    assert "Bad file descriptor" not in log, server.log()
    assert "queued for repair" not in log, server.log()
    assert fds_after <= fds_before + 2, f"descriptors leaked: {fds_before} -> {fds_after}"
    for key in KEYS:  # every key still reads whole and verified
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
        except s3.exceptions.NoSuchKey:  # type: ignore[attr-defined]
            continue
        assert body.startswith(f"{key}:".encode()) and len(body) == SIZE
