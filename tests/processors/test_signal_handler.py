"""SignalHandlerProcessor, run as a real subprocess: one signal drains, a second one stops now."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from processors.signal_handler import DEFAULT_SIGNALS, SignalHandlerProcessor
from swarrow import Consumer, Layer, MemoryBroker, Message, Stack

WORKER = Path(__file__).parent / "_workers" / "signal_worker.py"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Worker:
    """A worker subprocess whose stdout lines are read by a thread, so waits are bounded."""

    def __init__(self, mode: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str) -> str:
        """Return the next line starting with `prefix`; fail after TIMEOUT seconds."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"worker never printed {prefix!r}; saw {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self) -> tuple[int, str]:
        rc = self.proc.wait(timeout=TIMEOUT)
        assert self.proc.stderr is not None
        return rc, self.proc.stderr.read()


@pytest.fixture
def worker() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=TIMEOUT)


def test_sigterm_lets_the_slow_message_finish_ack_then_exit_0(worker: list[Worker]) -> None:
    w = Worker("graceful")
    worker.append(w)
    w.expect("started 0")
    w.signal(signal.SIGTERM)
    w.expect("stop requested")
    w.expect("finished 0")
    stopped = w.expect("stopped")
    rc, stderr = w.wait()
    assert rc == 0, stderr
    assert "code=signal immediate=False detail=SIGTERM received" in stopped
    assert "acked=[1] ready=2" in stopped  # the in-flight one acked, the others back in the queue
    assert "started 1" not in w.seen
    assert "SIGTERM received: finishing 1 in-flight message(s)" in stderr


def test_second_signal_stops_now_and_leaves_the_message_unacked(worker: list[Worker]) -> None:
    w = Worker("twice")
    worker.append(w)
    w.expect("started 0")
    w.signal(signal.SIGTERM)
    w.expect("stop requested")
    w.signal(signal.SIGINT)
    stopped = w.expect("stopped")
    rc, stderr = w.wait()
    assert rc == 0, stderr
    assert "code=signal immediate=True" in stopped
    assert "acked=[] ready=3" in stopped  # cancelled, unacked, back for redelivery
    assert "finished 0" not in w.seen
    assert "SIGINT received again: stopping now" in stderr


def test_outside_the_main_thread_it_warns_and_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    broker.publish_nowait(Message(b"x"), "q")
    provider = broker.provider("q")

    async def handle(message: Message) -> bool:
        return False

    async def consume() -> str:
        stack = Stack(Layer(SignalHandlerProcessor), callback=handle)
        return (await Consumer(provider, stack).run()).code

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(anyio.run(consume)))
    with caplog.at_level(logging.WARNING, logger="processors.signal_handler"):
        thread.start()
        thread.join(TIMEOUT)
    assert results == ["callback"]
    assert "not in the main thread" in caplog.text


@pytest.mark.anyio
async def test_passes_the_inner_result_through_until_a_signal() -> None:
    async def inner(message: Message) -> bool:
        return message.body != b"stop"

    processor = SignalHandlerProcessor(inner)
    assert processor.signals == DEFAULT_SIGNALS
    assert await processor(Message()) is True
    assert await processor(Message(b"stop")) is False
    processor.received = 1
    assert await processor(Message()) is False


def test_rejects_something_that_is_not_a_signal() -> None:
    async def inner(message: Message) -> bool:
        return True

    with pytest.raises(ValueError, match="signals"):
        SignalHandlerProcessor(inner, signals=[signal.SIGTERM, 12345])
    with pytest.raises(ValueError, match="signals"):
        SignalHandlerProcessor(inner, signals=["SIGTERM"])  # type: ignore[list-item]


@pytest.mark.parametrize("exiting", [False, True])
def test_when_the_watch_ends_a_leaving_process_ignores_further_signals(exiting: bool) -> None:
    # The CLI (`exiting_after_the_watch`) exits once its consumer stops: a Ctrl-C or SIGTERM after the
    # watch was Python's own (KeyboardInterrupt in the loop's teardown, or death: exit 1/130/143).
    # An embedding application gets Python's handlers back, as before.
    from swarrow.control import ConsumerControl
    from swarrow.stop_signals import exiting_after_the_watch

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)}

    async def main() -> dict[int, object]:
        if exiting:
            exiting_after_the_watch()
        layer = SignalHandlerProcessor(_passthrough)
        control = ConsumerControl(queue_name="q", concurrency=1)
        async with layer.lifespan(control):
            os.kill(os.getpid(), signal.SIGINT)  # the watch takes it: no KeyboardInterrupt
            await anyio.lowlevel.checkpoint()
        return {sig: signal.getsignal(sig) for sig in saved}

    try:
        after = anyio.run(main)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    if exiting:
        assert after[signal.SIGINT] is signal.SIG_IGN and after[signal.SIGTERM] is signal.SIG_IGN
    else:
        assert after[signal.SIGINT] is signal.default_int_handler and after[signal.SIGTERM] is signal.SIG_DFL
    assert after[signal.SIGQUIT] is signal.SIG_DFL  # not a stop signal of the process's exit


async def _passthrough(message: Message) -> bool:
    return True
