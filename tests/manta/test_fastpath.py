"""The request fast path's parts: the held response head, request bodies as the parser gives them, blocking calls on the pool, request ids."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from manta.server.protocol import (
    BATCH_WRITE_BYTES,
    BODY_HIGH_WATER,
    JOIN_BODY_BYTES,
    BatchingTransport,
    BodyReceiver,
    HeadHoldingTransport,
)
from manta.server.s3.app import request_id
from manta.server.s3.body import BodyClock
from manta.server.s3.common import in_thread


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 7


class FakeCycle:
    def __init__(self, method: str = "GET") -> None:
        self.scope: dict[str, Any] = {"method": method}
        self.response_started = False


def holding(method: str = "GET") -> tuple[HeadHoldingTransport, FakeTransport, FakeCycle]:
    transport, cycle = FakeTransport(), FakeCycle(method)
    return HeadHoldingTransport(transport, cycle), transport, cycle  # type: ignore[arg-type]


def test_small_response_leaves_in_one_write() -> None:
    wrapper, transport, cycle = holding()
    cycle.response_started = True
    wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.writes == []
    wrapper.write(b"body")
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    wrapper.write(b"more")
    assert transport.writes[-1] == b"more"


def test_large_first_body_write_is_not_copied_onto_the_head() -> None:
    wrapper, transport, cycle = holding()
    cycle.response_started = True
    big = b"x" * (JOIN_BODY_BYTES + 1)
    wrapper.write(b"head")
    wrapper.write(big)
    assert transport.writes == [b"head", big]


def test_continue_and_head_answers_pass_straight_through() -> None:
    wrapper, transport, cycle = holding()
    wrapper.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    head_wrapper, head_transport, head_cycle = holding("HEAD")
    head_cycle.response_started = True
    head_wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert head_transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]


def test_close_and_flush_send_a_held_head() -> None:
    wrapper, transport, cycle = holding()
    cycle.response_started = True
    wrapper.write(b"head")
    wrapper.close()
    assert transport.writes == [b"head"] and transport.closed
    assert wrapper.is_closing()  # everything else is the real transport's
    wrapper.flush()
    assert transport.writes == [b"head"]


def test_small_writes_of_a_crowded_loop_leave_together_at_the_end_of_its_pass_in_order() -> None:
    crowded = True

    async def main() -> None:
        nonlocal crowded
        transport = FakeTransport()
        batching = BatchingTransport(transport, asyncio.get_running_loop(), lambda: crowded)  # type: ignore[arg-type]
        batching.write(b"one ")
        batching.writelines([b"two ", b"three"])
        assert transport.writes == [] and batching.get_write_buffer_size() == 7 + 13
        await asyncio.sleep(0)  # the next pass
        assert transport.writes == [b"one two three"]
        big = b"x" * (BATCH_WRITE_BYTES + 1)
        batching.write(b"small")
        batching.write(big)  # what waits goes first, then the big write at once
        assert transport.writes[1:] == [b"small", big]
        await asyncio.sleep(0)
        assert len(transport.writes) == 3
        batching.write(b"last")
        batching.write_eof()
        assert transport.writes[-1] == b"last" and transport.eof
        crowded = False  # alone: written at once, unless something waits (order)
        batching.write(b"alone")
        assert transport.writes[-1] == b"alone"
        crowded = True
        batching.write(b"waits")
        crowded = False
        batching.write(b" behind")
        assert transport.writes[-1] == b"alone"
        await asyncio.sleep(0)
        assert transport.writes[-1] == b"waits behind"
        crowded = True
        batching.write(b"answer")
        batching.close()  # close sends what waits first
        assert transport.writes[-1] == b"answer" and transport.closed
        await asyncio.sleep(0)  # the pass's own send finds nothing (and no write after close)
        assert transport.writes[-1] == b"answer"

        aborted = FakeTransport()
        batching = BatchingTransport(aborted, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        batching.write(b"dropped")
        batching.abort()
        await asyncio.sleep(0)
        assert aborted.writes == [] and aborted.closed

        gone = FakeTransport()
        batching = BatchingTransport(gone, asyncio.get_running_loop(), lambda: True)  # type: ignore[arg-type]
        batching.write(b"to nobody")
        gone.closed = True  # the connection was lost meanwhile
        await asyncio.sleep(0)
        assert gone.writes == []
        assert batching.is_closing()  # everything else is the real transport's

    asyncio.run(main())


def test_request_ids_are_16_hex_digits_and_differ() -> None:
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9A-F]{16}", rid) for rid in ids)


def test_in_thread_returns_and_raises() -> None:
    async def main() -> None:
        assert await in_thread(sum, [1, 2, 3]) == 6
        try:
            await in_thread(int, "x")
        except ValueError:
            return
        raise AssertionError("the thread's exception was not raised")

    asyncio.run(main())


def test_a_cancelled_in_thread_call_waits_for_the_thread() -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> None:
        release.wait(10)
        finished.set()

    async def main() -> bool:
        task = asyncio.ensure_future(in_thread(blocking))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # the cancel waits for the call to return
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            return finished.is_set()
        return False

    assert asyncio.run(main())


class FakeFlow:
    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.resumes += 1


class BodyCycle:
    def __init__(self) -> None:
        self.flow = FakeFlow()
        self.transport = FakeTransport()
        self.message_event = asyncio.Event()
        self.waiting_for_100_continue = True
        self.disconnected = False
        self.response_complete = False
        self.more_body = True


def test_body_pieces_are_passed_on_as_they_came_and_joined_only_when_several() -> None:
    async def main() -> None:
        cycle = BodyCycle()
        receiver = BodyReceiver(cycle)  # type: ignore[arg-type]
        one = b"a" * 1000
        receiver.add(one)
        message = await receiver.receive()
        assert message["body"] is one and message["more_body"] is True  # not copied
        assert cycle.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # once, on the first receive
        big = [bytes([i]) * (BODY_HIGH_WATER // 3) for i in range(4)]
        for piece in big[:3]:
            receiver.add(piece)
        assert not cycle.flow.paused  # at the mark, not above it
        receiver.add(big[3])
        assert cycle.flow.paused  # above: the socket waits for the app
        cycle.more_body = False
        message = await receiver.receive()
        assert message == {"type": "http.request", "body": b"".join(big), "more_body": False}
        assert not cycle.flow.paused and cycle.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        cycle.disconnected = True
        cycle.message_event.set()
        assert await receiver.receive() == {"type": "http.disconnect"}

    asyncio.run(main())


def test_a_body_is_due_within_its_timeout_and_no_slower_than_the_minimum_rate() -> None:
    clock = BodyClock(100.0, 30.0, 500.0)
    assert clock.due(100.0, 0) == 130.0  # the first bytes: the timeout alone
    assert clock.due(125.0, 100) == 130.2  # 100 bytes in 25 s: one second more per 500 bytes
    assert clock.due(125.0, 1_000_000) == 155.0  # a fast body: the timeout from now
    assert clock.due(200.0, 10_000) == 150.0  # behind: already due (RequestTimeout at once)
    assert BodyClock(100.0, 30.0, 0).due(1000.0, 1) == 1030.0  # 0: any rate
