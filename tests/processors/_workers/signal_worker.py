"""A worker run as a subprocess by test_signal_handler: slow messages, then a signal or two.

Usage: signal_worker.py graceful|twice. Prints one line per event, flushed, for the test to wait on.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from processors.ack import AckProcessor
from processors.signal_handler import SignalHandlerProcessor
from swarrow import Consumer, ConsumerControl, Layer, MemoryBroker, Message, Processor, Stack


def say(line: str) -> None:
    print(line, flush=True)


class Announce:
    """Gives the callback the stop handle and says when a stop was requested."""

    control: ConsumerControl | None = None

    def __init__(self, inner: Processor, /) -> None:
        self.inner = inner

    @asynccontextmanager
    async def lifespan(self, control: ConsumerControl) -> AsyncIterator[None]:
        Announce.control = control
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._announce, control)
            yield
            tg.cancel_scope.cancel()

    async def _announce(self, control: ConsumerControl) -> None:
        await control.wait_stop_requested()
        say("stop requested")

    async def __call__(self, message: Message, /) -> bool:
        return await self.inner(message)


async def main(mode: str) -> None:
    broker = MemoryBroker()
    broker.declare_queue_nowait("q")
    for i in range(3):
        broker.publish_nowait(Message(str(i).encode()), "q")
    provider = broker.provider("q", prefetch=3)

    async def handle(message: Message) -> None:
        say(f"started {message.body.decode()}")
        assert Announce.control is not None
        if mode == "graceful":
            # Still running after the signal: it must be allowed to finish (bounded, never hangs).
            with anyio.fail_after(10):
                await Announce.control.wait_stop_requested()
        else:
            await anyio.sleep_forever()  # only an immediate stop ends it
        say(f"finished {message.body.decode()}")

    stack = Stack(
        Layer(SignalHandlerProcessor),
        Layer(Announce),
        Layer(AckProcessor, provider=provider),
        callback=handle,
    )
    reason = await Consumer(provider, stack, grace_period=10).run()
    say(
        f"stopped code={reason.code} immediate={reason.immediate} detail={reason.detail} "
        f"acked={provider.acked} ready={broker.message_count('q')}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
