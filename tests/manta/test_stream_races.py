"""stream_opened against a response cancelled mid-read (a client that went away): the
replica files stay open until the worker thread reading them is done, then close once.

A real store and BlobReader; the only stand-in is a reader wrapper that holds the worker
thread after its first block (a slow disk), so the cancel lands while a read is in flight.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from manta.server.s3.common import stream_opened
from storage import BlobReader, Store, StoreConfig

MIB = 1024 * 1024


class HeldReader:
    """A real BlobReader whose block iterator waits at the second block until released."""

    def __init__(self, reader: BlobReader) -> None:
        self.reader = reader
        self.blocking = reader.blocking
        self.reading = threading.Event()
        self.release = threading.Event()
        self.closes = 0

    def read(self, start: int, length: int) -> Iterator[bytes]:
        for i, block in enumerate(self.reader.read(start, length)):
            if i == 1:
                self.reading.set()
                self.release.wait(10)
            yield block

    def close(self) -> None:
        self.closes += 1
        self.reader.close()


@pytest.fixture
def store() -> Iterator[Store]:
    base = tempfile.mkdtemp(prefix="manta-stream-")
    store = Store(StoreConfig(os.path.join(base, "data")))
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(base, ignore_errors=True)


def test_cancelled_stream_closes_files_only_after_the_read_in_flight(store: Store) -> None:
    writer = store.writer()
    writer.write(os.urandom(6 * MIB))
    meta = writer.commit()
    reports: list[tuple[str, str, str]] = []

    def report(*args: Any) -> None:
        reports.append(args)

    held = HeldReader(BlobReader(meta.blob_id, meta.record(), store.nodes, report))
    held.reader.prime()

    async def run() -> None:
        async def consume() -> None:
            async for _ in stream_opened([(held, 0, 6 * MIB)]):  # type: ignore[list-item]
                pass

        task = asyncio.create_task(consume())
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, held.reading.wait, 10)
        task.cancel()  # the client went away while a worker thread reads the blob
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release.set()
        for _ in range(200):  # the worker finishes its batch, then the files close
            if held.closes:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert reports == []  # no "read error: Bad file descriptor", nothing queued for repair
    assert held.closes == 1
    assert held.reader._pins == {}
