"""A sync callback past its time limit: its thread keeps the slot, never runs beside its own retry."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest

from processors.ack import AckProcessor
from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import RetryProcessor
from processors.time_limit import TimeLimitProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
from swarrow.callback import hung_callback_threads
from swarrow.topology import RetryTopology

pytestmark = pytest.mark.anyio

CONCURRENCY = 2


class Tracker:
    """What the sync callback threads did: how many ran at once, and whether one id ran twice at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[str] = []
        self.most_at_once = 0
        self.overlaps: list[str] = []
        self.calls = 0
        self.release = threading.Event()

    def callback(self, message: Message) -> None:
        key = message.message_id or ""
        with self.lock:
            if key in self.running:
                self.overlaps.append(key)
            self.running.append(key)
            self.most_at_once = max(self.most_at_once, len(self.running))
            self.calls += 1
        try:
            self.release.wait(0.4)  # cannot be interrupted: 0.4 s against a 0.05 s limit
        finally:
            with self.lock:
                self.running.remove(key)


async def test_overrunning_sync_threads_never_outnumber_the_concurrency_nor_run_beside_their_retry() -> None:
    # Before the fix: 8 callback threads at once at concurrency 2, the same message running twice.
    broker = MemoryBroker()
    for name, arguments in RetryTopology("q", (0.01, 0.01)).queues():
        broker.declare_queue_nowait(name, arguments=arguments or None)
    for i in range(4):
        broker.publish_nowait(Message(b"", message_id=f"m{i}"), "q")
    provider = broker.provider("q", prefetch=10)
    tracker = Tracker()
    stack = Stack(
        Layer(ExceptionCatcherProcessor),
        Layer(AckProcessor, provider=provider),
        Layer(RetryProcessor, publisher=broker.publisher(), attempts=2, delays=(0.01, 0.01)),
        Layer(TimeLimitProcessor, seconds=0.05),
        callback=tracker.callback,
    )
    consumer = Consumer(provider, stack, concurrency=CONCURRENCY, grace_period=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        with anyio.fail_after(15):
            while broker.message_count("q.dead") < 4:
                await anyio.sleep(0.01)  # polling a condition, bounded by fail_after
        consumer.control.stop("test")
    # 4 messages x (first call + 2 retries), each cut by the limit; a call the limit cancels before
    # its thread picked it up (a loaded machine) is never started at all.
    assert 4 <= tracker.calls <= 12
    assert tracker.most_at_once <= CONCURRENCY, tracker.most_at_once
    assert tracker.overlaps == []
    assert hung_callback_threads() == 0


async def test_a_stop_does_not_wait_for_a_hung_sync_thread() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"", message_id="hang"), "q")
    provider = broker.provider("q")
    release = threading.Event()
    started = threading.Event()

    def hang(message: Message) -> None:
        started.set()
        release.wait(10)

    stack = Stack(
        Layer(AckProcessor, provider=provider), Layer(TimeLimitProcessor, seconds=0.05), callback=hang
    )
    consumer = Consumer(provider, stack, grace_period=0.2)
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer.run)
                await anyio.to_thread.run_sync(started.wait, 5)
                await anyio.sleep(0.2)  # past the time limit: the thread is hung, its slot held
                assert consumer.in_flight == 1
                consumer.control.stop("test")
        assert hung_callback_threads() == 1  # abandoned at the end of the grace period, still running
        assert provider.unsettled_count == 0 and broker.message_count("q") == 1  # back in the queue
    finally:
        release.set()
    with anyio.fail_after(5):
        while hung_callback_threads():
            await anyio.sleep(0.01)


SCRIPT = """
import threading, swarrow
from swarrow import MemoryBroker, Message

broker = MemoryBroker.named("hung")
broker.declare_queue_nowait("q")
broker.publish_nowait(Message(b"x", message_id="m"), "q")

def hang(message):
    threading.Event().wait()  # never returns

reason = swarrow.run(hang, queue="q", url="memory://hung", retry=False, signals=False, log=False,
                     time_limit=0.1, max_runtime=0.5, grace_period=0.2)
print("returned", reason.code, flush=True)
"""


def test_swarrow_run_ends_the_process_despite_a_hung_sync_thread(tmp_path: Path) -> None:
    # Before the fix: run() returned but the interpreter waited forever for the thread at exit.
    script = tmp_path / "hung.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert "sync callback thread(s) still running" in done.stderr


async def test_exit_on_timeout_stops_at_the_deadline_even_while_the_sync_thread_hangs() -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"", message_id="hang"), "q")
    provider = broker.provider("q")
    release = threading.Event()

    def hang(message: Message) -> None:
        release.wait(10)

    stack = Stack(
        Layer(AckProcessor, provider=provider),
        Layer(TimeLimitProcessor, seconds=0.05, exit_on_timeout=True),
        callback=hang,
    )
    try:
        with anyio.fail_after(3):  # the grace period (10 s) is not waited for: stop_now
            reason = await Consumer(provider, stack, grace_period=10).run()
        assert reason.code == "time_limit" and reason.immediate
        assert broker.message_count("q") == 1  # unacked, back in the queue for the next worker
    finally:
        release.set()
