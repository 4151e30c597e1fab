"""MemoryLimitProcessor: a leaking callback is stopped once RSS reaches the limit; RSS is read cheaply."""

from __future__ import annotations

import mmap
import os
import time

import anyio
import pytest

from processors._rss import RssReader
from processors.ack import AckProcessor
from processors.memory_limit import MemoryLimitProcessor
from swarrow import ConfigurationError, Consumer, Layer, MemoryBroker, Message, Stack

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


def resident_block(size: int) -> mmap.mmap:
    """`size` bytes fresh from the kernel, every page written: RSS grows by `size` whatever the allocator
    holds. (A bytearray may reuse memory an earlier test freed but the process kept resident: in the full
    suite, 24 x 8 MiB grew RSS by less than 48 MiB, and 32 MiB by nothing.)"""
    block = mmap.mmap(-1, size)
    block.write(b"\xff" * size)
    return block


async def test_stops_a_leaking_callback_once_rss_reaches_the_limit() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(40):
        broker.publish_nowait(Message(str(i).encode()), "q")
    provider = broker.provider("q", prefetch=40)
    leak: list[mmap.mmap] = []
    limit_mb = RssReader().read() / MIB + 48

    async def handle(message: Message) -> None:
        leak.append(resident_block(8 * MIB))

    stack = Stack(
        Layer(MemoryLimitProcessor, megabytes=limit_mb),
        Layer(AckProcessor, provider=provider),
        callback=handle,
    )
    try:
        with anyio.fail_after(5):
            reason = await Consumer(provider, stack).run()
    finally:
        for block in leak:
            block.close()
    assert reason.code == "memory_limit"
    assert "MiB >= limit" in reason.detail
    # ~48 MiB over the start in 8 MiB steps: about 6 messages, never all 40.
    assert 4 <= len(provider.acked) <= 12
    assert broker.message_count("q") == 40 - len(provider.acked)


async def test_checks_after_the_inner_layer_and_not_when_it_raises() -> None:
    rss = 100 * MIB
    calls = 0

    async def inner(message: Message) -> bool:
        nonlocal calls
        calls += 1
        if message.body == b"fail":
            raise RuntimeError("boom")
        return True

    processor = MemoryLimitProcessor(inner, megabytes=200, check_interval=0)
    processor._read = lambda: rss
    assert await processor(Message()) is True
    rss = 200 * MIB  # "at or over" the limit stops
    with pytest.raises(RuntimeError):
        await processor(Message(b"fail"))
    assert await processor(Message()) is False
    assert calls == 3


async def test_reads_rss_at_most_once_per_check_interval() -> None:
    reads = 0

    def read() -> int:
        nonlocal reads
        reads += 1
        return 300 * MIB if reads > 1 else 100 * MIB

    async def inner(message: Message) -> bool:
        return True

    processor = MemoryLimitProcessor(inner, megabytes=200, check_interval=3600)
    processor._read = read
    for _ in range(50):
        assert await processor(Message()) is True
    assert reads == 1
    processor._next_check = 0.0  # the interval has passed
    assert await processor(Message()) is False
    assert reads == 2


def test_rss_reader_tracks_current_rss_and_is_cheap() -> None:
    reader = RssReader()
    reader.open()
    try:
        before = reader.read()
        block = resident_block(32 * MIB)
        grown = reader.read()
        block.close()
        assert before > 0
        assert grown - before >= 24 * MIB
        if not reader.peak_only:
            start = time.perf_counter()
            for _ in range(1000):
                reader.read()
            per_read = (time.perf_counter() - start) / 1000
            assert per_read < 20e-6  # ~0.7 µs measured; generous for loaded CI machines
            assert reader.read() < grown  # current, not peak
    finally:
        reader.close()


def test_rss_reader_reopens_after_a_fork() -> None:
    reader = RssReader()
    if reader.peak_only:
        pytest.skip("no /proc/self/statm on this platform")
    reader.open()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its own statm, not the parent's held one
        try:
            reader.open()
            os.write(write_fd, str(reader._pid == os.getpid()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 16) == b"True"
    os.close(read_fd)
    reader.close()


@pytest.mark.parametrize("megabytes", [0, -5, float("nan"), float("inf"), True, "256"])
def test_rejects_bad_megabytes(megabytes: object) -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match="megabytes"):
        MemoryLimitProcessor(inner, megabytes=megabytes)  # type: ignore[arg-type]


async def test_a_limit_below_the_current_rss_is_refused_before_any_message() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"kept"), "q")
    provider = broker.provider("q", prefetch=10)
    seen: list[Message] = []
    limit_mb = RssReader().read() / MIB / 2
    stack = Stack(
        Layer(MemoryLimitProcessor, megabytes=limit_mb),
        Layer(AckProcessor, provider=provider),
        callback=seen.append,
    )
    with pytest.raises(ConfigurationError, match=r"at or below the process's current RSS \(\d+\.\d MiB\)"):
        with anyio.fail_after(5):
            await Consumer(provider, stack).run()
    assert seen == [] and broker.message_count("q") == 1
